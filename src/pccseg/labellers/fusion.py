"""Stages of the fuse labeller (:mod:`pccseg.labellers.fuse`): pure functions over tensors.

* :func:`vote_shares`: PCC's per-pixel votes as soft class scores (share of the votes for each class);
* :func:`fuse_scores`: vote shares plus weighted class maps;
* :func:`propagate`: class scores spread through a self-attention affinity, a few times (iSeg, Dataset
  Diffusion);
* :func:`spread_maps`: class maps mixed with their spread through a feature affinity (DiffCut's);
* :func:`sharpen`: an affinity's rows raised to a power and renormalised (entropy reduction);
* :func:`pool_segments`: every segment of the image takes the mean score of its pixels;
* :func:`pamr`: pixel-adaptive mask refinement, label propagation weighted by local colour affinity
  (Araslanov and Roth, CVPR 2020, as DiffCut uses it);
* :func:`decide`: argmax, uncertain where the best two scores are close;
* :func:`absorb_small`: regions under a size take the majority label of their border.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

UNCERTAIN = 255


def vote_shares(votes: torch.Tensor, class_ids: Sequence[int]) -> torch.Tensor:
    """(V, h, w) uint8 label maps -> (C, h, w) float32: the share of the V votes for each of ``class_ids``
    (255 and values not in ``class_ids`` count for none)."""
    v = votes.long()
    return torch.stack([(v == c).float().mean(0) for c in class_ids]) if len(class_ids) else \
        votes.new_zeros((0, *votes.shape[1:]), dtype=torch.float32)


def fuse_scores(shares: torch.Tensor, maps: torch.Tensor, class_ids: Sequence[int], map_weight: float,
                background_weight: float) -> torch.Tensor:
    """``shares + weight * maps``, the weight ``background_weight`` for class 0 and ``map_weight`` for the
    others. Both (C, h, w) in [0, 1]; returns (C, h, w) float32."""
    w = torch.full((len(class_ids), 1, 1), float(map_weight), device=maps.device)
    w[[i for i, c in enumerate(class_ids) if c == 0]] = float(background_weight)
    return shares.float() + w * maps.float()


def spread_maps(maps: torch.Tensor, affinity: torch.Tensor, grid: tuple[int, int], share: float) -> torch.Tensor:
    """Class maps mixed with their spread through a feature affinity:
    ``(1 - share) * maps + share * minmax(P maps)``, P the affinity with rows scaled to sum 1 (each pixel
    takes the mean map of the pixels whose features resemble its own; DiffCut's affinity, iSeg's idea).

    Args:
        maps: (C, h, w) in [0, 1]; affinity: (n, n) non-negative on the pixels of ``grid`` (raster order,
            n = grid[0] * grid[1]); the maps are area-resampled to the grid and the spread bilinearly back.

    Returns:
        (C, h, w) float32 in [0, 1].
    """
    from .features import minmax

    c, h, w = maps.shape
    g = tuple(grid)
    small = maps.float() if g == (h, w) else F.interpolate(maps[None].float(), size=g, mode="area")[0]
    a = affinity.float()
    spread = propagate(small, a / a.sum(1, keepdim=True).clamp(min=torch.finfo(a.dtype).tiny), 1)
    if g != (h, w):
        spread = F.interpolate(spread[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return (1 - share) * maps.float() + share * minmax(spread, (1, 2))


def sharpen(probs: torch.Tensor, power: float) -> torch.Tensor:
    """(n, n) row-stochastic -> rows raised to ``power`` and renormalised (power 1: unchanged)."""
    if power == 1:
        return probs
    p = probs.clamp(min=0).pow(power)
    return p / p.sum(1, keepdim=True).clamp(min=torch.finfo(p.dtype).tiny)


def propagate(scores: torch.Tensor, affinity: torch.Tensor, iters: int) -> torch.Tensor:
    """``A^iters s`` for every class score map s: A an (n, n) row-stochastic affinity on the scores' grid
    (row = pixel, raster order), so each pixel takes the weighted mean of the pixels it attends to.

    Args:
        scores: (C, h, w); affinity: (h*w, h*w).

    Returns:
        (C, h, w) float32.
    """
    c, h, w = scores.shape
    x = scores.reshape(c, h * w).T.float()
    a = affinity.float()
    for _ in range(iters):
        x = a @ x
    return x.T.reshape(c, h, w)


def pool_segments(scores: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Every pixel takes the mean score of its segment.

    Args:
        scores: (C, H, W); segments: (H, W) int64 ids 0..S-1.

    Returns:
        (C, H, W) float32.
    """
    c = scores.shape[0]
    seg = segments.reshape(-1)
    count = torch.bincount(seg).float().clamp(min=1)
    sums = torch.zeros(c, count.numel(), device=scores.device).index_add_(1, seg, scores.reshape(c, -1).float())
    return (sums / count)[:, segments]


def _offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _neighbours(x: torch.Tensor, dilations: Sequence[int]) -> list[torch.Tensor]:
    """(..., H, W) -> the K = 8 * len(dilations) neighbour views of ``x`` (replicated borders), in
    :func:`_offsets` order."""
    size = x.shape[-2:]
    pad = max(dilations)
    xp = F.pad(x.reshape(-1, 1, *size), (pad,) * 4, mode="replicate").reshape(*x.shape[:-2], *(s + 2 * pad for s in size))
    return [xp[..., pad + oy:pad + oy + size[0], pad + ox:pad + ox + size[1]] for oy, ox in _offsets(dilations)]


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int] = (1, 2, 4, 8)) -> torch.Tensor:
    """PAMR's local affinity: for each pixel i and each of its 8 neighbours j at every dilation,
    ``softmax_j(-mean_channels(|I_i - I_j| / (0.1 * std_j I)))``, std (unbiased) over the neighbourhood
    per channel. Computed one neighbour at a time (the std from running sums), without a (3, K, H, W)
    stack: 3-4x faster than stacking at 512x512.

    Args:
        image: (H, W, 3) uint8 or float RGB.

    Returns:
        (K, H, W) float32 weights summing to 1 over the K = 8 * len(dilations) neighbours.
    """
    x = image.permute(2, 0, 1).float()                                            # (3, H, W)
    nbs = _neighbours(x, dilations)
    k = len(nbs)
    total, squares = torch.zeros_like(x), torch.zeros_like(x)
    for nb in nbs:
        total += nb
        squares.addcmul_(nb, nb)
    var = squares.sub_(total.mul(total).div_(k)).div_(k - 1).clamp_(min=0)
    scale = var.sqrt_().mul_(0.1).add_(1e-8).reciprocal_().div_(-x.shape[0])       # -1 / (C * 0.1 * std)
    aff = x.new_empty((k, *x.shape[1:]))
    diff = torch.empty_like(x)
    for j, nb in enumerate(nbs):
        torch.sum(torch.sub(nb, x, out=diff).abs_().mul_(scale), 0, out=aff[j])
    return torch.softmax(aff, 0)


def pamr(image: torch.Tensor, scores: torch.Tensor, iters: int = 10,
         dilations: Sequence[int] = (1, 2, 4, 8)) -> torch.Tensor:
    """Pixel-adaptive mask refinement: ``iters`` times, every pixel's scores become the
    :func:`pamr_affinity`-weighted mean of its neighbours' (replicated borders), so labels spread along
    regions of one colour and stop at colour edges.

    Args:
        image: (H, W, 3) RGB; scores: (C, H, W).

    Returns:
        (C, H, W) float32.
    """
    aff = pamr_affinity(image.to(scores.device), dilations)
    p = scores.float()
    for _ in range(iters):
        new = torch.zeros_like(p)
        for a, nb in zip(aff, _neighbours(p, dilations)):
            new.addcmul_(a, nb)
        p = new
    return p


def decide(scores: torch.Tensor, class_ids: Sequence[int], margin: float) -> torch.Tensor:
    """Per pixel the class of the largest score; uncertain (255) where the runner-up is within ``margin``
    times the best (``margin`` 0: never). Ties go to the first class.

    Args:
        scores: (C, H, W) non-negative.

    Returns:
        (H, W) uint8.
    """
    lut = torch.tensor(list(class_ids) or [0], dtype=torch.uint8, device=scores.device)
    if scores.shape[0] == 0:
        return torch.zeros(scores.shape[1:], dtype=torch.uint8, device=scores.device)
    best, idx = scores.max(0)
    mask = lut[idx]
    if margin > 0 and scores.shape[0] > 1:
        top2 = scores.topk(2, 0).values
        mask[(top2[0] - top2[1]) < margin * top2[0]] = UNCERTAIN
    return mask


def absorb_small(mask: torch.Tensor, min_size: int) -> torch.Tensor:
    """Every 4-connected region of one label (255 included) under ``min_size`` pixels takes the most
    frequent label among the pixels just outside it (its border), smallest regions first; a region whose
    border is all uncertain keeps its label.

    Args:
        mask: (H, W) uint8.

    Returns:
        (H, W) uint8 on the same device.
    """
    if min_size <= 1:
        return mask
    m = mask.detach().cpu().numpy().copy()
    H, W = m.shape
    kernel = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
    regions = []
    for v in np.unique(m):
        n, comp, stats, _ = cv2.connectedComponentsWithStats((m == v).astype(np.uint8), connectivity=4)
        for i in range(1, n):
            area = int(stats[i, cv2.CC_STAT_AREA])
            if area < min_size:
                x, y, w, h = (int(stats[i, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                           cv2.CC_STAT_HEIGHT))
                y0, x0, y1, x1 = max(0, y - 1), max(0, x - 1), min(H, y + h + 1), min(W, x + w + 1)
                regions.append((area, (y0, x0, y1, x1), comp[y0:y1, x0:x1] == i))
    for _, (y0, x0, y1, x1), region in sorted(regions, key=lambda r: r[0]):
        ring = (cv2.dilate(region.astype(np.uint8), kernel) > 0) & ~region
        vals = m[y0:y1, x0:x1][ring]
        vals = vals[vals != UNCERTAIN]
        if vals.size:
            m[y0:y1, x0:x1][region] = np.bincount(vals).argmax()
    return torch.from_numpy(m).to(mask.device)

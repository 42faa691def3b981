"""Section 4 of the method (docs/method.md): move the blocky mask's edges onto the image's colour edges.

1. :func:`image_segments`: k-means (k = 20) on every pixel's (R, G, B, x, y), all in 0-255, split into
   connected components; fragments under ``min_segment`` pixels pool into one leftover segment.
2. :func:`dominant_labels`: each segment takes the blocky mask's dominant value inside it, or 255.
3. :func:`artefact_ring`: the authors' morphological clean-up and uncertain ring per class.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from .clusters import connected_components, kmeans, relabel_small
from .features import pixel_grid

UNCERTAIN = 255


def pixel_features(image: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 -> (H*W, 5) float32 rows (R, G, B, x, y), x and y scaled to [0, 255]."""
    H, W, _ = image.shape
    rgb = image.reshape(-1, 3).float()
    return torch.cat([rgb, pixel_grid(H, W, device=image.device, scale=255.0)], dim=1)


def subsample_rows(h: int, w: int, size: int, device=None) -> torch.Tensor | None:
    """Raster indices of a regular lattice of at most ``size`` of the h*w pixels (None: use them all).

    The lattice takes every s-th row and every s-th column, s = ceil(sqrt(h*w / size)), so the fit
    sample covers the image evenly, with no randomness. None when ``size`` <= 0 or >= h*w.
    """
    if size <= 0 or size >= h * w:
        return None
    s = max(1, math.ceil(math.sqrt(h * w / size)))
    ys = torch.arange(0, h, s, device=device)
    xs = torch.arange(0, w, s, device=device)
    return (ys.unsqueeze(1) * w + xs.unsqueeze(0)).reshape(-1)


def image_segments(image: torch.Tensor, *, k: int = 20, seed: int = 0, max_iter: int = 300, n_init: int = 1,
                   connectivity: int = 8, min_segment: int = 10, subsample: int = 16384) -> torch.Tensor:
    """Colour-and-position segments of the image.

    Args:
        image: (H, W, 3) uint8 RGB.
        k: k-means clusters; seed: k-means seed; max_iter: Lloyd iterations at most; n_init: k-means++
            starts, least inertia wins.
        connectivity: 4 or 8, for splitting clusters into connected components.
        min_segment: components under this many pixels pool into one leftover segment (the last id).
        subsample: fit the k-means centres on at most this many pixels (a regular lattice, see
            :func:`subsample_rows`), then assign every pixel to its nearest centre; 0 fits on all.

    Returns:
        (H, W) int64 segment ids 0..S-1.
    """
    H, W, _ = image.shape
    x = pixel_features(image)
    labels, _ = kmeans(x, k, seed=seed, max_iter=max_iter, n_init=n_init,
                       fit_rows=subsample_rows(H, W, subsample, x.device))
    segs = connected_components(labels.reshape(H, W), connectivity)
    return relabel_small(segs, min_segment) if min_segment > 1 else segs


def dominant_labels(mask: torch.Tensor, segments: torch.Tensor, *, rule: str = "report",
                    share: float = 0.66) -> torch.Tensor:
    """Each segment takes the mask's dominant value inside it, or 255.

    Args:
        mask: (H, W) uint8 label values (255 counts as a value).
        segments: (H, W) int64 segment ids 0..S-1.
        rule: ``"report"``: the dominant value if its share of the segment is > ``share``; ``"authors"``:
            if its count is more than twice the runner-up's. A segment with one value takes it either way.

    Returns:
        (H, W) uint8.
    """
    if rule not in ("report", "authors"):
        raise ValueError(f"unknown dominance rule {rule!r} (report, authors)")
    seg = segments.reshape(-1)
    s = int(seg.max()) + 1
    hist = torch.bincount(seg * 256 + mask.reshape(-1).long(), minlength=s * 256).reshape(s, 256)
    top2, val = hist.topk(2, dim=1)                                           # (S, 2)
    if rule == "report":
        ok = top2[:, 0].double() > share * hist.sum(1).double()
    else:
        ok = top2[:, 0] > 2 * top2[:, 1]
    ok |= top2[:, 1] == 0
    seg_val = torch.where(ok, val[:, 0], torch.full_like(val[:, 0], UNCERTAIN)).to(torch.uint8)
    return seg_val[segments]


def artefact_ring(mask: torch.Tensor, ring_width: int = 2) -> torch.Tensor:
    """The authors' clean-up: per class, morphology, then an uncertain ring around the cleaned region.

    Starting from a mask that keeps only the 0 pixels (everything else 0 too), for each class c other
    than 0 and 255, in ascending order: R = erode(dilate(erode(mask == c, 1), 5), 4) with a 3x3 kernel
    (OpenCV, default borders); the pixels of dilate(R, ring_width) become 255, then the pixels of R
    become c. Finally every pixel that was 255 in the input is 255 again. Consequences: specks of c
    that the first erosion removes become background (0), small holes of 0 inside a class are filled
    with c, a ``ring_width``-pixel ring outside each region is 255 unless a later class claims it.

    Args:
        mask: (H, W) uint8. Returns: (H, W) uint8 on the same device.
    """
    m = mask.detach().cpu().numpy()
    out = np.zeros_like(m)
    kernel = np.ones((3, 3), np.uint8)
    for c in np.unique(m):
        if c in (0, UNCERTAIN):
            continue
        region = (m == c).astype(np.uint8)
        region = cv2.erode(region, kernel, iterations=1)
        region = cv2.dilate(region, kernel, iterations=5)
        region = cv2.erode(region, kernel, iterations=4)
        if ring_width > 0:
            out[cv2.dilate(region, kernel, iterations=ring_width) > 0] = UNCERTAIN
        out[region > 0] = c
    out[m == UNCERTAIN] = UNCERTAIN
    return torch.from_numpy(out).to(mask.device)

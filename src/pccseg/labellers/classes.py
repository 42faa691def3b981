"""Section 3 of the method (docs/method.md): token maps -> class maps, segment classification by IoU, 9-way vote."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from .features import minmax

UNCERTAIN = 255


def merge_tokens(token_maps: torch.Tensor, token_classes: Sequence[int | None],
                 merge: Literal["max", "mean"] = "max") -> tuple[list[int], torch.Tensor]:
    """One map per class from its tokens' maps, unnormalised.

    The start-of-text token carries class 0 (background); tokens whose class is None (end-of-text, words
    that stand for no class) are dropped; several tokens of one class ("pot plant", a class named twice)
    take the element-wise ``merge``: "max" (method §1b) or "mean" (Dataset Diffusion, DAAM).

    Args:
        token_maps: (T, h, w) float token maps.
        token_classes: T label values or None.

    Returns:
        (class_ids, maps): the label values present, sorted ascending (background 0 first when present),
        and (C, h, w) float32 maps.
    """
    if token_maps.shape[0] != len(token_classes):
        raise ValueError(f"{token_maps.shape[0]} token maps for {len(token_classes)} token classes")
    ids = sorted({int(c) for c in token_classes if c is not None})
    tm = token_maps.float()
    maps = []
    for cid in ids:
        rows = tm[[i for i, c in enumerate(token_classes) if c is not None and int(c) == cid]]
        maps.append(rows.amax(0) if merge == "max" else rows.mean(0))
    if not maps:
        return [], tm.new_zeros((0,) + tuple(tm.shape[1:]))
    return ids, torch.stack(maps)


def block_sum_blur(maps: torch.Tensor) -> torch.Tensor:
    """The authors' route for the token maps, done at latent size: a [1/8, 3/4, 1/8] blur.

    The authors' OVAM call resizes the (T, h, w) maps bilinearly to the image size (``align_corners=False``)
    and their labelling script sums each s x s block back to (h, w). For an even factor s (8 for SD, 4 for
    the toy model) that equals s^2 times a separable [1/8, 3/4, 1/8] blur with replicated borders: the
    bilinear weights of a block's s pixels sum to s/8 on each neighbour. The min-max normalisation of the
    class maps removes the factor s^2.

    Args:
        maps: (T, h, w) float maps.

    Returns:
        (T, h, w) float32 blurred maps.
    """
    p = F.pad(maps.float().unsqueeze(0), (1, 1, 1, 1), mode="replicate")[0]     # (T, h+2, w+2)
    p = 0.75 * p[:, 1:-1] + 0.125 * (p[:, :-2] + p[:, 2:])                      # rows
    return 0.75 * p[:, :, 1:-1] + 0.125 * (p[:, :, :-2] + p[:, :, 2:])          # columns


def class_maps(token_maps: torch.Tensor, token_classes: Sequence[int | None],
               merge: Literal["max", "mean"] = "max") -> tuple[list[int], torch.Tensor]:
    """:func:`merge_tokens`, each map then min-max normalised to [0, 1] over the image (a constant map -> 0).

    Returns:
        (class_ids, maps): label values ascending and (C, h, w) float32 maps in [0, 1].
    """
    ids, maps = merge_tokens(token_maps, token_classes, merge)
    return ids, minmax(maps, (1, 2))


def binary_maps(maps: torch.Tensor, class_ids: Sequence[int], threshold: float,
                background_factor: float = 1.2) -> torch.Tensor:
    """(C, h, w) normalised maps -> (C, h, w) bool: map > t, and map > background_factor * t for class 0."""
    t = torch.full((len(class_ids), 1, 1), float(threshold), device=maps.device)
    t[[i for i, c in enumerate(class_ids) if c == 0]] *= background_factor
    return maps > t


def segment_iou(segments: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """IoU of every segment with every class binary map, with one bincount.

    Args:
        segments: (h, w) int64 segment ids 0..S-1.
        binary: (C, h, w) bool class maps.

    Returns:
        (C, S) float32 IoU (0 where a segment does not touch the class map).
    """
    seg = segments.reshape(-1)
    s = int(seg.max()) + 1 if seg.numel() else 0
    c = binary.shape[0]
    b = binary.reshape(c, -1)
    seg_size = torch.bincount(seg, minlength=s).float()                       # (S,)
    cls_size = b.sum(1).float()                                               # (C,)
    key = (torch.arange(c, device=seg.device).unsqueeze(1) * s + seg.unsqueeze(0))[b]
    inter = torch.bincount(key, minlength=c * s).reshape(c, s).float()        # (C, S)
    union = seg_size.unsqueeze(0) + cls_size.unsqueeze(1) - inter
    return torch.where(inter > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def assign_segments(segments: torch.Tensor, binary: torch.Tensor, class_ids: Sequence[int]) -> torch.Tensor:
    """Each pixel takes the class whose binary map has the largest IoU with the pixel's segment.

    Ties go to the smaller label value (``class_ids`` ascending); a segment that touches no class map is 0.

    Args:
        segments: (h, w) int64 segment ids; binary: (C, h, w) bool; class_ids: C label values (ascending).

    Returns:
        (h, w) uint8 label values.
    """
    if binary.shape[0] == 0:
        return torch.zeros(segments.shape, dtype=torch.uint8, device=segments.device)
    iou = segment_iou(segments, binary)                                       # (C, S)
    best_iou, best = iou.max(0)
    ids = torch.tensor(list(class_ids), dtype=torch.uint8, device=segments.device)
    seg_label = torch.where(best_iou > 0, ids[best], torch.zeros_like(ids[best]))
    return seg_label[segments]


def vote(votes: torch.Tensor, rule: str = "report") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mode of a stack of label maps, uncertain where too few agree.

    Args:
        votes: (V, h, w) uint8 label maps (any size: the blocky votes, or refined masks at image size).
        rule: ``"report"``: uncertain when the mode's share <= 0.5; ``"authors"``: when share < 0.56.

    Returns:
        ((h, w) uint8 mode with 255 for uncertain pixels — ties go to the smaller value, as
        ``scipy.stats.mode`` — and (h, w) float32 share of the votes the mode got).
    """
    if rule not in ("report", "authors"):
        raise ValueError(f"unknown vote rule {rule!r} (report, authors)")
    counts = torch.stack([(votes == v).sum(0, dtype=torch.int32) for v in votes])    # (V, h, w): votes like mine
    top = counts.amax(0)
    mode = torch.where(counts == top, votes.to(torch.int16), 256).amin(0)            # smallest value on ties
    share = top.float() / votes.shape[0]
    uncertain = share <= 0.5 if rule == "report" else share < 0.56
    mode = torch.where(uncertain, torch.full_like(mode, UNCERTAIN), mode).to(torch.uint8)
    return mode, share

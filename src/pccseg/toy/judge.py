"""Ground truth for any image of the toy world, read from the colour families, and prompt adherence.

An object pixel of the toy world is strongly saturated and lies near its class's hue (:data:`HUES`); a
background pixel is weakly saturated. :func:`colour_labels` inverts that for any RGB image, rendered or
generated: background where saturation < ``bg_sat``, the class of the nearest hue where saturation >=
``obj_sat``, value >= ``obj_val`` and the hue is within ``hue_tol`` degrees, 255 (unknown) elsewhere. A
3x3 majority filter then removes isolated pixels. On rendered images its error is measured against the
exact label maps (``bench/bench_toy.py``).

Prompt adherence (:func:`adherence`): every prompted class, and no other, is present, that is, covers at
least :data:`MIN_SHARE` of the image with pixels that survive a 3x3 opening (:func:`present_classes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..vocab import VOC_CLASSES, class_index
from .colours import HUES, rgb_to_hsv

BG_SAT = 0.24
OBJ_SAT = 0.32
OBJ_VAL = 0.28
HUE_TOL = 16.0
MIN_SHARE = 0.006   #: a class is present when it covers at least this share of the image ...
OPENING = 3         #: ... with whole squares of this side (px; see :func:`present_classes`)


def colour_labels(image: np.ndarray, *, classes: Sequence[str] | None = None, bg_sat: float = BG_SAT,
                  obj_sat: float = OBJ_SAT, obj_val: float = OBJ_VAL, hue_tol: float = HUE_TOL,
                  smooth: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 VOC labels from colour (0 background, 255 unknown).

    ``classes`` limits the candidate classes (default: every toy class).
    """
    names = list(classes) if classes is not None else list(HUES)
    h, s, v = rgb_to_hsv(np.asarray(image, np.float32) / 255.0)
    hues = np.array([HUES[c] for c in names], np.float32)
    d = np.abs(((h[..., None] - hues) + 180.0) % 360.0 - 180.0)          # (H, W, C) circular distance
    nearest = d.argmin(-1)
    dist = np.take_along_axis(d, nearest[..., None], -1)[..., 0]
    values = np.array([class_index(c) for c in names], np.uint8)
    out = np.full(h.shape, 255, np.uint8)
    out[s < bg_sat] = 0
    obj = (s >= obj_sat) & (v >= obj_val) & (dist <= hue_tol)
    out[obj] = values[nearest[obj]]
    if smooth:
        out = majority3(out)
    return out


def majority3(labels: np.ndarray) -> np.ndarray:
    """3x3 majority filter: a pixel takes the most common value of its neighbourhood when that value
    holds at least 5 of the 9 pixels (else it keeps its own)."""
    import cv2

    vals = np.unique(labels)
    best = labels.copy()
    best_n = np.zeros(labels.shape, np.float32)
    for val in vals:
        n = cv2.boxFilter((labels == val).astype(np.float32), -1, (3, 3), normalize=False,
                          borderType=cv2.BORDER_REPLICATE)
        take = n > best_n
        best[take] = val
        best_n[take] = n[take]
    return np.where(best_n >= 5, best, labels).astype(np.uint8)


def present_classes(labels: np.ndarray, min_share: float = MIN_SHARE, opening: int = OPENING) -> set[str]:
    """The class names covering at least ``min_share`` of a label map with whole ``opening`` x ``opening``
    squares: a class's pixels are opened (eroded, then dilated) first, so strips narrower than ``opening``
    do not count. Such strips are blends: where two objects of a generated image touch, the decoder
    mixes their colours, and the mixed hue can be a third class's (orange between red and yellow).
    ``opening`` 1 counts every pixel."""
    import cv2

    counts = np.bincount(labels.ravel(), minlength=256)
    need = min_share * labels.size
    kernel = np.ones((opening, opening), np.uint8)
    out = set()
    for i in range(1, len(VOC_CLASSES)):
        if counts[i] < need:
            continue
        if opening > 1 and cv2.morphologyEx((labels == i).astype(np.uint8), cv2.MORPH_OPEN, kernel).sum() < need:
            continue
        out.add(VOC_CLASSES[i])
    return out


@dataclass
class Adherence:
    """Prompt adherence of one image: the prompted classes, those seen, and the verdict."""

    prompted: set[str]
    seen: set[str]

    @property
    def ok(self) -> bool:
        """Every prompted class is present and no other (see :func:`present_classes`)."""
        return self.prompted == self.seen

    @property
    def missing(self) -> set[str]:
        return self.prompted - self.seen

    @property
    def extra(self) -> set[str]:
        return self.seen - self.prompted


def adherence(image: np.ndarray, prompted: Sequence[str], min_share: float = MIN_SHARE) -> Adherence:
    """Judge one generated image against the classes of its prompt by the colour families."""
    return Adherence(set(prompted), present_classes(colour_labels(image), min_share))

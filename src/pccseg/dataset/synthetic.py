"""A small VOC-layout folder with a planted layout, for the tests and benchmarks of training (what
:mod:`pccseg.capture.synthetic` is to captures)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io import save_image, save_mask

#: label value -> RGB of its block
COLORS = {1: (220, 30, 30), 2: (30, 200, 40)}


def make_blocks_tree(root: Path, n: int = 4, size: int = 64, classes: Sequence[int] = (1, 2), seed: int = 0,
                     class_names: Sequence[str] | None = None) -> Path:
    """``n`` noisy grey images with a red block (class 1) on the left and a green one (class 2) on the
    right; a 255 band on the left edge. Split file ``train.txt``."""
    rng = np.random.default_rng(seed)
    stems = []
    for i in range(n):
        img = rng.integers(90, 140, (size, size, 3)).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        for c, x0 in zip(classes, (rng.integers(0, size // 8), size // 2 + rng.integers(0, size // 8))):
            y0 = rng.integers(0, size // 4)
            y1, x1 = y0 + size // 2 + rng.integers(0, size // 4), x0 + 3 * size // 8
            img[y0:y1, x0:x1] = COLORS[c]
            mask[y0:y1, x0:x1] = c
        mask[:, :2] = 255
        stems.append(f"{i:06d}")
        save_image(root / "JPEGImages" / f"{stems[-1]}.jpg", img, quality=95)
        save_mask(root / "SegmentationClass" / f"{stems[-1]}.png", mask)
    (root / "ImageSets/Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(stems) + "\n")
    if class_names:
        (root / "settings.json").write_text(json.dumps({"class_names": class_names}))
    return root

"""The colour families of the toy world: one hue per class (:data:`HUES`), strongly saturated object shades
(at least :data:`OBJ_MIN_SAT` and :data:`OBJ_MIN_VAL`), weakly saturated backgrounds (below
:data:`BG_MAX_SAT`), so that the class of a pixel can be read back from its colour (:mod:`pccseg.toy.judge`);
and the HSV conversions both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..vocab import VOC_CLASSES, class_index

#: The classes of the toy world and the hue (degrees) of each colour family, 36 degrees apart.
HUES: dict[str, float] = {
    "car": 0.0, "cat": 36.0, "bus": 72.0, "pottedplant": 108.0, "bird": 144.0, "boat": 180.0,
    "aeroplane": 216.0, "person": 252.0, "horse": 288.0, "dog": 324.0,
}
TOY_CLASSES: tuple[str, ...] = tuple(sorted(HUES, key=lambda c: class_index(c)))

OBJ_MIN_SAT = 0.42          # every object shade has at least this saturation ...
OBJ_MIN_VAL = 0.36          # ... and value
BG_MAX_SAT = 0.14           # backgrounds stay below this saturation
HUE_JITTER = 5.0            # degrees, per object


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV (hue in degrees, s and v in [0, 1]) -> RGB float in [0, 1]; broadcasting, stacked on the last axis."""
    h = np.mod(h, 360.0) / 60.0
    c = v * s
    x = c * (1 - np.abs(np.mod(h, 2) - 1))
    m = v - c
    z = np.zeros_like(c)
    i = np.floor(h).astype(int) % 6
    r = np.choose(i, [c, x, z, z, x, c])
    g = np.choose(i, [x, c, c, x, z, z])
    b = np.choose(i, [z, z, x, c, c, x])
    return np.stack([r + m, g + m, b + m], axis=-1)


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB in [0, 1] (..., 3) -> (hue degrees in [0, 360), saturation, value)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = mx - mn
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(d > 0, d, 1.0)
    h = np.where(mx == r, np.mod((g - b) / safe, 6.0), np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h = np.where(d > 0, h * 60.0, 0.0)
    s = np.where(mx > 0, d / np.where(mx > 0, mx, 1.0), 0.0)
    return h.astype(np.float32), s.astype(np.float32), mx.astype(np.float32)


@dataclass(frozen=True)
class Palette:
    """The three shades of one object: (main, dark, light) as (h, s, v)."""

    main: tuple[float, float, float]
    dark: tuple[float, float, float]
    light: tuple[float, float, float]

    def shade(self, i: int) -> tuple[float, float, float]:
        return (self.main, self.dark, self.light)[i]


def object_palette(cls: str, rng: np.random.Generator) -> Palette:
    """A random palette in the colour family of ``cls``."""
    h = HUES[cls] + rng.uniform(-HUE_JITTER, HUE_JITTER)
    s = rng.uniform(0.62, 0.95)
    v = rng.uniform(0.62, 0.95)
    dark = (h, min(1.0, s + 0.05), max(OBJ_MIN_VAL + 0.02, v * 0.6))
    light = (h, max(OBJ_MIN_SAT + 0.02, s * 0.62), min(1.0, v + 0.15))
    return Palette((h, s, v), dark, light)


assert set(HUES) <= set(VOC_CLASSES)

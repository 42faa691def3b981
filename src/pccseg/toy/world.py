"""The toy world: procedurally drawn scenes of VOC objects with exact label maps, and their captions.

Every object class is a multi-part shape drawn in its own *colour family*: one hue (:data:`HUES`), strongly
saturated, with a main, a dark and a light shade for its parts. Backgrounds are smooth, weakly saturated
textures (a horizon, a vertical gradient and low-frequency blotches, saturation <= :data:`BG_MAX_SAT`), so
the class of a pixel can be read back from its colour (:mod:`pccseg.toy.judge`). A scene has 1-3 objects
(sometimes two of one class), drawn back to front with occlusion; each object keeps at least
:data:`MIN_VISIBLE` of its pixels.

Everything is a pure function of the seed::

    scene = render_scene(seed=7)          # Scene: image (H, W, 3) uint8, labels (H, W) uint8 (VOC values)
    scene.caption, scene.classes          # "a photo of a dog and a car", ("dog", "car")

Shapes are polygons in object units (x grows right, y grows down), mapped to pixels by a similarity
transform (scale to the object's size, small rotation, mirror, horizontal stretch, translation) and
filled with OpenCV at 1/16-pixel precision, into the image and the label map alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..vocab import VOC_CLASSES, class_index, prompt_word

#: The classes of the toy world and the hue (degrees) of each colour family, 36 degrees apart.
HUES: dict[str, float] = {
    "car": 0.0, "cat": 36.0, "bus": 72.0, "pottedplant": 108.0, "bird": 144.0, "boat": 180.0,
    "aeroplane": 216.0, "person": 252.0, "horse": 288.0, "dog": 324.0,
}
TOY_CLASSES: tuple[str, ...] = tuple(sorted(HUES, key=lambda c: class_index(c)))

#: Width / height of each class's shape (measured from :data:`SHAPES`; used to place objects).
ASPECT: dict[str, float] = {
    "car": 1.9, "cat": 1.2, "bus": 2.6, "bird": 1.2, "pottedplant": 0.85, "boat": 1.0, "aeroplane": 2.0,
    "person": 0.5, "horse": 1.05, "dog": 1.6,
}

OBJ_MIN_SAT = 0.42          # every object shade has at least this saturation ...
OBJ_MIN_VAL = 0.36          # ... and value
BG_MAX_SAT = 0.14           # backgrounds stay below this saturation
HUE_JITTER = 5.0            # degrees, per object
MIN_VISIBLE = 0.45          # share of an object's pixels that stays visible after occlusion
MIN_PIXELS_FRAC = 0.012     # ... and at least this share of the image

SUBPIXEL = 4                # cv2 fixed-point bits (1/16 pixel)


# ----------------------------------------------------------------------------------------------------------
# colours
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


# ----------------------------------------------------------------------------------------------------------
# primitives in object units -> polygons
MAIN, DARK, LIGHT = 0, 1, 2
Part = tuple[np.ndarray, int]     # (N, 2) polygon in object units, shade index


def ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, shade: int = MAIN, n: int = 40) -> Part:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    a = math.radians(angle)
    return np.stack([cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)], 1), shade


def circle(cx: float, cy: float, r: float, shade: int = MAIN) -> Part:
    return ellipse(cx, cy, r, r, 0.0, shade)


def poly(points: Sequence[tuple[float, float]], shade: int = MAIN) -> Part:
    return np.asarray(points, dtype=np.float64), shade


def rect(x0: float, y0: float, x1: float, y1: float, shade: int = MAIN) -> Part:
    return poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], shade)


def bar(x0: float, y0: float, x1: float, y1: float, width: float, shade: int = MAIN) -> Part:
    """A thick line segment (a limb, a mast) with round-ish ends."""
    d = np.array([x1 - x0, y1 - y0], dtype=np.float64)
    n = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9) * width / 2
    e = d / (np.linalg.norm(d) + 1e-9) * width / 4
    p0, p1 = np.array([x0, y0]) - e, np.array([x1, y1]) + e
    return poly([tuple(p0 + n), tuple(p1 + n), tuple(p1 - n), tuple(p0 - n)], shade)


def limb(x: float, y: float, angle: float, length: float, width: float, shade: int = MAIN) -> Part:
    """A bar from (x, y) at ``angle`` degrees from straight down (positive: towards +x)."""
    a = math.radians(angle)
    return bar(x, y, x + length * math.sin(a), y + length * math.cos(a), width, shade)


# ----------------------------------------------------------------------------------------------------------
# the shapes: each returns its parts, back to front, within x in [-aspect, aspect], y in [-1, 1]
def _person(r: np.random.Generator) -> list[Part]:
    stride = r.uniform(-12, 12)
    arm_l, arm_r = r.uniform(5, 150), r.uniform(5, 150)
    return [
        limb(-0.09, 0.1, -4 + stride, 0.9, 0.14, DARK), limb(0.09, 0.1, 4 + stride, 0.9, 0.14, DARK),
        limb(-0.2, -0.5, -arm_l, 0.62, 0.1, MAIN), limb(0.2, -0.5, arm_r, 0.62, 0.1, MAIN),
        poly([(-0.23, -0.6), (0.23, -0.6), (0.2, 0.16), (-0.2, 0.16)], MAIN),
        rect(-0.06, -0.7, 0.06, -0.58, LIGHT),
        circle(0.0, -0.8, 0.18, LIGHT),
    ]


def _car(r: np.random.Generator) -> list[Part]:
    shift = r.uniform(-0.15, 0.15)
    roof = r.uniform(0.38, 0.52)
    wr = r.uniform(0.16, 0.21)
    a = 2.0 / 2  # half-width in units
    return [
        poly([(-0.55 + shift, -0.05), (-0.35 + shift, -roof - 0.1), (0.35 + shift, -roof - 0.1),
              (0.6 + shift, -0.05)], MAIN),
        poly([(-0.45 + shift, -0.07), (-0.31 + shift, -roof), (-0.03 + shift, -roof), (-0.03 + shift, -0.07)], LIGHT),
        poly([(0.03 + shift, -0.07), (0.03 + shift, -roof), (0.31 + shift, -roof), (0.5 + shift, -0.07)], LIGHT),
        poly([(-a, -0.02), (a - 0.08, -0.05), (a, 0.08), (a, 0.3), (-a, 0.32)], MAIN),
        rect(a - 0.12, 0.02, a - 0.01, 0.1, LIGHT),
        circle(-0.58, 0.34, wr, DARK), circle(0.6, 0.34, wr, DARK),
    ]


def _bus(r: np.random.Generator) -> list[Part]:
    a = 2.6 / 2
    n = int(r.integers(4, 7))
    parts = [rect(-a, -0.55, a, 0.35, MAIN)]
    xs = np.linspace(-a + 0.15, a - 0.15, n + 1)
    for x0, x1 in zip(xs[:-1], xs[1:]):
        parts.append(rect(x0 + 0.04, -0.44, x1 - 0.04, -0.08, LIGHT))
    parts += [rect(-a, 0.12, a, 0.2, DARK), circle(-a + 0.45, 0.38, 0.15, DARK), circle(a - 0.45, 0.38, 0.15, DARK)]
    return parts


def _cat(r: np.random.Generator) -> list[Part]:
    tail = r.uniform(-60, 10)
    legs = [limb(x, 0.2, r.uniform(-8, 8), 0.3, 0.08, MAIN) for x in (-0.3, -0.15, 0.2, 0.35)]
    return legs + [
        limb(0.45, 0.0, 180 + tail, 0.5, 0.07, DARK),
        ellipse(0.05, 0.08, 0.47, 0.24, 0.0, MAIN),
        poly([(-0.62, -0.32), (-0.58, -0.55), (-0.46, -0.36)], DARK),
        poly([(-0.4, -0.36), (-0.3, -0.55), (-0.24, -0.3)], DARK),
        circle(-0.45, -0.2, 0.2, MAIN),
        ellipse(-0.5, -0.12, 0.08, 0.05, 0.0, LIGHT),
    ]


def _dog(r: np.random.Generator) -> list[Part]:
    tail = r.uniform(-40, 30)
    legs = [limb(x, 0.15, r.uniform(-10, 10), 0.35, 0.1, DARK) for x in (-0.4, -0.22, 0.25, 0.45)]
    return legs + [
        limb(0.55, -0.05, 130 + tail, 0.38, 0.07, MAIN),
        ellipse(0.05, 0.05, 0.52, 0.22, 0.0, MAIN),
        ellipse(-0.55, -0.25, 0.21, 0.17, -10.0, MAIN),
        ellipse(-0.75, -0.17, 0.12, 0.08, 0.0, LIGHT),
        ellipse(-0.45, -0.14, 0.07, 0.15, 15.0, DARK),
    ]


def _horse(r: np.random.Generator) -> list[Part]:
    legs = [limb(x, 0.05, r.uniform(-12, 12), 0.5, 0.07, DARK) for x in (-0.38, -0.25, 0.25, 0.38)]
    tail = r.uniform(-30, 10)
    return legs + [
        limb(0.45, -0.1, 20 + tail, 0.35, 0.07, DARK),
        ellipse(0.03, -0.05, 0.45, 0.18, 0.0, MAIN),
        poly([(-0.42, -0.02), (-0.2, -0.12), (-0.42, -0.55), (-0.58, -0.45)], MAIN),
        poly([(-0.42, -0.55), (-0.3, -0.5), (-0.2, -0.12), (-0.27, -0.12)], DARK),
        ellipse(-0.62, -0.5, 0.17, 0.08, 30.0, MAIN),
        poly([(-0.45, -0.6), (-0.4, -0.72), (-0.36, -0.58)], DARK),
    ]


def _bird(r: np.random.Generator) -> list[Part]:
    wing = r.uniform(-35, 45)
    a = math.radians(wing)
    tip = (0.3 * math.cos(a) + 0.05, -0.45 * math.sin(a) - 0.05)
    return [
        limb(-0.05, 0.22, 5, 0.28, 0.04, DARK), limb(0.1, 0.22, -5, 0.28, 0.04, DARK),
        poly([(0.3, 0.0), (0.62, -0.12), (0.62, 0.18)], DARK),
        ellipse(0.03, 0.05, 0.36, 0.22, 0.0, MAIN),
        circle(-0.3, -0.2, 0.15, MAIN),
        poly([(-0.42, -0.25), (-0.62, -0.18), (-0.42, -0.13)], LIGHT),
        poly([(-0.12, -0.02), (0.18, -0.02), tip], DARK),
    ]


def _boat(r: np.random.Generator) -> list[Part]:
    sail = r.uniform(0.35, 0.5)
    parts = [rect(-0.02, -0.95, 0.03, 0.2, DARK),
             poly([(0.04, -0.9), (0.04, 0.1), (0.04 + sail, 0.1)], LIGHT)]
    if r.random() < 0.6:
        parts.append(poly([(-0.03, -0.7), (-0.03, 0.1), (-0.03 - sail * 0.8, 0.1)], MAIN))
    parts.append(poly([(-0.6, 0.18), (0.6, 0.18), (0.42, 0.5), (-0.42, 0.5)], DARK))
    parts.append(rect(-0.58, 0.18, 0.58, 0.26, MAIN))
    return parts


def _aeroplane(r: np.random.Generator) -> list[Part]:
    sweep = r.uniform(-0.1, 0.15)
    return [
        poly([(-0.05, 0.0), (0.12, 0.0), (-0.15 + sweep, -0.35), (-0.3 + sweep, -0.35)], DARK),
        ellipse(0.0, 0.0, 0.98, 0.14, 0.0, MAIN),
        poly([(0.68, -0.05), (0.95, -0.05), (1.0, -0.48), (0.86, -0.48)], DARK),
        poly([(-0.12, 0.02), (0.18, 0.02), (-0.22 + sweep, 0.55), (-0.42 + sweep, 0.55)], DARK),
        ellipse(-0.78, -0.04, 0.12, 0.06, 0.0, LIGHT),
    ]


def _pottedplant(r: np.random.Generator) -> list[Part]:
    n = int(r.integers(5, 9))
    leaves = []
    for a in np.linspace(-70, 70, n) + r.uniform(-8, 8, n):
        length = r.uniform(0.45, 0.7)
        rad = math.radians(a)
        cx, cy = 0.5 * length * math.sin(rad), 0.05 - 0.5 * length * math.cos(rad)
        leaves.append(ellipse(cx, cy, 0.1, length / 2, a, LIGHT if r.random() < 0.4 else MAIN))
    return leaves + [
        poly([(-0.32, 0.15), (0.32, 0.15), (0.23, 0.62), (-0.23, 0.62)], DARK),
        rect(-0.36, 0.1, 0.36, 0.22, MAIN),
    ]


SHAPES: dict[str, Callable[[np.random.Generator], list[Part]]] = {
    "person": _person, "car": _car, "bus": _bus, "cat": _cat, "dog": _dog, "horse": _horse, "bird": _bird,
    "boat": _boat, "aeroplane": _aeroplane, "pottedplant": _pottedplant,
}


# ----------------------------------------------------------------------------------------------------------
# scenes
@dataclass(frozen=True)
class ToyObject:
    """One placed object: class, centre (px), size (px of the shape's larger side), rotation (degrees),
    mirror flag and horizontal stretch."""

    cls: str
    cx: float
    cy: float
    size: float
    angle: float
    mirror: bool
    stretch: float

    @property
    def extent(self) -> tuple[float, float]:
        """Approximate (width, height) in px."""
        asp = ASPECT[self.cls] * self.stretch
        return (self.size, self.size / asp) if asp >= 1 else (self.size * asp, self.size)


@dataclass
class Scene:
    """A rendered scene.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) uint8 VOC label values (0 background).
        objects: the objects, back to front.
        caption: the text prompt.
        classes: class names in the order the caption names them (each once).
        seed: the seed it was drawn from.
    """

    image: np.ndarray
    labels: np.ndarray
    objects: list[ToyObject]
    caption: str
    classes: tuple[str, ...]
    seed: int


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    import cv2

    g = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(g, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


def background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A weakly saturated textured background, (H, W, 3) float32 RGB in [0, 1]."""
    H, W = size
    hue = rng.uniform(0, 360)
    y = np.linspace(0, 1, H, dtype=np.float32)[:, None] * np.ones((1, W), np.float32)
    horizon = rng.uniform(0.3, 0.75) + 0.06 * _smooth_noise(rng, (1, W), 4)
    top, bottom = rng.uniform(0.5, 0.95), rng.uniform(0.3, 0.8)
    sky = y < horizon
    v = np.where(sky, top - 0.15 * y, bottom + 0.1 * (y - horizon))
    v = v + 0.07 * _smooth_noise(rng, size, int(rng.integers(3, 7))) + 0.025 * _smooth_noise(rng, size, 24)
    s = np.where(sky, rng.uniform(0.0, 0.1), rng.uniform(0.02, 0.12)) + 0.02 * _smooth_noise(rng, size, 5)
    hue2 = hue + np.where(sky, 0.0, rng.uniform(-60, 60))
    return hsv_to_rgb(hue2, np.clip(s, 0.0, BG_MAX_SAT - 0.02), np.clip(v, 0.12, 0.98)).astype(np.float32)


def _place(parts: list[Part], o: ToyObject) -> list[tuple[np.ndarray, int]]:
    """Parts in object units -> pixel polygons: centred on the parts' joint box, larger side = ``o.size``."""
    allp = np.concatenate([p for p, _ in parts])
    lo, hi = allp.min(0), allp.max(0)
    centre = (lo + hi) / 2
    ext = (hi - lo) * np.array([o.stretch, 1.0])
    scale = o.size / max(ext.max(), 1e-6)
    a = math.radians(o.angle)
    out = []
    for pts, shade in parts:
        x = (pts[:, 0] - centre[0]) * o.stretch * (-1 if o.mirror else 1)
        y = pts[:, 1] - centre[1]
        xr, yr = x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a)
        out.append((np.stack([o.cx + scale * xr, o.cy + scale * yr], 1), shade))
    return out


def draw_object(image: np.ndarray, labels: np.ndarray, o: ToyObject, rng: np.random.Generator) -> np.ndarray:
    """Draw ``o`` into ``image`` (float RGB) and ``labels`` in place; returns its (H, W) bool footprint.

    Each part is filled with its shade, times a gentle top-to-bottom light gradient and a fine grain
    (the value stays >= :data:`OBJ_MIN_VAL`-ish, the hue and saturation are the shade's).
    """
    import cv2

    H, W = labels.shape
    pal = object_palette(o.cls, rng)
    parts = _place(SHAPES[o.cls](rng), o)
    label = class_index(o.cls)
    ids = np.zeros((H, W), np.uint8)          # part index + 1, later parts on top
    for i, (pts, _) in enumerate(parts):
        px = np.round(pts * (1 << SUBPIXEL)).astype(np.int32)
        cv2.fillPoly(ids, [px], i + 1, lineType=cv2.LINE_8, shift=SUBPIXEL)
    foot = ids > 0
    if not foot.any():
        return foot
    colours = np.zeros((len(parts) + 1, 3), np.float32)
    for i, (_, shade) in enumerate(parts):
        colours[i + 1] = hsv_to_rgb(*(np.float32(c) for c in pal.shade(shade)))
    yy = np.linspace(0.04, -0.04, H, dtype=np.float32)[:, None]
    light = 1.0 + yy + 0.025 * rng.standard_normal((H, W)).astype(np.float32)
    col = colours[ids[foot]] * light[foot][:, None]
    image[foot] = col / np.maximum(1.0, col.max(1, keepdims=True))   # scaling keeps hue and saturation
    labels[foot] = label
    return foot


def render(objects: Sequence[ToyObject], rng: np.random.Generator, size: tuple[int, int] = (128, 128)
           ) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Draw ``objects`` back to front on a background.

    Returns (image (H, W, 3) uint8, labels (H, W) uint8, per object the share of its pixels left visible,
    0 when fewer than :data:`MIN_PIXELS_FRAC` of the image).
    """
    H, W = size
    img = background(rng, size)
    labels = np.zeros((H, W), np.uint8)
    owner = np.full((H, W), -1, np.int16)
    areas = []
    for i, o in enumerate(objects):
        foot = draw_object(img, labels, o, rng)
        owner[foot] = i
        areas.append(int(foot.sum()))
    counts = np.bincount((owner + 1).ravel(), minlength=len(objects) + 1)[1:]
    vis = [float(c) / a if a and c >= MIN_PIXELS_FRAC * H * W else 0.0 for c, a in zip(counts, areas)]
    return (img * 255 + 0.5).astype(np.uint8), labels, vis


def sample_objects(rng: np.random.Generator, size: tuple[int, int], classes: Sequence[str] = TOY_CLASSES,
                   pick: Sequence[str] | None = None) -> list[ToyObject]:
    """Draw 1-3 object placements (or the classes in ``pick``), sorted back (top) to front (bottom)."""
    H, W = size
    if pick is None:
        n = int(rng.choice([1, 2, 3], p=[0.4, 0.38, 0.22]))
        pick = list(rng.choice(list(classes), size=min(n, len(classes)), replace=False))
        if len(pick) >= 2 and rng.random() < 0.12:
            pick[1] = pick[0]
    lo, hi = {1: (0.5, 0.88), 2: (0.38, 0.66), 3: (0.3, 0.52)}[min(len(pick), 3)]
    objs = []
    for c in pick:
        o = ToyObject(str(c), 0.0, 0.0, float(rng.uniform(lo, hi) * min(H, W)), float(rng.uniform(-8, 8)),
                      bool(rng.random() < 0.5), float(rng.uniform(0.88, 1.12)))
        w, h = o.extent
        cx = rng.uniform(min(w * 0.4, W / 2), max(W - w * 0.4, W / 2))
        cy = rng.uniform(min(h * 0.45, H / 2), max(H - h * 0.45, H / 2))
        objs.append(ToyObject(o.cls, float(cx), float(cy), o.size, o.angle, o.mirror, o.stretch))
    objs.sort(key=lambda o: o.cy + o.extent[1] / 2)
    return objs


# ----------------------------------------------------------------------------------------------------------
# captions
def _plural(cls: str) -> str:
    if cls == "person":
        return "people"
    if cls == "bus":
        return "buses"
    return prompt_word(cls) + "s"


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption(classes: Sequence[str], rng: np.random.Generator) -> tuple[str, tuple[str, ...]]:
    """A VOC-style caption naming every object in ``classes`` (a class may repeat), and the class list
    in the order the caption names the classes (each once)."""
    counts: dict[str, int] = {}
    for c in classes:
        counts[c] = counts.get(c, 0) + 1
    order = list(counts)
    rng.shuffle(order)
    number = {2: "two", 3: "three"}
    phrases = [_article(prompt_word(c)) if counts[c] == 1 else f"{number[counts[c]]} {_plural(c)}" for c in order]
    u = rng.random()
    if u < 0.12:   # bare class words, as some VOC prompts are
        text = " ".join(prompt_word(c) for c in order)
    elif u < 0.5:
        text = "a photo of " + _join(phrases)
    elif u < 0.62 and len(phrases) == 2:
        text = f"{phrases[0]} next to {phrases[1]}"
    elif u < 0.72:
        text = "a picture of " + _join(phrases)
    else:
        text = _join(phrases)
    return text, tuple(order)


# ----------------------------------------------------------------------------------------------------------
# scenes and prompts
def render_scene(seed: int, size: tuple[int, int] = (128, 128), classes: Sequence[str] = TOY_CLASSES,
                 pick: Sequence[str] | None = None, tries: int = 50) -> Scene:
    """The scene of ``seed``: objects placed until each keeps :data:`MIN_VISIBLE` of its pixels, drawn,
    and captioned. ``pick`` fixes the object classes (a class may repeat)."""
    for c in list(classes) + list(pick or []):
        if c not in HUES:
            raise KeyError(f"class {c!r} is not in the toy world (known: {', '.join(TOY_CLASSES)})")
    rng = np.random.default_rng([int(seed), 0x70C])
    for _ in range(tries):
        objs = sample_objects(rng, size, classes, pick=pick)
        img, labels, vis = render(objs, rng, size)
        if min(vis) >= MIN_VISIBLE:
            break
    text, order = caption([o.cls for o in objs], rng)
    return Scene(img, labels, objs, text, order, int(seed))


def toy_prompt_records(n: int, seed: int = 0, start_id: int = 0, classes: Sequence[str] = TOY_CLASSES) -> list[dict]:
    """``n`` prompt records (``{"id", "prompt_sd", "classes"}``, the prompt-file format), captions drawn
    like the scenes' (record i from its own stream keyed by ``seed`` and i; no pixels are drawn)."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([int(seed), i, 0x9A0])
        objs = sample_objects(rng, (128, 128), classes)
        text, order = caption([o.cls for o in objs], rng)
        out.append({"id": start_id + i, "prompt_sd": text, "classes": list(order)})
    return out


def check_toy_records(records, path) -> None:
    """Raise :class:`~pccseg.errors.InputError` (naming the file, the record and the field) when a prompt
    record names a class the toy world does not draw."""
    from ..errors import InputError

    for r in records:
        for c in r.classes:
            if c not in HUES:
                raise InputError(f"{c!r} is not in the toy world (known: {', '.join(TOY_CLASSES)})", path=path,
                                 field=f"record {r.index}: classes")


assert set(HUES) <= set(VOC_CLASSES)

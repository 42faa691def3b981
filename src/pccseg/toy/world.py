"""The toy world: procedurally drawn scenes of VOC objects with exact label maps, and their captions.

Every object class is a multi-part shape drawn in its own *colour family*: one hue (:data:`~.colours.HUES`), strongly
saturated, with a main, a dark and a light shade for its parts. Backgrounds are smooth, weakly saturated
textures (a horizon, a vertical gradient and low-frequency blotches, saturation <= :data:`~.colours.BG_MAX_SAT`), so
the class of a pixel can be read back from its colour (:mod:`pccseg.toy.judge`). A scene has 1-3 objects
(sometimes two of one class), drawn back to front with occlusion; each object keeps at least
:data:`MIN_VISIBLE` of its pixels.

Everything is a pure function of the seed::

    scene = render_scene(seed=7)          # Scene: image (H, W, 3) uint8, labels (H, W) uint8 (VOC values)
    scene.caption, scene.classes          # "a photo of a dog and a car", ("dog", "car")

Shapes are polygons in object units (x grows right, y grows down; :mod:`.shapes`), mapped to pixels by a
similarity transform (scale to the object's size, small rotation, mirror, horizontal stretch, translation)
and filled with OpenCV at 1/16-pixel precision, into the image and the label map alike, in the colours of
:mod:`.colours`; :mod:`.captions` writes the prompt. This module places, draws and captions scenes, and
makes prompt records without drawing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .captions import caption
from .colours import BG_MAX_SAT, HUES, TOY_CLASSES, hsv_to_rgb, object_palette
from .shapes import ASPECT, SHAPES, Part
from ..vocab import class_index

MIN_VISIBLE = 0.45          # share of an object's pixels that stays visible after occlusion
MIN_PIXELS_FRAC = 0.012     # ... and at least this share of the image

SUBPIXEL = 4                # cv2 fixed-point bits (1/16 pixel)


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
    (the value stays >= :data:`~.colours.OBJ_MIN_VAL`-ish, the hue and saturation are the shade's).
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


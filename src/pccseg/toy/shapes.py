"""The shapes of the toy world's classes: each class a few parts (polygons in object units, x grows right,
y grows down), each part drawn in one of its palette's three shades (:data:`MAIN`, :data:`DARK`,
:data:`LIGHT`), drawn at random from ``rng`` (pose, limbs, tails, wings); :data:`SHAPES` maps a class to
its shape and :data:`ASPECT` gives each shape's width / height.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

#: Width / height of each class's shape (measured from :data:`SHAPES`; used to place objects).
ASPECT: dict[str, float] = {
    "car": 1.9, "cat": 1.2, "bus": 2.6, "bird": 1.2, "pottedplant": 0.85, "boat": 1.0, "aeroplane": 2.0,
    "person": 0.5, "horse": 1.05, "dog": 1.6,
}


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

"""Label masks and maps as RGB arrays (numpy, no matplotlib): :func:`colorize` (mask -> RGB),
:func:`overlay` (mask over image), :func:`outline_classes`, :func:`pca_rgb` (principal components -> RGB)
and the helpers they share. The VOC palette; uncertain pixels (255) are white stripes. Used by the stage
figures (:mod:`.show`, :mod:`.fuse_figure`) and the dataset report (:mod:`.dataset_report`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..vocab import IGNORE_INDEX, VOC_PALETTE

#: Colour of uncertain (255) pixels: white stripes (drawn over the image or a light grey ground).
UNCERTAIN_RGB = np.array([255, 255, 255], dtype=np.uint8)
UNCERTAIN_GROUND = np.array([150, 150, 150], dtype=np.uint8)
#: Ground for the background (0) of a mask drawn on its own: VOC's black hides the dark classes
#: (cat (64, 0, 0), potted plant (0, 64, 0), ...).
MASK_GROUND = np.array([205, 205, 205], dtype=np.uint8)


def to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device) or array-like as a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point:
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes of ``a`` (h, w, ...) to ``size`` = (H, W).

    Pixel centres are mapped (the same rule as ``torch.nn.functional.interpolate(mode="nearest-exact")``),
    so an integer upscale repeats every pixel exactly.
    """
    h, w = a.shape[:2]
    H, W = size
    if (h, w) == (H, W):
        return a
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return a[rows[:, None], cols[None, :]]


def boundaries(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour has another label (1-pixel borders)."""
    b = np.zeros(labels.shape, dtype=bool)
    dx = labels[:, 1:] != labels[:, :-1]
    dy = labels[1:, :] != labels[:-1, :]
    b[:, :-1] |= dx
    b[:-1, :] |= dy
    return b


def _stripes(shape: tuple[int, int], period: int | None = None) -> np.ndarray:
    """(H, W) bool diagonal stripes (about 3/8 of each period on)."""
    H, W = shape
    if period is None:
        period = max(4, int(round(min(H, W) / 40)))
    yy, xx = np.indices((H, W))
    return ((xx + yy) % period) < max(1, (3 * period) // 8)


def contrast_colour(rgb: np.ndarray) -> np.ndarray:
    """Black or white, whichever stands out more against the colour ``rgb`` (by luminance)."""
    luminance = 0.299 * float(rgb[0]) + 0.587 * float(rgb[1]) + 0.114 * float(rgb[2])
    return np.array([0, 0, 0] if luminance > 110 else [255, 255, 255], dtype=np.uint8)


def outline_classes(rgb: np.ndarray, m: np.ndarray, width: int | None = None) -> np.ndarray:
    """Draw every class region of the label map ``m`` (H, W) into ``rgb`` (H, W, 3, float or uint8) as
    an outline that reads on any ground: a band of ``width`` pixels inside the region in the class's own
    colour, and a line of ``width`` pixels just outside it in black or white (:func:`contrast_colour`).
    A grey car on a grey street stays visible. ``width`` default: about 1/150 of the short side, >= 1."""
    from scipy.ndimage import binary_dilation, binary_erosion

    width = width or max(1, round(min(m.shape) / 150))
    for v in np.unique(m):
        if v in (0, IGNORE_INDEX):
            continue
        region = m == v
        colour = VOC_PALETTE[int(v) % 256]
        halo = binary_dilation(region, iterations=width) & ~region
        rgb[halo] = contrast_colour(colour)
        rgb[region & ~binary_erosion(region, iterations=width, border_value=1)] = colour
    return rgb


def colorize(mask: Any, size: tuple[int, int] | None = None, *, ground: Any = None,
             outline: bool = False) -> np.ndarray:
    """Label mask (h, w) -> (H, W, 3) uint8 in the VOC palette; 255 as white stripes on grey.

    ``size`` = (H, W) nearest-upsamples the mask first (so the stripes are drawn at the output size).
    ``ground``: RGB for the background (0) instead of VOC's black (e.g. :data:`MASK_GROUND`);
    ``outline``: outline the class regions (:func:`outline_classes`).
    """
    m = to_numpy(mask).astype(np.int64)
    if size is not None:
        m = resize_nearest(m, size)
    rgb = VOC_PALETTE[np.clip(m, 0, 255)].copy()
    if ground is not None:
        rgb[m == 0] = ground
    unc = m == IGNORE_INDEX
    if unc.any():
        st = _stripes(m.shape)
        rgb[unc] = UNCERTAIN_GROUND
        rgb[unc & st] = UNCERTAIN_RGB
    return outline_classes(rgb, m) if outline else rgb


def overlay(image: Any, mask: Any, alpha: float = 0.5, *, edges: bool = True, dim: float = 0.0) -> np.ndarray:
    """Mask over image: (H, W, 3) uint8.

    Args:
        image: (H, W, 3) uint8 array or tensor.
        mask: (h, w) label values (any size: nearest-resized to H x W); 0 = background, left as the image;
            255 = uncertain, drawn as white diagonal stripes.
        alpha: opacity of the class colours and of the stripes.
        edges: outline every class region (:func:`outline_classes`: its colour inside, black or white
            outside), so that a class whose colour is the image's (a grey car) still shows.
        dim: darken the background pixels by this share (0: as they are), so the classes stand out.
    """
    img = to_numpy(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {img.shape}")
    H, W = img.shape[:2]
    m = resize_nearest(to_numpy(mask).astype(np.int64), (H, W))
    out = img.astype(np.float32)
    colour = VOC_PALETTE[np.clip(m, 0, 255)].astype(np.float32)
    cls = (m != 0) & (m != IGNORE_INDEX)
    out[m == 0] *= 1 - dim
    out[cls] = (1 - alpha) * out[cls] + alpha * colour[cls]
    unc = (m == IGNORE_INDEX) & _stripes((H, W))
    out[unc] = (1 - alpha) * out[unc] + alpha * 255.0
    if edges:
        out = outline_classes(out, m)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def pca_rgb(pc: Any) -> np.ndarray:
    """(h, w, n) principal-component maps -> (h, w, 3) float RGB in [0, 1] (first 3, each min-max)."""
    a = to_numpy(pc).astype(np.float32)
    a = a[..., :3]
    if a.shape[-1] < 3:
        a = np.concatenate([a, np.zeros(a.shape[:2] + (3 - a.shape[-1],), np.float32)], axis=-1)
    lo = a.min(axis=(0, 1), keepdims=True)
    hi = a.max(axis=(0, 1), keepdims=True)
    return (a - lo) / np.where(hi > lo, hi - lo, 1.0)

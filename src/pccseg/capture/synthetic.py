"""Synthetic captures with a planted layout, for tests, benchmarks, docs and pictures.

A *layout* is an (H, W) map of label values at image size. :func:`planted_capture` builds a
:class:`~pccseg.capture.format.Capture` whose every part follows it:

* self-attention, per layer and head: each region of the layout gets its own random embedding (new for
  every head), each pixel's output is the area-weighted mix of its regions' embeddings at the layer's
  resolution plus Gaussian noise (SD 2.1 shapes by default: 3 layers x 20 heads at h/4, 3 x 10 at h/2,
  3 x 5 at h, head dim 64, doubled with classifier-free guidance);
* token maps: start-of-text peaked on the background, each class word on its region (blurred, plus
  noise), several tokens for a multi-word class ("pot plant"), and a flat noisy end-of-text map;
* an RGB image whose regions have distinct colours, plus noise;
* self-attention probabilities at half the latent size (what the dd labeller reads): every query pixel
  attends mostly to pixels of its own region, more to near ones (:func:`planted_self_probs`).

:func:`planted_layout` returns the layout that :func:`planted_capture` plants for the same arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from .format import Capture
from ..vocab import VOC_CLASSES, prompt_word

#: SD 2.1 up-block self-attention layers: (name, heads, downsampling of the latent).
SD21: tuple[tuple[str, int, int], ...] = tuple(
    (f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1", heads, factor)
    for b, heads, factor in ((1, 20, 4), (2, 10, 2), (3, 5, 1)) for a in range(3))

#: Default planted classes: person (a rectangle), dog (an ellipse), potted plant (a small rectangle,
#: two tokens "pot plant").
DEFAULT_CLASSES: tuple[int, ...] = (15, 12, 16)

_COLOURS = np.array([[70, 110, 160], [200, 60, 50], [240, 200, 60], [40, 160, 70], [150, 80, 200],
                     [250, 140, 30], [30, 200, 200], [120, 120, 120], [230, 230, 230], [90, 40, 20]],
                    dtype=np.float32)


def planted_layout(layout: torch.Tensor | np.ndarray | None = None, *, image_size: tuple[int, int] = (512, 512),
                   classes: Sequence[int] = DEFAULT_CLASSES) -> torch.Tensor:
    """The (H, W) int64 layout :func:`planted_capture` plants.

    With ``layout`` given, it is returned as a tensor (its shape must be ``image_size``). Otherwise the
    default: background 0, then up to three regions in fractions of the image — a rectangle for
    ``classes[0]`` (rows 0.15-0.85, columns 0.08-0.40), an ellipse for ``classes[1]`` (centre (0.55,
    0.66), radii (0.28, 0.22)), a rectangle for ``classes[2]`` (rows 0.08-0.30, columns 0.55-0.92); later
    regions are drawn over earlier ones.
    """
    H, W = image_size
    if layout is not None:
        lay = torch.as_tensor(np.asarray(layout)).long()
        if tuple(lay.shape) != (H, W):
            raise ValueError(f"layout shape {tuple(lay.shape)} != image_size {(H, W)}")
        return lay
    if len(classes) > 3:
        raise ValueError("the default layout has room for at most 3 classes; pass a layout")
    ys = (torch.arange(H, dtype=torch.float32) + 0.5) / H
    xs = (torch.arange(W, dtype=torch.float32) + 0.5) / W
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    lay = torch.zeros(H, W, dtype=torch.long)
    shapes = [
        (yy >= 0.15) & (yy < 0.85) & (xx >= 0.08) & (xx < 0.40),
        ((yy - 0.55) / 0.28) ** 2 + ((xx - 0.66) / 0.22) ** 2 <= 1.0,
        (yy >= 0.08) & (yy < 0.30) & (xx >= 0.55) & (xx < 0.92),
    ]
    for c, region in zip(classes, shapes):
        lay[region] = int(c)
    return lay


def _region_fractions(layout: torch.Tensor, values: list[int], size: tuple[int, int]) -> torch.Tensor:
    """(H, W) layout -> (R, h, w) share of each value's pixels in every cell of an (h, w) grid."""
    onehot = torch.stack([(layout == v).float() for v in values]).unsqueeze(0)
    return F.adaptive_avg_pool2d(onehot, size).squeeze(0)


def planted_self_probs(layout: torch.Tensor, grid: tuple[int, int], *, region_weight: float = 6.0,
                       locality: float = 0.3, noise: float = 0.3,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Plausible self-attention probabilities for a layout: (h, w, h*w) float32, rows summing to 1.

    Query pixel p gives key pixel q the weight ``softmax_q(region_weight * s(p, q) - d(p, q)^2 / (2 *
    locality^2) + noise * N(0, 1))``, where s(p, q) in [0, 1] is how much of the two grid cells lies in the
    same region (1 for two cells inside one region) and d is their distance in units of the grid's longer
    side: attention stays mostly within a region and prefers near pixels, as Stable Diffusion's does.

    Args:
        layout: (H, W) label values at image size.
        grid: (h, w) of the self-attention level.
    """
    h, w = grid
    values = sorted(int(v) for v in torch.unique(layout))
    frac = _region_fractions(layout, values, (h, w)).reshape(len(values), h * w)       # (R, n)
    same = frac.T @ frac                                                                # (n, n)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], 1) / max(h, w)
    logits = region_weight * same - torch.cdist(pos, pos).square() / (2 * locality ** 2)
    logits += noise * torch.randn(logits.shape, generator=generator)
    return torch.softmax(logits, dim=-1).reshape(h, w, h * w)


def planted_capture(layout: torch.Tensor | np.ndarray | None = None, *, image_size: tuple[int, int] = (512, 512),
                    latent: tuple[int, int] = (64, 64), layers: Sequence[tuple[str, int, int]] = SD21,
                    heads_per_layer: int | None = None, head_dim: int = 64, cfg: bool = True,
                    classes: Sequence[int] = DEFAULT_CLASSES, class_names: Sequence[str] = VOC_CLASSES,
                    noise: float = 0.5, map_noise: float = 0.05, image_noise: float = 8.0,
                    self_probs: bool = True, seed: int = 0, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> Capture:
    """A Capture with a planted layout (see the module docstring and :func:`planted_layout`).

    Args:
        layout: (H, W) label values at image size, or None for the default layout of ``classes``.
        image_size: (H, W) of the image.
        latent: (h, w) of the token maps (the latent size).
        layers: (name, heads, downsampling) per self-attention layer; a layer's maps are
            (h // downsampling, w // downsampling).
        heads_per_layer: overrides every layer's head count (small captures for fast tests).
        head_dim: channels per head.
        cfg: classifier-free guidance: twice the heads (unconditional and conditional halves).
        classes: the class of every region (label values); with a given layout, the values of the
            layout other than 0 are used instead.
        class_names: the vocabulary (label value -> name); the token words come from it via the
            report's renames, so 16 (pottedplant) gives two tokens, "pot" and "plant".
        noise: std of the Gaussian noise on the attention (the embeddings have unit std).
        map_noise: std of the noise on the token maps (their peak is ~1).
        image_noise: std of the colour noise (0-255 scale).
        self_probs: also plant self-attention probabilities at half the latent size
            (:func:`planted_self_probs`), as a capture kept by ``generate --keep-captures`` holds them.
        seed: seed of everything random.
        dtype, device: of the attention tensors / of every tensor.
    """
    H, W = image_size
    h, w = latent
    lay = planted_layout(layout, image_size=image_size, classes=classes)
    gen = torch.Generator().manual_seed(int(seed))
    present = sorted(int(v) for v in torch.unique(lay))
    regions = [0] + [v for v in present if v != 0]
    cls = [v for v in present if v != 0] if layout is not None else [int(c) for c in classes]

    self_attn: dict[str, torch.Tensor] = {}
    for name, heads, factor in layers:
        n_heads = (heads_per_layer or heads) * (2 if cfg else 1)
        hl, wl = max(1, h // factor), max(1, w // factor)
        frac = _region_fractions(lay, regions, (hl, wl)).reshape(len(regions), hl * wl)   # (R, n)
        emb = torch.randn(n_heads, len(regions), head_dim, generator=gen)
        out = torch.einsum("rn,hrd->hnd", frac, emb)
        out += noise * torch.randn(out.shape, generator=gen)
        self_attn[name] = out.reshape(n_heads, hl, wl, head_dim).to(device=device, dtype=dtype)

    tokens, token_classes, maps = ["<|startoftext|>"], [0], []
    frac = _region_fractions(lay, regions, (h, w))                                      # (R, h, w)
    sigma = max(h, w) / 64.0
    ks = 2 * int(round(2 * sigma)) + 1
    blurred = gaussian_blur(frac.unsqueeze(0), [ks, ks], [sigma, sigma]).squeeze(0)
    maps.append(1.5 * blurred[0])
    for c in cls:
        i = regions.index(c) if c in regions else None
        for word in prompt_word(class_names[c]).split():
            tokens.append(word)
            token_classes.append(c)
            maps.append(blurred[i] if i is not None else torch.zeros(h, w))
    tokens.append("<|endoftext|>")
    token_classes.append(None)
    maps.append(torch.full((h, w), 0.3))
    tm = torch.stack(maps)
    tm = (tm + map_noise * torch.randn(tm.shape, generator=gen)).clamp(min=0)

    colours = torch.from_numpy(_COLOURS)
    img = torch.zeros(H, W, 3)
    for j, v in enumerate(regions):
        img[lay == v] = colours[j % len(colours)]
    img = (img + image_noise * torch.randn(img.shape, generator=gen)).round().clamp(0, 255).to(torch.uint8)

    probs = planted_self_probs(lay, (max(1, h // 2), max(1, w // 2)), generator=gen) if self_probs else None

    meta = {"prompt": "a synthetic capture with a planted layout", "seed": int(seed), "model": "synthetic",
            "classes": [class_names[c] for c in cls]}
    return Capture(image=img.to(device), self_attn=self_attn, token_maps=tm.to(device), tokens=tokens,
                   token_classes=token_classes, class_names=tuple(class_names), meta=meta,
                   self_probs=None if probs is None else probs.to(device))

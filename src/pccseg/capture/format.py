"""The capture format: the contract between generation and labelling (docs/method.md section 1).

One directory per sample::

    image.png             the generated RGB image, (H, W, 3)
    capture.safetensors   self_attn.<layer name>: (heads, h, w, head_dim), one per captured layer
                          token_maps:             (tokens, h, w), class-text token maps at latent size
                          self_probs (optional):  (h', w', h' * w') float32, self-attention probabilities
                                                  averaged over heads, layers and steps at half the latent
                                                  size (what the dd labeller needs)
    capture.json          tokens (SoT first, EoT last), token_classes (label value per token: 0 for SoT,
                          null for EoT and for tokens that stand for no class), class_names (index =
                          label value; VOC when absent), and free metadata (prompt, seed, model, steps)

:func:`load_capture` checks everything the labeller relies on and raises :class:`InputError` naming the
file and the field; :func:`save_capture` writes a directory atomically.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError as SafetensorsError
from safetensors.torch import load_file

from ..errors import InputError
from ..io import atomic_path, load_image, open_image, read_json, save_image, save_tensors
from ..vocab import VOC_CLASSES, check_class_names

IMAGE_FILE = "image.png"
TENSOR_FILE = "capture.safetensors"
META_FILE = "capture.json"
SELF_ATTN_PREFIX = "self_attn."
TOKEN_MAPS_KEY = "token_maps"
#: The dtype :func:`save_capture` writes self-attention in by default (half the bytes of float32).
SAVED_DTYPE = torch.float16
SELF_PROBS_KEY = "self_probs"
#: how far a self_probs row may sum from 1 (float16 softmax on a GPU, averaged, stays well inside)
ROW_SUM_TOLERANCE = 1e-2


@dataclass
class Capture:
    """Everything the labeller needs for one image.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        self_attn: layer name -> (heads, h, w, head_dim) per-head self-attention outputs.
        token_maps: (T, h_l, w_l) class-text token maps at latent resolution (T = len(tokens)).
        tokens: T token strings, start-of-text first, end-of-text last.
        token_classes: T entries: label value (index into ``class_names``) or None (EoT, no class).
        class_names: label value -> class name; index 0 is the background.
        meta: free metadata (prompt, seed, model, steps, ...), kept in capture.json.
        source: where it was read from, for messages.
        self_probs: optional (h', w', h' * w') float32 self-attention probabilities, averaged over heads,
            layers and steps at one UNet level (half the latent size): row (i, j) holds what query pixel
            (i, j) gives each key pixel, keys in raster order; each row sums to 1. Only the dd labeller
            reads it.
    """

    image: torch.Tensor
    self_attn: dict[str, torch.Tensor]
    token_maps: torch.Tensor
    tokens: list[str]
    token_classes: list[int | None]
    class_names: tuple[str, ...] = VOC_CLASSES
    meta: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    self_probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.image, torch.Tensor):
            self.image = torch.from_numpy(np.ascontiguousarray(self.image))
        self.class_names = tuple(self.class_names)
        validate(self)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of the token maps (the latent resolution)."""
        return int(self.token_maps.shape[-2]), int(self.token_maps.shape[-1])


def _err(cap_source: str | None, file: str, field_: str | None, msg: str) -> InputError:
    path = Path(cap_source) / file if cap_source else file
    return InputError(msg, path=path, field=field_)


def _reshape_flat(t: torch.Tensor, aspect: float, src: str | None, name: str) -> torch.Tensor:
    """(heads, n, d) -> (heads, h, w, d) with h / w = aspect; error when n does not factor so."""
    n = t.shape[1]
    h = int(round(math.sqrt(n * aspect)))
    w = n // h if h else 0
    if h * w != n or h == 0:
        raise _err(src, TENSOR_FILE, name,
                   f"{n} tokens is not a grid of the image's aspect ratio {aspect:.3g} (h*w={n})")
    return t.reshape(t.shape[0], h, w, t.shape[2])


def validate(cap: Capture) -> None:
    """Check shapes, values and token alignment; raise :class:`InputError` naming file and field."""
    src = cap.source
    img = cap.image
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != torch.uint8:
        raise _err(src, IMAGE_FILE, None, f"expected an (H, W, 3) uint8 RGB image, got {tuple(img.shape)} "
                   f"{img.dtype}")
    H, W = int(img.shape[0]), int(img.shape[1])
    aspect = H / W
    if len(cap.tokens) == 0:
        raise _err(src, META_FILE, "tokens", "empty token list")
    if len(cap.token_classes) != len(cap.tokens):
        raise _err(src, META_FILE, "token_classes",
                   f"{len(cap.token_classes)} entries for {len(cap.tokens)} tokens")
    n_cls = len(cap.class_names)
    for i, c in enumerate(cap.token_classes):
        if c is None:
            continue
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= int(c) < n_cls:
            raise _err(src, META_FILE, f"token_classes[{i}]",
                       f"{c!r} is not a class index of the vocabulary (0..{n_cls - 1})")
    if not any(c is not None for c in cap.token_classes):
        raise _err(src, META_FILE, "token_classes", "no token stands for a class")

    tm = cap.token_maps
    if not tm.is_floating_point():
        raise _err(src, TENSOR_FILE, TOKEN_MAPS_KEY, f"expected a float tensor, got {tm.dtype}")
    if tm.ndim != 3:
        raise _err(src, TENSOR_FILE, TOKEN_MAPS_KEY, f"expected rank 3 (tokens, h, w), got shape {tuple(tm.shape)}")
    if tm.shape[0] != len(cap.tokens):
        raise _err(src, TENSOR_FILE, TOKEN_MAPS_KEY,
                   f"{tm.shape[0]} maps for {len(cap.tokens)} tokens in {META_FILE}")
    if not torch.isfinite(tm).all():
        raise _err(src, TENSOR_FILE, TOKEN_MAPS_KEY, "contains NaN or Inf")
    if abs(tm.shape[1] / tm.shape[2] - aspect) > 0.05 * aspect:
        raise _err(src, TENSOR_FILE, TOKEN_MAPS_KEY,
                   f"spatial size {tuple(tm.shape[1:])} does not match the image's {H}x{W} aspect ratio")
    if H % tm.shape[1] or W % tm.shape[2] or H // tm.shape[1] != W // tm.shape[2]:
        raise _err(src, IMAGE_FILE, None, f"image size {H}x{W} is not a whole multiple of the latent size "
                   f"{tm.shape[1]}x{tm.shape[2]} (an image other than the one generated?)")

    if not cap.self_attn:
        raise _err(src, TENSOR_FILE, SELF_ATTN_PREFIX + "*", "no self-attention layer captured")
    for name, t in list(cap.self_attn.items()):
        key = SELF_ATTN_PREFIX + name
        if t.ndim == 3:
            t = _reshape_flat(t, aspect, src, key)
            cap.self_attn[name] = t
        if t.ndim != 4:
            raise _err(src, TENSOR_FILE, key, f"expected rank 4 (heads, h, w, head_dim), got shape {tuple(t.shape)}")
        heads, h, w, d = t.shape
        if heads < 1 or d < 1 or h < 1 or w < 1:
            raise _err(src, TENSOR_FILE, key, f"empty dimension in shape {tuple(t.shape)}")
        if abs(h / w - aspect) > 0.05 * aspect:
            raise _err(src, TENSOR_FILE, key, f"spatial size {h}x{w} does not match the image's {H}x{W} "
                       "aspect ratio")
        if not t.is_floating_point():
            raise _err(src, TENSOR_FILE, key, f"expected a float tensor, got {t.dtype}")
        if not torch.isfinite(t).all():
            raise _err(src, TENSOR_FILE, key, "contains NaN or Inf")
    if cap.self_probs is not None:
        _validate_self_probs(cap.self_probs, aspect, src)


def _validate_self_probs(p: torch.Tensor, aspect: float, src: str | None) -> None:
    """(h, w, h*w), float, finite, rows non-negative and summing to 1 (within :data:`ROW_SUM_TOLERANCE`)."""
    def err(msg: str) -> InputError:
        return _err(src, TENSOR_FILE, SELF_PROBS_KEY, msg)

    if p.ndim != 3 or p.shape[2] != p.shape[0] * p.shape[1] or p.shape[2] == 0:
        raise err(f"expected shape (h, w, h*w), got {tuple(p.shape)}")
    h, w = int(p.shape[0]), int(p.shape[1])
    if abs(h / w - aspect) > 0.05 * aspect:
        raise err(f"spatial size {h}x{w} does not match the image's aspect ratio {aspect:.3g}")
    if not p.is_floating_point():
        raise err(f"expected a float tensor, got {p.dtype}")
    if not torch.isfinite(p).all():
        raise err("contains NaN or Inf")
    if (p < 0).any():
        raise err("negative entries: not attention probabilities")
    off = (p.sum(-1, dtype=torch.float64) - 1).abs().max().item()
    if off > ROW_SUM_TOLERANCE:
        raise err(f"rows must sum to 1 (attention probabilities), one is off by {off:.3g}")


def as_saved(cap: Capture) -> Capture:
    """``cap`` with the values :func:`save_capture` writes: self-attention rounded to :data:`SAVED_DTYPE`
    (kept in its own dtype), token maps and self_probs in float32. Labelling it gives exactly the masks
    that labelling its saved and loaded capture gives."""
    return replace(cap, self_attn={k: v.to(SAVED_DTYPE).to(v.dtype) for k, v in cap.self_attn.items()},
                   token_maps=cap.token_maps.float(),
                   self_probs=None if cap.self_probs is None else cap.self_probs.float())


def save_capture(directory: str | Path, cap: Capture, *, dtype: torch.dtype = SAVED_DTYPE) -> Path:
    """Write ``cap`` as a capture directory (atomically: a temporary directory renamed at the end).

    Self-attention is stored in ``dtype``; token maps and self_probs always in float32.
    """
    directory = Path(directory)
    tensors = {SELF_ATTN_PREFIX + k: v.detach().to("cpu", dtype).contiguous() for k, v in cap.self_attn.items()}
    tensors[TOKEN_MAPS_KEY] = cap.token_maps.detach().to("cpu", torch.float32).contiguous()
    if cap.self_probs is not None:
        tensors[SELF_PROBS_KEY] = cap.self_probs.detach().to("cpu", torch.float32).contiguous()
    meta = dict(cap.meta)
    meta.update(tokens=list(cap.tokens),
                token_classes=[None if c is None else int(c) for c in cap.token_classes],
                class_names=list(cap.class_names))
    with atomic_path(directory, directory=True) as tmp:
        save_image(tmp / IMAGE_FILE, cap.image.cpu().numpy())
        save_tensors(tmp / TENSOR_FILE, tensors)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def load_capture(directory: str | Path, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> Capture:
    """Read and validate a capture directory; self-attention tensors come back in ``dtype``."""
    directory = Path(directory)
    src = str(directory)
    try:
        if not directory.is_dir():
            raise InputError("not a capture directory", path=directory)
        for f in (IMAGE_FILE, TENSOR_FILE, META_FILE):
            if not (directory / f).is_file():
                raise _err(src, f, None, "missing file")
            if not os.access(directory / f, os.R_OK):      # there but unreadable: not "missing"
                raise _err(src, f, None, "unreadable (permission denied)")
    except OSError as e:                                   # a folder that cannot be looked into
        raise InputError(f"unreadable ({e.strerror or e})", path=e.filename or directory) from None
    meta = read_json(directory / META_FILE)
    for key in ("tokens", "token_classes"):
        if key not in meta:
            raise _err(src, META_FILE, key, "missing field")
        if not isinstance(meta[key], list):
            raise _err(src, META_FILE, key, "expected a list")
    try:
        tensors = load_file(str(directory / TENSOR_FILE), device=str(device))
    except (SafetensorsError, OSError) as e:
        raise _err(src, TENSOR_FILE, None, f"unreadable safetensors file ({e})") from None
    if TOKEN_MAPS_KEY not in tensors:
        raise _err(src, TENSOR_FILE, TOKEN_MAPS_KEY, "missing tensor")
    for key, t in tensors.items():
        if not t.is_floating_point():
            raise _err(src, TENSOR_FILE, key, f"expected a float tensor, got {t.dtype}")
    with open_image(directory / IMAGE_FILE) as img:   # unreadable / not an image: one line naming it
        if img.mode != "RGB":
            raise _err(src, IMAGE_FILE, None, f"expected the RGB image that generate saves, got mode {img.mode}")
    image = torch.from_numpy(load_image(directory / IMAGE_FILE)).to(device)
    self_attn = {k[len(SELF_ATTN_PREFIX):]: v.to(dtype) for k, v in tensors.items() if k.startswith(SELF_ATTN_PREFIX)}
    tokens = meta.pop("tokens")
    token_classes = meta.pop("token_classes")
    class_names = meta.pop("class_names", None)
    class_names = VOC_CLASSES if class_names is None else \
        check_class_names(class_names, path=str(directory / META_FILE))
    self_probs = tensors.get(SELF_PROBS_KEY)
    return Capture(image=image, self_attn=self_attn, token_maps=tensors[TOKEN_MAPS_KEY].float(),
                   tokens=[str(t) for t in tokens], token_classes=token_classes,
                   class_names=class_names, meta=meta, source=src,
                   self_probs=None if self_probs is None else self_probs.float())


def images_uint8(images: Any) -> list[torch.Tensor]:
    """Pipeline output -> list of (H, W, 3) uint8 CPU tensors (rounded like diffusers' numpy_to_pil)."""
    if isinstance(images, (list, tuple)) and images and not isinstance(images[0], (np.ndarray, torch.Tensor)):
        return [torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8)) for im in images]
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x) for x in images])
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        if images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
            images = images.permute(0, 2, 3, 1)
        images = images.float().numpy() if images.is_floating_point() else images.numpy()
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8:
        arr = (arr * 255).round().clip(0, 255).astype(np.uint8)
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arr]

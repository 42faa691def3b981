"""Capture during generation (docs/method.md section 1): a DAAM-style context manager around a diffusers pipeline.

    with capture(pipe, [["person", "car"], ["cat"]]) as cap:
        out = pipe(prompts, num_inference_steps=80, generator=generators, output_type="np")
    captures = cap.captures(out.images)     # list[Capture], one per image

Inside the block every captured attention layer's processor is wrapped (and put back on exit, also on
error): the wrapper calls the processor that is installed — the default ``AttnProcessor2_0``, the classic
``AttnProcessor``, attention slicing, xformers, fused projections or a user's own — for the layer's output,
so the image is that processor's, bit for bit; on the side it computes from the layer's own projections
(``to_q``/``to_k``/``to_v``, its norms and heads) on the same inputs:

* **1a, self-attention** — for every ``attn1`` layer of the up blocks, at the final denoising step only,
  the per-head attention output ``softmax(Q K^T / sqrt(d)) V`` before the heads are merged and before
  ``to_out``. With classifier-free guidance both batch halves are kept as separate heads (unconditional
  heads first), so a layer gives ``(2 * heads, h, w, head_dim)``.
* **1b, OVAM class maps** — the class text of each image (its class names renamed by
  :func:`pccseg.vocab.prompt_word`, joined by spaces, ``[SoT, ..., EoT]`` without padding) is encoded once
  with the pipeline's text encoder(s) before sampling. For each ``attn2`` layer (mid block left out by
  default), at every step: ``q = to_q(hidden_states)`` of the unconditional CFG half (option: the
  conditional one), ``k = to_k(class embeddings)``, ``softmax_T(q . k * scale)`` per head (pad tokens masked
  when class texts differ in length), summed over heads and accumulated into one float32 buffer per layer:
  memory does not depend on the number of steps. The class text never reaches the UNet.
* **Self-attention probabilities** (only with ``self_probs=True``, for Dataset Diffusion's labeller) —
  ``softmax(Q K^T * scale)`` of the conditional CFG half, as Dataset Diffusion's ``gen_data.py`` takes it,
  for every ``attn1`` layer (down, mid and up blocks) whose grid is the one at half the latent size,
  averaged over heads, layers and all UNet calls, accumulated in one ``(n, n)`` float32 buffer per image.

At the first UNet call every wrapped layer also checks, on a few query rows, that its real output is
attention over its own projections; a processor that computes something else (other key weights, an
extra attention) is refused by :meth:`Recorder.captures` with a message naming the layer. The check is
read after sampling: steps are counted in Python (a forward pre-hook on the UNet) and nothing in the
sampling loop waits for the device. The number of UNet calls of one pipeline call is read from
``pipe.scheduler.timesteps`` at the first call (PNDM's ``num_inference_steps + 1``, DDIM's
``num_inference_steps``, ...) unless ``steps`` is given. One pipeline call per ``with`` block;
``num_images_per_prompt`` must be 1. Works for ``StableDiffusionPipeline`` (SD 1.x, 2.x) and
``StableDiffusionXLPipeline``.

This module holds :func:`capture` and the :class:`Recorder` it returns (the UNet hook that counts the
steps, the accumulators, and the :class:`Capture` s they make); :mod:`.hook` wraps and restores the
processors, :mod:`.text` makes the class text, :mod:`.layers` says which layers are read, on what grid,
and how many bytes a capture takes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .format import Capture, images_uint8
from .hook import install_processors, restore_processors, split_heads
from .layers import layer_grid
from .text import class_text, encode_class_texts
from ..vocab import VOC_CLASSES

Half = Literal["uncond", "cond"]


class Recorder:
    """What one ``with capture(...)`` block records; :meth:`captures` turns it into :class:`Capture` s.

    Attributes:
        texts: the tokenized class text of each image.
        class_emb: (B, T_max, D) class-text embeddings; ``valid`` (B, T_max) marks real tokens.
        ovam: cross layer -> (B, h*w, T_max) float32 accumulated token scores (summed over heads, steps).
        self_attn: self layer -> (B or 2B, heads, h*w, head_dim) final-step per-head outputs.
        probs: (B, n, n) float32 sum of the conditional half's self-attention probabilities over the heads of
            every ``attn1`` layer at the half-latent grid (``probs_hw``, n = h*w) and every UNet call;
            ``probs_heads`` counts the terms (only with ``self_probs``).
        checks: layer -> (mismatch, processor class) of the first UNet call (:func:`.hook.mismatch`).
        calls: UNet calls seen; ``total``: UNet calls expected in the pipeline call.
    """

    def __init__(self, pipe, classes: Sequence[Sequence[str]], *, steps: int | None = None,
                 query_half: Half = "uncond", include_mid: bool = False,
                 class_names: Sequence[str] = VOC_CLASSES, renames: dict[str, str] | None = None,
                 self_probs: bool = False):
        if query_half not in ("uncond", "cond"):
            raise ValueError(f"query_half must be 'uncond' or 'cond', got {query_half!r}")
        if len(classes) == 0:
            raise ValueError("capture needs the class names of at least one image")
        self.pipe = pipe
        self.unet = pipe.unet
        self.class_names = tuple(class_names)
        tokenizer = getattr(pipe, "tokenizer", None) or pipe.tokenizer_2
        self.texts = [class_text(tokenizer, names, self.class_names, renames) for names in classes]
        self.n_images = len(self.texts)
        self.steps = steps
        self.query_half = query_half
        self.include_mid = include_mid
        self.self_probs = bool(self_probs)
        self.class_emb: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None
        self.keys: dict[str, tuple[torch.Tensor | None, ...]] = {}
        self.ovam: dict[str, torch.Tensor] = {}
        self.self_attn: dict[str, torch.Tensor] = {}
        self.probs: torch.Tensor | None = None
        self.probs_heads = 0
        self.probs_hw: tuple[int, int] | None = None
        self.probs_n: int | None = None
        self.checks: dict[str, tuple[torch.Tensor, str]] = {}
        self.latent_hw: tuple[int, int] | None = None
        self.calls = 0
        self.step = -1
        self.total: int | None = None
        self._originals: dict[str, tuple[Any, Any]] = {}
        self._hook = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> "Recorder":
        self.class_emb, self.valid = encode_class_texts(self.pipe, self.texts)
        self._originals = install_processors(self.unet, self, include_mid=self.include_mid,
                                             self_probs=self.self_probs)
        try:
            self._hook = self.unet.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        restore_processors(self._originals)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.keys.clear()

    def _pre_forward(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        if self.calls == 0:
            self.total = int(self.steps) if self.steps is not None else len(self.pipe.scheduler.timesteps)
            self.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
            self.probs_hw = tuple(math.ceil(s / 2) for s in self.latent_hw)
            self.probs_n = self.probs_hw[0] * self.probs_hw[1]
        self.step = self.calls
        self.calls += 1

    @property
    def is_final_step(self) -> bool:
        return self.total is not None and self.step == self.total - 1

    def rows(self, batch: int, half: Half) -> slice:
        """The rows of a UNet batch that hold one CFG half (without CFG: all rows)."""
        b = self.n_images
        if batch == b:
            return slice(0, b)
        if batch == 2 * b:
            return slice(0, b) if half == "uncond" else slice(b, 2 * b)
        raise RuntimeError(f"UNet batch of {batch} for {b} images: capture needs num_images_per_prompt=1 and "
                           "one class list per image")

    # -- the side computations (called by the processors) ----------------------------------------------
    def _class_keys(self, attn, x: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """The class-text keys of one layer, float32, computed once per block.

        Returns ``(k, None, None)``, k (B, heads, T, d); or, when ``to_q`` is a plain ``Linear`` and there is
        no per-head query norm, ``(None, kx, kb)``: the keys carried back through ``to_q``, q . k = x . kx + kb
        with kx (B, heads*T, channels) and kb (B, 1, heads*T) or None, so that the scores come from the
        layer's input with T columns per head instead of a recomputed head_dim-wide query.
        """
        emb = self.class_emb.to(device=x.device, dtype=x.dtype)
        if attn.norm_cross:
            emb = attn.norm_encoder_hidden_states(emb)
        k = split_heads(attn, attn.to_k(emb), attn.norm_k).float()  # (B, heads, T, d)
        if type(attn.to_q) is not torch.nn.Linear or attn.norm_q is not None:
            return k, None, None
        w = attn.to_q.weight.float().view(attn.heads, -1, x.shape[-1])  # (heads, d, channels)
        kx = torch.einsum("bhtd,hdc->bhtc", k, w).flatten(1, 2)
        bias = attn.to_q.bias
        kb = None if bias is None else (k @ bias.float().view(attn.heads, -1, 1)).flatten(1).unsqueeze(1)
        return None, kx, kb

    def accumulate_ovam(self, name: str, attn, x: torch.Tensor) -> None:
        """Add this step's OVAM scores of one layer. x: (batch, n, channels), the layer's query input."""
        if name not in self.keys:
            self.keys[name] = self._class_keys(attn, x)
        k, kx, kb = self.keys[name]
        xq = x[self.rows(x.shape[0], self.query_half)]
        if kx is None:
            scores = torch.matmul(split_heads(attn, attn.to_q(xq), attn.norm_q).float(), k.transpose(-1, -2))
        else:
            b, n, _ = xq.shape
            scores = torch.matmul(xq.float(), kx.transpose(1, 2))
            scores = (scores if kb is None else scores + kb).view(b, n, attn.heads, -1).transpose(1, 2)
        scores = scores * attn.scale  # (B, heads, n, T)
        scores = scores.masked_fill(~self.valid[:, None, None, :], float("-inf"))
        probs = scores.softmax(dim=-1).sum(dim=1)  # (B, n, T)
        buf = self.ovam.get(name)
        if buf is None:
            self.ovam[name] = probs
        else:
            buf.add_(probs)

    def keep_self_attn(self, name: str, out: torch.Tensor) -> None:
        """Keep the final step's per-head output of one layer: (batch, heads, n, head_dim)."""
        self.rows(out.shape[0], "cond")  # checks the batch
        self.self_attn[name] = out.detach()

    def accumulate_probs(self, q: torch.Tensor, k: torch.Tensor, scale: float, mask: torch.Tensor | None) -> None:
        """Add softmax(q k^T * scale) of every head: q, k (B, heads, n, d) of the conditional half; mask
        (B, heads, n or 1, n) or None. One head at a time, so the temporary is one (B, n, n) matrix."""
        if self.probs is None:
            self.probs = torch.zeros(q.shape[0], q.shape[2], k.shape[2], dtype=torch.float32, device=q.device)
        for h in range(q.shape[1]):
            scores = torch.matmul(q[:, h].float(), k[:, h].float().transpose(-1, -2)) * scale
            if mask is not None:
                scores = scores + mask[:, h]
            self.probs.add_(scores.softmax(dim=-1))
        self.probs_heads += q.shape[1]

    # -- results ---------------------------------------------------------------------------------------
    def buffer_bytes(self) -> int:
        """Bytes held by the capture's accumulators and kept tensors (grows with nothing but the model)."""
        ts = list(self.ovam.values()) + list(self.self_attn.values())
        ts += [t for keys in self.keys.values() for t in keys if t is not None]
        ts += [self.probs] if self.probs is not None else []
        return sum(t.numel() * t.element_size() for t in ts)

    def token_maps(self) -> list[torch.Tensor]:
        """Per image (T_i, h, w) float32 token maps at the largest cross-attention resolution (the latent)."""
        if not self.ovam:
            raise RuntimeError("no cross-attention was recorded: call the pipeline inside the with block")
        grids = {name: layer_grid(buf.shape[1], self.latent_hw) for name, buf in self.ovam.items()}
        size = max(grids.values(), key=lambda hw: hw[0] * hw[1])
        total = None
        for name, buf in self.ovam.items():
            h, w = grids[name]
            m = buf.transpose(1, 2).reshape(buf.shape[0], buf.shape[2], h, w)  # (B, T, h, w)
            if (h, w) != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            total = m if total is None else total + m
        return [total[i, :len(t.ids)] for i, t in enumerate(self.texts)]

    def self_attention(self) -> list[dict[str, torch.Tensor]]:
        """Per image: layer -> (heads', h, w, head_dim); with CFG heads' = 2 x heads (unconditional first)."""
        if not self.self_attn:
            raise RuntimeError("the final denoising step was not seen: call the pipeline inside the with block "
                               "(and give steps= when the scheduler's timesteps do not count the UNet calls)")
        b = self.n_images
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(b)]
        for name, t in self.self_attn.items():
            h, w = layer_grid(t.shape[2], self.latent_hw)
            for i in range(b):
                x = torch.cat([t[i], t[b + i]], dim=0) if t.shape[0] == 2 * b else t[i]
                out[i][name] = x.reshape(x.shape[0], h, w, x.shape[-1])
        return out

    def self_probabilities(self) -> list[torch.Tensor]:
        """Per image (h, w, n) float32 at the half-latent grid (n = h*w): row (i, j) holds the attention
        probabilities of query pixel (i, j) over all n key pixels (row-major), averaged over the heads of
        every ``attn1`` layer at that grid and over all UNet calls (conditional CFG half)."""
        if self.probs is None:
            raise RuntimeError(f"no self-attention layer at the half-latent grid {self.probs_hw} was seen: call the "
                               "pipeline inside the with block (capture(..., self_probs=True))")
        h, w = self.probs_hw
        return [p.div(self.probs_heads).reshape(h, w, p.shape[-1]) for p in self.probs]

    def check_processors(self) -> None:
        """Refuse a layer whose installed processor computed something other than attention over the layer's
        own projections at the first UNet call (read here, after sampling)."""
        tol = max(1e-4, 16 * torch.finfo(self.unet.dtype).eps)   # float rounding, not a different computation
        for name, (err, proc) in self.checks.items():
            e = float(err)
            if e > tol:
                raise RuntimeError(
                    f"capture: layer {name}: its attention processor {proc} computes something other than "
                    f"softmax(QK^T)V over the layer's own to_q/to_k/to_v (its output differs by {e:.2g} of its "
                    "size), so the captured attention would not be the image's; use a processor that attends "
                    "with the layer's projections (e.g. pipe.unet.set_default_attn_processor())")

    def captures(self, images: Any, meta: Sequence[dict] | dict | None = None) -> list[Capture]:
        """One :class:`Capture` per image of the pipeline call (after :meth:`check_processors`).

        Args:
            images: the pipeline's output images: (B, H, W, 3) float in [0, 1] (``output_type="np"`` or
                "pt" as (B, 3, H, W)), uint8 arrays, or a list of PIL images.
            meta: free metadata for every capture (a dict) or one dict per image.
        """
        imgs = images_uint8(images)
        if len(imgs) != self.n_images:
            raise ValueError(f"{len(imgs)} images for {self.n_images} class lists")
        self.check_processors()
        maps = self.token_maps()
        attn = self.self_attention()
        probs = self.self_probabilities() if self.self_probs else [None] * self.n_images
        metas = [dict(meta or {}) for _ in range(self.n_images)] if not isinstance(meta, (list, tuple)) \
            else [dict(m) for m in meta]
        out = []
        for i, t in enumerate(self.texts):
            m = metas[i]
            m.setdefault("class_text", t.text)
            m.setdefault("unet_calls", self.calls)
            out.append(Capture(image=imgs[i], self_attn=attn[i], token_maps=maps[i], tokens=t.tokens,
                               token_classes=t.token_classes, class_names=self.class_names, meta=m,
                               self_probs=probs[i]))
        return out


def capture(pipe, classes: Sequence[Sequence[str]], *, steps: int | None = None, query_half: Half = "uncond",
            include_mid: bool = False, class_names: Sequence[str] = VOC_CLASSES,
            renames: dict[str, str] | None = None, self_probs: bool = False) -> Recorder:
    """Context manager that records method sections 1a and 1b during one pipeline call; see the module docstring.

    Args:
        pipe: a diffusers ``StableDiffusionPipeline`` (any SD 1.x / 2.x UNet) or ``StableDiffusionXLPipeline``,
            with any attention processor that attends with the layers' own projections.
        classes: class names of each image of the call (one list per prompt, in the call's order).
        steps: UNet calls in the pipeline call (default: ``len(pipe.scheduler.timesteps)`` at the first).
        query_half: CFG half whose queries the OVAM maps use ("uncond", OVAM's default, or "cond").
        include_mid: also accumulate the mid block's cross-attention.
        class_names: label value -> class name (index 0 = background).
        renames: words for class names (default: the report's Table 1, :data:`pccseg.vocab.VOC_RENAMES`).
        self_probs: also accumulate the self-attention probabilities at the half-latent grid
            (``Capture.self_probs``, for Dataset Diffusion's labeller); off by default, as they cost compute.
    """
    return Recorder(pipe, classes, steps=steps, query_half=query_half, include_mid=include_mid,
                    class_names=class_names, renames=renames, self_probs=self_probs)

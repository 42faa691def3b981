"""Capture during generation (docs/method.md section 1): a DAAM-style context manager around a diffusers pipeline.

    with capture(pipe, [["person", "car"], ["cat"]]) as cap:
        out = pipe(prompts, num_inference_steps=80, generator=generators, output_type="np")
    captures = cap.captures(out.images)     # list[Capture], one per image

Inside the block, attention processors are installed on the UNet's captured layers (and the originals put
back on exit, also on error). They compute exactly what diffusers' default ``AttnProcessor2_0`` computes, so
the images are bit-identical to a plain call, and on the side:

* **1a, self-attention** — for every ``attn1`` layer of the up blocks, at the final denoising step only,
  the per-head attention output ``softmax(Q K^T / sqrt(d)) V`` before the heads are merged and before
  ``to_out``. With classifier-free guidance both batch halves are kept as separate heads (unconditional
  heads first), so a layer gives ``(2 * heads, h, w, head_dim)``.
* **1b, OVAM class maps** — the class text of each image (its class names renamed by
  :func:`pccseg.vocab.prompt_word`, joined by spaces, ``[SoT, ..., EoT]`` without padding) is encoded once
  with the pipeline's text encoder before sampling. For each ``attn2`` layer (mid block left out by
  default), at every step: ``q = to_q(hidden_states)`` of the unconditional CFG half (option: the
  conditional one), ``k = to_k(class embeddings)``, ``softmax_T(q . k * scale)`` per head (pad tokens masked
  when class texts differ in length), summed over heads and accumulated into one float32 buffer per layer:
  memory does not depend on the number of steps. The class text never reaches the UNet.

Steps are counted in Python (a forward pre-hook on the UNet), so nothing in the sampling loop waits for
the device. The number of UNet calls of one pipeline call is read from ``pipe.scheduler.timesteps`` at
the first call (PNDM's ``num_inference_steps + 1``, DDIM's ``num_inference_steps``, ...) unless ``steps``
is given. One pipeline call per ``with`` block; ``num_images_per_prompt`` must be 1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .capture_format import Capture
from .vocab import VOC_CLASSES, class_index, prompt_word

log = logging.getLogger(__name__)

Half = Literal["uncond", "cond"]


# ----------------------------------------------------------------------------------------------------------
# class text
@dataclass
class ClassText:
    """The tokenized class text of one image.

    Attributes:
        text: the words given to the text encoder ("cat pot plant").
        ids: token ids, SoT first, EoT last (no padding).
        tokens: the token strings.
        token_classes: label value per token (0 for SoT, None for EoT).
    """

    text: str
    ids: list[int]
    tokens: list[str]
    token_classes: list[int | None]


def class_text(tokenizer, names: Sequence[str], class_names: Sequence[str] = VOC_CLASSES,
               renames: dict[str, str] | None = None) -> ClassText:
    """Tokenize the class names of one image into ``[SoT, tokens of name 1, tokens of name 2, ..., EoT]``.

    Every token of a name (a renamed "pot plant", a word the BPE splits) maps to that name's label value in
    ``class_names``; a name given twice maps to the same value. The ids equal the tokenizer's ids for the
    joined text (CLIP's BPE never merges across words). Truncated to the tokenizer's ``model_max_length``.
    """
    sot, eot = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids, classes = [sot], [0]
    words = []
    for name in names:
        label = class_index(name, class_names)
        word = prompt_word(name, renames)
        words.append(word)
        piece = tokenizer(word, add_special_tokens=False)["input_ids"]
        ids += piece
        classes += [label] * len(piece)
    limit = int(getattr(tokenizer, "model_max_length", 77) or 77)
    if limit < 10 ** 6 and len(ids) + 1 > limit:
        log.warning("class text %r has %d tokens; truncated to %d", " ".join(words), len(ids) + 1, limit)
        ids, classes = ids[:limit - 1], classes[:limit - 1]
    ids.append(eot)
    classes.append(None)
    return ClassText(" ".join(words), ids, tokenizer.convert_ids_to_tokens(ids), classes)


@torch.no_grad()
def encode_class_texts(pipe, texts: Sequence[ClassText]) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-text embeddings with the pipeline's text encoder: ((B, T_max, D), valid (B, T_max) bool).

    Texts are right-padded with EoT; CLIP's causal mask makes the real tokens' embeddings independent of
    the padding, and ``valid`` marks the real tokens.
    """
    enc = pipe.text_encoder
    device = next(enc.parameters()).device
    t_max = max(len(t.ids) for t in texts)
    pad = texts[0].ids[-1]
    ids = torch.full((len(texts), t_max), pad, dtype=torch.long)
    valid = torch.zeros((len(texts), t_max), dtype=torch.bool)
    for i, t in enumerate(texts):
        ids[i, :len(t.ids)] = torch.tensor(t.ids)
        valid[i, :len(t.ids)] = True
    ids, valid = ids.to(device), valid.to(device)
    mask = valid.long() if getattr(enc.config, "use_attention_mask", False) else None
    emb = enc(ids, attention_mask=mask)[0]
    return emb, valid


# ----------------------------------------------------------------------------------------------------------
# shapes
def layer_grid(n: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a layer with ``n`` spatial tokens in a UNet whose latent is ``latent_hw``.

    Each UNet level halves the size with a stride-2 convolution (size -> ceil(size / 2)).
    """
    h, w = latent_hw
    while h * w > n and (h > 1 or w > 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != n:
        raise RuntimeError(f"a layer with {n} tokens does not fit a {latent_hw} latent")
    return h, w


def is_self_layer(name: str) -> bool:
    """Method section 1a: the ``attn1`` layers of the up blocks."""
    return name.startswith("up_blocks.") and name.endswith(".attn1")


def is_cross_layer(name: str, include_mid: bool = False) -> bool:
    """Method section 1b: the ``attn2`` layers (down and up blocks; the mid block only with ``include_mid``)."""
    return name.endswith(".attn2") and (include_mid or not name.startswith("mid_block"))


# ----------------------------------------------------------------------------------------------------------
# the processor
class CaptureAttnProcessor:
    """diffusers' ``AttnProcessor2_0`` computation, plus the side captures of one layer.

    ``kind`` is "self" (keep the per-head output at the final step) or "cross" (accumulate OVAM maps).
    """

    def __init__(self, recorder: "Recorder", name: str, kind: Literal["self", "cross"]):
        self.recorder = recorder
        self.name = name
        self.kind = kind

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)

        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        if self.kind == "cross":
            self.recorder.accumulate_ovam(self.name, attn, query)

        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        if self.kind == "self" and self.recorder.is_final_step:
            self.recorder.keep_self_attn(self.name, hidden_states)  # (batch, heads, n, head_dim)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states


# ----------------------------------------------------------------------------------------------------------
# the recorder / context manager
class Recorder:
    """What one ``with capture(...)`` block records; :meth:`captures` turns it into :class:`Capture` s.

    Attributes:
        texts: the tokenized class text of each image.
        class_emb: (B, T_max, D) class-text embeddings; ``valid`` (B, T_max) marks real tokens.
        ovam: cross layer -> (B, h*w, T_max) float32 accumulated token scores (summed over heads, steps).
        self_attn: self layer -> (B or 2B, heads, h*w, head_dim) final-step per-head outputs.
        calls: UNet calls seen; ``total``: UNet calls expected in the pipeline call.
    """

    def __init__(self, pipe, classes: Sequence[Sequence[str]], *, steps: int | None = None,
                 query_half: Half = "uncond", include_mid: bool = False,
                 class_names: Sequence[str] = VOC_CLASSES, renames: dict[str, str] | None = None):
        if query_half not in ("uncond", "cond"):
            raise ValueError(f"query_half must be 'uncond' or 'cond', got {query_half!r}")
        if len(classes) == 0:
            raise ValueError("capture needs the class names of at least one image")
        self.pipe = pipe
        self.unet = pipe.unet
        self.class_names = tuple(class_names)
        self.texts = [class_text(pipe.tokenizer, names, self.class_names, renames) for names in classes]
        self.n_images = len(self.texts)
        self.steps = steps
        self.query_half = query_half
        self.include_mid = include_mid
        self.class_emb: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None
        self.keys: dict[str, torch.Tensor] = {}
        self.ovam: dict[str, torch.Tensor] = {}
        self.self_attn: dict[str, torch.Tensor] = {}
        self.latent_hw: tuple[int, int] | None = None
        self.calls = 0
        self.step = -1
        self.total: int | None = None
        self._originals: dict[str, tuple[Any, Any]] = {}
        self._hook = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> "Recorder":
        self.class_emb, self.valid = encode_class_texts(self.pipe, self.texts)
        try:
            for name, module in self.unet.named_modules():
                if not hasattr(module, "set_processor"):
                    continue
                kind = "self" if is_self_layer(name) else "cross" if is_cross_layer(name, self.include_mid) else None
                if kind is None:
                    continue
                self._originals[name] = (module, module.processor)
                module.set_processor(CaptureAttnProcessor(self, name, kind))
            if not any(is_self_layer(n) for n in self._originals):
                raise RuntimeError("the UNet has no self-attention (attn1) layer in its up blocks")
            self._hook = self.unet.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for module, proc in self._originals.values():
            module.set_processor(proc)
        self._originals.clear()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.keys.clear()

    def _pre_forward(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        if self.calls == 0:
            self.total = int(self.steps) if self.steps is not None else len(self.pipe.scheduler.timesteps)
            self.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        self.step = self.calls
        self.calls += 1

    @property
    def is_final_step(self) -> bool:
        return self.total is not None and self.step == self.total - 1

    def _half(self, batch: int) -> slice:
        """The rows of a UNet batch that the OVAM queries use."""
        b = self.n_images
        if batch == b:
            return slice(0, b)
        if batch == 2 * b:
            return slice(0, b) if self.query_half == "uncond" else slice(b, 2 * b)
        raise RuntimeError(f"UNet batch of {batch} for {b} images: capture needs num_images_per_prompt=1 and "
                           "one class list per image")

    # -- the side computations (called by the processors) ----------------------------------------------
    def accumulate_ovam(self, name: str, attn, query: torch.Tensor) -> None:
        """Add this step's OVAM scores of one layer. query: (batch, n, heads * head_dim)."""
        q = query[self._half(query.shape[0])]
        b, n, inner = q.shape
        heads = attn.heads
        d = inner // heads
        k = self.keys.get(name)
        if k is None:
            emb = self.class_emb.to(dtype=query.dtype)
            if attn.norm_cross:
                emb = attn.norm_encoder_hidden_states(emb)
            k = attn.to_k(emb).float().view(b, -1, heads, d).transpose(1, 2)  # (B, heads, T, d)
            self.keys[name] = k
        qh = q.float().view(b, n, heads, d).transpose(1, 2)  # (B, heads, n, d)
        scores = torch.matmul(qh, k.transpose(-1, -2)) * attn.scale  # (B, heads, n, T)
        scores = scores.masked_fill(~self.valid[:, None, None, :], float("-inf"))
        probs = scores.softmax(dim=-1).sum(dim=1)  # (B, n, T)
        buf = self.ovam.get(name)
        if buf is None:
            self.ovam[name] = probs
        else:
            buf.add_(probs)

    def keep_self_attn(self, name: str, out: torch.Tensor) -> None:
        """Keep the final step's per-head output of one layer: (batch, heads, n, head_dim)."""
        self._half(out.shape[0])  # checks the batch
        self.self_attn[name] = out.detach()

    # -- results ---------------------------------------------------------------------------------------
    def buffer_bytes(self) -> int:
        """Bytes held by the capture's accumulators and kept tensors (grows with nothing but the model)."""
        ts = list(self.ovam.values()) + list(self.self_attn.values()) + list(self.keys.values())
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

    def captures(self, images: Any, meta: Sequence[dict] | dict | None = None) -> list[Capture]:
        """One :class:`Capture` per image of the pipeline call.

        Args:
            images: the pipeline's output images: (B, H, W, 3) float in [0, 1] (``output_type="np"`` or
                "pt" as (B, 3, H, W)), uint8 arrays, or a list of PIL images.
            meta: free metadata for every capture (a dict) or one dict per image.
        """
        imgs = _images_uint8(images)
        if len(imgs) != self.n_images:
            raise ValueError(f"{len(imgs)} images for {self.n_images} class lists")
        maps = self.token_maps()
        attn = self.self_attention()
        metas = [dict(meta or {}) for _ in range(self.n_images)] if not isinstance(meta, (list, tuple)) \
            else [dict(m) for m in meta]
        out = []
        for i, t in enumerate(self.texts):
            m = metas[i]
            m.setdefault("class_text", t.text)
            m.setdefault("unet_calls", self.calls)
            out.append(Capture(image=imgs[i], self_attn=attn[i], token_maps=maps[i], tokens=t.tokens,
                               token_classes=t.token_classes, class_names=self.class_names, meta=m))
        return out


def _images_uint8(images: Any) -> list[torch.Tensor]:
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


def capture(pipe, classes: Sequence[Sequence[str]], *, steps: int | None = None, query_half: Half = "uncond",
            include_mid: bool = False, class_names: Sequence[str] = VOC_CLASSES,
            renames: dict[str, str] | None = None) -> Recorder:
    """Context manager that records method sections 1a and 1b during one pipeline call; see the module docstring.

    Args:
        pipe: a diffusers ``StableDiffusionPipeline`` (any SD 1.x / 2.x UNet).
        classes: class names of each image of the call (one list per prompt, in the call's order).
        steps: UNet calls in the pipeline call (default: ``len(pipe.scheduler.timesteps)`` at the first).
        query_half: CFG half whose queries the OVAM maps use ("uncond", OVAM's default, or "cond").
        include_mid: also accumulate the mid block's cross-attention.
        class_names: label value -> class name (index 0 = background).
        renames: words for class names (default: the report's Table 1, :data:`pccseg.vocab.VOC_RENAMES`).
    """
    return Recorder(pipe, classes, steps=steps, query_half=query_half, include_mid=include_mid,
                    class_names=class_names, renames=renames)


def capture_nbytes(unet, height: int, width: int, n_tokens: int, *, cfg: bool = True,
                   self_dtype: torch.dtype = torch.float16, vae_factor: int = 8,
                   include_mid: bool = False) -> dict[str, int]:
    """Bytes of one image's capture for a UNet at an image size, from the module tree (no forward pass).

    Works on a UNet built on the ``meta`` device. Returns ``self_attn`` (the kept per-head outputs in
    ``self_dtype``), ``token_maps`` (T x h x w float32, as saved), ``ovam_buffers`` (the float32
    accumulators held during sampling) and ``total`` (what a capture directory's tensors hold).
    """
    h0, w0 = math.ceil(height / vae_factor), math.ceil(width / vae_factor)
    n_levels = len(unet.config.block_out_channels)

    def grid(name: str) -> tuple[int, int]:
        parts = name.split(".")
        if parts[0] == "mid_block":
            level = n_levels - 1
        else:
            idx = int(parts[1])
            level = idx if parts[0] == "down_blocks" else n_levels - 1 - idx
        h, w = h0, w0
        for _ in range(level):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return h, w

    self_bytes = ovam_bytes = 0
    esize = torch.empty((), dtype=self_dtype).element_size()
    for name, m in unet.named_modules():
        if not hasattr(m, "set_processor"):
            continue
        h, w = grid(name)
        if is_self_layer(name):
            self_bytes += (2 if cfg else 1) * m.heads * h * w * (m.inner_dim // m.heads) * esize
        elif is_cross_layer(name, include_mid):
            ovam_bytes += h * w * n_tokens * 4
    maps = n_tokens * h0 * w0 * 4
    return {"self_attn": self_bytes, "token_maps": maps, "ovam_buffers": ovam_bytes, "total": self_bytes + maps}

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
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .format import Capture
from ..vocab import VOC_CLASSES, class_index, prompt_word

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
    """Class-text embeddings as the pipeline embeds its prompt: ((B, T_max, D), valid (B, T_max) bool).

    SD 1.x / 2.x: the text encoder's last hidden state. SDXL: the penultimate hidden state of each of its
    two text encoders, concatenated on the feature axis (``StableDiffusionXLPipeline.encode_prompt``).
    Texts are right-padded with EoT; CLIP's causal mask makes the real tokens' embeddings independent of
    the padding, and ``valid`` marks the real tokens.
    """
    sdxl = hasattr(pipe, "text_encoder_2")
    encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]
    t_max = max(len(t.ids) for t in texts)
    pad = texts[0].ids[-1]
    ids = torch.full((len(texts), t_max), pad, dtype=torch.long)
    valid = torch.zeros((len(texts), t_max), dtype=torch.bool)
    for i, t in enumerate(texts):
        ids[i, :len(t.ids)] = torch.tensor(t.ids)
        valid[i, :len(t.ids)] = True
    embs = []
    for enc in encoders:
        device = next(enc.parameters()).device
        mask = valid.long().to(device) if getattr(enc.config, "use_attention_mask", False) else None
        out = enc(ids.to(device), attention_mask=mask, output_hidden_states=sdxl)
        embs.append(out.hidden_states[-2] if sdxl else out[0])
    emb = torch.cat([e.to(embs[0].device) for e in embs], dim=-1)
    return emb, valid.to(emb.device)


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
def _tokens(t: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) -> (b, h*w, c); (b, n, c) unchanged."""
    return t.flatten(2).transpose(1, 2) if t.ndim == 4 else t


def _split_heads(attn, t: torch.Tensor, norm=None) -> torch.Tensor:
    """(b, n, heads * d) -> (b, heads, n, d), then the layer's per-head norm (``norm_q`` / ``norm_k``) if any."""
    b, n, inner = t.shape
    t = t.view(b, n, attn.heads, inner // attn.heads).transpose(1, 2)
    return t if norm is None else norm(t)


def _mismatch(attn, hidden_states: torch.Tensor, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor | None,
              out: torch.Tensor) -> torch.Tensor:
    """How far a layer's real output is from attention over its own projections, on about 16 query rows.

    ``x``: (b, n, c) normalised query input; ``ctx``: (b, m, c') keys/values input; ``mask``: (b, heads,
    n or 1, m) or None; ``out``: what the installed processor returned. Returns max |reference - out| /
    max |out| as a 0-dim device tensor (read after sampling, so no host sync).
    """
    every = max(1, x.shape[1] // 16)
    q = _split_heads(attn, attn.to_q(x[:, ::every]), attn.norm_q)
    k = _split_heads(attn, attn.to_k(ctx), attn.norm_k)
    v = _split_heads(attn, attn.to_v(ctx))
    if mask is not None and mask.shape[-2] > 1:
        mask = mask[:, :, ::every]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
    ref = attn.to_out[1](attn.to_out[0](ref.transpose(1, 2).flatten(2)))
    if attn.residual_connection:
        ref = ref + _tokens(hidden_states)[:, ::every]
    real = _tokens(out)[:, ::every].float()
    return ((ref / attn.rescale_output_factor).float() - real).abs().amax() / real.abs().amax().clamp_min(1e-12)


class CaptureAttnProcessor:
    """Wraps the processor installed on one attention layer and computes that layer's side captures.

    The layer's output is the installed processor's (``inner``), bit for bit; the captures are computed
    from the layer's own projections on the same inputs. Roles: ``keep`` (method 1a: the per-head output at
    the final step), ``ovam`` (method 1b: accumulate class maps), ``probs`` (self-attention probabilities at
    the half-latent grid, when the recorder asks for them).
    """

    def __init__(self, inner, recorder: "Recorder", name: str, *, keep: bool, ovam: bool, probs: bool):
        self.inner = inner
        self.recorder = recorder
        self.name = name
        self.keep, self.ovam, self.probs = keep, ovam, probs
        # Attention.forward hands a processor only the cross_attention_kwargs that its __call__ names: show
        # it the installed processor's parameters, so that it receives what it receives without capture
        self.__call__ = functools.wraps(inner.__call__)(functools.partial(type(self).__call__, self))

    def __call__(self, attn, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.inner(attn, hidden_states, *args, **kwargs)
        inputs = dict(zip(("encoder_hidden_states", "attention_mask", "temb"), args), **kwargs)
        self._side(attn, hidden_states, inputs, out)
        return out

    def _side(self, attn, hidden_states: torch.Tensor, inputs: dict, out: torch.Tensor) -> None:
        rec = self.recorder
        x = hidden_states
        if attn.spatial_norm is not None:
            x = attn.spatial_norm(x, inputs.get("temb"))
        x = _tokens(x)  # (batch, n, channels)
        probs = self.probs and x.shape[1] == rec.probs_n
        check = rec.step == 0 and self.name not in rec.checks and (self.keep or self.ovam or probs)
        keep = self.keep and rec.is_final_step
        if not (check or keep or self.ovam or probs):
            return
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        ctx = inputs.get("encoder_hidden_states")
        if ctx is None:
            ctx = x
        elif not isinstance(ctx, torch.Tensor):
            raise RuntimeError(f"capture: layer {self.name} gets {type(ctx).__name__} encoder_hidden_states (an "
                               "IP-Adapter?); capture reads text-conditioned attention layers only")
        elif attn.norm_cross:
            ctx = attn.norm_encoder_hidden_states(ctx)
        batch, m = x.shape[0], ctx.shape[1]
        mask = inputs.get("attention_mask")
        if mask is not None:
            mask = attn.prepare_attention_mask(mask, m, batch).view(batch, attn.heads, -1, m)

        if check:
            rec.checks[self.name] = (_mismatch(attn, hidden_states, x, ctx, mask, out), type(self.inner).__name__)
        if self.ovam:
            rec.accumulate_ovam(self.name, attn, x)
        if keep or probs:  # 1a needs both CFG halves, the probabilities only the conditional one
            rows = slice(None) if keep else rec.rows(batch, "cond")
            q = _split_heads(attn, attn.to_q(x[rows]), attn.norm_q)
            k = _split_heads(attn, attn.to_k(ctx[rows]), attn.norm_k)
            mask = None if mask is None else mask[rows]
            if keep:
                v = _split_heads(attn, attn.to_v(ctx))
                rec.keep_self_attn(self.name, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale))
            if probs:
                cond = rec.rows(batch, "cond") if keep else slice(None)
                rec.accumulate_probs(q[cond], k[cond], attn.scale, None if mask is None else mask[cond])


# ----------------------------------------------------------------------------------------------------------
# the recorder / context manager
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
        checks: layer -> (mismatch, processor class) of the first UNet call (see :func:`_mismatch`).
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
        try:
            for name, module in self.unet.named_modules():
                if not hasattr(module, "set_processor"):
                    continue
                roles = dict(keep=is_self_layer(name), ovam=is_cross_layer(name, self.include_mid),
                             probs=self.self_probs and name.endswith(".attn1"))
                if not any(roles.values()):
                    continue
                missing = [p for p in ("to_q", "to_k", "to_v") if getattr(module, p, None) is None]
                if missing:
                    raise RuntimeError(f"capture: layer {name} has no {'/'.join(missing)} projection (processor "
                                       f"{type(module.processor).__name__}); the capture computes the attention "
                                       "from the layer's own to_q/to_k/to_v")
                self._originals[name] = (module, module.processor)
                module.set_processor(CaptureAttnProcessor(module.processor, self, name, **roles))
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
        k = _split_heads(attn, attn.to_k(emb), attn.norm_k).float()  # (B, heads, T, d)
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
            scores = torch.matmul(_split_heads(attn, attn.to_q(xq), attn.norm_q).float(), k.transpose(-1, -2))
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
        imgs = _images_uint8(images)
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


def capture_nbytes(unet, height: int, width: int, n_tokens: int, *, cfg: bool = True,
                   self_dtype: torch.dtype = torch.float16, vae_factor: int = 8,
                   include_mid: bool = False, self_probs: bool = False) -> dict[str, int]:
    """Bytes of one image's capture for a UNet at an image size, from the module tree (no forward pass).

    Works on a UNet built on the ``meta`` device (SD 1.x / 2.x and SDXL). Returns ``self_attn`` (the kept
    per-head outputs in ``self_dtype``), ``token_maps`` (T x h x w float32 at the largest cross-attention
    grid, the latent for SD, half of it for SDXL, as saved), ``self_probs`` (the
    (n, n) float32 self-attention probabilities at the half-latent grid when ``self_probs``, else 0),
    ``ovam_buffers`` (the float32 accumulators held during sampling) and ``total`` (the capture's tensors:
    self_attn + token_maps + self_probs).
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

    probs_hw = (math.ceil(h0 / 2), math.ceil(w0 / 2))
    self_bytes = ovam_bytes = probs_bytes = maps_n = 0
    esize = torch.empty((), dtype=self_dtype).element_size()
    for name, m in unet.named_modules():
        if not hasattr(m, "set_processor"):
            continue
        h, w = grid(name)
        if is_self_layer(name):
            self_bytes += (2 if cfg else 1) * m.heads * h * w * (m.inner_dim // m.heads) * esize
        elif is_cross_layer(name, include_mid):
            ovam_bytes += h * w * n_tokens * 4
            maps_n = max(maps_n, h * w)
        if self_probs and name.endswith(".attn1") and (h, w) == probs_hw:
            probs_bytes = (h * w) ** 2 * 4
    maps = n_tokens * maps_n * 4
    return {"self_attn": self_bytes, "token_maps": maps, "self_probs": probs_bytes, "ovam_buffers": ovam_bytes,
            "total": self_bytes + maps + probs_bytes}

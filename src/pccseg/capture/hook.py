"""Installing and restoring the capture's attention processors (docs/method.md section 1).

:class:`CaptureAttnProcessor` wraps the processor installed on one layer: the layer's output is that
processor's, bit for bit; on the side it computes, from the layer's own projections on the same inputs,
what the :class:`~pccseg.capture.attention.Recorder` accumulates. :func:`install_processors` wraps every
captured layer of a UNet and :func:`restore_processors` puts the installed processors back.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from .layers import is_cross_layer, is_self_layer


def as_tokens(t: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) -> (b, h*w, c); (b, n, c) unchanged."""
    return t.flatten(2).transpose(1, 2) if t.ndim == 4 else t


def split_heads(attn, t: torch.Tensor, norm=None) -> torch.Tensor:
    """(b, n, heads * d) -> (b, heads, n, d), then the layer's per-head norm (``norm_q`` / ``norm_k``) if any."""
    b, n, inner = t.shape
    t = t.view(b, n, attn.heads, inner // attn.heads).transpose(1, 2)
    return t if norm is None else norm(t)


def mismatch(attn, hidden_states: torch.Tensor, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor | None,
              out: torch.Tensor) -> torch.Tensor:
    """How far a layer's real output is from attention over its own projections, on about 16 query rows.

    ``x``: (b, n, c) normalised query input; ``ctx``: (b, m, c') keys/values input; ``mask``: (b, heads,
    n or 1, m) or None; ``out``: what the installed processor returned. Returns max |reference - out| /
    max |out| as a 0-dim device tensor (read after sampling, so no host sync).
    """
    every = max(1, x.shape[1] // 16)
    q = split_heads(attn, attn.to_q(x[:, ::every]), attn.norm_q)
    k = split_heads(attn, attn.to_k(ctx), attn.norm_k)
    v = split_heads(attn, attn.to_v(ctx))
    if mask is not None and mask.shape[-2] > 1:
        mask = mask[:, :, ::every]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
    ref = attn.to_out[1](attn.to_out[0](ref.transpose(1, 2).flatten(2)))
    if attn.residual_connection:
        ref = ref + as_tokens(hidden_states)[:, ::every]
    real = as_tokens(out)[:, ::every].float()
    return ((ref / attn.rescale_output_factor).float() - real).abs().amax() / real.abs().amax().clamp_min(1e-12)


class CaptureAttnProcessor:
    """Wraps the processor installed on one attention layer and computes that layer's side captures.

    The layer's output is the installed processor's (``inner``), bit for bit; the captures are computed
    from the layer's own projections on the same inputs. Roles: ``keep`` (method 1a: the per-head output at
    the final step), ``ovam`` (method 1b: accumulate class maps), ``probs`` (self-attention probabilities at
    the half-latent grid, when the recorder asks for them). ``recorder``: the
    :class:`~pccseg.capture.attention.Recorder` (not imported here: it imports this module), read for the
    step and the grids, and called to accumulate.
    """

    def __init__(self, inner, recorder, name: str, *, keep: bool, ovam: bool, probs: bool):
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
        x = as_tokens(x)  # (batch, n, channels)
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
            rec.checks[self.name] = (mismatch(attn, hidden_states, x, ctx, mask, out), type(self.inner).__name__)
        if self.ovam:
            rec.accumulate_ovam(self.name, attn, x)
        if keep or probs:  # 1a needs both CFG halves, the probabilities only the conditional one
            rows = slice(None) if keep else rec.rows(batch, "cond")
            q = split_heads(attn, attn.to_q(x[rows]), attn.norm_q)
            k = split_heads(attn, attn.to_k(ctx[rows]), attn.norm_k)
            mask = None if mask is None else mask[rows]
            if keep:
                v = split_heads(attn, attn.to_v(ctx))
                rec.keep_self_attn(self.name, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale))
            if probs:
                cond = rec.rows(batch, "cond") if keep else slice(None)
                rec.accumulate_probs(q[cond], k[cond], attn.scale, None if mask is None else mask[cond])


def install_processors(unet, recorder, *, include_mid: bool, self_probs: bool) -> dict[str, tuple[Any, Any]]:
    """Wrap the processor of every captured layer of ``unet`` in a :class:`CaptureAttnProcessor` reporting to
    ``recorder``: up-block ``attn1`` (kept at the final step), ``attn2`` (OVAM; the mid block with
    ``include_mid``), and every ``attn1`` with ``self_probs``. Returns layer name -> (module, the processor
    it had), for :func:`restore_processors`; on an error every processor is already put back."""
    originals: dict[str, tuple[Any, Any]] = {}
    try:
        for name, module in unet.named_modules():
            if not hasattr(module, "set_processor"):
                continue
            roles = dict(keep=is_self_layer(name), ovam=is_cross_layer(name, include_mid),
                         probs=self_probs and name.endswith(".attn1"))
            if not any(roles.values()):
                continue
            missing = [p for p in ("to_q", "to_k", "to_v") if getattr(module, p, None) is None]
            if missing:
                raise RuntimeError(f"capture: layer {name} has no {'/'.join(missing)} projection (processor "
                                   f"{type(module.processor).__name__}); the capture computes the attention "
                                   "from the layer's own to_q/to_k/to_v")
            originals[name] = (module, module.processor)
            module.set_processor(CaptureAttnProcessor(module.processor, recorder, name, **roles))
        if not any(is_self_layer(n) for n in originals):
            raise RuntimeError("the UNet has no self-attention (attn1) layer in its up blocks")
    except BaseException:
        restore_processors(originals)
        raise
    return originals


def restore_processors(originals: dict[str, tuple[Any, Any]]) -> None:
    """Put back the processors :func:`install_processors` replaced, and forget them."""
    for module, proc in originals.values():
        module.set_processor(proc)
    originals.clear()

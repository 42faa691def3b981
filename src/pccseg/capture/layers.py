"""Which attention layers a capture reads, the grid each one works on, and the bytes a capture takes
(docs/method.md sections 1a and 1b), from layer names and the UNet's module tree alone.
"""

from __future__ import annotations

import math

import torch


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

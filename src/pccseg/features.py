"""Section 2.1-2.2 of SPEC.md: head-wise PCA of the self-attention and the clustering features.

Every head's (h*w, head_dim) attention output is reduced to ``n_components`` principal components over its
pixels; the component maps of all heads, upsampled to the latent size, are the features of each latent
pixel. All heads of all layers of one shape go through ONE batched eigen-decomposition.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .errors import InputError


def head_pca(x: torch.Tensor, n_components: int = 3) -> torch.Tensor:
    """Principal-component scores of every head, batched.

    Args:
        x: (heads, h, w, d) per-head outputs (any float dtype).
        n_components: components to keep (<= d).

    Returns:
        (heads, h, w, n_components) float32 scores: each head's (h*w, d) matrix is centred over its pixels
        and projected on the eigenvectors of its covariance with the largest eigenvalues, in decreasing
        order. Signs are deterministic: in each component the loading of largest magnitude is positive
        (scikit-learn's ``svd_flip(u_based_decision=False)`` convention, so scores equal ``PCA``'s).
    """
    heads, h, w, d = x.shape
    if n_components > d:
        raise ValueError(f"n_components={n_components} > head_dim={d}")
    xf = x.reshape(heads, h * w, d).float()
    xc = xf - xf.mean(dim=1, keepdim=True)
    # covariance in float64 for a stable eigen-decomposition (d x d per head: cheap)
    cov = torch.bmm(xc.transpose(1, 2), xc).double()                      # (heads, d, d)
    _, vecs = torch.linalg.eigh(cov)                                     # ascending eigenvalues
    comps = vecs[..., -n_components:].flip(-1)                           # (heads, d, n) largest first
    idx = comps.abs().argmax(dim=1, keepdim=True)                        # (heads, 1, n)
    sign = torch.sign(torch.gather(comps, 1, idx))
    sign[sign == 0] = 1
    comps = (comps * sign).float()
    scores = torch.bmm(xc, comps)                                        # (heads, h*w, n)
    return scores.reshape(heads, h, w, n_components)


def layer_pca(self_attn: Mapping[str, torch.Tensor], n_components: int = 3) -> dict[str, torch.Tensor]:
    """:func:`head_pca` of every layer; layers of equal shape are stacked into one batched call.

    Args:
        self_attn: layer name -> (heads, h_l, w_l, d).

    Returns:
        layer name -> (heads, h_l, w_l, n_components), in the order of ``self_attn``.

    Raises:
        InputError: a layer's head_dim is smaller than ``n_components`` (the message names the layer).
    """
    groups: dict[tuple, list[str]] = {}
    for name, t in self_attn.items():
        if t.shape[-1] < n_components:
            raise InputError(f"head_dim {t.shape[-1]} < n_components {n_components}",
                             field=f"self_attn.{name}")
        groups.setdefault((tuple(t.shape[1:]), t.dtype, t.device), []).append(name)
    out: dict[str, torch.Tensor] = {}
    for names in groups.values():
        sizes = [self_attn[n].shape[0] for n in names]
        stacked = torch.cat([self_attn[n] for n in names], dim=0) if len(names) > 1 else self_attn[names[0]]
        for n, part in zip(names, head_pca(stacked, n_components).split(sizes, dim=0)):
            out[n] = part
    return {n: out[n] for n in self_attn}


def minmax_columns(x: torch.Tensor) -> torch.Tensor:
    """(N, F) -> (N, F): each column scaled to [0, 1]; a constant column becomes 0."""
    lo = x.min(dim=0).values
    rng = x.max(dim=0).values - lo
    return torch.where(rng > 0, (x - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)),
                       torch.zeros_like(x))


def pixel_grid(h: int, w: int, *, device=None, scale: float = 1.0) -> torch.Tensor:
    """(h*w, 2) columns x and y of every pixel in raster order, each scaled to [0, scale].

    A side of length 1 gives 0.
    """
    ys = torch.arange(h, device=device, dtype=torch.float32) * (scale / max(h - 1, 1))
    xs = torch.arange(w, device=device, dtype=torch.float32) * (scale / max(w - 1, 1))
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def pca_features(pca: Mapping[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Clustering features from the component maps.

    Args:
        pca: layer name -> (heads, h_l, w_l, n) component maps (:func:`layer_pca`).
        size: (h, w) latent size to nearest-upsample every map to.

    Returns:
        (h*w, n * total_heads + 2) float32: the components of every head (layer order, head-major, then
        component), each column min-max normalised to [0, 1]; then x and y in [0, 1].
    """
    h, w = size
    cols = []
    device = None
    for maps in pca.values():
        heads, hl, wl, n = maps.shape
        device = maps.device
        m = maps.permute(0, 3, 1, 2).reshape(1, heads * n, hl, wl)       # channels head-major
        if (hl, wl) != (h, w):
            m = F.interpolate(m, size=(h, w), mode="nearest")
        cols.append(m.reshape(heads * n, h * w))
    feats = minmax_columns(torch.cat(cols, dim=0).t())
    return torch.cat([feats, pixel_grid(h, w, device=device)], dim=1).contiguous()


def features(self_attn: Mapping[str, torch.Tensor], size: tuple[int, int],
             n_components: int = 3) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Both steps: (layer -> (heads, h_l, w_l, n) component maps, (h*w, F) features at ``size``)."""
    pca = layer_pca(self_attn, n_components)
    return pca, pca_features(pca, size)

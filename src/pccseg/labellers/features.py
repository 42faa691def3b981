"""Section 2.1-2.2 of the method (docs/method.md): head-wise PCA of the self-attention and the clustering features.

Every head's (h*w, head_dim) attention output is reduced to ``n_components`` principal components over its
pixels; the component maps of all heads, upsampled to the latent size, are the features of each latent
pixel. All heads of all layers of one shape go through ONE batched eigen-decomposition. The features come
as :class:`~.rows.BlockRows`: each resolution's upsampled maps once, as a table of their distinct rows.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..errors import InputError
from .rows import BlockRows, stack_blocks


def top_eigenvectors(cov: torch.Tensor, n: int, *, oversample: int = 5, tol: float = 1e-7,
                     max_iter: int = 100, check_every: int = 4) -> torch.Tensor:
    """Eigenvectors of the ``n`` largest eigenvalues of symmetric PSD matrices, largest first.

    Block subspace iteration with ``n + oversample`` vectors and Rayleigh-Ritz (batched QR and a tiny
    eigh), stopped when every Ritz pair's residual ``|C v - l v|`` is under ``tol`` times the largest
    eigenvalue; matrices that have not converged after ``max_iter`` iterations (a near-degenerate gap)
    fall back to a full ``torch.linalg.eigh``. Much faster than a full eigh of many 64x64 matrices on CPU.

    Args:
        cov: (B, d, d) symmetric positive semi-definite, float64 preferred.

    Returns:
        (B, d, n) orthonormal eigenvectors, columns in decreasing eigenvalue order (signs arbitrary).
    """
    bsz, d, _ = cov.shape
    p = n + oversample
    if 2 * p >= d:
        return torch.linalg.eigh(cov)[1][..., -n:].flip(-1)
    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.linalg.qr(cov @ torch.randn(d, p, generator=gen, dtype=cov.dtype).to(cov.device))[0]
    cq = cov @ q
    scale = cov.diagonal(dim1=1, dim2=2).sum(1).clamp(min=torch.finfo(cov.dtype).tiny).view(bsz, 1)
    vecs = None
    done = torch.zeros(bsz, dtype=torch.bool, device=cov.device)
    for it in range(1, max_iter + 1):
        q = torch.linalg.qr(cq)[0]
        cq = cov @ q                                   # one product per iteration: checked, then iterated
        if it % check_every and it != max_iter:
            continue
        vals, v = torch.linalg.eigh(q.transpose(1, 2) @ cq)                     # ascending
        v = v[..., -n:].flip(-1)
        vecs = q @ v                                                          # (B, d, n)
        lam = vals[..., -n:].flip(-1)                                         # (B, n)
        resid = (cq @ v - vecs * lam.unsqueeze(1)).norm(dim=1)                # (B, n): |C v - l v|
        done = (resid <= tol * scale).all(1)
        if bool(done.all()):
            return vecs
    bad = ~done
    vecs = vecs.clone()
    vecs[bad] = torch.linalg.eigh(cov[bad])[1][..., -n:].flip(-1)
    return vecs


def _covariances(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(heads, h, w, d) -> ((heads, n, d) float32 rows, (heads, d) float64 means, (heads, d, d) float64
    covariance sums), with ``sum (x - mean)(x - mean)^T = X^T X - n mean mean^T`` so that no centred copy
    of the data is made."""
    heads, h, w, d = x.shape
    xf = x.reshape(heads, h * w, d).float()
    mean = xf.sum(dim=1).double() / (h * w)           # (heads, d): a float32 sum, as accurate as the gram
    gram = torch.bmm(xf.transpose(1, 2), xf).double()                     # (heads, d, d)
    cov = gram - (h * w) * mean.unsqueeze(2) * mean.unsqueeze(1)
    return xf, mean, cov


def _project(xf: torch.Tensor, mean: torch.Tensor, comps: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Scores of the centred rows on sign-fixed components -> (heads, h, w, n) float32 (a view of a
    (heads, n, h, w) tensor: one product per head with the components as rows, padded to a multiple of 4,
    which BLAS runs several times faster than (n_pix, d) @ (d, 3))."""
    idx = comps.abs().argmax(dim=1, keepdim=True)                        # (heads, 1, n)
    sign = torch.sign(torch.gather(comps, 1, idx))
    sign[sign == 0] = 1
    comps = comps * sign
    n = comps.shape[-1]
    pad = -n % 4                      # BLAS runs 4 rows at twice the speed of 3: one zero component more
    offset = F.pad((mean.unsqueeze(1) @ comps).float().transpose(1, 2), (0, 0, 0, pad))   # (heads, n+pad, 1)
    rows = F.pad(comps.float().transpose(1, 2), (0, 0, 0, pad))                          # (heads, n+pad, d)
    scores = torch.baddbmm(-offset, rows, xf.transpose(1, 2))[:, :n]                     # (heads, n, n_pix)
    return scores.reshape(xf.shape[0], n, hw[0], hw[1]).permute(0, 2, 3, 1)


def head_pca(x: torch.Tensor, n_components: int = 3) -> torch.Tensor:
    """Principal-component scores of every head, batched.

    Args:
        x: (heads, h, w, d) per-head outputs (any float dtype).
        n_components: components to keep (<= d).

    Returns:
        (heads, h, w, n_components) float32 scores: each head's (h*w, d) matrix is centred over its pixels
        and projected on the eigenvectors of its covariance with the largest eigenvalues, in decreasing
        order (:func:`top_eigenvectors`, float64). Signs are deterministic: in each component the loading
        of largest magnitude is positive (scikit-learn's ``svd_flip(u_based_decision=False)``
        convention, so scores equal ``sklearn.decomposition.PCA``'s up to float error).
    """
    if n_components > x.shape[-1]:
        raise ValueError(f"n_components={n_components} > head_dim={x.shape[-1]}")
    xf, mean, cov = _covariances(x)
    return _project(xf, mean, top_eigenvectors(cov, n_components), tuple(x.shape[1:3]))


def layer_pca(self_attn: Mapping[str, torch.Tensor], n_components: int = 3) -> dict[str, torch.Tensor]:
    """:func:`head_pca` of every layer, with ONE batched eigen-solve for all heads of all layers.

    Args:
        self_attn: layer name -> (heads, h_l, w_l, d).

    Returns:
        layer name -> (heads, h_l, w_l, n_components), in the order of ``self_attn``.

    Raises:
        InputError: a layer's head_dim is smaller than ``n_components`` (the message names the layer).
    """
    parts = {}
    for name, t in self_attn.items():
        if t.shape[-1] < n_components:
            raise InputError(f"head_dim {t.shape[-1]} < n_components {n_components}",
                             field=f"self_attn.{name}")
        parts[name] = _covariances(t)
    by_dim: dict[int, list[str]] = {}
    for name, t in self_attn.items():
        by_dim.setdefault(t.shape[-1], []).append(name)
    out: dict[str, torch.Tensor] = {}
    for names in by_dim.values():                     # one solve per head_dim (one for SD)
        covs = torch.cat([parts[n][2] for n in names])
        comps = top_eigenvectors(covs, n_components).split([parts[n][2].shape[0] for n in names])
        for n, c in zip(names, comps):
            out[n] = _project(parts[n][0], parts[n][1], c, tuple(self_attn[n].shape[1:3]))
    return {n: out[n] for n in self_attn}


def minmax(x: torch.Tensor, dim: int | tuple[int, ...] = 0) -> torch.Tensor:
    """Scale ``x`` to [0, 1] over ``dim`` (default: each column of an (N, F) matrix); constant -> 0."""
    lo = x.amin(dim=dim, keepdim=True)
    rng = x.amax(dim=dim, keepdim=True) - lo
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


def _nearest_index(src: tuple[int, int], dst: tuple[int, int], device=None) -> torch.Tensor:
    """(dst_h * dst_w,) raster index of the source pixel that ``F.interpolate(mode="nearest")`` copies to
    each destination pixel (computed by interpolating an index map, so the rounding is torch's own)."""
    idx = torch.arange(src[0] * src[1], device=device, dtype=torch.float32).reshape(1, 1, *src)
    if tuple(src) != tuple(dst):
        idx = F.interpolate(idx, size=dst, mode="nearest")
    return idx.reshape(-1).long()


def pca_feature_rows(pca: Mapping[str, torch.Tensor], size: tuple[int, int]) -> BlockRows:
    """Clustering features from the component maps, as :class:`~.rows.BlockRows`.

    Args:
        pca: layer name -> (heads, h_l, w_l, n) component maps (:func:`layer_pca`).
        size: (h, w) latent size to nearest-upsample every map to.

    Returns:
        (h*w, n * total_heads + 2) float32 rows: the components of every head (layer order, head-major, then
        component), each column min-max normalised to [0, 1]; then x and y in [0, 1]. A layer coarser than
        ``size`` is one table of its own pixels and the index of the pixel that nearest upsampling copies
        to each latent pixel; layers of one size share a table.

    Nearest upsampling copies values, so it keeps every column's minimum and maximum: each map is
    normalised at its own resolution, and its upsampled columns equal ``minmax`` of the upsampled maps.
    """
    h, w = size
    blocks = []
    index: dict[tuple[int, int], torch.Tensor | None] = {}
    device = None
    for maps in pca.values():
        heads, hl, wl, n = maps.shape
        device = maps.device
        m = maps.float().permute(0, 3, 1, 2).reshape(heads * n, hl * wl)      # rows head-major
        lo, hi = torch.aminmax(m, dim=1, keepdim=True)
        rng = hi - lo
        scale = torch.where(rng > 0, 1.0 / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(rng))
        if (hl, wl) not in index:
            index[hl, wl] = None if (hl, wl) == (h, w) else _nearest_index((hl, wl), (h, w), device)
        blocks.append((((m - lo) * scale).t().contiguous(), index[hl, wl]))
    blocks.append((pixel_grid(h, w, device=device), None))
    return stack_blocks(blocks)


def pca_features(pca: Mapping[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """:func:`pca_feature_rows` as one (h*w, F) float32 matrix."""
    return pca_feature_rows(pca, size).dense()


def features(self_attn: Mapping[str, torch.Tensor], size: tuple[int, int],
             n_components: int = 3) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Both steps: (layer -> (heads, h_l, w_l, n) component maps, (h*w, F) features at ``size``)."""
    pca = layer_pca(self_attn, n_components)
    return pca, pca_features(pca, size)

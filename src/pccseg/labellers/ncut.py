"""Recursive normalized cut of a feature affinity (DiffCut, Couairon et al., NeurIPS 2024): a partition
of the latent grid whose number of regions follows from a stop threshold, not a fixed k.

* :func:`affinity`: cosine similarity of L2-normalised features, min-max scaled to [0, 1] over the
  matrix and raised to ``alpha`` (a large power keeps only the strongest links);
* :func:`best_cut`: the Shi-Malik bipartition of one graph: the second eigenvector of the normalised
  affinity ``D^-1/2 A D^-1/2`` (the Fiedler vector of the normalised Laplacian), thresholded where the
  normalized cut ``cut(S, T) / vol(S) + cut(S, T) / vol(T)`` is least, over ``sweep`` thresholds;
* :func:`recursive_ncut`: cut, and cut every part again while the cut's value is under ``tau``.
"""

from __future__ import annotations

import numpy as np
import torch


def affinity(feats: torch.Tensor, alpha: float = 10.0) -> torch.Tensor:
    """(n, d) features -> (n, n) float32 affinity ``minmax(cos(f_i, f_j)) ** alpha`` (constant: all 1)."""
    f = torch.nn.functional.normalize(feats.float(), dim=1)
    a = f @ f.T
    lo, hi = a.min(), a.max()
    a = (a - lo) / (hi - lo) if hi > lo else torch.ones_like(a)
    return a.pow_(alpha)


def fiedler(a: torch.Tensor) -> torch.Tensor | None:
    """(n, n) symmetric non-negative affinity -> (n,) ``D^-1/2 v2``, v2 the eigenvector of the second
    largest eigenvalue of ``D^-1/2 A D^-1/2`` (None where a node has no link or n < 3)."""
    a = a.double()
    n = a.shape[0]
    d = a.sum(1)
    if n < 3 or bool((d <= 0).any()):
        return None
    s = d.rsqrt()
    m = (a * s[:, None] * s[None, :]).numpy()
    if n <= 600:
        vecs = np.linalg.eigh(m)[1][:, -2]
    else:                                   # Lanczos: two eigenpairs of a dense matrix, no full solve
        from scipy.sparse.linalg import eigsh

        v0 = np.sqrt(d.numpy())             # the top eigenvector: start near it, deterministically
        vals, vecs = eigsh(m, k=2, which="LA", v0=v0 + 1e-3 * np.cos(np.arange(n)), tol=1e-6)
        vecs = vecs[:, np.argsort(vals)[0]]
    y = torch.from_numpy(np.ascontiguousarray(vecs)) * s
    return y * (1 if float(y[y.abs().argmax()]) >= 0 else -1)


def best_cut(a: torch.Tensor, sweep: int = 64) -> tuple[torch.Tensor | None, float]:
    """The bipartition of the graph ``a`` (n, n) by its Fiedler vector with the least normalized cut.

    Returns:
        ((n,) bool side, ncut value in [0, 2]); (None, inf) when the graph cannot be cut.
    """
    a = a.double()
    y = fiedler(a)
    if y is None:
        return None, float("inf")
    lo, hi = float(y.min()), float(y.max())
    if not hi > lo:
        return None, float("inf")
    t = torch.linspace(lo, hi, sweep + 2, dtype=y.dtype)[1:-1]
    x = (y[None, :] > t[:, None]).double()                     # (T, n) side S per threshold
    d = a.sum(1)
    vol_s = x @ d
    vol_t = d.sum() - vol_s
    cut = vol_s - ((x @ a) * x).sum(1)                          # links from S leaving S
    ok = (vol_s > 0) & (vol_t > 0)
    value = torch.where(ok, cut / vol_s.clamp(min=1e-300) + cut / vol_t.clamp(min=1e-300),
                        torch.full_like(cut, float("inf")))
    i = int(value.argmin())
    return (x[i] > 0) if bool(ok[i]) else None, float(value[i])


def recursive_ncut(a: torch.Tensor, tau: float, *, min_size: int = 1, max_regions: int = 64,
                   sweep: int = 64) -> torch.Tensor:
    """Partition the nodes of the affinity ``a`` (n, n): cut the graph by :func:`best_cut` and cut each
    part again, as long as the cut's value is under ``tau`` and both parts have ``min_size`` nodes;
    parts are taken largest first, until ``max_regions``.

    Returns:
        (n,) int64 region ids 0..R-1, numbered in order of each region's first node.
    """
    n = a.shape[0]
    todo = [torch.arange(n)]
    done: list[torch.Tensor] = []
    while todo and len(todo) + len(done) < max_regions:
        todo.sort(key=len)
        idx = todo.pop()
        side, value = best_cut(a[idx][:, idx], sweep) if len(idx) >= 2 * max(min_size, 2) else (None, 0.0)
        if side is None or not value < tau or int(side.sum()) < min_size or int((~side).sum()) < min_size:
            done.append(idx)
            continue
        todo += [idx[side], idx[~side]]
    labels = torch.empty(n, dtype=torch.long)
    for r, idx in enumerate(sorted(done + todo, key=lambda i: int(i.min()))):
        labels[idx] = r
    return labels


def attention_features(self_attn: dict[str, torch.Tensor],
                       max_nodes: int = 1024) -> tuple[torch.Tensor, tuple[int, int]]:
    """The features DiffCut cuts: the self-attention outputs of the finest level with at most ``max_nodes``
    pixels (every layer and head of that level concatenated per pixel; the coarsest level when none is
    that small).

    Args:
        self_attn: layer name -> (heads, h_l, w_l, d).

    Returns:
        ((g_h * g_w, D) float32 rows in raster order, (g_h, g_w) the level's grid).
    """
    sizes = sorted({tuple(t.shape[1:3]) for t in self_attn.values()}, key=lambda s: s[0] * s[1])
    fit = [s for s in sizes if s[0] * s[1] <= max_nodes]
    grid = fit[-1] if fit else sizes[0]
    rows = [t.float().permute(1, 2, 0, 3).reshape(grid[0] * grid[1], -1) for t in self_attn.values()
            if tuple(t.shape[1:3]) == grid]
    return torch.cat(rows, 1), grid


def cut_regions(a: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], tau: float) -> torch.Tensor:
    """:func:`recursive_ncut` of the affinity ``a`` of the ``grid``'s pixels, nearest-upsampled to ``size``
    (the latent grid) and split into 4-connected segments, as PCC's clusters are before they vote.

    Returns:
        (h, w) int64 segment ids 0..S-1 on the device of ``a``.
    """
    import torch.nn.functional as F

    from .clusters import connected_components

    regions = recursive_ncut(a.cpu(), tau).reshape(grid)
    if tuple(grid) != tuple(size):
        regions = F.interpolate(regions[None, None].float(), size=tuple(size), mode="nearest")[0, 0].long()
    return connected_components(regions.to(a.device), 4)

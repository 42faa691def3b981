"""K-means in torch and connected components of label maps (docs/method.md sections 2.3-2.4 and 4.1-4.2).

:func:`kmeans` follows scikit-learn's ``KMeans(init="k-means++", n_init=1, algorithm="lloyd")``: greedy
k-means++ seeding (``2 + log(k)`` candidates per centre), Lloyd iterations with matmul distances on
centred data, empty clusters moved to the points farthest from their centres, and a stop when the labels
no longer change or the centres move less than ``tol`` times the mean feature variance. The random stream
is torch's, not NumPy's, so clusterings equal scikit-learn's up to label permutation only when both find
the same local optimum.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from .rows import BlockRows


def _sqdist(x: BlockRows, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(N, F) rows, (N,), (k, F) -> (N, k) squared Euclidean distances (clamped at 0)."""
    return x.centre_terms(c).add_(x_sq.unsqueeze(1)).clamp_(min=0)


def _nearest(x: BlockRows, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, F) rows, (k, F) -> ((N,) index of the nearest centre, (N, k) ``|c|^2 - 2 x.c``).

    The squared norm of ``x`` is left out: it does not change the argmin.
    """
    d = x.centre_terms(c)
    return d.min(1).indices, d


def kmeans_plusplus(x: torch.Tensor | BlockRows, k: int, generator: torch.Generator,
                    x_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; scikit-learn's variant).

    Args:
        x: (N, F) float points, a tensor or :class:`BlockRows`.
        k: number of centres (<= N).
        generator: a CPU ``torch.Generator``; every random number is drawn from it up front (one transfer
            to ``x``'s device), so a seed gives the same draws on every device.
        x_sq: (N,) squared norms of ``x`` (computed when None).

    Returns:
        (k, F) initial centres (rows of ``x``).
    """
    if not isinstance(x, BlockRows):
        x = BlockRows.of(x)
    n = x.shape[0]
    if x_sq is None:
        x_sq = x.sq_norms()
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator))
    u = torch.rand(max(k - 1, 1), trials, generator=generator, dtype=torch.float64).to(x.device)
    idx = torch.empty(k, dtype=torch.long, device=x.device)
    idx[0] = first
    closest = _sqdist(x, x_sq, x.rows(idx[:1])).squeeze(1)               # (N,)
    for c in range(1, k):
        cum = torch.cumsum(closest, 0, dtype=torch.float64)
        cand = torch.searchsorted(cum, u[c - 1] * cum[-1]).clamp_(max=n - 1)  # (trials,)
        d = _sqdist(x, x_sq, x.rows(cand))                                # (N, trials)
        new = torch.minimum(closest.unsqueeze(1), d)
        best = new.sum(0, dtype=torch.float64).argmin()
        idx[c] = cand[best]
        closest = new[:, best]
    return x.rows(idx)


def _lloyd(fit: BlockRows, fit_sq: torch.Tensor, centres: torch.Tensor, max_iter: int,
           tol_abs: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lloyd iterations from ``centres`` on centred rows ``fit`` (M, F) with squared norms ``fit_sq``.

    Returns:
        ((M,) labels: each row's nearest final centre, (k, F) final centres, (M, k) ``|c|^2 - 2 x.c`` of
        the final centres).
    """
    k = centres.shape[0]
    dense_block = any(i is None for i in fit.index)
    scratch = torch.empty(k, fit.shape[0], device=fit.device) if dense_block else None   # reused one-hot buffer
    labels = None
    for _ in range(max_iter):
        new_labels, d = _nearest(fit, centres)
        if labels is not None and torch.equal(new_labels, labels):
            return labels, centres, d            # converged: the labels are those of the final centres
        labels = new_labels
        counts = torch.bincount(labels, minlength=k).float()
        new_centres = fit.label_sums(labels, k, scratch) / counts.clamp(min=1).unsqueeze(1)
        empty = counts == 0
        if bool(empty.any()):           # move empty clusters onto the farthest points
            dist = d.gather(1, labels.unsqueeze(1)).squeeze(1) + fit_sq
            far = dist.topk(int(empty.sum())).indices
            new_centres[empty] = fit.rows(far)
        shift = float(((new_centres - centres) ** 2).sum())
        centres = new_centres
        if shift <= tol_abs:
            break
    labels, d = _nearest(fit, centres)
    return labels, centres, d


def kmeans(x: torch.Tensor | BlockRows, k: int, *, seed: int = 0, max_iter: int = 300, tol: float = 1e-4,
           fit_rows: torch.Tensor | None = None, n_init: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """K-means (k-means++ init from ``seed``, Lloyd iterations until convergence).

    Args:
        x: (N, F) points (computed in float32, on centred data): a tensor, or :class:`BlockRows` (the
            clustering features, whose blocks of repeated rows make every pass cheaper).
        k: clusters (clamped to N).
        seed: seed of the CPU ``torch.Generator`` that drives the k-means++ seeding.
        max_iter: Lloyd iterations at most.
        tol: stop when the centres' total squared shift is <= ``tol`` * mean per-feature variance
            (scikit-learn's rule); also stops as soon as the labels do not change.
        fit_rows: optional (M,) row indices: fit the centres on ``x[fit_rows]`` only, then assign every
            row of ``x`` to its nearest centre (a subsampled fit).
        n_init: k-means++ starts (scikit-learn's ``n_init``); the run of least inertia (sum of squared
            distances of the fitted rows to their centres) wins, the first on ties. The starts draw one
            after another from the one generator of ``seed``, so ``n_init=1`` is the plain run and the
            first start of any ``n_init`` is that same run.

    Returns:
        ((N,) int64 labels, (k, F) centres in ``x``'s units).
    """
    rows = x if isinstance(x, BlockRows) else BlockRows.of(x.float())
    fit = rows if fit_rows is None else rows.take(fit_rows)
    k = max(1, min(k, fit.shape[0]))
    mean = fit.mean()
    fit = fit.sub(mean)                # centring keeps the matmul distances accurate
    fit_sq = fit.sq_norms()
    tol_abs = tol * float(fit_sq.mean() / fit.shape[1]) if tol > 0 else 0.0   # mean variance (centred)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    best = None
    for _ in range(max(1, int(n_init))):
        labels, centres, d = _lloyd(fit, fit_sq, kmeans_plusplus(fit, k, gen, fit_sq), max_iter, tol_abs)
        inertia = float(d.gather(1, labels.unsqueeze(1)).sum(dtype=torch.float64)) if n_init > 1 else 0.0
        if best is None or inertia < best[0]:       # |x|^2 is the same for every start: left out
            best = (inertia, labels, centres)
    _, labels, centres = best
    if fit_rows is not None:   # assign every row (a matrix in chunks that stay in cache)
        parts = [rows] if isinstance(x, BlockRows) else [BlockRows.of(p) for p in rows.tables[0].split(65536)]
        labels = torch.cat([_nearest(part.sub(mean), centres)[0] for part in parts])
    return labels, centres + mean


def connected_components(labels: torch.Tensor, connectivity: int = 4) -> torch.Tensor:
    """Split every label's region into connected components.

    Args:
        labels: (h, w) integer label map (e.g. k-means clusters).
        connectivity: 4 or 8.

    Returns:
        (h, w) int64 segment ids 0..S-1 on ``labels``' device: the components of label ids in ascending
        order, each label's components in OpenCV's raster order.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    lab = labels.detach().cpu().numpy()
    flat = lab.reshape(-1)
    if flat.size == 0:
        return torch.zeros(labels.shape, dtype=torch.int64, device=labels.device)
    lo, hi = int(flat.min()), int(flat.max())
    if lo >= 0 and hi < 65536:          # small non-negative ids (k-means clusters): no sort needed
        keys = np.flatnonzero(np.bincount(flat, minlength=hi + 1))
        small = lab.astype(np.uint8 if hi < 256 else np.uint16)
        offsets = np.zeros(hi + 1, dtype=np.int64)
    else:                               # any other ids: rank them
        _, inv = np.unique(flat, return_inverse=True)
        small = inv.reshape(lab.shape).astype(np.int64)
        keys = np.arange(int(small.max()) + 1)
        offsets = np.zeros(len(keys), dtype=np.int64)
    comp_sum = np.zeros(lab.shape, dtype=np.int32)    # each pixel's 1-based component within its id
    offset = 0
    for v in keys:
        region = (small == int(v)).view(np.uint8)
        rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
        # the id's bounding box from an even row and column: OpenCV numbers the components in the raster
        # order of their 2x2 blocks, so the box numbers them as the whole image does, in less time
        box = np.s_[rows[0] & ~1:rows[-1] + 1, cols[0] & ~1:cols[-1] + 1]
        n, comp = cv2.connectedComponents(region[box], connectivity=connectivity, ltype=cv2.CV_32S)
        comp_sum[box] += comp                           # 0 outside this id's pixels
        offsets[v] = offset - 1
        offset += n - 1
    return torch.from_numpy(offsets[small] + comp_sum).to(labels.device)


def relabel_small(segments: torch.Tensor, min_size: int) -> torch.Tensor:
    """Pool every segment under ``min_size`` pixels into one leftover segment.

    Args:
        segments: (...) int64 segment ids 0..S-1.

    Returns:
        same shape, ids 0..B: the B kept segments renumbered 0..B-1 in their old order, and id B for every
        pixel of a small segment (absent when none is small).
    """
    flat = segments.reshape(-1)
    sizes = torch.bincount(flat)
    keep = sizes >= min_size
    new_id = torch.cumsum(keep.long(), 0) - 1
    new_id = torch.where(keep, new_id, keep.sum())
    return new_id[flat].reshape(segments.shape)

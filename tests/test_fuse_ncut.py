"""Recursive normalized cut (pccseg.labellers.ncut, DiffCut's partitioning): known answers on constructed
affinities: two blobs are cut between them, the stop threshold sets how many regions come out, the
dense and Lanczos eigen-solvers agree."""

import torch

from pccseg.labellers import ncut as N


def _blobs(labels: torch.Tensor, dim: int = 8, noise: float = 0.1, seed: int = 0) -> torch.Tensor:
    """(n,) group ids -> (n, dim) features: one random direction per group plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(int(labels.max()) + 1, dim, generator=g)
    return centres[labels] + noise * torch.randn(labels.numel(), dim, generator=g)


def _grid_groups(h: int, w: int) -> torch.Tensor:
    """(h, w) three groups: the left part, the top right and the bottom right."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.where(xx < w // 2 - 1, 0, torch.where(yy < h // 2 + 1, 1, 2))


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when the two labellings group the nodes alike (ids may differ)."""
    pairs = torch.unique(torch.stack([a.reshape(-1), b.reshape(-1)]), dim=1)
    return pairs.shape[1] == len(torch.unique(a)) == len(torch.unique(b))


def test_affinity_is_scaled_cosine_raised_to_alpha():
    f = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    a = N.affinity(f, alpha=1.0)
    # cosines 1 (same direction), 0 (orthogonal), -1 (opposite) scaled to 1, 0.5, 0
    torch.testing.assert_close(a[0], torch.tensor([1.0, 1.0, 0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(N.affinity(f, alpha=10.0), a ** 10)
    assert (N.affinity(torch.ones(3, 2)) == 1).all()            # constant features: all linked


def test_two_blobs_are_cut_between_them():
    side = torch.arange(40) >= 25                                # 25 and 15 nodes
    side, value = N.best_cut(N.affinity(_blobs(side.long()), alpha=10.0))
    assert int(side.sum()) in (15, 25) and bool((side[:25] == side[0]).all()) and bool((side[25:] != side[0]).all())
    assert 0 <= value < 0.05                                      # almost nothing links the two blobs


def test_stop_threshold_sets_the_number_of_regions():
    groups = _grid_groups(12, 12).reshape(-1)
    a = N.affinity(_blobs(groups), alpha=10.0)
    three = N.recursive_ncut(a, tau=0.5)
    assert _same_partition(three, groups)
    assert (N.recursive_ncut(a, tau=1e-9) == 0).all()            # no cut is that cheap: one region
    assert int(N.recursive_ncut(a, tau=0.5, max_regions=2).max()) == 1
    # min_size refuses a cut that would leave a part smaller than it
    assert (N.recursive_ncut(a, tau=0.5, min_size=100) == 0).all()


def test_lanczos_and_dense_solvers_give_the_same_cut():
    groups = _grid_groups(26, 26).reshape(-1)                    # 676 nodes: above the dense solver's size
    a = N.affinity(_blobs(groups, noise=0.2), alpha=10.0)
    big = N.recursive_ncut(a, tau=0.5)
    assert _same_partition(big, groups)
    small_groups = _grid_groups(12, 12).reshape(-1)
    assert _same_partition(N.recursive_ncut(N.affinity(_blobs(small_groups, noise=0.2), alpha=10.0), 0.5),
                           small_groups)

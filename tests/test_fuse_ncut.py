"""Recursive normalized cut (pccseg.labellers.ncut, DiffCut's partitioning): known answers on constructed
affinities: two blobs are cut between them, the stop threshold sets how many regions come out, the
dense (small graphs) and Lanczos (large) eigen-solvers both find the groups; the map spread evens a
map inside its feature region and not across."""

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
    torch.testing.assert_close(a[0], torch.tensor([1.0, 1.0, 0.5, 0.0]))
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


def test_the_lanczos_solver_of_large_graphs_finds_the_groups_as_the_dense_one_does():
    groups = _grid_groups(26, 26).reshape(-1)                    # 676 nodes: above the dense solver's size
    a = N.affinity(_blobs(groups, noise=0.2), alpha=10.0)
    big = N.recursive_ncut(a, tau=0.5)
    assert _same_partition(big, groups)
    small_groups = _grid_groups(12, 12).reshape(-1)
    assert _same_partition(N.recursive_ncut(N.affinity(_blobs(small_groups, noise=0.2), alpha=10.0), 0.5),
                           small_groups)


# ------------------------------------------------------------------------------------------ the map spread

def test_spread_maps_evens_a_map_inside_its_feature_region_and_not_across():
    """A class map high on two pixels of the left region: spread through the affinity of two feature
    regions (left and right halves), it becomes even over the left region and stays 0 on the right."""
    from pccseg.labellers import fusion as Fu

    h, w = 6, 8
    side = (torch.arange(w) >= w // 2).repeat(h)                   # raster order: left False, right True
    a = N.affinity(_blobs(side.long(), noise=0.0), alpha=10.0)    # 1 within a half, 0 across
    maps = torch.zeros(1, h, w)
    maps[0, 1, 1] = maps[0, 4, 2] = 1.0
    spread = Fu.spread_maps(maps, a, (h, w), share=1.0)[0]
    left = ~side.reshape(h, w)
    torch.testing.assert_close(spread[left], torch.ones(24))      # minmax of an even spread: 1 on the region
    assert (spread[~left] == 0).all()
    half = Fu.spread_maps(maps, a, (h, w), share=0.5)[0]
    torch.testing.assert_close(half, 0.5 * maps[0] + 0.5 * spread)
    torch.testing.assert_close(Fu.spread_maps(maps, a, (h, w), share=0.0), maps)


def test_spread_maps_on_a_coarser_grid_returns_the_maps_size():
    from pccseg.labellers import fusion as Fu

    side = (torch.arange(4) >= 2).repeat(4)                        # a 4x4 grid, halves
    a = N.affinity(_blobs(side.long(), noise=0.0), alpha=10.0)
    maps = torch.zeros(2, 8, 8)
    maps[0, :, :4] = 1.0                                          # class 0 on the left half of the 8x8 maps
    maps[1, 2, 6] = 1.0                                           # class 1: one pixel on the right
    out = Fu.spread_maps(maps, a, (4, 4), share=1.0)
    assert out.shape == (2, 8, 8)
    assert out[0, :, :3].min() > 0.9 and out[0, :, 5:].max() < 0.1
    assert out[1, :, 5:].min() > 0.9 and out[1, :, :3].max() < 0.1   # spread over its half, not across


def test_attention_features_take_the_finest_level_within_the_node_budget():
    attn = {"a": torch.randn(2, 4, 4, 3), "b": torch.randn(3, 8, 8, 5), "c": torch.randn(1, 8, 8, 2),
            "d": torch.randn(2, 16, 16, 3)}
    f, grid = N.attention_features(attn, max_nodes=64)
    assert grid == (8, 8) and f.shape == (64, 3 * 5 + 1 * 2)     # the 8x8 layers, heads concatenated
    torch.testing.assert_close(f[9, :5], attn["b"][0, 1, 1])      # pixel (1, 1), head 0 of layer b
    assert N.attention_features(attn, max_nodes=8)[1] == (4, 4)   # none fits: the coarsest
    regions = N.cut_regions(N.affinity(f, 10.0), grid, (16, 16), tau=0.5)
    assert regions.shape == (16, 16) and regions.dtype == torch.int64

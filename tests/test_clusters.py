import numpy as np
import pytest
import torch

from pccseg.labellers.clusters import connected_components, kmeans, relabel_small


def _blobs(seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    truth = torch.arange(400) % 4
    return centres[truth] + torch.randn(400, 3, generator=g), truth


def _same_partition(a, b):
    a, b = np.asarray(a), np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_recovers_planted_clusters_and_is_reproducible():
    x, truth = _blobs()
    lab, centres = kmeans(x, 4, seed=3)
    assert _same_partition(lab, truth)
    assert centres.shape == (4, 3)
    lab2, c2 = kmeans(x, 4, seed=3)
    assert torch.equal(lab, lab2) and torch.equal(centres, c2)


def test_kmeans_subsampled_fit_assigns_every_row():
    x, truth = _blobs(1)
    lab, _ = kmeans(x, 4, seed=0, fit_rows=torch.arange(0, 400, 3))
    assert lab.shape == (400,) and _same_partition(lab, truth)


def test_kmeans_duplicate_points_and_k_above_n():
    x = torch.zeros(10, 2)
    lab, c = kmeans(x, 3)
    assert lab.shape == (10,) and torch.isfinite(c).all()
    lab, c = kmeans(torch.randn(2, 2), 5)
    assert c.shape[0] == 2


def test_connected_components_planted_segments():
    lab = torch.zeros(6, 8, dtype=torch.long)
    lab[1:3, 1:3] = 1
    lab[4:6, 5:8] = 1          # second, separate region of cluster 1
    lab[0:2, 6:8] = 2
    seg = connected_components(lab, 4)
    assert seg.dtype == torch.int64 and seg.shape == lab.shape
    assert len(torch.unique(seg)) == 4             # background, two parts of cluster 1, cluster 2
    assert seg[1, 1] != seg[4, 5]
    assert len(torch.unique(seg[1:3, 1:3])) == 1 and len(torch.unique(seg[4:6, 5:8])) == 1
    assert int(seg.max()) == 3 and int(seg.min()) == 0


def test_connectivity_4_vs_8_on_a_diagonal_touch():
    lab = torch.tensor([[1, 0], [0, 1]])
    assert len(torch.unique(connected_components(lab, 4))) == 4
    s8 = connected_components(lab, 8)
    assert len(torch.unique(s8)) == 2 and s8[0, 0] == s8[1, 1] and s8[0, 1] == s8[1, 0]


def test_relabel_small_pools_fragments():
    seg = torch.tensor([[0, 0, 0, 1], [2, 2, 2, 3], [4, 4, 4, 4]])
    out = relabel_small(seg, 3)
    assert out.tolist() == [[0, 0, 0, 3], [1, 1, 1, 3], [2, 2, 2, 2]]


def _components_reference(lab: np.ndarray, connectivity: int) -> np.ndarray:
    """One OpenCV call per id, boolean-mask writes (the straightforward version)."""
    import cv2
    out = np.zeros(lab.shape, dtype=np.int64)
    offset = 0
    for v in np.unique(lab):
        binary = lab == v
        n, comp = cv2.connectedComponents(binary.view(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S)
        out[binary] = comp[binary] + (offset - 1)
        offset += n - 1
    return out


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("ids", ["small", "uint16", "negative", "huge"])
def test_connected_components_equal_the_reference_on_random_label_maps(connectivity, ids):
    rng = np.random.default_rng(7)
    for shape, k in [((64, 64), 10), ((97, 131), 20), ((1, 9), 3), ((33, 1), 4)]:
        blobs = torch.nn.functional.interpolate(torch.from_numpy(rng.random((1, k, 8, 8))).float(),
                                                size=shape, mode="bilinear").argmax(1)[0].numpy()
        noisy = np.where(rng.random(shape) < 0.1, rng.integers(0, k, shape), blobs)     # specks and holes
        lab = {"small": noisy, "uint16": noisy * 300 + 7, "negative": noisy - 5, "huge": noisy * 10**9}[ids]
        got = connected_components(torch.from_numpy(lab), connectivity).numpy()
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, _components_reference(lab, connectivity))


@pytest.mark.parametrize("max_iter", [1, 2, 300])
def test_kmeans_labels_are_the_nearest_centres(max_iter):
    x, _ = _blobs(3)
    x = torch.cat([x, x[:50] * 0.5 + 2.0])                 # uneven, overlapping clusters
    for k in (3, 4, 7):
        labels, centres = kmeans(x, k, seed=1, max_iter=max_iter)
        d = torch.cdist(x.double(), centres.double())
        best = d.gather(1, labels.unsqueeze(1)).squeeze(1)
        assert torch.all(best <= d.min(1).values + 1e-4)


def _inertia(x, labels, centres):
    return float(((x - centres[labels]) ** 2).sum())


def test_kmeans_restarts_keep_the_start_of_least_inertia():
    g = torch.Generator().manual_seed(0)
    corners = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0], [2.0, 2.0]])
    x = corners[torch.arange(500) % 5] + 0.9 * torch.randn(500, 2, generator=g)
    for seed in range(6):
        one = kmeans(x, 5, seed=seed)
        assert all(torch.equal(a, b) for a, b in zip(one, kmeans(x, 5, seed=seed, n_init=1)))
        # the first start is the plain run, so the best of eight is never worse
        assert _inertia(x, *kmeans(x, 5, seed=seed, n_init=8)) <= _inertia(x, *one)
    # seed 17's single start ends in a worse local optimum than the best of eight
    assert _inertia(x, *kmeans(x, 5, seed=17, n_init=8)) < _inertia(x, *kmeans(x, 5, seed=17)) - 0.5
    # a subsampled fit restarts too, and still labels every row
    lab, _ = kmeans(x, 5, seed=17, n_init=8, fit_rows=torch.arange(0, 500, 2))
    assert lab.shape == (500,)

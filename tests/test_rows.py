import pytest
import torch
import torch.nn.functional as F

from pccseg.labellers.clusters import kmeans
from pccseg.labellers.features import minmax, pca_feature_rows, pca_features, pixel_grid
from pccseg.labellers.rows import BlockRows, stack_blocks


def _rows(seed=0):
    """Rows of 48: a 12-row table repeated 4x, a 48-row dense block, a 6-row table (two index maps)."""
    g = torch.Generator().manual_seed(seed)
    a, b, c = torch.randn(12, 5, generator=g), torch.randn(48, 3, generator=g), torch.randn(6, 7, generator=g)
    ia = torch.arange(48) // 4
    ic = torch.randint(6, (48,), generator=g)
    dense = torch.cat([a[ia], b, c[ic]], 1)
    return BlockRows((a, b, c), (ia, None, ic)), dense


def test_block_rows_arithmetic_equals_the_dense_matrix():
    rows, dense = _rows()
    assert rows.shape == (48, 15)
    assert torch.equal(rows.dense(), dense)
    idx = torch.tensor([5, 0, 47, 5])
    assert torch.equal(rows.rows(idx), dense[idx])
    assert torch.equal(rows.take(idx).dense(), dense[idx])
    torch.testing.assert_close(rows.mean(), dense.mean(0))
    torch.testing.assert_close(rows.sub(dense.mean(0)).dense(), dense - dense.mean(0))
    torch.testing.assert_close(rows.sq_norms(), (dense * dense).sum(1))
    for k in (3, 10, 16, 20):                         # 10 and 20 are padded to 16 and 32 centres inside
        c = torch.randn(k, 15)
        got = rows.dot(c)
        assert got.shape == (48, k)
        torch.testing.assert_close(got, dense @ c.t())
        torch.testing.assert_close(rows.centre_terms(c), (c * c).sum(1) - 2 * dense @ c.t())
    labels = torch.randint(4, (48,))
    want = torch.stack([dense[labels == j].sum(0) for j in range(4)])
    torch.testing.assert_close(rows.label_sums(labels, 4), want)


def test_one_dense_block_keeps_the_plain_computation():
    x = torch.randn(30, 4)
    rows = BlockRows.of(x)
    c = torch.randn(6, 4)
    assert torch.equal(rows.centre_terms(c), torch.addmm((c * c).sum(1).unsqueeze(0), x, c.t(), alpha=-2.0))
    labels = torch.arange(30) % 6
    onehot = torch.zeros(6, 30).scatter_(0, labels.unsqueeze(0), 1.0)
    assert torch.equal(rows.label_sums(labels, 6), onehot @ x)


def test_stack_blocks_merges_neighbours_with_one_index_and_refuses_ragged_blocks():
    i = torch.arange(8) // 2
    j = torch.arange(8) // 2                       # equal values, another object: not merged
    t = [torch.randn(4, 2), torch.randn(4, 3), torch.randn(4, 1), torch.randn(8, 2), torch.randn(8, 1)]
    rows = stack_blocks([(t[0], i), (t[1], i), (t[2], j), (t[3], None), (t[4], None)])
    assert [tuple(x.shape) for x in rows.tables] == [(4, 5), (4, 1), (8, 3)]
    assert torch.equal(rows.dense(), torch.cat([t[0][i], t[1][i], t[2][j], t[3], t[4]], 1))
    with pytest.raises(ValueError, match="row counts"):
        BlockRows((torch.randn(4, 2), torch.randn(5, 2)), (None, None))
    with pytest.raises(ValueError, match="one index"):
        BlockRows((torch.randn(4, 2),), ())


def test_feature_rows_keep_each_coarse_map_once_and_equal_the_upsampled_features():
    g = torch.Generator().manual_seed(1)
    pca = {"a": torch.randn(2, 4, 4, 3, generator=g), "b": torch.randn(1, 4, 4, 3, generator=g),
           "c": torch.randn(3, 8, 8, 3, generator=g), "d": torch.randn(1, 16, 16, 3, generator=g)}
    rows = pca_feature_rows(pca, (16, 16))
    # a and b share the 4x4 table, c has its own, d (full size) joins the positions
    assert [tuple(t.shape) for t in rows.tables] == [(16, 9), (64, 9), (256, 5)]
    cols = []
    for m in pca.values():                          # the definition: upsample, then min-max every column
        up = F.interpolate(m.permute(0, 3, 1, 2), size=(16, 16), mode="nearest")   # (heads, n, 16, 16)
        cols.append(up.reshape(-1, 256).t())
    want = torch.cat([minmax(torch.cat(cols, 1)), pixel_grid(16, 16)], 1)
    torch.testing.assert_close(rows.dense(), want, rtol=0, atol=1e-6)
    assert torch.equal(pca_features(pca, (16, 16)), rows.dense())


def test_kmeans_on_block_rows_finds_the_dense_clustering():
    g = torch.Generator().manual_seed(2)
    centres = 6.0 * torch.randn(5, 9, generator=g)
    truth = torch.arange(16) % 5
    coarse = centres[truth] + 0.3 * torch.randn(16, 9, generator=g)       # 16 distinct rows ...
    index = torch.arange(64) // 4                                         # ... each repeated 4 times
    fine = 0.3 * torch.randn(64, 2, generator=g)
    rows = BlockRows((coarse, fine), (index, None))
    for k, seed in ((5, 0), (5, 3), (9, 1)):
        got, c_got = kmeans(rows, k, seed=seed)
        want, c_want = kmeans(rows.dense(), k, seed=seed)
        assert torch.equal(got, want)
        torch.testing.assert_close(c_got, c_want, rtol=0, atol=1e-5)
    lab, _ = kmeans(rows, 5, seed=0, fit_rows=torch.arange(0, 64, 2))   # subsampled fit, every row assigned
    assert lab.shape == (64,) and torch.equal(lab, kmeans(rows.dense(), 5, seed=0, fit_rows=torch.arange(0, 64, 2))[0])

import numpy as np
import pytest
import torch

from pccseg.errors import InputError
from pccseg.labellers.features import head_pca, layer_pca, minmax, pca_features, top_eigenvectors


def _reference_pca(x: np.ndarray, n: int) -> np.ndarray:
    """numpy SVD PCA of one head's (N, d) matrix, scores (N, n), signs free."""
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc.astype(np.float64), full_matrices=False)
    return xc @ vt[:n].T


def _structured(heads, h, w, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(heads, 6, d, generator=g) * torch.tensor([8.0, 5, 3, 1.5, 1, 0.5]).view(1, 6, 1)
    coef = torch.randn(heads, h * w, 6, generator=g)
    x = coef @ basis + 0.1 * torch.randn(heads, h * w, d, generator=g) + 3.0   # non-zero mean
    return x.reshape(heads, h, w, d)


def test_head_pca_matches_numpy_svd_up_to_sign():
    x = _structured(5, 16, 12, 32)
    got = head_pca(x, 3).numpy()
    assert got.shape == (5, 16, 12, 3)
    for hd in range(5):
        ref = _reference_pca(x[hd].reshape(-1, 32).numpy(), 3)
        g = got[hd].reshape(-1, 3)
        for c in range(3):
            s = np.sign((ref[:, c] * g[:, c]).sum())
            np.testing.assert_allclose(g[:, c], s * ref[:, c], rtol=0, atol=1e-3 * np.abs(ref).max())


def test_sign_is_deterministic_and_largest_loading_positive():
    x = _structured(3, 8, 8, 16, seed=1)
    a, b = head_pca(x, 3), head_pca(-x, 3)
    # flipping the data flips the scores; the sign rule flips the components back: scores differ in sign
    torch.testing.assert_close(a, -b, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(head_pca(x, 3), a)


def test_top_eigenvectors_agree_with_eigh_and_fall_back_when_degenerate():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 64, 64, generator=g, dtype=torch.float64)
    spectrum = torch.cat([torch.tensor([50.0, 20.0, 10.0]), torch.linspace(1, 0.01, 61)]).double()
    q = torch.linalg.qr(a)[0]
    cov = q @ torch.diag_embed(spectrum.expand(4, 64)) @ q.transpose(1, 2)
    v = top_eigenvectors(cov, 3)
    ref = torch.linalg.eigh(cov)[1][..., -3:].flip(-1)
    torch.testing.assert_close((v * ref).sum(1).abs(), torch.ones(4, 3, dtype=torch.float64), atol=1e-8, rtol=0)
    iso = torch.eye(64, dtype=torch.float64).expand(2, 64, 64).clone()   # every vector is an eigenvector
    v = top_eigenvectors(iso, 3, max_iter=4)
    torch.testing.assert_close(v.transpose(1, 2) @ v, torch.eye(3, dtype=torch.float64).expand(2, 3, 3))


def test_layer_pca_batches_layers_and_names_a_short_head_dim():
    sa = {"a": _structured(2, 8, 8, 16), "b": _structured(3, 16, 16, 16, seed=2), "c": _structured(2, 8, 8, 16, 3)}
    out = layer_pca(sa, 3)
    assert list(out) == ["a", "b", "c"]
    for k in sa:
        torch.testing.assert_close(out[k], head_pca(sa[k], 3), atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="self_attn.short"):
        layer_pca({"a": sa["a"], "short": torch.randn(2, 8, 8, 2)}, 3)


def test_features_upsample_normalise_and_append_positions():
    pca = {"lo": torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).reshape(2, 2, 3, 3),
           "hi": torch.zeros(1, 4, 6, 3)}                        # constant -> 0 columns
    f = pca_features(pca, (4, 6))
    assert f.shape == (24, 2 * 3 + 3 + 2)
    assert float(f[:, :9].min()) == 0.0 and float(f[:, :6].max()) == 1.0
    assert torch.all(f[:, 6:9] == 0)
    grid = f[:, -2:].reshape(4, 6, 2)
    torch.testing.assert_close(grid[0, :, 0], torch.linspace(0, 1, 6))     # x along a row
    torch.testing.assert_close(grid[:, 0, 1], torch.linspace(0, 1, 4))     # y along a column
    # nearest upsampling: each low-res cell covers a 2x2 block
    col0 = f[:, 0].reshape(4, 6)
    assert torch.equal(col0[0:2, 0:2], col0[0, 0].expand(2, 2))


def test_minmax():
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]])
    torch.testing.assert_close(minmax(x), torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]]))


def _features_reference(pca, size):
    """The straightforward definition: upsample every map, then min-max normalise every column (times the
    reciprocal of the range, as pca_features; and with minmax' division)."""
    cols = []
    for maps in pca.values():
        heads, hl, wl, n = maps.shape
        m = torch.nn.functional.interpolate(maps.permute(0, 3, 1, 2).reshape(1, heads * n, hl, wl),
                                            size=size, mode="nearest")
        cols.append(m.reshape(heads * n, -1).t())
    from pccseg.labellers.features import pixel_grid
    m = torch.cat(cols, 1)
    lo, hi = m.min(0).values, m.max(0).values
    scale = torch.where(hi > lo, 1.0 / torch.where(hi > lo, hi - lo, torch.ones_like(lo)), torch.zeros_like(lo))
    return torch.cat([(m - lo) * scale, pixel_grid(*size)], 1), torch.cat([minmax(m), pixel_grid(*size)], 1)


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (37, 53)])
def test_features_equal_the_upsample_then_normalise_reference_bit_for_bit(size):
    g = torch.Generator().manual_seed(3)
    h, w = size
    pca = {"quarter": torch.randn(6, max(1, h // 4), max(1, w // 4), 3, generator=g) * 7,
           "half": torch.randn(4, max(1, h // 2), max(1, w // 2), 3, generator=g),
           "full": torch.randn(2, h, w, 3, generator=g) + 100,
           "odd": torch.randn(3, 5, 7, 3, generator=g)}              # non-integer scale factors
    pca["half"][1, ..., 2] = 4.0                                      # a constant column -> 0
    got = pca_features(pca, size)
    ref, ref_div = _features_reference(pca, size)
    assert got.shape == ref.shape == (h * w, 3 * 15 + 2)
    assert torch.equal(got, ref)
    torch.testing.assert_close(got, ref_div, rtol=0, atol=1e-6)
    assert torch.all(got[:, 3 * 6 + 3 + 2] == 0)

"""The labellers side by side (pcc, dd, attn): planted layouts, the dd rule against a NumPy transcription of
Dataset Diffusion's script, known answers of the attn rule, the registry and parameter checks."""

import math

import numpy as np
import pytest
import torch

from pccseg.capture.format import Capture
from pccseg.labellers.classes import merge_tokens
from pccseg.errors import InputError
from pccseg.labellers.pcc import LabelParams, LabelResult
from pccseg.labellers.attn import AttnParams, MapsResult
from pccseg.labellers.dd import DDParams
from pccseg.labellers.registry import LABELLERS, default_params, get_labeller, label, labeller_of, params_record
from pccseg.capture.synthetic import SD21, planted_capture, planted_layout

from test_labeller import miou


@pytest.fixture(scope="module")
def planted():
    size = (128, 192)
    cap = planted_capture(image_size=size, latent=(32, 48), layers=SD21[::3], heads_per_layer=2, head_dim=16,
                          seed=1)
    return cap, planted_layout(image_size=size)


@pytest.mark.parametrize("name", ["pcc", "dd", "attn"])
def test_each_labeller_recovers_the_planted_layout(planted, name):
    cap, layout = planted
    res = label(cap, default_params(name))
    assert res.mask.shape == (128, 192) and res.mask.dtype == torch.uint8
    assert set(res.class_ids) - {0} == {12, 15, 16}
    assert miou(res.mask.long(), layout) > 0.9
    assert res.uncertain_share < 0.1 and res.timings["total"] > 0


def test_dd_and_attn_results(planted):
    cap, _ = planted
    dd = label(cap, DDParams())
    assert isinstance(dd, MapsResult) and dd.class_ids == [12, 15, 16]          # no background map
    assert dd.class_maps.shape == dd.refined_maps.shape == (3, 16, 24)         # the self-attention grid
    assert dd.score.shape == (128, 192) and dd.params == DDParams()
    assert {"maps", "affinity", "resize", "mask", "total"} <= set(dd.timings)
    at = label(cap, AttnParams())
    assert at.class_maps.shape == (3, 32, 48) and at.refined_maps is None        # latent size
    assert float(at.class_maps.amin()) == 0.0 and float(at.class_maps.amax()) == 1.0
    # power 0: no affinity, the class maps alone at the self-attention grid
    flat = label(cap, DDParams(power=0))
    torch.testing.assert_close(flat.refined_maps, flat.class_maps)


# ------------------------------------------------------------------ dd against a NumPy transcription

def _cubic(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights for the samples at offsets -1, 0, 1, 2 (torch's bicubic, a = -0.75)."""
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1          # noqa: E731  |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a     # noqa: E731  1 < |x| < 2
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) resampling matrix: half-pixel centres (align_corners=False), borders replicated."""
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = (o + 0.5) * n_in / n_out - 0.5
        i0 = math.floor(src)
        for k, wk in zip(range(-1, 3), _cubic(src - i0)):
            m[o, min(max(i0 + k, 0), n_in - 1)] += wk
    return m


def _np_bicubic(x: np.ndarray, size) -> np.ndarray:
    return np.einsum("Hh,chw,Ww->cHW", _bicubic_matrix(x.shape[1], size[0]), x, _bicubic_matrix(x.shape[2], size[1]))


def _dd_numpy(token_maps, token_classes, probs, image_size, power=4, down=4, threshold=0.6, uncertain=0.5):
    """Dataset Diffusion's gen_data.py rule, step by step, in float64 NumPy."""
    classes = sorted({c for c in token_classes if c not in (None, 0)})
    ca = np.stack([token_maps[[i for i, c in enumerate(token_classes) if c == k]].mean(0) for k in classes])
    n_cls, h, w = ca.shape
    ca = ca.reshape(n_cls, h // down, down, w // down, down).mean((2, 4))      # quarter level
    hs, ws, n = probs.shape
    ca = _np_bicubic(ca, (hs, ws))                                              # to the self-attention grid
    affinity = np.linalg.matrix_power(probs.reshape(n, n), power)
    outs = []
    for c in ca:
        out = (affinity @ c.reshape(n, 1)).reshape(hs, ws)
        out = out - out.min()
        outs.append(out / out.max())
    refined = np.stack(outs)
    up = _np_bicubic(refined, image_size)
    best = up.max(0)
    mask = np.zeros(image_size, dtype=np.uint8)
    labels = np.array([0] + classes, dtype=np.uint8)
    keep = best >= threshold
    mask[keep] = labels[up.argmax(0) + 1][keep]
    mask[(best >= uncertain) & (best < threshold)] = 255
    return mask, refined, best


def _random_capture(seed=0, image_size=(64, 48), latent=(16, 12), grid=(8, 6)):
    g = torch.Generator().manual_seed(seed)
    tokens = ["<|startoftext|>", "dog", "pot", "plant", "cat", "<|endoftext|>"]
    classes = [0, 12, 16, 16, 8, None]
    n = grid[0] * grid[1]
    probs = torch.softmax(3 * torch.randn(n, n, generator=g), -1).reshape(*grid, n)
    return Capture(image=torch.randint(0, 256, (*image_size, 3), dtype=torch.uint8, generator=g),
                   self_attn={"l": torch.randn(1, *grid, 4, generator=g)},
                   token_maps=torch.rand(len(tokens), *latent, generator=g), tokens=tokens, token_classes=classes,
                   self_probs=probs)


@pytest.mark.parametrize("seed", [0, 1])
def test_dd_agrees_with_a_numpy_transcription(seed):
    cap = _random_capture(seed)
    res = label(cap, DDParams())
    mask, refined, best = _dd_numpy(cap.token_maps.double().numpy(), cap.token_classes,
                                    cap.self_probs.double().numpy(), cap.image_size)
    assert res.class_ids == [8, 12, 16]
    np.testing.assert_allclose(res.refined_maps.numpy(), refined, atol=1e-4)
    np.testing.assert_allclose(res.score.numpy(), best, atol=1e-4)
    clear = (np.abs(best - 0.6) > 1e-3) & (np.abs(best - 0.5) > 1e-3)       # away from the thresholds
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(res.mask.numpy()[clear], mask[clear])
    assert {0, 255} < set(np.unique(mask).tolist())                            # every branch of the rule


# ------------------------------------------------------------------ attn: known answers

def _ramp_capture():
    """8x8 image = latent: person ramps down from the left, dog up to the right, rows 0-1 zero for both."""
    col = torch.arange(8, dtype=torch.float32) / 7
    rows = (torch.arange(8) >= 2).float()[:, None]
    person, dog = rows * (1 - col), rows * col
    maps = torch.stack([torch.ones(8, 8), person, dog, torch.zeros(8, 8)])
    return Capture(image=torch.zeros(8, 8, 3, dtype=torch.uint8), self_attn={"l": torch.zeros(1, 8, 8, 2)},
                   token_maps=maps, tokens=["<sot>", "person", "dog", "<eot>"], token_classes=[0, 15, 12, None])


def test_attn_known_answer():
    cap = _ramp_capture()
    res = label(cap, AttnParams())
    want = torch.zeros(8, 8, dtype=torch.uint8)
    want[2:, :4], want[2:, 4:] = 15, 12                 # max(c/7, 1 - c/7) >= 0.57 > 0.4; rows 0-1 are 0
    assert torch.equal(res.mask, want) and res.class_ids == [12, 15]
    band = label(cap, AttnParams(threshold=0.8, uncertain_threshold=0.6))
    want[2:, [2, 5]] = 255                              # 0.71 in [0.6, 0.8)
    want[2:, [3, 4]] = 0                                # 0.57 < 0.6
    assert torch.equal(band.mask, want)


def test_no_object_class_gives_background():
    cap = _ramp_capture()
    cap.token_classes[1:3] = [None, None]
    for p in (AttnParams(), DDParams()):
        cap.self_probs = torch.full((4, 4, 16), 1 / 16)
        res = label(cap, p)
        assert res.class_ids == [] and not res.mask.any() and res.mask.shape == (8, 8)


def test_token_merge_mean_and_max():
    maps = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 1.0), torch.full((2, 2), 3.0)])
    ids, mx = merge_tokens(maps, [0, 16, 16])
    assert ids == [0, 16] and float(mx[1, 0, 0]) == 3.0
    assert float(merge_tokens(maps, [0, 16, 16], "mean")[1][1, 0, 0]) == 2.0


# ------------------------------------------------------------------ registry and parameters

def test_registry_dispatches_on_the_parameter_type(planted):
    cap, _ = planted
    assert list(LABELLERS) == ["pcc", "dd", "attn", "fuse"]
    assert [lab.needs_self_probs for lab in LABELLERS.values()] == [False, True, False, False]
    assert isinstance(label(cap, LabelParams(ks=(3,), refine=False)), LabelResult)
    assert label(cap, AttnParams(), threshold=0.9).params.threshold == 0.9        # overrides
    assert labeller_of(DDParams()).name == "dd" and get_labeller("attn").params is AttnParams
    assert params_record(DDParams(power=2)) == {"labeller": "dd", "label_params": {
        "power": 2, "class_downsample": 4, "threshold": 0.6, "uncertain_threshold": 0.5, "token_merge": "mean",
        "interpolation": "bicubic"}}
    with pytest.raises(InputError, match=r"unknown labeller 'sam' \(choose from pcc, dd, attn, fuse\)"):
        get_labeller("sam")
    with pytest.raises(TypeError):
        label(cap, {"threshold": 0.5})


def test_dd_needs_self_probs():
    cap = _random_capture()
    cap.self_probs, cap.source = None, "caps/000003"
    with pytest.raises(InputError) as e:
        label(cap, DDParams())
    assert str(e.value).startswith("caps/000003/capture.safetensors: self_probs: ")
    assert "--labeller dd" in str(e.value) and "--keep-captures" in str(e.value)
    assert label(cap, AttnParams()).mask.shape == (64, 48)                     # attn does not need them


@pytest.mark.parametrize("cls, kw, field", [
    (DDParams, dict(power=-1), "power"),
    (DDParams, dict(power=2.0), "power"),
    (DDParams, dict(power=10**9), "power"),                                   # 10**9 matrix products: refused
    (DDParams, dict(class_downsample=0), "class_downsample"),
    (DDParams, dict(threshold=1.5), "threshold"),
    (DDParams, dict(threshold=0.4), "uncertain_threshold"),                   # below the default band 0.5
    (DDParams, dict(uncertain_threshold=float("nan")), "uncertain_threshold"),
    (DDParams, dict(interpolation="lanczos"), "interpolation"),
    (AttnParams, dict(threshold=-0.1), "threshold"),
    (AttnParams, dict(uncertain_threshold=0.5), "uncertain_threshold"),       # above the threshold 0.4
    (AttnParams, dict(token_merge="sum"), "token_merge"),
])
def test_parameters_are_checked_in_the_dataclass(cls, kw, field):
    with pytest.raises(InputError) as e:
        cls(**kw)
    assert e.value.field == field
    assert DDParams(uncertain_threshold=0.6).uncertain_threshold == 0.6        # empty band is allowed

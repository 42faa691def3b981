"""The fuse labeller: known answers of each stage on constructed inputs (propagation stays inside its
region, PAMR moves a blurred edge onto the colour edge, segment pooling, the margin, small regions), the
labeller on planted, toy-model and SDXL-architecture captures, and its parameter checks (API and CLI)."""

import numpy as np
import pytest
import torch

from pccseg.capture.synthetic import SD21, planted_capture, planted_layout
from pccseg.errors import InputError
from pccseg.labellers import fusion as Fu
from pccseg.labellers.fuse import FuseParams, FuseResult
from pccseg.labellers.pcc import LabelParams
from pccseg.labellers.registry import LABELLERS, get_labeller, label, labeller_of, params_record

from test_labeller import miou
from test_labellers import planted  # noqa: F401 (the fixture: a small planted capture and its layout)


# ------------------------------------------------------------------------------------------ stages

def test_vote_shares_and_fusion_known_answer():
    votes = torch.tensor([[[0, 7]], [[0, 7]], [[7, 255]], [[0, 7]]], dtype=torch.uint8)     # 4 votes, 1x2 pixels
    shares = Fu.vote_shares(votes, [0, 7])
    torch.testing.assert_close(shares, torch.tensor([[[0.75, 0.0]], [[0.25, 0.75]]]))
    maps = torch.tensor([[[1.0, 0.5]], [[0.0, 1.0]]])
    fused = Fu.fuse_scores(shares, maps, [0, 7], map_weight=1.0, background_weight=2.0)
    torch.testing.assert_close(fused, torch.tensor([[[2.75, 1.0]], [[0.25, 1.75]]]))


def _two_regions(h=6, w=8):
    """An (n, n) row-stochastic affinity of two regions (left and right halves): every pixel attends
    uniformly to the pixels of its own half and to nothing else."""
    side = (torch.arange(w) >= w // 2).repeat(h)                  # raster order: False left, True right
    a = (side[:, None] == side[None, :]).float()
    return a / a.sum(1, keepdim=True), side.reshape(h, w)


def test_propagation_spreads_a_seed_over_its_region_and_not_across():
    a, side = _two_regions()
    seed = torch.zeros(1, 6, 8)
    seed[0, 2, 1] = 1.0                                           # one pixel of the left region
    out = Fu.propagate(seed, a, 3)[0]
    assert (out[~side] > 0).all() and (out[side] == 0).all()
    torch.testing.assert_close(out[~side], torch.full((24,), 1 / 24))     # spread evenly over its region
    torch.testing.assert_close(Fu.propagate(seed, a, 0), seed)
    # sharpening keeps a row-stochastic matrix and makes rows peakier
    p = torch.softmax(torch.randn(10, 10, generator=torch.Generator().manual_seed(0)), 1)
    s = Fu.sharpen(p, 3.0)
    torch.testing.assert_close(s.sum(1), torch.ones(10))
    assert (s.amax(1) >= p.amax(1)).all() and Fu.sharpen(p, 1.0) is p


def _step_image(h=24, w=48, edge=30):
    img = torch.zeros(h, w, 3, dtype=torch.uint8)
    img[:, :edge] = torch.tensor([200, 40, 40], dtype=torch.uint8)
    img[:, edge:] = torch.tensor([40, 40, 200], dtype=torch.uint8)
    return img


def test_pamr_moves_a_blurred_step_edge_to_the_colour_edge():
    img = _step_image()
    x = torch.arange(48, dtype=torch.float32)
    left = torch.sigmoid((22 - x) / 3.0).expand(24, 48)          # a blurred step crossing 0.5 at x = 22
    scores = torch.stack([left, 1 - left])
    before = scores.argmax(0)[0]
    assert int((before == 0).sum()) == 23                          # the blocky edge: 8 pixels left of the colour edge
    after = Fu.pamr(img, scores, iters=30, dilations=(1, 2, 4, 8))
    row = after.argmax(0)
    assert (row[:, :30] == 0).all() and (row[:, 30:] == 1).all()   # the edge is now the colour edge
    torch.testing.assert_close(after.sum(0), torch.ones(24, 48))   # a convex mix: scores stay normalised
    aff = Fu.pamr_affinity(img, (1, 2))
    assert aff.shape == (16, 24, 48)
    torch.testing.assert_close(aff.sum(0), torch.ones(24, 48))


def _pamr_reference(image, scores, iters, dilations):
    """PAMR as written in its definition: a (1, 3, K, H, W) stack of neighbours, torch's std over K."""
    import torch.nn.functional as F

    offsets = Fu._offsets(dilations)
    pad = max(dilations)

    def stack(x):                                                    # (N, c, H, W) -> (N, c, K, H, W)
        xp = F.pad(x, (pad,) * 4, mode="replicate")
        h, w = x.shape[-2:]
        return torch.stack([xp[..., pad + oy:pad + oy + h, pad + ox:pad + ox + w] for oy, ox in offsets], 2)

    x = image.permute(2, 0, 1).float()[None]
    nb = stack(x)
    aff = torch.softmax((-(nb - x[:, :, None]).abs() / (1e-8 + 0.1 * nb.std(2, keepdim=True))).mean(1)[0], 0)
    p = scores.float()
    for _ in range(iters):
        p = (aff[None] * stack(p[None])[0]).sum(1)
    return aff, p


def test_pamr_matches_its_definition_on_random_inputs():
    g = torch.Generator().manual_seed(3)
    for size, dil in (((40, 33), (1, 2, 4, 8)), ((6, 5), (1, 3, 8))):    # also dilations past the image
        img = torch.randint(0, 256, (*size, 3), generator=g, dtype=torch.uint8)
        img[: size[0] // 2] = 90                                        # flat colour: std 0 in places
        scores = torch.rand(3, *size, generator=g)
        aff, ref = _pamr_reference(img, scores, 4, dil)
        torch.testing.assert_close(Fu.pamr_affinity(img, dil), aff, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(Fu.pamr(img, scores, 4, dil), ref, atol=1e-5, rtol=1e-4)


def test_pamr_scale_sets_the_grid_pamr_runs_on():
    # image 8x the latent: pamr_scale 4 runs PAMR at half the image size, 8 and 0 at the image size
    cap = planted_capture(image_size=(128, 128), latent=(16, 16), layers=SD21[::3], heads_per_layer=2,
                          head_dim=16, seed=2)
    layout = planted_layout(image_size=(128, 128))
    full, at8, half = (label(cap, FuseParams(refine="pamr", pamr_scale=s)) for s in (0, 8, 4))
    assert torch.equal(full.refined, at8.refined) and not torch.allclose(full.refined, half.refined)
    assert half.refined.shape == (4, 128, 128) and miou(half.mask.long(), layout) > 0.9
    # at 4 image pixels per latent pixel (the toy model's shapes) the default scale is the image size
    cap4 = planted_capture(image_size=(64, 64), latent=(16, 16), layers=SD21[::3], heads_per_layer=2, head_dim=16)
    a, b = (label(cap4, FuseParams(refine="both", pamr_scale=s)) for s in (4, 0))
    assert torch.equal(a.refined, b.refined)


def test_pool_segments_decide_and_margin():
    seg = torch.tensor([[0, 0, 1, 1]])
    scores = torch.tensor([[[0.9, 0.1, 0.2, 0.45]], [[0.2, 0.6, 0.5, 0.45]]])
    pooled = Fu.pool_segments(scores, seg)
    torch.testing.assert_close(pooled, torch.tensor([[[0.5, 0.5, 0.325, 0.325]], [[0.4, 0.4, 0.475, 0.475]]]))
    assert Fu.decide(pooled, [0, 9], margin=0.0).tolist() == [[0, 0, 9, 9]]
    # runner-up within 25 % of the best: uncertain (0.4 is 20 % below 0.5; 0.325 is 32 % below 0.475)
    assert Fu.decide(pooled, [0, 9], margin=0.25).tolist() == [[255, 255, 9, 9]]
    assert Fu.decide(pooled, [0, 9], margin=0.1).tolist() == [[0, 0, 9, 9]]
    assert Fu.decide(torch.zeros(0, 2, 3), [], 0.0).tolist() == [[0] * 3] * 2


def test_absorb_small_relabels_specks_by_their_border():
    m = torch.zeros(10, 10, dtype=torch.uint8)
    m[:, 5:] = 7
    m[2, 2] = 3                    # a speck inside the 0 region
    m[6:8, 7] = 255                # an uncertain speck inside the 7 region
    m[0, 3] = 7                    # a one-pixel island of 7 in the 0 region (4-connected: not the big 7)
    m[9, 4] = 7                    # joined to the big 7 region: not small, kept
    out = Fu.absorb_small(m, 3)
    assert out[2, 2] == 0 and (out[6:8, 7] == 7).all() and out[0, 3] == 0 and out[9, 4] == 7
    assert (out[:9, :5] == 0).all() and (out[:, 5:] == 7).all()
    assert torch.equal(Fu.absorb_small(m, 1), m) and torch.equal(Fu.absorb_small(m, 0), m)


# ------------------------------------------------------------------------------------------ labeller

def test_fuse_recovers_the_planted_layout_and_keeps_its_stages(planted):
    cap, layout = planted
    res = label(cap, FuseParams())
    assert isinstance(res, FuseResult) and labeller_of(FuseParams()).name == "fuse"
    assert res.mask.shape == (128, 192) and res.mask.dtype == torch.uint8
    assert miou(res.mask.long(), layout) > 0.97 and res.uncertain_share == 0.0
    assert res.class_ids == [0, 12, 15, 16]
    assert res.class_maps.shape == res.shares.shape == res.scores.shape == (4, 32, 48)
    assert res.refined.shape == (4, 128, 192) and res.refine_segments.shape == (128, 192)
    torch.testing.assert_close(res.shares.sum(0), torch.ones(32, 48))   # PCC's votes (no 255 here)
    assert {"votes", "fuse", "refine_segments", "refine", "decide", "total"} <= set(res.timings)
    # the votes are PCC's: its blocky mask, unchanged
    pcc = label(cap, LabelParams(refine=False, artefact_ring=False))
    assert torch.equal(res.blocky, pcc.blocky)


@pytest.mark.parametrize("kw", [dict(refine="pamr", pamr_iters=3), dict(refine="both", pamr_iters=2),
                                dict(refine="none", upsample="nearest", map_weight=0.0, background_weight=0.0),
                                dict(propagate=2, sharpen=2.0), dict(margin=0.2, min_region=20),
                                dict(map_spread=0.0), dict(map_spread=1.0, affinity_alpha=5.0, affinity_nodes=64),
                                dict(ncut_tau=0.5)])
def test_every_stage_switch_runs(planted, kw):
    cap, layout = planted
    res = label(cap, FuseParams(**kw))
    assert res.mask.shape == (128, 192) and miou(res.mask.long(), layout) > 0.8
    assert (res.regions is None) == (not kw.get("ncut_tau"))
    assert ("affinity" in res.timings) == (kw.get("map_spread", 0.5) > 0 or bool(kw.get("ncut_tau")))
    if kw.get("ncut_tau"):                                        # PCC's 9 votes and 3 of DiffCut's regions
        assert res.regions.shape == (32, 48)
        torch.testing.assert_close(res.shares.sum(0), torch.ones(32, 48))
    assert (res.refine_segments is None) == (kw.get("refine") in ("pamr", "none"))
    assert ("propagate" in res.timings) == bool(kw.get("propagate"))


def test_propagation_needs_self_probs(planted):
    cap, _ = planted
    old = planted_capture(image_size=(64, 64), latent=(16, 16), layers=SD21[::3], heads_per_layer=2, head_dim=8,
                          self_probs=False)
    old.source = "caps/000003"
    assert label(old, FuseParams()).mask.shape == (64, 64)           # the default does not need them
    with pytest.raises(InputError) as e:
        label(old, FuseParams(propagate=2))
    assert str(e.value).startswith("caps/000003/capture.safetensors: self_probs: ")
    assert "--keep-captures" in str(e.value)


def test_pcc_report_masks_are_unchanged_by_the_new_labeller(planted):
    """PCC's report parameters stay the reference: registering fuse changes nothing in its path."""
    cap, _ = planted
    a, b = label(cap), label(cap, LabelParams())
    assert torch.equal(a.mask, b.mask) and type(a).__name__ == "LabelResult"


def test_fuse_on_toy_model_captures():
    from pccseg.capture.attention import capture
    from pccseg.capture.pipeline import load_pipeline

    pipe = load_pipeline("toy", progress=False)
    with capture(pipe, [["dog", "car"]], self_probs=True) as cap:
        out = pipe(["a photo of a dog and a car"], num_inference_steps=4, height=128, width=128, output_type="np",
                   generator=[torch.Generator().manual_seed(3)])
    c = cap.captures(out.images)[0]
    res = label(c, FuseParams(propagate=1))
    assert res.mask.shape == (128, 128) and res.class_ids == [0, 7, 12]
    assert set(torch.unique(res.mask).tolist()) <= {0, 7, 12}
    assert res.shares.shape == (3, 32, 32)


def test_fuse_on_sdxl_architecture_captures():
    from pccseg.capture.attention import capture
    from pccseg.capture.tiny import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline(0)
    with capture(pipe, [["person", "car"]], self_probs=True) as cap:
        out = pipe(["a person and a car"], num_inference_steps=2, height=128, width=96, output_type="np",
                   generator=[torch.Generator().manual_seed(5)])
    c = cap.captures(out.images)[0]
    res = label(c, FuseParams(propagate=2, refine="both", pamr_iters=2))
    assert res.mask.shape == (128, 96) and set(torch.unique(res.mask).tolist()) <= {0, 7, 15, 255}
    assert res.scores.shape == (3, 8, 6)                           # the largest attention grid (latent 16x12)


# ------------------------------------------------------------------------------------------ parameters

def test_registry_and_record():
    lab = get_labeller("fuse")
    assert "fuse" in LABELLERS and lab.params is FuseParams and not lab.needs_self_probs
    rec = params_record(FuseParams(ks=[3, 5]))
    assert rec["labeller"] == "fuse" and rec["label_params"]["ks"] == (3, 5)


@pytest.mark.parametrize("kw, field", [
    (dict(ks=(1,)), "ks"), (dict(ks=()), "ks"), (dict(thresholds=(0.0,)), "thresholds"),
    (dict(map_weight=-1.0), "map_weight"), (dict(background_weight=float("nan")), "background_weight"),
    (dict(propagate=-1), "propagate"), (dict(propagate=1.5), "propagate"), (dict(sharpen=0.0), "sharpen"),
    (dict(upsample="bicubic"), "upsample"), (dict(refine="crf"), "refine"), (dict(refine_k=1), "refine_k"),
    (dict(pamr_dilations=(0,)), "pamr_dilations"), (dict(pamr_scale=-1), "pamr_scale"), (dict(margin=1.0), "margin"), (dict(min_region=True), "min_region"),
    (dict(map_spread=1.5), "map_spread"), (dict(map_spread=-0.1), "map_spread"),
    (dict(affinity_alpha=0.0), "affinity_alpha"),
    (dict(affinity_nodes=2), "affinity_nodes"), (dict(ncut_tau=-1.0), "ncut_tau"), (dict(ncut_tau=2.5), "ncut_tau"),
])
def test_parameters_are_checked_in_the_dataclass(kw, field):
    with pytest.raises(InputError) as e:
        FuseParams(**kw)
    assert e.value.field == field


@pytest.mark.parametrize("argv, field", [
    (("--labeller", "fuse", "--fuse-margin", "1.5"), "--fuse-margin"),
    (("--labeller", "fuse", "--fuse-map-spread", "1.5"), "--fuse-map-spread"),
    (("--labeller", "fuse", "--dd-power", "2"), "--dd-power"),
    (("--fuse-map-weight", "2"), "--fuse-map-weight"),                 # a fuse option with pcc
])
def test_cli_refuses_what_the_api_refuses(tmp_path, capsys, argv, field):
    from pccseg.capture.format import save_capture
    from pccseg.cli import main

    caps = tmp_path / "caps"
    save_capture(caps / "000000", planted_capture(image_size=(64, 64), latent=(16, 16), layers=SD21[::3],
                                                  heads_per_layer=2, head_dim=8))
    assert main(["label", str(caps), "--out", str(tmp_path / "m"), "-q", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pccseg label: error: {field}: ")
    assert not (tmp_path / "m").exists()
    assert main(["label", str(caps), "--out", str(tmp_path / "ok"), "-q", "--labeller", "fuse",
                 "--fuse-refine", "pamr", "--fuse-pamr-iters", "2"]) == 0
    assert np.asarray((tmp_path / "ok" / "000000.png").exists())


def test_show_fuse_stages(tmp_path):
    from PIL import Image

    from pccseg.capture.format import save_capture
    from pccseg.cli import main
    from pccseg.pictures.fuse_figure import fuse_figure

    cap = planted_capture(image_size=(128, 128), latent=(32, 32), layers=SD21[::3], heads_per_layer=2, head_dim=16)
    fig = fuse_figure(cap, label(cap, FuseParams()))
    titles = "\n".join(ax.get_title() for ax in fig.axes)
    for name in ("person", "dog", "pottedplant", "background"):
        assert f"{name} map" in titles and f"{name}: share of the\n9 cluster votes" in titles
        assert f"{name} score" in titles and f"{name} map, 0.5 spread\nthrough DiffCut's affinity" in titles
    assert "spread" not in "".join(ax.get_title() for ax in fuse_figure(cap, label(cap, FuseParams(map_spread=0))).axes)
    assert "PCC's voted mask (32x32)" in titles and "colour segments" in titles and "final mask over image" in titles
    assert fig._suptitle.get_text().startswith("fuse")
    out = tmp_path / "fig.png"
    assert main(["show", str(save_capture(tmp_path / "cap", cap)), "--out", str(out), "--labeller", "fuse",
                 "--fuse-refine", "pamr", "--fuse-pamr-iters", "2"]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 500


def test_two_threads_give_the_masks_of_one(planted):
    from pccseg.labellers.pcc import torch_threads

    cap, _ = planted
    with torch_threads(1):
        one = label(cap, FuseParams())
    with torch_threads(2):
        two = label(cap, FuseParams())
    assert torch.equal(one.mask, two.mask) and torch.equal(one.refine_segments, two.refine_segments)


def test_generate_with_the_fuse_labeller(tmp_path):
    import json

    from pccseg.cli import main
    from pccseg.io import load_mask

    out = tmp_path / "ds"
    assert main(["generate", "--model", "tiny", "--num", "1", "--height", "64", "--width", "64", "--out", str(out),
                 "-q", "--labeller", "fuse", "--fuse-refine-k", "8"]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["labeller"] == "fuse" and settings["label_params"]["refine_k"] == 8
    masks = list((out / "SegmentationClass").glob("*.png"))
    assert len(masks) == 1 and load_mask(masks[0]).shape == (64, 64)

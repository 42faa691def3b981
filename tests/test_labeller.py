import pytest
import torch

from pccseg.errors import InputError
from pccseg.capture.synthetic import SD21, planted_capture, planted_layout
from pccseg.labellers.pcc import LabelParams, label


def miou(pred: torch.Tensor, truth: torch.Tensor) -> float:
    ious = []
    for c in torch.unique(truth):
        a, b = pred == c, truth == c
        ious.append(float((a & b).sum()) / float((a | b).sum()))
    return sum(ious) / len(ious)


@pytest.fixture(scope="module")
def sd21():
    """The one capture at SD 2.1 shapes (210 heads, latent 64x64, image 512x512)."""
    return planted_capture(seed=0), planted_layout()


def test_sd21_shapes(sd21):
    cap, _ = sd21
    assert sum(t.shape[0] for t in cap.self_attn.values()) == 210
    assert {tuple(t.shape[1:]) for t in cap.self_attn.values()} == {(16, 16, 64), (32, 32, 64), (64, 64, 64)}
    assert cap.tokens[0] == "<|startoftext|>" and cap.token_classes[-1] is None
    assert cap.tokens.count("pot") == 1 and cap.token_classes[cap.tokens.index("plant")] == 16


@pytest.mark.parametrize("preset", ["report", "authors"])
def test_end_to_end_recovers_the_planted_layout(sd21, preset):
    cap, layout = sd21
    res = label(cap, LabelParams.preset(preset))
    assert res.mask.shape == (512, 512) and res.mask.dtype == torch.uint8
    assert res.blocky.shape == (64, 64)
    assert res.class_ids == [0, 12, 15, 16]
    assert miou(res.mask.long(), layout) > 0.8
    assert res.uncertain_share < 0.1
    assert res.votes.shape == (9, 64, 64) and res.features.shape == (4096, 3 * 210 + 2)
    assert set(res.clusters) == {4, 7, 10} and res.refine_segments.shape == (512, 512)
    assert {"pca", "kmeans", "classes", "vote", "refine_segments", "total"} <= set(res.timings)
    # blocky mask at latent size also follows the layout
    lay64 = layout[4::8, 4::8]
    assert miou(res.blocky.long(), lay64) > 0.7


def _small(**kw):
    kw.setdefault("layers", SD21[::3])
    kw.setdefault("heads_per_layer", 2)
    kw.setdefault("head_dim", 16)
    return planted_capture(**kw)


def test_non_square_image_and_latent():
    cap = _small(image_size=(128, 192), latent=(32, 48), seed=1)
    layout = planted_layout(image_size=(128, 192))
    res = label(cap)
    assert res.mask.shape == (128, 192) and res.blocky.shape == (32, 48)
    assert res.pca[SD21[0][0]].shape == (4, 8, 12, 3)
    assert miou(res.mask.long(), layout) > 0.7


def test_deterministic_and_overrides():
    cap = _small(image_size=(128, 128), latent=(32, 32))
    a = label(cap, ks=(3, 5), thresholds=(0.5,), refine=False, artefact_ring=False)
    b = label(cap, LabelParams(ks=(3, 5), thresholds=(0.5,), refine=False, artefact_ring=False))
    assert torch.equal(a.mask, b.mask) and a.votes.shape == (2, 32, 32)
    assert a.refined is None and a.refine_segments is None
    # without refinement the mask is the nearest-upsampled blocky mask
    assert torch.equal(a.mask, a.blocky.repeat_interleave(4, 0).repeat_interleave(4, 1))
    assert a.params.ks == (3, 5)


def test_head_dim_below_components_names_the_layer():
    cap = _small(image_size=(64, 64), latent=(16, 16), head_dim=2)
    with pytest.raises(InputError, match=r"self_attn\.up_blocks\.1\.attentions\.0"):
        label(cap)


def test_float16_attention_is_accepted():
    cap = _small(image_size=(64, 64), latent=(16, 16), dtype=torch.float16)
    res = label(cap, refine=False)
    assert res.blocky.shape == (16, 16)


def test_authors_preset_blurs_the_token_maps_and_fits_the_refine_kmeans_on_all_pixels():
    from pccseg.labellers.classes import block_sum_blur, class_maps

    p = LabelParams.preset("authors")
    assert p.class_blur and p.refine_subsample == 0 and not LabelParams().class_blur
    cap = _small(image_size=(128, 128), latent=(32, 32), map_noise=0.3, seed=2)
    blurred = label(cap, p, refine=False)
    plain = label(cap, p, refine=False, class_blur=False)
    _, want = class_maps(block_sum_blur(cap.token_maps), cap.token_classes)
    assert torch.equal(blurred.class_maps, want)
    assert not torch.equal(blurred.class_maps, plain.class_maps)


def test_seed_votes_pool_the_votes_and_the_refined_masks_of_every_seed():
    from pccseg.labellers.classes import vote

    cap = _small(image_size=(128, 128), latent=(32, 32), noise=2.0, image_noise=40.0, seed=3)
    p = LabelParams(ks=(3, 5), thresholds=(0.4, 0.6), seed=5, artefact_ring=False)
    assert torch.equal(label(cap, p, seed_votes=1).mask, label(cap, p).mask)
    runs = [label(cap, p, seed=s) for s in (5, 6, 7)]
    voted = label(cap, p, seed_votes=3)
    assert voted.votes.shape == (12, 32, 32)
    assert torch.equal(voted.votes, torch.cat([r.votes for r in runs]))             # seed-major
    assert torch.equal(voted.blocky, vote(voted.votes)[0])
    assert torch.equal(voted.clusters[3], runs[0].clusters[3])                       # the first seed's
    assert torch.equal(voted.refine_segments, runs[0].refine_segments)
    # each seed refines the pooled blocky mask; the pixels vote (report rule: more than half)
    from pccseg.labellers.refine import dominant_labels, image_segments

    up = voted.blocky.repeat_interleave(4, 0).repeat_interleave(4, 1)
    per_seed = [dominant_labels(up, image_segments(cap.image, seed=s)) for s in (5, 6, 7)]
    assert torch.equal(voted.refined, vote(torch.stack(per_seed))[0])
    assert torch.equal(voted.mask, voted.refined)


@pytest.mark.parametrize("name, value", [("kmeans_restarts", 0), ("seed_votes", 0), ("seed_votes", 2.0),
                                         ("class_blur", 1)])
def test_new_params_are_checked(name, value):
    with pytest.raises(InputError) as e:
        LabelParams(**{name: value})
    assert e.value.field == name


def test_stages_side_by_side_give_the_results_of_one_thread():
    from pccseg.labellers.pcc import torch_threads

    cap = _small(image_size=(128, 128), latent=(32, 32), noise=2.0, seed=4)
    with torch_threads(1):
        one = label(cap, seed_votes=2)
    with torch_threads(3):
        side = label(cap, seed_votes=2)
        assert torch.get_num_threads() == 3                  # restored after the stages
    for name in ("mask", "blocky", "votes", "features", "refine_segments", "refined"):
        assert torch.equal(getattr(one, name), getattr(side, name)), name
    assert all(torch.equal(one.segments[k], side.segments[k]) for k in one.segments)
    assert set(one.timings) == set(side.timings) and side.timings["total"] > 0

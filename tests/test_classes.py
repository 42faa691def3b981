import pytest
import torch

from pccseg.labellers.classes import assign_segments, binary_maps, block_sum_blur, class_maps, segment_iou, vote


def test_class_maps_sot_background_eot_dropped_multi_token_max_and_class_named_twice():
    tm = torch.zeros(6, 2, 2)
    tm[0] = torch.tensor([[4.0, 2.0], [0.0, 0.0]])     # SoT -> background
    tm[1] = torch.tensor([[0.0, 1.0], [0.0, 0.0]])     # "pot"
    tm[2] = torch.tensor([[0.0, 0.0], [3.0, 0.0]])     # "plant"
    tm[3] = torch.tensor([[0.0, 0.0], [0.0, 5.0]])     # "cat"
    tm[4] = torch.tensor([[0.0, 0.0], [1.0, 0.0]])     # "cat" named again
    tm[5] = torch.full((2, 2), 9.0)                    # EoT
    ids, maps = class_maps(tm, [0, 16, 16, 8, 8, None])
    assert ids == [0, 8, 16]
    torch.testing.assert_close(maps[0], torch.tensor([[1.0, 0.5], [0.0, 0.0]]))
    torch.testing.assert_close(maps[1], torch.tensor([[0.0, 0.0], [0.2, 1.0]]))
    torch.testing.assert_close(maps[2], torch.tensor([[0.0, 1 / 3], [1.0, 0.0]]))


def test_constant_class_map_becomes_zero():
    ids, maps = class_maps(torch.ones(2, 3, 3), [0, 5])
    assert ids == [0, 5] and torch.all(maps == 0)


def test_background_threshold_uses_factor():
    maps = torch.tensor([[[0.55, 0.65]], [[0.55, 0.65]]])
    b = binary_maps(maps, [0, 3], 0.5, background_factor=1.2)
    assert b[0].tolist() == [[False, True]] and b[1].tolist() == [[True, True]]


def test_segment_iou_by_bincount():
    seg = torch.tensor([[0, 0, 1, 1]])
    binary = torch.tensor([[[True, False, False, False]], [[False, True, True, True]]])
    iou = segment_iou(seg, binary)
    torch.testing.assert_close(iou, torch.tensor([[0.5, 0.0], [1 / 4, 2 / 3]]))


def test_a_class_map_over_one_segment_labels_exactly_that_segment():
    seg = torch.zeros(8, 8, dtype=torch.long)
    seg[2:5, 2:6] = 1
    seg[6:, :] = 2
    binary = torch.zeros(2, 8, 8, dtype=torch.bool)
    binary[1] = seg == 1                    # class 7 covers segment 1 exactly
    out = assign_segments(seg, binary, [0, 7])
    assert torch.equal(out == 7, seg == 1)
    assert torch.all(out[seg != 1] == 0)    # no overlap anywhere else -> 0


def test_largest_iou_wins_and_ties_go_to_the_smaller_label():
    seg = torch.tensor([[0, 0, 0, 0]])
    binary = torch.tensor([[[True, True, False, False]], [[True, True, True, False]], [[False, False, True, True]]])
    assert assign_segments(seg, binary, [0, 3, 9]).tolist() == [[3, 3, 3, 3]]
    binary = torch.tensor([[[True, True, False, False]], [[False, False, True, True]]])
    assert assign_segments(seg, binary, [4, 9]).tolist() == [[4, 4, 4, 4]]


def _stack(columns):
    """columns: per pixel a list of 9 votes -> (9, 1, P) uint8."""
    return torch.tensor(columns, dtype=torch.uint8).t().unsqueeze(1)


def test_vote_50_percent_rule_and_056_option():
    votes = _stack([
        [3] * 9,                              # unanimous
        [3] * 5 + [0] * 4,                    # 5/9 = 0.556: certain (report), uncertain (authors)
        [3] * 6 + [0] * 3,                    # 6/9: certain both
        [3] * 4 + [0] * 4 + [7],              # 4/9 tie 0 vs 3: uncertain both
        [7] * 4 + [3] * 3 + [0] * 2,          # 4/9: uncertain both
    ])
    mode, share = vote(votes, "report")
    assert mode[0].tolist() == [3, 3, 3, 255, 255]
    torch.testing.assert_close(share[0], torch.tensor([1.0, 5 / 9, 6 / 9, 4 / 9, 4 / 9]))
    mode, _ = vote(votes, "authors")
    assert mode[0].tolist() == [3, 255, 3, 255, 255]
    with pytest.raises(ValueError):
        vote(votes, "majority")


def test_vote_exactly_half_is_uncertain_in_report_rule():
    votes = torch.tensor([[[1]], [[1]], [[2]], [[2]]], dtype=torch.uint8)
    mode, share = vote(votes, "report")
    assert int(mode) == 255 and float(share) == 0.5
    votes = torch.tensor([[[1]], [[1]], [[1]], [[2]]], dtype=torch.uint8)
    assert int(vote(votes, "report")[0]) == 1


@pytest.mark.parametrize("factor, size", [(8, (64, 64)), (4, (32, 32)), (8, (40, 56))])
def test_block_sum_blur_is_the_authors_resize_and_block_sums(factor, size):
    """The authors' route, transcribed: OVAM resizes the latent-size maps bilinearly to the image size
    (``F.interpolate``, align_corners=False), their script sums each factor x factor block back."""
    import numpy as np
    import torch.nn.functional as F

    h, w = size
    maps = torch.rand(4, h, w, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    up = F.interpolate(maps[None], size=(h * factor, w * factor), mode="bilinear")[0].numpy()
    route = up.reshape(4, h, factor, w, factor).sum(axis=(2, 4))              # skimage block_reduce(np.sum)
    blurred = block_sum_blur(maps).double().numpy()
    np.testing.assert_allclose(blurred * factor ** 2, route, rtol=1e-6)
    assert np.abs(blurred - maps.numpy()).max() > 0.01                         # it is not the identity
    # min-max normalised, as the labeller uses them: the route's class maps
    ids, ours = class_maps(block_sum_blur(maps), [0, 15, 16, None])
    _, theirs = class_maps(torch.from_numpy(route).float(), [0, 15, 16, None])
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_vote_of_image_size_masks_and_ties():
    v = torch.tensor([[[3, 3, 7]], [[3, 7, 7]], [[5, 7, 255]]], dtype=torch.uint8)       # (3, 1, 3)
    mode, share = vote(v)
    assert mode.tolist() == [[3, 7, 7]] and torch.allclose(share, torch.full((1, 3), 2 / 3))
    mode, share = vote(v[:2])                                                             # 1:1 -> uncertain
    assert mode.tolist() == [[3, 255, 7]]
    big = torch.randint(0, 3, (5, 512, 512), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    mode, share = vote(big)
    assert mode.shape == (512, 512) and float(share.min()) >= 0.4

import torch

from pccseg.labellers.refine import artefact_ring, dominant_labels, image_segments, pixel_features, subsample_rows


def _two_colour_image(h=64, w=64, edge=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(h, w, 3)
    img[:, :edge] = torch.tensor([30.0, 60.0, 200.0])
    img[:, edge:] = torch.tensor([220.0, 180.0, 40.0])
    img += 4 * torch.randn(img.shape, generator=g)
    return img.round().clamp(0, 255).to(torch.uint8)


def test_pixel_features_scale_positions_to_255():
    f = pixel_features(torch.zeros(3, 5, 3, dtype=torch.uint8))
    assert f.shape == (15, 5)
    assert f[4, 3] == 255 and f[14, 4] == 255 and f[0, 3] == 0


def test_subsample_rows_is_a_regular_lattice():
    rows = subsample_rows(8, 8, 16)
    assert rows.tolist() == [0, 2, 4, 6, 16, 18, 20, 22, 32, 34, 36, 38, 48, 50, 52, 54]
    assert subsample_rows(8, 8, 0) is None and subsample_rows(8, 8, 64) is None


def test_refinement_moves_a_blocky_edge_onto_the_colour_edge():
    img = _two_colour_image(edge=37)
    blocky = torch.zeros(64, 64, dtype=torch.uint8)
    blocky[:, :32] = 5                              # blocky edge at 32, colour edge at 37
    segs = image_segments(img, k=8, seed=0, min_segment=10, subsample=0)
    # no segment straddles the colour edge
    left, right = set(segs[:, :37].unique().tolist()), set(segs[:, 37:].unique().tolist())
    assert not left & right
    out = dominant_labels(blocky, segs, rule="report", share=0.66)
    assert torch.all(out[:, :37] == 5) and torch.all(out[:, 37:] == 0)


def test_dominance_rules():
    seg = torch.zeros(1, 10, dtype=torch.long)
    seg[0, 5:] = 1
    mask = torch.tensor([[3, 3, 3, 3, 0, 3, 3, 3, 255, 0]], dtype=torch.uint8)
    # segment 0: 4/5 = 0.8 of value 3; segment 1: 3/5 = 0.6 of 3, runner-up 1
    assert dominant_labels(mask, seg, rule="report").tolist() == [[3] * 5 + [255] * 5]
    assert dominant_labels(mask, seg, rule="authors").tolist() == [[3] * 10]
    single = torch.full((1, 10), 255, dtype=torch.uint8)       # one value (even 255) -> it
    assert torch.all(dominant_labels(single, seg) == 255)


def test_artefact_ring_cleans_and_rings_each_class():
    m = torch.zeros(40, 40, dtype=torch.uint8)
    m[10:30, 10:30] = 7
    m[2, 2] = 7                      # speck: removed by the first erosion -> background
    m[19, 19] = 0                    # hole: filled by the dilations
    m[35, 35] = 255                  # uncertain stays uncertain
    out = artefact_ring(m, ring_width=2)
    assert out[2, 2] == 0 and out[19, 19] == 7 and out[35, 35] == 255
    assert torch.all(out[10:30, 10:30] == 7)
    assert torch.all(out[8:10, 10:30] == 255) and torch.all(out[30:32, 10:30] == 255)   # 2-px ring
    assert torch.all(out[7, 10:30] == 0) and torch.all(out[32, 10:30] == 0)
    out0 = artefact_ring(m, ring_width=0)
    assert torch.all(out0[8:10, 10:30] == 0)

"""Pictures carry their keys: the toy pictures name their rows and say which colour is which class, the
curves' labels stay inside their axes, the stage figure's legend shows the background as its panels do."""


import numpy as np


def _masks(value, n=4, size=32):
    out = []
    for _ in range(n):
        m = np.zeros((size, size), np.uint8)
        m[8:24, 8:24] = value
        m[:2] = 255
        out.append(m)
    return out


def test_toy_picture_has_row_names_and_a_colour_key():
    from pccseg.toy.quality import picture
    from pccseg.vocab import VOC_PALETTE

    images = [np.full((32, 32, 3), 200, np.uint8)] * 4
    rows = {"gt": _masks(7), "pcc": _masks(12)}
    pic = np.asarray(picture(images, rows, n=4))
    grid_h, grid_w = 3 * 32, 4 * 32
    assert pic.shape[0] > grid_h and pic.shape[1] > grid_w            # a key under the grid, names beside it
    key = pic[grid_h:].reshape(-1, 3)
    for v in (0, 7, 12, 255):                                          # every value the masks hold has a swatch
        assert (key == VOC_PALETTE[v]).all(1).any(), v
    assert not (key == VOC_PALETTE[15]).all(1).any()                   # and no other
    margin = pic.shape[1] - grid_w
    assert (pic[:grid_h, :margin] < 100).any()                         # row names written in the margin


def test_curves_labels_stay_inside_the_axes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pccseg.pictures.training_report import miou_panel

    checks = [{"iter": i, "miou": m} for i, m in ((10, 0.0030), (20, 0.0060), (30, 0.0084))]   # best = last
    fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
    assert miou_panel(ax, checks, 100.0)["iter"] == 30
    fig.canvas.draw()
    box = ax.get_window_extent()
    texts = [t for t in ax.texts] + list(ax.get_legend().get_texts())
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"max 0.84 % @ 30", "last 0.84 % @ 30"}
    for t in texts:
        b = t.get_window_extent()
        assert box.x0 <= b.x0 and b.x1 <= box.x1 and box.y0 <= b.y0 and b.y1 <= box.y1, t.get_text()
    plt.close(fig)


def test_stage_figure_legend_shows_the_background_as_the_blocky_panel(tmp_path):
    from matplotlib.colors import to_rgb

    from pccseg.capture.synthetic import planted_capture
    from pccseg.labellers.pcc import label
    from pccseg.pictures.rgb import MASK_GROUND
    from pccseg.pictures.show import stage_figure

    cap = planted_capture(image_size=(128, 128), latent=(16, 16), heads_per_layer=1, head_dim=8)
    fig = stage_figure(cap, label(cap))
    patches = {t.get_text(): h for leg in fig.legends for t, h in zip(leg.get_texts(), leg.legend_handles)}
    assert np.allclose(to_rgb(patches["0 background"].get_facecolor()), MASK_GROUND / 255.0)
    blocky = [ax for ax in fig.axes if ax.get_title().lower().startswith("blocky")]
    assert blocky
    shown = blocky[0].get_images()[0].get_array()
    assert (np.asarray(shown).reshape(-1, 3) == MASK_GROUND).all(1).any()   # the panel's ground is that grey

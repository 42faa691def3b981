"""Pictures: ``pccseg show`` (stage figure of one capture) and ``pccseg report`` (dataset / training run)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pccseg.capture.format import Capture, save_capture
from pccseg.cli import main
from pccseg.errors import InputError
from pccseg.io import save_image, save_mask
from pccseg.labellers.pcc import LabelParams, LabelResult
from pccseg.pictures.dataset_report import dataset_stats
from pccseg.pictures.report import make_report
from pccseg.pictures.rgb import boundaries, colorize, overlay, resize_nearest
from pccseg.pictures.show import pick_heads, stage_figure
from pccseg.pictures.stages import save_stage_figure
from pccseg.vocab import VOC_CLASSES, VOC_PALETTE


# --------------------------------------------------------------------------- fixtures

def small_capture(H=64, W=64, h=16, w=16) -> tuple[Capture, torch.Tensor]:
    """A capture with a planted layout: background, a cat block, a dog block (latent labels returned)."""
    g = torch.Generator().manual_seed(0)
    lab = torch.zeros(h, w, dtype=torch.long)
    lab[3:10, 2:8] = 1
    lab[8:14, 9:15] = 2
    big = lab.repeat_interleave(H // h, 0).repeat_interleave(W // w, 1)
    cols = torch.tensor([[90, 140, 200], [200, 120, 60], [60, 160, 80]], dtype=torch.float32)
    img = (cols[big] + torch.randn(H, W, 3, generator=g) * 10).clamp(0, 255).to(torch.uint8)
    sa = {}
    for name, s in (("up_blocks.1.attentions.0.transformer_blocks.0.attn1", h // 2),
                    ("up_blocks.2.attentions.0.transformer_blocks.0.attn1", h)):
        small = torch.nn.functional.interpolate(lab[None, None].float(), size=(s, s))[0, 0].long()
        onehot = torch.nn.functional.one_hot(small, 3).float()
        sa[name] = (onehot[None] @ torch.randn(2, 3, 8, generator=g)[:, None]).reshape(2, s, s, 8) \
            + 0.1 * torch.randn(2, s, s, 8, generator=g)
    tm = torch.stack([(lab == 0).float(), (lab == 1).float(), (lab == 2).float(), torch.zeros(h, w)])
    tm = tm + 0.2 * torch.rand(tm.shape, generator=g)
    cap = Capture(image=img, self_attn=sa, token_maps=tm, tokens=["<sot>", "cat", "dog", "<eot>"],
                  token_classes=[0, 8, 12, None], meta={"prompt": "a cat & a <dog> on a lawn"})
    return cap, lab


def hand_result(cap: Capture, lab: torch.Tensor, params: LabelParams | None = None) -> LabelResult:
    """A LabelResult made by hand, with every field filled at the right shapes."""
    params = params or LabelParams()
    h, w = lab.shape
    H, W = cap.image_size
    pca = {k: v[..., :3].clone() for k, v in cap.self_attn.items()}
    xx = torch.arange(w)[None].expand(h, w)
    yy = torch.arange(h)[:, None].expand(h, w)
    clusters = {k: (lab * 3 + (xx * k // w) % 3) % k for k in params.ks}
    segments = {k: clusters[k] * 100 + yy // 8 for k in params.ks}
    class_ids = [0, 8, 12]
    cm = cap.token_maps[:3]
    lo, hi = cm.amin((1, 2), keepdim=True), cm.amax((1, 2), keepdim=True)
    cm = (cm - lo) / (hi - lo)
    ids = torch.tensor(class_ids)[lab].to(torch.uint8)
    votes = ids[None].repeat(len(params.ks) * len(params.thresholds), 1, 1)
    votes[:4, 3:6, 2:5] = 0
    share = torch.ones(h, w)
    share[3:6, 2:5] = 5 / 9
    blocky = ids.clone()
    blocky[3:5, 2:4] = 255
    mask = blocky.repeat_interleave(H // h, 0).repeat_interleave(W // w, 1).clone()
    mask[30:32, :] = 255
    rseg = torch.arange(H)[:, None] // 16 * 8 + torch.arange(W)[None] // 16
    return LabelResult(mask=mask, blocky=blocky, class_ids=class_ids, class_maps=cm, pca=pca,
                       features=torch.zeros(h * w, 8), clusters=clusters, segments=segments, votes=votes,
                       vote_share=share, refine_segments=rseg, refined=mask.clone(), params=params)


def make_dataset(root: Path, n: int = 5, *, size=(48, 64), settings=True, missing_mask_stats=False) -> Path:
    """A small generated-dataset directory: JPEGs, palette masks, manifest.jsonl, settings.json.

    Classes used: cat (8) in every image, dog (12) in odd ones, person (15) named in prompts but never
    in a mask; every other class missing.
    """
    H, W = size
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        stem = f"{i:06d}"
        img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        save_image(root / "JPEGImages" / f"{stem}.jpg", img)
        m = np.zeros((H, W), np.uint8)
        m[5:20, 5:30] = 8
        if i % 2:
            m[25:40, 30:60] = 12
        m[:, :i] = 255
        save_mask(root / "SegmentationClass" / f"{stem}.png", m)
        counts = np.bincount(m.ravel(), minlength=256)
        rec = {"id": stem, "record_id": i, "prompt": f"a cat <b>{i}</b>", "classes": ["cat", "dog", "person"],
               "seed": 2024 + i, "timings": {"generate": 1.0 + i, "label": 0.5}}
        if not (missing_mask_stats and i == 0):
            rec["uncertain_share"] = float(counts[255] / m.size)
            rec["class_pixels"] = {VOC_CLASSES[c]: int(counts[c]) for c in range(21) if counts[c]}
        lines.append(json.dumps(rec))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text(
        "".join(f"{i:06d}\n" for i in range(n)))
    if settings:
        (root / "settings.json").write_text(json.dumps(
            {"model": "tiny <model>", "steps": 4, "seed": 2024, "height": H, "width": W,
             "label": {"ks": [4, 7, 10], "thresholds": [0.3, 0.5, 0.8]}, "class_names": list(VOC_CLASSES)}))
    return root


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("href", "src") and v is not None:
                self.links.append(v)


def check_page(page: Path) -> str:
    """Every href/src is relative and names an existing file; every PNG decodes. Returns the HTML."""
    text = page.read_text()
    p = _Links()
    p.feed(text)
    assert p.links, "page has no images"
    for link in p.links:
        assert not re.match(r"^[a-z]+:|^/", link), link
        f = page.parent / link
        assert f.is_file(), link
        if link.endswith(".png"):
            with Image.open(f) as im:
                im.load()
                assert im.size[0] > 100 and im.size[1] > 100
    assert not list(page.parent.glob(".*.tmp")), "temporary files left"
    return text


# --------------------------------------------------------------------------- pieces

def test_overlay_colours_classes_and_stripes_uncertain():
    img = np.full((40, 40, 3), 100, np.uint8)
    mask = np.zeros((10, 10), np.uint8)
    mask[:5, :5] = 8
    mask[5:, 5:] = 255
    out = overlay(img, mask, alpha=0.5, edges=False)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[30, 5], [100, 100, 100])           # background: image untouched
    expect = np.rint(0.5 * 100 + 0.5 * VOC_PALETTE[8].astype(float))
    np.testing.assert_array_equal(out[5, 5], expect)                     # class: blended palette colour
    unc = out[20:, 20:]
    brighter = (unc == 178).all(-1)                                      # 0.5*100 + 0.5*255 -> 177.5 -> 178
    same = (unc == 100).all(-1)
    assert brighter.any() and same.any() and (brighter | same).all()    # stripes, not a flat fill
    # edges drawn at full colour on the class border
    out_e = overlay(img, mask, alpha=0.5, edges=True)
    np.testing.assert_array_equal(out_e[19, 5], VOC_PALETTE[8])
    with pytest.raises(ValueError):
        overlay(np.zeros((4, 4)), mask)


def test_overlay_outlines_a_class_the_colour_of_the_image():
    """A grey car (128, 128, 128) on a grey image: blending alone leaves it invisible; the outline (a
    black line around the region) shows it."""
    img = np.full((200, 200, 3), 128, np.uint8)
    mask = np.zeros((200, 200), np.uint8)
    mask[50:150, 60:140] = 7                                             # car
    out = overlay(img, mask, alpha=0.55).astype(int)
    assert (out[100, 100] == 128).all()                                  # inside: grey on grey
    ring = np.zeros_like(mask, bool)
    ring[49, 60:140] = ring[150, 60:140] = ring[50:150, 59] = ring[50:150, 140] = True
    assert (out[ring] < 30).all()                                        # just outside: a black line
    cat = np.zeros_like(mask)
    cat[50:150, 60:140] = 8                                              # a dark class gets a white line
    assert (overlay(np.zeros_like(img), cat)[ring] > 225).all()
    dimmed = overlay(img, mask, dim=0.5)
    assert (dimmed[10, 10] == 64).all() and (dimmed[100, 100] == 128).all()   # background dimmed only


def test_blocky_panel_shows_dark_classes():
    """The blocky mask is drawn on a grey ground, regions outlined: VOC's cat (64, 0, 0) on its black
    background would be all but invisible."""
    from pccseg.pictures.rgb import MASK_GROUND

    m = np.zeros((8, 8), np.uint8)
    m[2:6, 2:6] = 8
    rgb = colorize(m, (64, 64), ground=MASK_GROUND, outline=True).astype(int)
    assert (rgb[2] == MASK_GROUND).all() and (rgb[32, 32] == VOC_PALETTE[8]).all()
    assert np.abs(rgb[32, 32] - rgb[2, 2]).sum() > 300                   # the cat stands out of the ground
    assert (rgb[15, 16:48] == 255).all()                                 # a white line around it
    cap, lab = small_capture()
    fig = stage_figure(cap, hand_result(cap, lab))
    panel = next(ax for ax in fig.axes if ax.get_title().startswith("blocky mask"))
    shown = panel.get_images()[0].get_array()
    assert (np.asarray(shown[0, 0]) == MASK_GROUND).all()                # no black background


def test_sample_figures_are_readable_at_their_size(tmp_path):
    from pccseg.pictures.dataset_report import samples_figure

    root = make_dataset(tmp_path / "ds", n=2)
    for ids in (["000000"], ["000000", "000001"]):
        fig = samples_figure(root, ids, 8, VOC_CLASSES)
        width_px = fig.get_figwidth() * fig.dpi
        assert width_px >= 560 and width_px / len(ids) >= 280 - 1e-6
        texts = [t for leg in fig.legends for t in leg.get_texts()] + [ax.title for ax in fig.axes]
        assert texts and min(t.get_fontsize() for t in texts if t.get_text()) >= 10   # >= 14 px at 100 dpi


def test_colorize_resize_and_boundaries():
    m = torch.tensor([[0, 15], [255, 8]], dtype=torch.uint8)
    rgb = colorize(m, (40, 40))
    assert rgb.shape == (40, 40, 3)
    np.testing.assert_array_equal(rgb[0, 39], VOC_PALETTE[15])
    assert len(np.unique(rgb[20:, :20].reshape(-1, 3), axis=0)) == 2      # uncertain: two-tone stripes
    r = resize_nearest(np.arange(4).reshape(2, 2), (4, 6))
    np.testing.assert_array_equal(r[:, :3], [[0] * 3, [0] * 3, [2] * 3, [2] * 3])
    b = boundaries(np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]]))
    np.testing.assert_array_equal(b, [[False, True, False], [True, True, True], [False, False, False]])


def test_pick_heads_spans_resolutions():
    pca = {"a": torch.zeros(4, 8, 8, 3), "b": torch.zeros(4, 8, 8, 3), "c": torch.zeros(2, 16, 16, 3)}
    picks = pick_heads(pca, 3)
    assert picks[:2] == [("a", 0), ("c", 0)] and len(picks) == 3 and len(set(picks)) == 3
    assert pick_heads(pca, 1) == [("a", 0)]


def test_stage_figure_has_a_panel_per_stage(tmp_path):
    cap, lab = small_capture()
    res = hand_result(cap, lab)
    fig = stage_figure(cap, res)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    joined = "\n".join(titles)
    assert "image" in joined and joined.count("PCA") == 3
    for k in (4, 7, 10):
        assert f"k={k}" in joined
    for name in ("background", "cat", "dog"):
        assert f"{name}" in joined
    assert "0.3/0.5/0.8" in joined and "0.36/0.6/0.96" in joined        # background thresholds x1.2
    assert "vote agreement" in joined and "blocky" in joined and "final mask" in joined
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert "8 cat" in legend and "12 dog" in legend and "255 uncertain" in legend
    assert not any("person" in t for t in legend)
    path = save_stage_figure(cap, res, tmp_path / "s.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 800 and im.size[1] > 800
    # no refinement: the refinement panel goes, the rest stays
    res.refine_segments = None
    titles = [ax.get_title() for ax in stage_figure(cap, res).axes]
    assert not any("refinement" in t for t in titles) and any("final mask" in t for t in titles)


# --------------------------------------------------------------------------- CLI show

def _fake_label(monkeypatch):
    """Replace the labeller by the hand-made result (the CLI plumbing is what is tested here)."""
    import pccseg.labellers.pcc as lab_mod

    seen = {}

    def fake(capture, params=None, **kw):
        seen["params"] = params
        h, w = capture.latent_size
        lab = torch.zeros(h, w, dtype=torch.long)
        lab[3:10, 2:8] = 1
        lab[8:14, 9:15] = 2
        return hand_result(capture, lab, params)

    monkeypatch.setattr(lab_mod, "label", fake)
    return seen


def test_show_cli_passes_label_options(tmp_path, monkeypatch):
    seen = _fake_label(monkeypatch)
    cap, _ = small_capture()
    cdir = save_capture(tmp_path / "cap", cap)
    out = tmp_path / "fig.png"
    assert main(["show", str(cdir), "--out", str(out), "--preset", "authors", "--ks", "4", "7"]) == 0
    assert seen["params"].vote_rule == "authors" and seen["params"].ks == (4, 7)
    with Image.open(out) as im:
        assert im.format == "PNG"
    assert main(["show", str(cdir), "--out", str(tmp_path / "fig.jpg")]) == 2     # PNG only


def _planted():
    from pccseg.capture.synthetic import planted_capture

    cap = planted_capture(image_size=(128, 128), latent=(16, 16), heads_per_layer=1, head_dim=8)
    cap.meta["prompt"] = "a person, a dog and a potted plant"
    return cap


def test_stage_figure_on_real_labeller_output(tmp_path):
    from pccseg.labellers.pcc import label

    cap = _planted()
    res = label(cap)
    fig = stage_figure(cap, res)
    titles = "\n".join(ax.get_title() for ax in fig.axes)
    for name in ("person", "dog", "pottedplant", "background (SoT)"):
        assert name in titles
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert {"12 dog", "15 person", "16 pottedplant"} <= set(legend)
    resolutions = {re.search(r"(\d+x\d+) head", t).group(1) for t in titles.split("\n") if " head" in t
                   and "PCA" in t}
    assert resolutions == {"4x4", "8x8", "16x16"}                        # heads from three resolutions


def test_show_cli_on_capture_dir_and_on_id(tmp_path, capsys):
    cap = _planted()
    cdir = save_capture(tmp_path / "cap", cap)
    out = tmp_path / "fig.png"
    assert main(["show", str(cdir), "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 800
    data = tmp_path / "data"
    save_capture(data / "captures" / "000007", cap)
    out2 = tmp_path / "id.png"
    assert main(["show", "7", "--data", str(data), "--out", str(out2), "--refine-k", "8"]) == 0
    with Image.open(out2) as im:
        im.load()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("labeller", ["dd", "attn"])
def test_show_dd_and_attn(tmp_path, labeller):
    from pccseg.labellers.registry import default_params, label
    from pccseg.pictures.show import maps_figure

    cap = _planted()
    fig = maps_figure(cap, label(cap, default_params(labeller)))
    titles = "\n".join(ax.get_title() for ax in fig.axes)
    for name in ("person", "dog", "pottedplant"):
        assert f"{name} map" in titles
    assert ("after\naffinity^4" in titles) == (labeller == "dd")
    assert "largest map (128x128)" in titles and "final mask over image" in titles
    assert fig._suptitle.get_text().startswith(labeller)
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert {"12 dog", "15 person", "16 pottedplant", "255 uncertain"} <= set(legend)
    assert ("uncertain from 0.5" in legend) == (labeller == "dd")
    cdir = save_capture(tmp_path / "cap", cap)
    out = tmp_path / "fig.png"
    assert main(["show", str(cdir), "--out", str(out), "--labeller", labeller]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 500


def test_show_cli_missing_capture_is_one_line_exit_2(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    assert main(["show", "3", "--data", str(data), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "000003" in err and "--keep-captures" in err
    assert main(["show", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err
    assert main(["show", "12", "--out", str(tmp_path / "x.png")]) == 2
    assert "--data" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- report: dataset

def test_dataset_stats_known_counts(tmp_path):
    root = make_dataset(tmp_path / "ds", n=4, missing_mask_stats=True)
    st = dataset_stats(root)
    assert st["ids"] == ["000000", "000001", "000002", "000003"]
    cat, dog, person = 8, 12, 15
    # cat block rows 5:20, cols 5:30, minus uncertain columns :i (i <= 3 never reach col 5)
    np.testing.assert_array_equal(st["pixels"][:, cat], [375] * 4)
    np.testing.assert_array_equal(st["pixels"][:, dog], [0, 450, 0, 450])
    np.testing.assert_array_equal(st["pixels"][:, person], 0)
    assert st["named"][:, person].all()
    np.testing.assert_allclose(st["uncertain"], [i * 48 / (48 * 64) for i in range(4)])  # row 0 from mask


def test_dataset_report(tmp_path):
    root = make_dataset(tmp_path / "ds", n=5)
    page = make_report(root, tmp_path / "rep")
    html = check_page(page)
    files = {p.name for p in (tmp_path / "rep").iterdir()}
    assert {"index.html", "class_pixels.png", "images_per_class.png", "uncertain_share.png"} <= files
    assert "samples_08_cat.png" in files and "samples_12_dog.png" in files
    assert not any("person" in f for f in files)                       # class missing from every mask
    assert "No image has:" in html and "person" in html
    assert "tiny &lt;model&gt;" in html and "<model>" not in html        # settings table, escaped
    assert "label.ks" in html


def test_dataset_report_without_settings(tmp_path):
    root = make_dataset(tmp_path / "ds", n=3, settings=False)
    html = check_page(make_report(root, tmp_path / "rep"))
    assert "No settings.json" in html


def test_dataset_report_without_manifest_reads_masks(tmp_path):
    root = make_dataset(tmp_path / "ds", n=3)
    (root / "manifest.jsonl").unlink()
    check_page(make_report(root, tmp_path / "rep"))
    assert dataset_stats(root)["pixels"][1, 12] == 450


def test_report_errors(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", n=2)
    (root / "manifest.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match="no samples"):
        make_report(root, tmp_path / "rep")
    assert main(["report", str(root), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "manifest.jsonl" in err
    (root / "manifest.jsonl").write_text('{"id": "000000"}\nnot json\n')
    with pytest.raises(InputError, match="line 2"):
        make_report(root, tmp_path / "rep")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="not a dataset directory"):
        make_report(empty, tmp_path / "rep")
    assert main(["report", str(tmp_path / "absent"), "--out", str(tmp_path / "rep")]) == 2


def test_report_inputs_of_the_wrong_kind_are_one_line(tmp_path, capsys):
    """A manifest whose classes is a number, results.json rows that are numbers, --out an existing file:
    one line and exit 2 (they were tracebacks); a picture of results.json that is a link out of the
    folder is not copied."""
    root = make_dataset(tmp_path / "ds", n=2)
    lines = (root / "manifest.jsonl").read_text().splitlines()
    (root / "manifest.jsonl").write_text("\n".join([lines[0], json.dumps(dict(json.loads(lines[1]), classes=7))]))
    for argv, needle in ((["report", str(root), "--out", str(tmp_path / "rep")], "record 2: classes"),):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    exp = tmp_path / "exp"
    exp.mkdir()
    (tmp_path / "secret.png").write_bytes(b"secret")
    (exp / "leak.png").symlink_to(tmp_path / "secret.png")
    table = {"title": "t", "columns": ["a", "b"], "rows": [1, 2]}
    (exp / "results.json").write_text(json.dumps({"tables": [table]}))
    (tmp_path / "afile").write_text("x")
    for out, needle in ((tmp_path / "rep2", "tables: expected a list of {title, columns, rows} with every row"),
                        (tmp_path / "afile", "afile: --out: cannot create the folder")):
        if "afile" in str(out):
            (exp / "results.json").write_text(json.dumps({"tables": [dict(table, rows=[[1, 2]])]}))
        assert main(["report", str(exp), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    (exp / "results.json").write_text(json.dumps({"tables": [dict(table, rows=[[1, 2]])],
                                                  "pictures": [{"file": "leak.png", "caption": "c"}]}))
    assert main(["report", str(exp), "--out", str(tmp_path / "rep3")]) == 0
    assert not (tmp_path / "rep3" / "leak.png").exists()


def test_show_refuses_a_dpi_that_cannot_be_drawn(tmp_path, capsys):
    from pccseg.pictures.show import check_figure_options

    with pytest.raises(InputError, match="--dpi: too large"):
        check_figure_options(dpi=100000)
    check_figure_options(dpi=300)


# --------------------------------------------------------------------------- report: training run

def test_training_report(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"iter": i, "loss": 2.0 / (1 + i / 50), "lr": 1e-4 * (1 - i / 400)} for i in range(0, 400, 10)]
    rng = np.random.default_rng(0)
    for i, m in ((100, 0.2), (200, 0.45), (300, 0.41)):
        iou = [float(v) for v in rng.uniform(0, 1, 21)]
        iou[5] = None                                                   # class absent from val: n/a
        lines.append({"iter": i, "miou": m, "iou": iou, "acc": [float(v) for v in rng.uniform(0, 1, 21)]})
    lines.append({"iter": 350, "miou": None, "iou": [None] * 21, "acc": [None] * 21})   # nothing scored
    lines[-5]["time"] = 7380.0                                          # iteration 390: 2 h 03 min
    (run / "last").mkdir()
    names = [f"c{i}<x>" for i in range(21)]
    (run / "last" / "checkpoint.json").write_text(json.dumps({"class_names": names}))
    (run / "config.json").write_text(json.dumps({"lr": 0.0001, "batch_size": 8, "arch": "resnet50",
                                                 "changes": [{"iteration": 100, "changed": {"iters": [200, 400]}}]}))
    (run / "log.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    page = Path(capsys.readouterr().out.strip())
    html = check_page(page)
    assert {"curves.png", "class_iou.png"} <= {p.name for p in page.parent.iterdir()}
    assert "Last check: iteration 300, mIoU 41.00" in html             # the final model, not the best
    assert "n/a" in html
    assert "c20&lt;x&gt;" in html and "4 checks" in html                # names from last/checkpoint.json
    assert "Wall time: 2 h 03 min for 390 iterations (18.923 s per iteration" in html
    assert "<th>batch_size</th><td>8</td>" in html and "<th>lr</th><td>0.0001</td>" in html
    assert "Changed on resuming at iteration 100: iters 200 &rarr; 400" in html
    (run / "last" / "checkpoint.json").unlink()
    html = check_page(make_report(run, tmp_path / "rep1"))
    assert "tvmonitor" in html and "aeroplane" in html                   # 21 classes: VOC
    # a run with no check yet: curves only, a note
    (run / "log.jsonl").write_text("\n".join(json.dumps(x) for x in lines if "loss" in x) + "\n")
    html = check_page(make_report(run, tmp_path / "rep2"))
    assert "No check" in html and not (tmp_path / "rep2" / "class_iou.png").exists()


def test_docs_example_picture_is_small_and_referenced():
    root = Path(__file__).resolve().parents[1]
    img = root / "docs" / "img" / "show_planted.png"
    assert img.is_file() and img.stat().st_size < 300_000
    with Image.open(img) as im:
        assert im.format == "PNG" and im.size[0] > 800
    assert "img/show_planted.png" in (root / "docs" / "pictures.md").read_text()

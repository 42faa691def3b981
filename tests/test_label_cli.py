import json

import numpy as np
import pytest

from pccseg.capture.format import save_capture
from pccseg.cli import build_parser, main
from pccseg.commands.label_options import params_from_args
from pccseg.io import load_mask
from pccseg.labellers.pcc import LabelParams

from test_capture_format import CORRUPTIONS, make_bad, small_capture


def _args(*argv):
    return build_parser().parse_args(["label", "x", "--out", "y", *argv])


def test_params_from_args_presets_and_overrides():
    assert params_from_args(_args()) == LabelParams()
    assert params_from_args(_args("--preset", "authors")) == LabelParams.preset("authors")
    p = params_from_args(_args("--preset", "authors", "--cluster-connectivity", "4", "--ks", "3", "5",
                               "--thresholds", "0.4", "--no-refine", "--kmeans-seed", "7",
                               "--dominance-share", "0.7"))
    assert p == LabelParams.preset("authors", cluster_connectivity=4, ks=(3, 5), thresholds=(0.4,),
                                   refine=False, seed=7, dominance_share=0.7)


def test_every_label_param_is_an_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["label", "--help"])
    text = capsys.readouterr().out
    for opt in ("--n-components", "--ks", "--kmeans-seed", "--kmeans-iters", "--cluster-connectivity",
                "--thresholds", "--background-factor", "--vote-rule", "--refine", "--refine-k",
                "--refine-connectivity", "--refine-min-segment", "--refine-subsample", "--dominance-rule",
                "--dominance-share", "--artefact-ring", "--ring-width", "--preset"):
        assert opt in text


@pytest.fixture()
def captures(tmp_path):
    root = tmp_path / "captures"
    for i in range(2):
        save_capture(root / f"{i:06d}", small_capture(seed=i))
    return root


def test_label_directory_of_captures_then_resume(captures, tmp_path, capsys):
    out = tmp_path / "masks"
    assert main(["label", str(captures), "--out", str(out), "-q", "--ks", "3", "4"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["000000.png", "000001.png", "label_params.json"]
    m = load_mask(out / "000000.png")
    assert m.shape == (64, 64) and set(np.unique(m)) <= set(range(21)) | {255}
    (out / "000001.png").write_bytes(b"sentinel")
    assert main(["label", str(captures), "--out", str(out), "-q", "--ks", "3", "4"]) == 0
    assert (out / "000001.png").read_bytes() == b"sentinel"          # existing mask skipped
    assert main(["label", str(captures / "000001"), "--out", str(out), "-q", "--ks", "3", "4",
                 "--overwrite"]) == 0
    assert load_mask(out / "000001.png").shape == (64, 64)


def test_resume_with_other_parameters_is_refused(captures, tmp_path, capsys):
    import json

    out = tmp_path / "masks"
    assert main(["label", str(captures), "--out", str(out), "-q", "--ks", "3", "4"]) == 0
    recorded = json.loads((out / "label_params.json").read_text())["label_params"]
    assert recorded["ks"] == [3, 4] and recorded["vote_rule"] == "report"
    before = (out / "000000.png").read_bytes()
    capsys.readouterr()
    assert main(["label", str(captures), "--out", str(out), "-q", "--ks", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label_params.json" in err[0] and "ks" in err[0]
    assert (out / "000000.png").read_bytes() == before                  # nothing touched
    assert main(["label", str(captures), "--out", str(out), "-q", "--ks", "3", "--overwrite"]) == 0
    assert json.loads((out / "label_params.json").read_text())["label_params"]["ks"] == [3]


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_bad_capture_one_line_exit_2_no_mask_others_go_on(captures, tmp_path, capsys, name):
    make_bad(captures, name, "000000bad")
    out = tmp_path / "masks"
    capsys.readouterr()
    # without --keep-going: stops at the bad one (sorted first), nothing for it
    assert main(["label", str(captures), "--out", str(out), "-q", "--ks", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    _, file, field = CORRUPTIONS[name]
    assert len(err) == 1 and file in err[0] and "000000bad" in err[0]
    if field:
        assert field in err[0]
    assert not (out / "000000bad.png").exists()
    # with --keep-going: the others are labelled, exit code still 2
    assert main(["label", str(captures), "--out", str(out), "-q", "--ks", "3", "--keep-going"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png"]


def test_not_a_capture_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["label", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "empty" in capsys.readouterr().err


def test_label_writes_a_dataset_that_trains(tmp_path, capsys):
    """``label --dataset``: images, masks, split files, manifest, settings; torchvision reads it; pccseg
    trains on it and validates on its held-out split; a rerun resumes."""
    from torchvision.datasets import VOCSegmentation as TorchvisionVOC

    from pccseg.dataset.folder import read_manifest
    from pccseg.train.deeplab import read_checkpoint_meta
    from pccseg.io import load_image

    caps = tmp_path / "captures"
    for i in range(3):
        save_capture(caps / f"{i:06d}", small_capture(seed=i))
    out = tmp_path / "relabelled"
    argv = ["label", str(caps), "--out", str(out), "--dataset", "--val-share", "0.34", "-q", "--ks", "3", "4",
            "--preset", "authors"]
    assert main(argv) == 0
    train_ids = (out / "ImageSets/Segmentation/train.txt").read_text().split()
    val_ids = (out / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(train_ids) == 2 and len(val_ids) == 1 and sorted(train_ids + val_ids) == ["000000", "000001", "000002"]
    manifest = read_manifest(out)
    assert [e["id"] for e in manifest] == ["000000", "000001", "000002"]
    assert manifest[0]["classes"] and sum(manifest[0]["class_pixels"].values()) == \
        int((load_mask(out / "SegmentationClass/000000.png") != 255).sum())
    settings = json.loads((out / "settings.json").read_text())
    assert settings["label_params"]["cluster_connectivity"] == 8 and settings["val_share"] == 0.34
    assert load_image(out / "JPEGImages/000001.jpg").shape == (64, 64, 3)
    assert len(TorchvisionVOC(str(out), image_set="train")) == 2

    assert main(argv) == 0                                      # rerun: every sample is done, none redone
    assert len((out / "manifest.d/rank-0000.jsonl").read_text().splitlines()) == 3

    run = tmp_path / "run"
    assert main(["train", "--data", str(out), "--val", str(out), "--out", str(run), "--model",
                 "mobilenet_v3_large", "--backbone-weights", "none", "--iters", "2", "--batch-size", "2",
                 "--crop-size", "32", "--short-side", "0", "--val-every", "2", "--device", "cpu", "--workers", "0",
                 "--no-progress", "--no-tensorboard"]) == 0
    assert read_checkpoint_meta(run / "last")["iteration"] == 2
    assert [r["iter"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "miou" in r] == [2]


def test_label_val_share_needs_dataset(captures, tmp_path, capsys):
    rc = main(["label", str(captures), "--out", str(tmp_path / "m"), "--val-share", "0.5", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--val-share: a val split needs --dataset" in err


def test_label_dataset_writes_nothing_before_the_first_sample_and_repairs_a_killed_run(tmp_path, capsys):
    """``label --dataset`` as ``generate``: a bad capture first leaves the folder empty (no settings.json);
    a rerun removes what a kill left (a temporary file, a torn manifest line) and makes that sample again."""
    import shutil

    from pccseg.dataset.folder import read_manifest

    caps = tmp_path / "captures"
    make_bad(caps, "nan", "000000")
    save_capture(caps / "000001", small_capture(seed=1))
    out = tmp_path / "ds"
    argv = ["label", str(caps), "--out", str(out), "--dataset", "-q"]
    assert main(argv) == 2 and "000000" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    shutil.rmtree(caps / "000000")
    save_capture(caps / "000000", small_capture(seed=0))
    assert main(argv) == 0
    mask = (out / "SegmentationClass/000001.png").read_bytes()
    shard = out / "manifest.d/rank-0000.jsonl"
    first, second = shard.read_text().splitlines(keepends=True)
    shard.write_text(first + second[:30])                      # killed while appending sample 1's line
    leftover = out / "JPEGImages/.000001.jpg.0123abcd.pccseg.tmp"
    leftover.write_bytes(b"half")
    assert main(argv) == 0
    assert not leftover.exists() and [e["id"] for e in read_manifest(out)] == ["000000", "000001"]
    assert [json.loads(x)["id"] for x in shard.read_text().splitlines()] == ["000000", "000001"]
    assert (out / "SegmentationClass/000001.png").read_bytes() == mask


# ------------------------------------------------------------------ --labeller pcc|dd|attn

def test_params_from_args_for_each_labeller():
    from pccseg.labellers.attn import AttnParams
    from pccseg.labellers.dd import DDParams

    assert params_from_args(_args("--labeller", "dd")) == DDParams()
    assert params_from_args(_args("--labeller", "dd", "--dd-power", "2", "--dd-class-downsample", "2",
                                  "--dd-threshold", "0.7", "--dd-uncertain-threshold", "0.7", "--dd-token-merge",
                                  "max", "--dd-interpolation", "bilinear")) == \
        DDParams(power=2, class_downsample=2, threshold=0.7, uncertain_threshold=0.7, token_merge="max",
                 interpolation="bilinear")
    assert params_from_args(_args("--labeller", "attn", "--attn-threshold", "0.3", "--attn-uncertain-threshold",
                                  "0.2")) == AttnParams(threshold=0.3, uncertain_threshold=0.2)


@pytest.mark.parametrize("argv, field", [
    (("--labeller", "sam"), "--labeller"),
    (("--dd-power", "2"), "--dd-power"),                                    # a dd option with pcc
    (("--labeller", "dd", "--ks", "3"), "--ks"),                            # a pcc option with dd
    (("--labeller", "attn", "--preset", "authors"), "--preset"),
    (("--labeller", "dd", "--dd-threshold", "1.2"), "--dd-threshold"),      # refused by DDParams
    (("--labeller", "dd", "--dd-threshold", "0.4"), "--dd-uncertain-threshold"),   # below the band's 0.5
    (("--labeller", "attn", "--attn-uncertain-threshold", "0.5"), "--attn-uncertain-threshold"),
])
def test_bad_labeller_options_one_line_exit_2(captures, tmp_path, capsys, argv, field):
    assert main(["label", str(captures), "--out", str(tmp_path / "m"), "-q", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pccseg label: error: {field}: ")
    assert not (tmp_path / "m").exists()


def test_every_labeller_param_is_an_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["label", "--help"])
    text = capsys.readouterr().out
    for opt in ("--labeller", "--dd-power", "--dd-class-downsample", "--dd-threshold", "--dd-uncertain-threshold",
                "--dd-token-merge", "--dd-interpolation", "--attn-threshold", "--attn-uncertain-threshold",
                "--attn-token-merge", "--attn-interpolation"):
        assert opt in text


@pytest.mark.parametrize("labeller", ["dd", "attn", "fuse"])
def test_relabel_with_another_labeller_then_resume_refused(captures, tmp_path, capsys, labeller):
    import json

    out = tmp_path / labeller
    assert main(["label", str(captures), "--out", str(out), "-q", "--labeller", labeller]) == 0
    m = load_mask(out / "000000.png")
    assert m.shape == (64, 64) and set(np.unique(m)) <= {0, 12, 15, 16, 255}
    assert json.loads((out / "label_params.json").read_text())["labeller"] == labeller
    capsys.readouterr()
    assert main(["label", str(captures), "--out", str(out), "-q"]) == 2          # pcc into a dd/attn folder
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"labeller: '{labeller}' -> 'pcc'" in err[0]


def test_dd_on_a_capture_without_self_probs(captures, tmp_path, capsys):
    from pccseg.capture.synthetic import SD21, planted_capture

    save_capture(captures / "000000old", planted_capture(image_size=(64, 64), latent=(16, 16), layers=SD21[::3],
                                                          heads_per_layer=2, head_dim=8, self_probs=False))
    out = tmp_path / "m"
    assert main(["label", str(captures), "--out", str(out), "-q", "--labeller", "dd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"pccseg label: error: {captures / '000000old' / 'capture.safetensors'}: self_probs: ")
    assert "--keep-captures" in err[0] and not (out / "000000old.png").exists()
    assert main(["label", str(captures), "--out", str(out), "-q", "--labeller", "attn", "--overwrite"]) == 0


@pytest.mark.parametrize("dataset", [False, True])
def test_overwrite_never_leaves_masks_of_two_labellers(captures, tmp_path, capsys, monkeypatch, dataset):
    """--overwrite with another labeller over half the folder is refused (the other half would keep PCC's
    masks under attn's settings); an --overwrite run that stops midway says so, and a rerun without
    --overwrite is refused until one finishes."""
    import json

    import pccseg.commands.label as label_cmd

    out = tmp_path / "out"
    extra = ["--dataset"] if dataset else []
    assert main(["label", str(captures), "--out", str(out), "-q", *extra]) == 0
    before = sorted(p.read_bytes() for p in out.rglob("*.png"))
    capsys.readouterr()
    assert main(["label", str(captures / "000000"), "--out", str(out), "-q", "--labeller", "attn", "--overwrite",
                 *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would leave 1 mask(s) made with the old ones (000001)" in err[0], err
    assert sorted(p.read_bytes() for p in out.rglob("*.png")) == before
    assert json.loads((out / "label_params.json").read_text())["labeller"] == "pcc"

    import pccseg.io

    real = pccseg.io.save_mask if not dataset else label_cmd.write_sample
    calls = []

    def stop_after_one(*a, **k):                   # Ctrl-C after the first relabelled mask
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)
    with monkeypatch.context() as m:
        if dataset:
            m.setattr(label_cmd, "write_sample", stop_after_one)
        else:
            m.setattr("pccseg.io.save_mask", stop_after_one)
        assert main(["label", str(captures), "--out", str(out), "-q", "--labeller", "attn", "--overwrite",
                     "--workers", "1", *extra]) == 130
    assert json.loads((out / "label_params.json").read_text())["overwrite_in_progress"] is True
    capsys.readouterr()
    assert main(["label", str(captures), "--out", str(out), "-q", "--labeller", "attn", *extra]) == 2
    assert "an --overwrite run stopped before it had redone every mask" in capsys.readouterr().err
    assert main(["label", str(captures), "--out", str(out), "-q", "--labeller", "attn", "--overwrite", *extra]) == 0
    recorded = json.loads((out / "label_params.json").read_text())
    assert recorded["labeller"] == "attn" and "overwrite_in_progress" not in recorded
    assert main(["label", str(captures), "--out", str(out), "-q", "--labeller", "attn", *extra]) == 0

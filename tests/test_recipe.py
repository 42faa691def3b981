"""The training recipe's options and its repeatability: two runs with the same settings give the same
weights and losses; the weight average equals a hand-computed one; self-training's relabelling touches
only what its rule says; the sample filter writes a split file and nothing else."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from pccseg.cli import main
from pccseg.errors import InputError
from pccseg.io import load_mask, save_mask
from pccseg.train.config import TrainConfig
from pccseg.train.ema import WeightEMA, ema_decay
from pccseg.train.loop import train
from pccseg.train.selftrain import relabel_dataset, relabel_mask, self_train
from pccseg.dataset.synthetic import make_blocks_tree
from test_train import one_thread, read_log, small_config  # noqa: F401 (one_thread: autouse)


def weights(run, name="last"):
    return load_file(str(run / name / "model.safetensors"))


def test_same_settings_same_run(tmp_path):
    """Two short trainings with the same settings (one thread): the same loss sequence and the same weights,
    bit for bit; another seed gives others."""
    data = make_blocks_tree(tmp_path / "data", n=3, size=40)
    kw = dict(iters=6, log_every=1, val=None, crop_size=40, threads=1)
    train(small_config(data, tmp_path / "a", **kw))
    train(small_config(data, tmp_path / "b", **kw))
    train(small_config(data, tmp_path / "c", seed=1, **kw))
    la, lb, lc = ([r["loss"] for r in read_log(tmp_path / x)] for x in "abc")
    assert len(la) == 6 and la == lb and la != lc
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["threads"] == 1


def test_ema_equals_a_hand_computed_average():
    """Three updates of a one-weight model: shadow_t = d_t * shadow_{t-1} + (1 - d_t) * w_t, with the
    warm-up decays d_t = min(decay, (1 + t) / (10 + t)); BatchNorm's running mean averaged, its counter
    copied."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema = WeightEMA(model, 0.5)
    assert [ema_decay(0.5, t) for t in (1, 2, 3)] == pytest.approx([2 / 11, 3 / 12, 4 / 13])
    assert ema_decay(0.5, 100) == 0.5 and ema_decay(0.99, 10_000) == 0.99
    values, expect, expect_rm = [3.0, 5.0, -1.0], 1.0, 0.0
    for t, w in enumerate(values, 1):
        with torch.no_grad():
            model[0].weight.fill_(w)
            model[1].running_mean.fill_(10 * w)
            model[1].num_batches_tracked.fill_(t)
        ema.update(model)
        d = min(0.5, (1 + t) / (10 + t))
        expect, expect_rm = d * expect + (1 - d) * w, d * expect_rm + (1 - d) * 10 * w
    # by hand: 2/11*1 + 9/11*3 = 29/11; 3/12*29/11 + 9/12*5 = 194/44; 4/13*194/44 - 9/13 = 95/143
    assert expect == pytest.approx(95 / 143)
    s = ema.state_dict()
    assert s["0.weight"].item() == pytest.approx(95 / 143, rel=1e-6)
    assert s["1.running_mean"].item() == pytest.approx(expect_rm, rel=1e-6) and expect_rm == pytest.approx(930 / 143)
    assert s["1.num_batches_tracked"].item() == 3 and ema.updates == 3
    with pytest.raises(ValueError):
        WeightEMA(model, 1.0)


def test_ema_run_saves_the_average_beside_the_weights_and_resumes_it(tmp_path):
    data = make_blocks_tree(tmp_path / "data", n=3, size=40)
    kw = dict(iters=6, log_every=3, val_every=3, crop_size=40, ema=0.9, threads=1)
    full = train(small_config(data, tmp_path / "full", **kw))
    train(small_config(data, tmp_path / "part", stop_after=3, **kw))
    train(small_config(data, tmp_path / "part", **kw))
    meta = json.loads((tmp_path / "full" / "ema" / "checkpoint.json").read_text())
    assert meta["iteration"] == 6 and meta["ema"] == {"decay": 0.9, "updates": 6}
    ema, raw = weights(tmp_path / "full", "ema"), weights(tmp_path / "full")
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in ema)
    resumed = weights(tmp_path / "part", "ema")
    assert all(torch.equal(ema[k], resumed[k]) for k in ema)            # the average continued exactly
    log = [r for r in read_log(tmp_path / "full") if "miou" in r]
    assert [r["iter"] for r in log] == [3, 6] and all(0 <= r["ema_miou"] <= 1 for r in log)
    assert meta["miou"] == log[-1]["ema_miou"] and full["iteration"] == 6
    # the average is a checkpoint like any other: evaluate scores it
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "full" / "ema"), "--voc", str(data), "--split", "train",
               "--device", "cpu", "--workers", "0", "--no-progress"])
    assert rc == 0
    # a run without an average cannot be resumed with one
    train(small_config(data, tmp_path / "plain", iters=4, stop_after=2, val=None, crop_size=40))
    with pytest.raises(InputError, match="ema None -> 0.9"):
        train(small_config(data, tmp_path / "plain", iters=4, val=None, crop_size=40, ema=0.9))


def test_runs_from_before_the_new_settings_resume(tmp_path):
    """A checkpoint whose config lacks the newer settings (ema, threads, ...) resumes when they keep their
    defaults."""
    data = make_blocks_tree(tmp_path / "data", n=2, size=32)
    kw = dict(iters=4, val=None, crop_size=32, batch_size=2)
    train(small_config(data, tmp_path / "run", stop_after=2, **kw))
    meta_path = tmp_path / "run" / "last" / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    for key in ("ema", "self_train", "self_train_rule", "threads", "deterministic"):
        del meta["config"][key]
    meta_path.write_text(json.dumps(meta))
    assert train(small_config(data, tmp_path / "run", **kw))["iteration"] == 4


def test_warmup_schedule_known_rates_and_resume(tmp_path):
    """--warmup 4 of 8 iterations: iteration i uses lr * (1 - (i-1)/8) ** 0.9 * min(1, i/4) (from the log,
    one line per iteration); stopped at 3 and resumed, the run repeats the uninterrupted one (losses, rates,
    weights); --warmup 0 is torch's PolynomialLR, as before."""
    from pccseg.train.schedule import lr_factor

    data = make_blocks_tree(tmp_path / "data", n=2, size=32)
    kw = dict(iters=8, log_every=1, val=None, crop_size=32, batch_size=2, threads=1, warmup=4, lr=1e-3)
    train(small_config(data, tmp_path / "a", **kw))
    log = read_log(tmp_path / "a")
    want = [1e-3 * (1 - (i - 1) / 8) ** 0.9 * min(1, i / 4) for i in range(1, 9)]
    assert [r["lr"] for r in log] == pytest.approx(want, rel=1e-9)
    assert want[0] == pytest.approx(2.5e-4) and lr_factor(0, 8, 0.9, 0) == 1.0
    train(small_config(data, tmp_path / "b", stop_after=3, **kw))
    train(small_config(data, tmp_path / "b", **kw))
    assert read_log(tmp_path / "b") == [dict(r, time=x["time"]) for r, x in zip(log, read_log(tmp_path / "b"))]
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    plain = dict(kw, warmup=0)
    train(small_config(data, tmp_path / "c", **plain))
    assert [r["lr"] for r in read_log(tmp_path / "c")] == pytest.approx(
        [1e-3 * (1 - (i - 1) / 8) ** 0.9 for i in range(1, 9)], rel=1e-9)


def test_relabel_mask_rules():
    mask = torch.tensor([[0, 255, 255], [1, 1, 255]], dtype=torch.uint8)
    probs = torch.zeros(3, 2, 3)
    probs[2] = torch.tensor([[0.95, 0.95, 0.6], [0.99, 0.5, 0.97]])    # class 2 confident at four pixels
    probs[0] = 1 - probs[2]
    fill = relabel_mask(mask, probs, 0.9, "fill")
    assert fill.tolist() == [[0, 2, 255], [1, 1, 2]] and fill.dtype == torch.uint8
    changed = fill != mask
    assert bool((mask[changed] == 255).all())                            # only uncertain pixels change
    assert relabel_mask(mask, probs, 0.9, "all").tolist() == [[2, 2, 255], [2, 1, 2]]
    assert torch.equal(relabel_mask(mask, probs, 1.0, "fill"), mask)     # nothing is that confident


def test_relabel_dataset_touches_only_uncertain_pixels_and_not_the_source(tmp_path):
    data = make_blocks_tree(tmp_path / "data", n=3, size=40)          # a 255 band on the left edge
    train(small_config(data, tmp_path / "teacher", iters=4, val=None, crop_size=40))
    before = {p.name: p.read_bytes() for p in sorted((data / "SegmentationClass").iterdir())}
    report = relabel_dataset(tmp_path / "teacher", data, tmp_path / "new", threshold=0.0, rule="fill",
                             device="cpu")
    assert {p.name: p.read_bytes() for p in sorted((data / "SegmentationClass").iterdir())} == before
    assert report["uncertain_before"] > 0 and report["uncertain_after"] == 0            # threshold 0: all filled
    assert report["changed"] == pytest.approx(report["filled"]) == pytest.approx(report["uncertain_before"])
    for name in before:
        old, new = load_mask(data / "SegmentationClass" / name), load_mask(tmp_path / "new/SegmentationClass" / name)
        assert np.array_equal(new[old != 255], old[old != 255]) and (new != 255).all()
    assert (tmp_path / "new/ImageSets/Segmentation/train.txt").read_text() == \
        (data / "ImageSets/Segmentation/train.txt").read_text()
    with pytest.raises(InputError, match="another relabelling"):
        relabel_dataset(tmp_path / "teacher", data, tmp_path / "new", threshold=0.5, device="cpu")


def test_self_train_option_trains_teacher_then_student(tmp_path):
    data = make_blocks_tree(tmp_path / "data", n=2, size=32)
    config = small_config(data, tmp_path / "run", iters=3, val=None, crop_size=32, batch_size=2, self_train=0.5)
    with pytest.raises(ValueError, match="self_train"):
        train(config)                                                     # the plain loop does not ignore it
    result = self_train(config)
    run = tmp_path / "run"
    assert result["teacher"]["iteration"] == 3 and result["iteration"] == 3
    assert (run / "teacher/last/checkpoint.json").is_file() and (run / "last/checkpoint.json").is_file()
    assert json.loads((run / "config.json").read_text())["data"] == str(run / "relabelled")
    assert 0 <= result["relabel"]["filled"] <= result["relabel"]["uncertain_before"]


@pytest.mark.parametrize("field, value, words", [
    ("ema", 1.0, "ema: must be a finite number > 0 and < 1, got 1.0"), ("ema", 0, "ema: must be a finite number > 0"),
    ("self_train", 0.0, "self_train: must be a finite number > 0 and <= 1"),
    ("self_train_rule", "some", "self_train_rule: must be one of fill, all"),
    ("threads", 0, "threads: must be an integer >= 1"), ("warmup", -1, "warmup: must be an integer >= 0")])
def test_bad_recipe_settings(tmp_path, field, value, words):
    with pytest.raises(InputError) as e:
        TrainConfig(data=str(tmp_path), out=str(tmp_path / "r"), **{field: value})
    assert words in str(e.value)


def test_cli_options(tmp_path, capsys):
    rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--ema", "1.5"])
    assert rc == 2 and "--ema: must be a finite number > 0 and < 1, got 1.5" in capsys.readouterr().err


def test_filter_select_known_answer():
    from pccseg.dataset.filter import FilterRule, SampleStats, select

    names = ["background", "cat", "dog"]
    stats = [SampleStats(f"{i:02d}", 0.1, {1: 0.10 * (1 + 0.01 * i)}, ("cat",)) for i in range(6)]
    stats += [SampleStats("big", 0.1, {1: 0.9}, ("cat",)),               # cat area far off its median
              SampleStats("vague", 0.7, {1: 0.1}, ("cat",)),              # mostly uncertain
              SampleStats("nodog", 0.1, {1: 0.1}, ("cat", "dog"))]        # a prompted class not found
    kept, dropped = select(stats, FilterRule(max_uncertain=0.5, area_mad=3.0, missing=True), names)
    assert kept == [f"{i:02d}" for i in range(6)]
    assert dropped["big"][0].startswith("area cat 0.9000") and dropped["vague"] == ["uncertain 0.70"]
    assert dropped["nodog"] == ["missing dog"]
    kept, dropped = select(stats, FilterRule(max_uncertain=None, area_mad=None, missing=False), names)
    assert len(kept) == len(stats) and not dropped


def test_filter_writes_a_split_file_and_changes_no_image_or_mask(tmp_path, capsys):
    data = make_blocks_tree(tmp_path / "data", n=6, size=32)
    mask = load_mask(data / "SegmentationClass/000002.png")
    mask[:, :20] = 255                                                    # sample 2: mostly uncertain
    save_mask(data / "SegmentationClass/000002.png", mask)
    (data / "manifest.jsonl").write_text("".join(json.dumps({"id": f"{i:06d}", "classes": ["aeroplane", "bicycle"]
                                                             if i != 4 else ["aeroplane", "cat"]}) + "\n"
                                                 for i in range(6)))
    files = {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}
    rc = main(["filter", str(data), "--max-uncertain", "0.5", "--area-mad", "0", "--list"])
    report = json.loads(capsys.readouterr().out)
    # sample 2 is mostly uncertain and lost its red block (aeroplane) too; sample 4 was prompted a cat
    assert rc == 0 and report["kept"] == 4 and report["reasons"] == {"uncertain": 1, "missing": 2}
    assert set(report["dropped_stems"]) == {"000002", "000004"}
    written = data / "ImageSets/Segmentation/filtered.txt"
    assert written.read_text().split() == ["000000", "000001", "000003", "000005"]
    after = {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file() and p != written}
    assert after == files                                                 # nothing else written or changed
    rc = main(["filter", str(data), "--out-split", "train"])
    assert rc == 2 and "--out-split: the filtered split must get a name of its own" in capsys.readouterr().err
    rc = main(["filter", str(data), "--max-uncertain", "1.5"])
    assert rc == 2 and "--max-uncertain: must be a finite number from 0 to 1" in capsys.readouterr().err
    rc = main(["filter", str(data), "--out-split", "../x"])
    assert rc == 2


def test_filter_help_imports_no_torch():
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = """if True:
        import sys
        from pccseg.cli import main
        for cmd in (["filter"], ["train"]):
            try:
                main(cmd + ["--help"])
            except SystemExit as e:
                assert e.code == 0, cmd
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "safetensors")))
    """
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"

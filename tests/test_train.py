"""Training on CPU: a small DeepLabv3 (MobileNetV3, random init, 64 px crops) overfits 4 images; resume
continues a stopped run exactly (log lines included) and applies or refuses changed settings; the
backbone weights are never silently random; evaluate (API and CLI); the data stream and augmentation;
every bad setting is one line."""

import json
import math
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pccseg.cli import main
from pccseg.train.deeplab import (backbone_state, build_model, find_checkpoint, normalize, read_checkpoint_meta)
from pccseg.errors import InputError
from pccseg.train.evaluate import evaluate, predict
from pccseg.io import load_mask
from pccseg.train.augment import StreamSampler, TrainStream, augment
from pccseg.train.config import TrainConfig
from pccseg.train.loop import segmentation_loss, train
from pccseg.dataset.synthetic import make_blocks_tree
from pccseg.dataset.voc import VOCSplit
from safetensors.torch import load_file, save_file

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convolutions on a shared 2-core machine run fastest (and reproducibly) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_config(data, out, **kw):
    base = dict(data=str(data), out=str(out), val=str(data), val_split="train", arch="mobilenet_v3_large",
                backbone_weights="none", aux_loss=False, batch_size=4, crop_size=64, short_side=None,
                scale_min=0.75, scale_max=1.25, lr=2e-3, backbone_lr_mult=1.0, bn_momentum=0.1, workers=0,
                device="cpu", progress=False, check_data=True, tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


def read_log(run):
    return [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]


def cli_error(capsys, argv):
    """Run the CLI; return (exit code, stderr), asserting stderr is one line."""
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return rc, err


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    root = tmp_path_factory.mktemp("overfit")
    data = make_blocks_tree(root / "data")
    run = root / "run"
    cfg = small_config(data, run, iters=30, val_every=10, log_every=5, keep_best=True, tensorboard=True)
    result = train(cfg)
    return data, run, cfg, result


def test_overfit_loss_falls_miou_rises(overfit):
    data, run, cfg, result = overfit
    log = read_log(run)
    losses = [r for r in log if "loss" in r]
    vals = [r for r in log if "miou" in r]
    assert [r["iter"] for r in losses] == [5, 10, 15, 20, 25, 30]
    assert [r["iter"] for r in vals] == [10, 20, 30]
    assert all(set(r) == {"iter", "loss", "lr", "time"} for r in losses)
    assert all(set(r) == {"iter", "miou", "iou", "acc"} and len(r["iou"]) == 21 for r in vals)
    assert losses[-1]["loss"] < 0.5 * losses[0]["loss"]
    assert losses[-1]["lr"] < losses[0]["lr"] < cfg.lr                  # poly schedule decays
    # the log's clock (seconds since the start) grows, and its last entry is the run's total
    stamps, total = [r["time"] for r in losses], result["seconds"]
    assert 0 < stamps[0] < stamps[-1] == pytest.approx(total, abs=0.01)
    # classes absent from prediction and target are null; present ones are numbers
    assert vals[-1]["iou"][3] is None and vals[-1]["iou"][1] is not None

    torch.manual_seed(cfg.seed)  # the untrained model of the run
    untrained = build_model(cfg.arch, 21, aux_loss=False)
    before = evaluate(untrained, VOCSplit(data, "train"), device="cpu", workers=0, progress=False,
                      short_side=None)
    assert result["best_miou"] > before.miou + 0.25
    assert result["best_miou"] == max(r["miou"] for r in vals)
    assert result["last_miou"] == vals[-1]["miou"] and result["iteration"] == 30

    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == cfg.lr and config["amp"] is False and config["changes"] == []


def test_tensorboard_beside_the_log(overfit):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data, run, cfg, result = overfit
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    loss = events.Scalars("train/loss")
    log = [r for r in read_log(run) if "loss" in r]
    assert [e.step for e in loss] == [r["iter"] for r in log]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in log], rel=1e-6)
    assert [e.step for e in events.Scalars("val/mIoU")] == [10, 20, 30]
    assert "val/IoU/aeroplane" in events.Tags()["scalars"]


def test_checkpoints(overfit):
    data, run, cfg, result = overfit
    last, best = read_checkpoint_meta(run / "last"), read_checkpoint_meta(run / "best")
    assert find_checkpoint(run) == run / "last"                    # a run directory means its final model
    assert last["iteration"] == 30 and last["num_classes"] == 21 and last["class_names"][15] == "person"
    assert best["iteration"] == result["best_iteration"] and best["miou"] == result["best_miou"]
    assert best["selected_on"] == {"dataset": str(data.resolve()), "split": "train", "images": None}
    assert last["config"]["crop_size"] == 64 and last["scheduler"]["last_epoch"] == 30
    assert sorted(p.name for p in (run / "last").iterdir()) == \
        ["checkpoint.json", "model.safetensors", "training.safetensors"]
    assert sorted(p.name for p in (run / "best").iterdir()) == ["checkpoint.json", "model.safetensors"]
    state = load_file(str(run / "last" / "training.safetensors"))
    assert "rng.torch" in state and any(k.endswith(".exp_avg_sq") for k in state)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # no leftovers of atomic writes
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("model.safetensors", "training.safetensors", "checkpoint.json"):  # not safetensors' own 0600
        assert (run / "last" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name

    # evaluating a checkpoint reproduces the mIoU logged at its iteration
    scores = evaluate(run / "best", data, split="train", device="cpu", workers=0, progress=False, short_side=None)
    assert scores.miou == pytest.approx(result["best_miou"], abs=1e-9)


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="needs pthread_sigmask")
def test_evaluate_workers_score_the_same_and_start_with_the_stop_signals_blocked(overfit, tmp_path, monkeypatch):
    # a signal in a forked worker's first moments would run the handler it inherited from this process and
    # raise into its copy of this process's stack; the workers start with SIGINT and SIGTERM blocked
    from pccseg.signals import dataloader_worker_init
    from pccseg.train import evaluate as E

    data, run, cfg, result = overfit
    seen = tmp_path / "at_start.json"

    def init(worker_id: int) -> None:         # in the worker, before it lets the signals in
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        seen.write_text(json.dumps(sorted(int(s) for s in mask & {signal.SIGINT, signal.SIGTERM})))
        dataloader_worker_init(worker_id)

    monkeypatch.setattr(E, "dataloader_worker_init", init)
    scores = evaluate(run / "best", data, split="train", device="cpu", workers=1, progress=False, short_side=None)
    assert scores.miou == pytest.approx(result["best_miou"], abs=1e-9)
    assert json.loads(seen.read_text()) == sorted([int(signal.SIGINT), int(signal.SIGTERM)])


def test_evaluate_cli(overfit, tmp_path, capsys):
    data, run, cfg, result = overfit
    out = tmp_path / "eval"
    rc = main(["evaluate", "--checkpoint", str(run), "--voc", str(data), "--split", "train",
               "--out", str(out), "--save-predictions", "--device", "cpu", "--workers", "0", "--no-progress"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| class | IoU | Acc |" in stdout and "| aeroplane |" in stdout and "| **mean** |" in stdout
    assert "(iteration 30)" in stdout and "4 images, short side native" in stdout and "note:" not in stdout
    scores = json.loads((out / "scores.json").read_text())
    assert scores["miou"] == pytest.approx(result["last_miou"]) and scores["images"] == 4
    assert scores["short_side"] is None and scores["selected_on_this_split"] is False  # the run's setting
    assert (out / "scores.csv").read_text().startswith("class,iou,acc\nbackground,")
    preds = sorted((out / "predictions").iterdir())
    assert [p.stem for p in preds] == ["000000", "000001", "000002", "000003"]
    assert load_mask(preds[0]).shape == (64, 64) and load_mask(preds[0]).max() < 21

    # the best checkpoint scored on the split it was selected on: said so
    assert main(["evaluate", "--checkpoint", str(run / "best"), "--voc", str(data), "--split", "train",
                 "--out", str(out), "--device", "cpu", "--workers", "0", "--no-progress", "--limit", "1"]) == 0
    stdout = capsys.readouterr().out
    assert "note: this checkpoint was selected as the best on this very split" in stdout
    assert "(1 image, " in stdout
    assert json.loads((out / "scores.json").read_text())["selected_on_this_split"] is True

    rc, err = cli_error(capsys, ["evaluate", "--checkpoint", str(run), "--voc", str(data), "--split", "train",
                                 "--limit", "-1", "--device", "cpu", "--workers", "0", "--no-progress"])
    assert rc == 2 and "limit: must be an integer >= 1, got -1" in err


def test_resume_matches_uninterrupted(tmp_path):
    """Stopped at 6 with log lines every 4 and a check every 5: the resumed run's log (the first loss line
    after the resume averages iterations 5-8, two of them before the stop) and weights are the
    uninterrupted run's."""
    data = make_blocks_tree(tmp_path / "data", n=3, size=48, class_names=["background", "cat", "dog"])
    kw = dict(iters=10, val_every=5, log_every=4, crop_size=48)
    full = train(small_config(data, tmp_path / "full", **kw))
    stopped = train(small_config(data, tmp_path / "part", stop_after=6, **kw))
    assert stopped["iteration"] == 6
    assert read_checkpoint_meta(tmp_path / "part" / "last")["iteration"] == 6
    assert [r["iter"] for r in read_log(tmp_path / "part")] == [4, 5]          # no partial line at the stop
    # a kill after iteration 6 left extra log lines and a half-written checkpoint folder behind
    with open(tmp_path / "part" / "log.jsonl", "a") as f:
        f.write(json.dumps({"iter": 7, "loss": 99.0, "lr": 0.0}) + "\n")
    (tmp_path / "part" / ".last.k1ll3d.pccseg.tmp").mkdir()
    (tmp_path / "part" / ".last.k1ll3d.pccseg.tmp" / "model.safetensors").write_bytes(b"partial")
    resumed = train(small_config(data, tmp_path / "part", **kw))  # RUN/last exists -> resume
    assert resumed["iteration"] == 10
    assert not (tmp_path / "part" / ".last.k1ll3d.pccseg.tmp").exists()

    log_full, log_part = read_log(tmp_path / "full"), read_log(tmp_path / "part")
    assert [r["iter"] for r in log_part if "loss" in r] == [4, 8, 10]
    assert [r["iter"] for r in log_part if "miou" in r] == [5, 10]
    for a, b in zip(log_full, log_part, strict=True):
        assert a.keys() == b.keys() and a["iter"] == b["iter"]
        if "loss" in a:
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-6) and b["lr"] == pytest.approx(a["lr"], rel=1e-12)
        else:
            assert b["miou"] == pytest.approx(a["miou"], abs=1e-6)
    wa = load_file(str(tmp_path / "full" / "last" / "model.safetensors"))
    wb = load_file(str(tmp_path / "part" / "last" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-7)  # bit-equal here
    assert resumed["last_miou"] == pytest.approx(full["last_miou"])

    # a 3-class checkpoint scored on a 21-class VOC tree: one clear line, exit 2
    voc = make_blocks_tree(tmp_path / "voc", n=1)
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "part"), "--voc", str(voc), "--split", "train",
               "--device", "cpu", "--workers", "0", "--no-progress"])
    assert rc == 2


def test_resume_applies_a_changed_lr_and_refuses_other_changes(tmp_path, capsys):
    data = make_blocks_tree(tmp_path / "data", n=2, size=32)
    run = tmp_path / "run"
    kw = dict(iters=10, log_every=1, val=None, crop_size=32, batch_size=2, lr=2e-3)
    train(small_config(data, run, stop_after=4, **kw))
    kw["lr"] = 1e-5
    train(small_config(data, run, stop_after=6, **kw))
    log = read_log(run)
    # from iteration 5 on the new rate, on the poly schedule's closed form: 1e-5 * (1 - 4/10) ** 0.9
    assert [r["lr"] for r in log if r["iter"] in (4, 5) and "lr" in r] == pytest.approx([2e-3 * (1 - 3 / 10) ** 0.9,
                                                                             1e-5 * (1 - 4 / 10) ** 0.9])
    assert {"iter": 4, "changed": {"lr": [2e-3, 1e-5]}} in log
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 1e-5 and config["changes"] == [{"iteration": 4, "changed": {"lr": [2e-3, 1e-5]}}]
    assert read_checkpoint_meta(run / "last")["changes"] == config["changes"]
    # a longer schedule: applied too
    train(small_config(data, run, stop_after=7, **dict(kw, iters=20)))
    assert read_log(run)[-1]["lr"] == pytest.approx(1e-5 * (1 - 6 / 20) ** 0.9)

    argv = ["train", "--data", str(data), "--out", str(run), "--model", "mobilenet_v3_large", "--iters", "20",
            "--lr", "1e-5", "--batch-size", "2", "--crop-size", "16", "--backbone-weights", "none",
            "--no-aux-loss", "--device", "cpu", "--workers", "0", "--no-progress", "--short-side", "0",
            "--scale", "0.75", "1.25", "--backbone-lr-mult", "1", "--bn-momentum", "0.1", "--no-tensorboard"]
    rc, err = cli_error(capsys, argv)
    assert rc == 2 and "cannot resume with other settings (crop_size 32 -> 16)" in err and "--no-resume" in err
    assert read_checkpoint_meta(run / "last")["iteration"] == 7


def test_backbone_weights_never_silently_random(tmp_path, monkeypatch, capsys):
    import torchvision

    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    calls = []

    def offline(url, *a, **k):
        calls.append(url)
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(InputError) as e:
        backbone_state("mobilenet_v3_large", "imagenet")
    msg = str(e.value)
    assert "mobilenet_v3_large-8738ca79.pth" in msg and str(hub / "checkpoints") in msg
    assert "--backbone-weights PATH" in msg and "--backbone-weights none" in msg and len(calls) == 1
    assert backbone_state("mobilenet_v3_large", "none") is None

    # the CLI: one line, exit 2, before anything is written
    data = make_blocks_tree(tmp_path / "data", n=2, size=32)
    rc, err = cli_error(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--model",
                                 "mobilenet_v3_large", "--device", "cpu", "--workers", "0", "--no-progress"])
    assert rc == 2 and "could not be downloaded" in err and not (tmp_path / "run").exists()

    # in the cache (torchvision's file): used, no download; keyed as DeepLab's backbone
    reference = torchvision.models.mobilenet_v3_large(weights=None)
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), hub / "checkpoints" / "mobilenet_v3_large-8738ca79.pth")
    state = backbone_state("mobilenet_v3_large", "imagenet")
    assert len(calls) == 2                    # one by the API call above, one by the CLI; none now
    model = build_model("mobilenet_v3_large", 3, backbone=state, aux_loss=False)
    torch.testing.assert_close(model.backbone["0"][0].weight, reference.features[0][0].weight, rtol=0, atol=0)

    # a local file, safetensors too; a file of another model is refused
    save_file(reference.state_dict(), str(tmp_path / "mnv3.safetensors"))
    assert backbone_state("mobilenet_v3_large", str(tmp_path / "mnv3.safetensors")).keys() == state.keys()
    with pytest.raises(InputError, match="not the resnet50 ImageNet weights"):
        backbone_state("resnet50", str(tmp_path / "mnv3.safetensors"))
    with pytest.raises(InputError, match="backbone weights file not found"):
        backbone_state("resnet50", str(tmp_path / "nope.pth"))
    # garbage, and a pickle that runs code (torch's weights-only load refuses it): one line each
    (tmp_path / "garbage.pth").write_bytes(b"\x00garbage" * 10)
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"w": Evil()}))
    for name in ("garbage.pth", "evil.pth"):
        with pytest.raises(InputError, match=f"{name}: --backbone-weights: cannot read backbone weights"):
            backbone_state("mobilenet_v3_large", str(tmp_path / name))


@pytest.mark.parametrize("option,value,needle", [
    ("--lr", "nan", "error: --lr: must be a finite number > 0, got nan"),          # named as the options
    ("--lr", "inf", "error: --lr: must be a finite number > 0, got inf"),
    ("--workers", "-1", "error: --workers: must be an integer >= 0, got -1"),
    ("--weight-decay", "-1", "error: --weight-decay: must be a finite number >= 0"),
    ("--cat-max-ratio", "1.5", "error: --cat-max-ratio: must be a finite number > 0 and <= 1"),
    ("--train-split", "../x", "error: --train-split: must be a split name"),
    ("--iters", "0", "error: --iters: must be an integer >= 1"),
])
def test_bad_settings_one_line(tmp_path, capsys, option, value, needle):
    rc, err = cli_error(capsys, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                                 "--backbone-weights", "none", option, value])
    assert rc == 2 and needle in err and not (tmp_path / "run").exists()
    with pytest.raises(InputError):  # the API refuses the same
        TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), **{
            option[2:].replace("-", "_"): float(value) if option != "--train-split" else value}).validate()


def test_bad_checkpoints_one_line(overfit, tmp_path, capsys):
    import shutil

    data, run, cfg, result = overfit
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run / "last", ckpt)
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    argv = ["evaluate", "--checkpoint", str(ckpt), "--voc", str(data), "--split", "train", "--device", "cpu"]
    (ckpt / "checkpoint.json").write_bytes(b'{"format": "\xff\xfe"}')
    rc, err = cli_error(capsys, argv)
    assert rc == 2 and "checkpoint.json: not UTF-8 text" in err
    (ckpt / "checkpoint.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "arch"}))
    rc, err = cli_error(capsys, argv)
    assert rc == 2 and "checkpoint.json: arch: missing or unknown model None" in err
    (ckpt / "checkpoint.json").write_text(json.dumps(dict(meta, num_classes="21")))
    rc, err = cli_error(capsys, argv)
    assert rc == 2 and "num_classes: must be an integer" in err


def test_class_count_error_message(tmp_path, capsys):
    data = make_blocks_tree(tmp_path / "data", n=2, size=32, class_names=["background", "cat", "dog"])
    train(small_config(data, tmp_path / "run", iters=1, val=None, log_every=1, crop_size=32, batch_size=2))
    voc = make_blocks_tree(tmp_path / "voc", n=1, size=32)
    rc, err = cli_error(capsys, ["evaluate", "--checkpoint", str(tmp_path / "run" / "last"), "--voc", str(voc),
                                 "--split", "train", "--device", "cpu", "--workers", "0", "--no-progress"])
    assert rc == 2 and "checkpoint predicts 3 classes but dataset" in err and "has 21" in err


def test_augment_pads_crops_flips(tmp_path):
    image = torch.full((3, 20, 30), 200, dtype=torch.uint8)
    mask = torch.ones(20, 30, dtype=torch.long)
    rng = np.random.default_rng(0)
    for _ in range(10):
        x, y = augment(image, mask, rng, crop_size=64, scale=(0.5, 2.0))
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y.shape == (64, 64)
        assert (y == 255).any() and set(y.unique().tolist()) == {1, 255}   # padded: 255 in the mask
        pad = y == 255
        assert torch.equal(x[:, pad], torch.zeros_like(x[:, pad]))          # ... the mean colour (mmseg)
        assert torch.allclose(x[:, ~pad], normalize(image[:, :1, :1]).reshape(3, 1))
    a = augment(image, mask, np.random.default_rng(3), 16, photometric=True, cat_max_ratio=0.75)
    b = augment(image, mask, np.random.default_rng(3), 16, photometric=True, cat_max_ratio=0.75)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_augment_short_side_and_cat_max_ratio():
    # short_side: a 20x40 image is first brought to a short side of 32 (40x... capped by the long side)
    image = torch.zeros(3, 20, 40, dtype=torch.uint8)
    mask = torch.zeros(20, 40, dtype=torch.long)
    mask[:, 20:] = 1
    x, y = augment(image, mask, np.random.default_rng(0), 200, scale=(1.0, 1.0), short_side=32)
    assert (y != 255).sum(0).max() == 32 and (y != 255).sum(1).max() == 64

    # cat_max_ratio: crops that straddle the border between the two classes are preferred
    def mixed(ratio):
        hits = 0
        for k in range(60):
            _, crop = augment(image, mask, np.random.default_rng(k), 8, scale=(1.0, 1.0), cat_max_ratio=ratio)
            counts = torch.bincount(crop.flatten(), minlength=2)[:2]
            hits += bool(counts.min() > 0 and counts.max() < 0.75 * counts.sum())
        return hits

    assert mixed(1.0) < 15 and mixed(0.75) > 40


def test_photometric_distortion_changes_colour_only():
    from pccseg.train.augment import photometric_distortion

    rng = np.random.default_rng(0)
    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 16, 16), dtype=np.uint8))
    outs = [photometric_distortion(image, rng) for _ in range(40)]
    assert all(o.shape == image.shape and o.dtype == torch.uint8 for o in outs)
    changed = [not torch.equal(o, image) for o in outs]
    assert 30 < sum(changed) < 40          # each of its 5 steps is drawn with p = 0.5: all off 1 in 32
    grey = torch.full((3, 8, 8), 120, dtype=torch.uint8)
    for o in (photometric_distortion(grey, rng) for _ in range(20)):
        assert (o == o[:, :1, :1]).all()   # brightness/contrast/hue/saturation keep a flat grey flat


def test_loss_averaging_as_mmsegmentation():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = 255
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    assert segmentation_loss(logits, target, "all") == pytest.approx(per_pixel.sum().item() / target.numel())
    assert segmentation_loss(logits, target, "valid") == pytest.approx(
        F.cross_entropy(logits, target, ignore_index=255).item())
    assert segmentation_loss(logits, torch.full_like(target, 255), "valid") == 0


def test_gradient_clipping(tmp_path):
    from pccseg.train import loop as train_module

    data = make_blocks_tree(tmp_path / "data", n=2, size=32)
    norms = {}
    for clip in (None, 1e-3):
        cfg = small_config(data, tmp_path / "run", grad_clip=clip, crop_size=32, batch_size=2, val=None)
        env = train_module._setup(cfg)
        model = train_module._model(cfg, 21, env)
        opt, sched, scaler = train_module._optimizer(cfg, model, env)
        stream = TrainStream(VOCSplit(data), 0, crop_size=32)
        x, y = (torch.stack(t) for t in zip(stream[0], stream[1]))
        train_module._step(cfg, env, model, x, y, opt, sched, scaler)
        norms[clip] = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()
                                                            if p.grad is not None])).item()
    assert norms[1e-3] == pytest.approx(1e-3, rel=1e-3) and norms[None] > 0.1


def test_evaluate_resizes_to_short_side_and_back():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            # class 1 on the left half of whatever size comes in
            out = torch.zeros(x.shape[0], 2, *x.shape[-2:])
            out[:, 1, :, : x.shape[-1] // 2] = 1
            return {"out": out}

    logits = predict(Probe(), torch.zeros(1, 3, 20, 30), short_side=512)
    assert seen == [(512, 768)] and logits.shape == (1, 2, 20, 30)
    assert (logits.argmax(1)[0, :, :15] == 1).all() and (logits.argmax(1)[0, :, 15:] == 0).all()
    predict(Probe(), torch.zeros(1, 3, 20, 300), short_side=32)
    assert seen[-1] == (9, 128)                         # the long side is capped at 4 x 32
    predict(Probe(), torch.zeros(1, 3, 20, 30), short_side=None)
    assert seen[-1] == (20, 30)


def test_stream_is_sharded_and_resumable(tmp_path):
    per_rank, world = 3, 2
    all_ranks = [list(StreamSampler(0, 5, per_rank, r, world)) for r in range(world)]
    assert sorted(all_ranks[0] + all_ranks[1]) == list(range(5 * per_rank * world))
    assert list(StreamSampler(2, 5, per_rank, 1, world)) == all_ranks[1][2 * per_rank:]
    data = make_blocks_tree(tmp_path / "d", n=5, size=16)
    stream = TrainStream(VOCSplit(data, "train"), 1, crop_size=16, scale=(1.0, 1.0))
    epoch0 = [stream.index(k) for k in range(5)]
    assert sorted(epoch0) == list(range(5))                  # every image once per epoch
    assert sorted(stream.index(k) for k in range(5, 10)) == list(range(5))
    assert torch.equal(stream[7][0], TrainStream(stream.base, 1, crop_size=16, scale=(1.0, 1.0))[7][0])


def test_distributed_world_size_one(tmp_path, monkeypatch):
    """The DDP path (gloo, one process): process group, DDP wrapper, all-reduced loss and scores; SyncBN
    (on by default) is left out on the CPU, where it has no kernel."""
    import torch.distributed as dist

    data = make_blocks_tree(tmp_path / "d", n=2, size=32)
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(29500 + os.getpid() % 1000)}.items():
        monkeypatch.setenv(k, v)
    try:
        r = train(small_config(data, tmp_path / "run", iters=2, val_every=2, log_every=1, crop_size=32,
                               batch_size=2))
        assert dist.is_initialized() and dist.get_world_size() == 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert r["iteration"] == 2 and r["last_miou"] is not None and not math.isnan(r["last_miou"])
    assert "module." not in next(iter(load_file(str(tmp_path / "run" / "last" / "model.safetensors"))))


# ------------------------------------------------------------------ kills, signals, torn files (issue 25, 22)
def _cli_args(data, run, iters=8, **options):
    """``pccseg train`` argv of a 2-image, 32 px run validated on its own images every 4 iterations."""
    opts = {"--iters": iters, "--val-every": 4, "--log-every": 1, "--batch-size": 2, "--crop-size": 32,
            "--short-side": 0, "--lr": 2e-3, "--backbone-lr-mult": 1, "--bn-momentum": 0.1, "--workers": 0,
            "--device": "cpu", "--backbone-weights": "none", "--model": "mobilenet_v3_large", **options}
    argv = ["train", "--data", str(data), "--val", str(data), "--val-split", "train", "--out", str(run),
            "--no-aux-loss", "--no-progress", "--no-tensorboard", "--scale", "0.75", "1.25"]
    for k, v in opts.items():
        argv += [k, str(v)]
    return argv


def _same_log(a, b):
    for x, y in zip(read_log(a), read_log(b), strict=True):
        assert x.keys() == y.keys() and x["iter"] == y["iter"], (x, y)
        if "loss" in x:
            assert y["loss"] == pytest.approx(x["loss"], rel=1e-6)
        if "miou" in x:
            assert y["miou"] == pytest.approx(x["miou"], abs=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 8-iteration run (CLI), the one every interrupted run below must equal."""
    root = tmp_path_factory.mktemp("reference")
    data = make_blocks_tree(root / "data", n=2, size=32)
    assert main(_cli_args(data, root / "full")) == 0
    return data, root / "full"


def test_a_kill_between_the_renames_of_last_resumes_from_the_complete_copy(reference, tmp_path, caplog):
    """A kill between renaming RUN/last aside and renaming the new one in leaves both under temporary
    names; so did older versions' kill between removing last/ and renaming (only the new copy): the rerun
    puts the complete copy back and resumes from it, not from iteration 1."""
    import shutil

    data, full = reference
    run = tmp_path / "run"
    assert main(_cli_args(data, run, **{"--stop-after": 2})) == 0
    shutil.copytree(run / "last", tmp_path / "at2")
    assert main(_cli_args(data, run, **{"--stop-after": 5})) == 0
    (run / "last").rename(run / ".last.0badf00d.pccseg.tmp")             # the new copy, complete
    (tmp_path / "at2").rename(run / ".last.0badf00d.old.pccseg.tmp")     # the old one, renamed aside
    caplog.clear()
    assert main(_cli_args(data, run, **{"--stop-after": 6}) + ["-v"]) == 0   # -v: INFO under --no-progress
    assert f"resuming {run} from iteration 5" in caplog.text
    assert read_checkpoint_meta(run / "last")["iteration"] == 6
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    # the reproduction: only a complete temporary copy (what a kill left before this fix)
    (run / "last").rename(run / ".last.deadbeef.pccseg.tmp")
    assert main(_cli_args(data, run)) == 0
    _same_log(full, run)
    wa = load_file(str(full / "last" / "model.safetensors"))
    wb = load_file(str(run / "last" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_an_incomplete_last_is_refused_not_restarted_over_best(reference, tmp_path, capsys):
    data, _ = reference
    run = tmp_path / "run"
    assert main(_cli_args(data, run, **{"--stop-after": 4}) + ["--keep-best"]) == 0
    (run / "last" / "checkpoint.json").unlink()
    capsys.readouterr()
    rc, err = cli_error(capsys, _cli_args(data, run) + ["--keep-best"])
    assert rc == 2 and "last: incomplete checkpoint (no checkpoint.json)" in err and "--no-resume" in err
    assert (run / "best" / "checkpoint.json").is_file() and len(read_log(run)) > 4
    # a symlinked last/ is refused too
    (run / "last").rename(tmp_path / "elsewhere")
    (run / "last").symlink_to(tmp_path / "elsewhere")
    rc, err = cli_error(capsys, _cli_args(data, run))
    assert rc == 2 and "last: is a symbolic link" in err
    assert (tmp_path / "elsewhere" / "model.safetensors").is_file()


def test_a_torn_last_log_line_does_not_block_resume(reference, tmp_path):
    data, full = reference
    run = tmp_path / "run"
    assert main(_cli_args(data, run, **{"--stop-after": 4})) == 0
    with open(run / "log.jsonl", "a") as f:
        f.write('{"iter": 5, "loss": 0.12')                    # a kill mid-append: no newline
    assert main(_cli_args(data, run)) == 0
    _same_log(full, run)
    # a broken line that is not the torn tail is still refused, naming it
    with open(run / "log.jsonl", "a") as f:
        f.write('{"iter": 9, "lo\n{"iter": 9}\n')
    with pytest.raises(InputError, match=r"log.jsonl: line \d+: not valid JSON"):
        train(small_config(data, run, iters=10, val=None, crop_size=32, batch_size=2))


@pytest.mark.parametrize("sig, where, code", [(signal.SIGTERM, "step", 143), (signal.SIGINT, "validation", 130)])
def test_a_signal_saves_the_step_reached_and_the_rerun_goes_on_as_uninterrupted(reference, tmp_path, capsys,
                                                                               monkeypatch, sig, where, code):
    """SIGTERM during iteration 3's step, or Ctrl-C at the end of iteration 4's validation (its random
    draws made): RUN/last of that iteration, one line, exit 143 / 130; the rerun's losses, scores and
    weights are the uninterrupted run's."""
    import pccseg.train.loop as loop

    data, full = reference
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        if where == "step":
            real_step = loop._step

            def step(*a, **k):
                out = real_step(*a, **k)
                if len(read_log(run)) == 2:                    # iteration 3: two lines so far
                    os.kill(os.getpid(), sig)
                return out
            m.setattr(loop, "_step", step)
        else:
            real_evaluate = loop.evaluate

            def evaluate(*a, **k):
                scores = real_evaluate(*a, **k)
                os.kill(os.getpid(), sig)
                return scores
            m.setattr(loop, "evaluate", evaluate)
        capsys.readouterr()
        rc, err = cli_error(capsys, _cli_args(data, run))
    assert rc == code and err == f"pccseg train: {'terminated (SIGTERM)' if code == 143 else 'interrupted'}"
    meta = read_checkpoint_meta(run / "last")
    assert meta["iteration"] == (3 if where == "step" else 4)
    assert meta.get("pending_validation", False) == (where == "validation")
    assert main(_cli_args(data, run)) == 0
    _same_log(full, run)
    wa = load_file(str(full / "last" / "model.safetensors"))
    wb = load_file(str(run / "last" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("argv, needle", [
    (["--seed", str(2**63)], "seed: must be an integer from 0 to 2**63 - 1"),
    (["--device", "foo"], "--device: not a torch device: 'foo'"),
    (["--crop-size", str(10**6)], "--batch-size / --crop-size: too large"),
    (["--batch-size", str(10**7)], "--batch-size / --crop-size: too large"),
    (["--short-side", str(10**7)], "--short-side: too large"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "--device: CUDA is not available")]))
def test_bad_options_one_line_before_anything_is_written(reference, tmp_path, capsys, argv, needle):
    data, _ = reference
    rc, err = cli_error(capsys, _cli_args(data, tmp_path / "run") + argv)
    assert rc == 2 and needle in err, err
    assert not (tmp_path / "run").exists()


def test_evaluate_refuses_negative_workers(overfit, capsys):
    data, run, cfg, result = overfit
    rc, err = cli_error(capsys, ["evaluate", "--checkpoint", str(run), "--voc", str(data), "--split", "train",
                                 "--device", "cpu", "--workers", "-1", "--no-progress"])
    assert rc == 2 and "workers: must be an integer >= 0, got -1" in err


def test_a_tampered_checkpoint_is_one_line_on_resume(reference, tmp_path, capsys):
    import shutil

    data, _ = reference
    run = tmp_path / "run"
    assert main(_cli_args(data, run, **{"--stop-after": 2})) == 0
    capsys.readouterr()                   # the run's one-line summary
    shutil.copytree(run / "last", tmp_path / "good")
    meta = json.loads((run / "last" / "checkpoint.json").read_text())
    tensors = load_file(str(run / "last" / "training.safetensors"))

    def tamper(meta_=None, tensors_=None):
        shutil.rmtree(run / "last")
        shutil.copytree(tmp_path / "good", run / "last")
        if meta_ is not None:
            (run / "last" / "checkpoint.json").write_text(json.dumps(meta_))
        if tensors_ is not None:
            save_file(tensors_, str(run / "last" / "training.safetensors"))
        return cli_error(capsys, _cli_args(data, run))

    for args, needle in (
            ((({k: v for k, v in meta.items() if k != "iteration"}),), "iteration: missing"),
            (((dict(meta, iteration=-1)),), "iteration: must be an integer >= 0, got -1"),
            (((dict(meta, loss_n="x")),), "cannot resume from this checkpoint"),
            ((None, {k: v for k, v in tensors.items() if k != "rng.torch"}), "cannot resume from this checkpoint"),
            ((None, dict(tensors, **{"rng.torch": torch.zeros(3, dtype=torch.uint8)})), "rng.torch: expected")):
        rc, err = tamper(*args)
        assert rc == 2 and needle in err, err


def test_a_nan_loss_is_one_line_and_keeps_the_last_good_checkpoint(reference, tmp_path, capsys):
    data, _ = reference
    run = tmp_path / "run"
    assert main(_cli_args(data, run, **{"--stop-after": 2})) == 0
    capsys.readouterr()                   # the run's one-line summary
    rc, err = cli_error(capsys, _cli_args(data, run, **{"--lr": 1e30, "--grad-clip": 0}))
    assert rc == 2 and "lr: the loss is" in err and "RUN/last of iteration 2 kept" in err, err
    assert read_checkpoint_meta(run / "last")["iteration"] == 2


def test_image_files_that_cannot_be_read_are_one_line(reference, tmp_path, capsys):
    import shutil
    from PIL import Image

    data, _ = reference
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    (bad / "JPEGImages" / "000001.jpg").write_bytes(b"not a jpeg")
    rc, err = cli_error(capsys, _cli_args(bad, tmp_path / "run"))
    assert rc == 2 and "000001.jpg: not an image" in err, err
    Image.new("L", (20000, 20000)).save(bad / "SegmentationClass" / "000000.png")   # a decompression bomb
    with pytest.raises(InputError, match="000000.png: image too large to decode"):
        VOCSplit(bad, "train").read(0)
    (bad / "ImageSets/Segmentation/train.txt").write_text("x" * 300 + "\n")           # longer than a file name
    rc, err = cli_error(capsys, _cli_args(bad, tmp_path / "run"))
    assert rc == 2 and "train.txt: line 1: a name of 300 bytes is longer than the limit of 200" in err, err

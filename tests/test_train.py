"""Training on CPU: a small DeepLabv3 (MobileNetV3, random init, 64 px crops) overfits 4 images; resume
continues a stopped run exactly; evaluate (API and CLI); the data stream; the offline weights fallback."""

import json
import logging
import math
import os

import numpy as np
import pytest
import torch

from pccseg.cli import main
from pccseg.evaluate import evaluate
from pccseg.io import load_mask, save_image, save_mask
from pccseg.train import (IMAGENET_MEAN, IMAGENET_STD, StreamSampler, TrainConfig, TrainStream, augment,
                          build_model, read_checkpoint_meta, resolve_backbone_weights, train)
from pccseg.voc import VOCSegmentation
from safetensors.torch import load_file

COLORS = {1: (220, 30, 30), 2: (30, 200, 40)}


def make_blocks_tree(root, n=4, size=64, classes=(1, 2), seed=0, class_names=None):
    """``n`` noisy grey images with a red block (class 1) on the left and a green one (class 2) on the
    right; a 255 band on the left edge. Split file ``train.txt``."""
    rng = np.random.default_rng(seed)
    stems = []
    for i in range(n):
        img = rng.integers(90, 140, (size, size, 3)).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        for c, x0 in zip(classes, (rng.integers(0, size // 8), size // 2 + rng.integers(0, size // 8))):
            y0 = rng.integers(0, size // 4)
            y1, x1 = y0 + size // 2 + rng.integers(0, size // 4), x0 + 3 * size // 8
            img[y0:y1, x0:x1] = COLORS[c]
            mask[y0:y1, x0:x1] = c
        mask[:, :2] = 255
        stems.append(f"{i:06d}")
        save_image(root / "JPEGImages" / f"{stems[-1]}.jpg", img, quality=95)
        save_mask(root / "SegmentationClass" / f"{stems[-1]}.png", mask)
    (root / "ImageSets/Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(stems) + "\n")
    if class_names:
        (root / "settings.json").write_text(json.dumps({"class_names": class_names}))
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convolutions on a shared 2-core machine run fastest (and reproducibly) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_config(data, out, **kw):
    base = dict(data=str(data), out=str(out), val=str(data), val_split="train", arch="mobilenet_v3_large",
                backbone_weights="none", aux_loss=False, batch_size=4, crop_size=64, scale_min=0.75,
                scale_max=1.25, lr=2e-3, backbone_lr_mult=1.0, bn_momentum=0.5, workers=0, device="cpu",
                progress=False, check_data=True)
    base.update(kw)
    return TrainConfig(**base)


def read_log(run):
    return [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    root = tmp_path_factory.mktemp("overfit")
    data = make_blocks_tree(root / "data")
    run = root / "run"
    cfg = small_config(data, run, iters=30, val_every=10, log_every=5)
    result = train(cfg)
    return data, run, cfg, result


def test_overfit_loss_falls_miou_rises(overfit):
    data, run, cfg, result = overfit
    log = read_log(run)
    losses = [r for r in log if "loss" in r]
    vals = [r for r in log if "miou" in r]
    assert [r["iter"] for r in losses] == [5, 10, 15, 20, 25, 30]
    assert [r["iter"] for r in vals] == [10, 20, 30]
    assert all(set(r) == {"iter", "loss", "lr"} for r in losses)
    assert all(set(r) == {"iter", "miou", "iou", "acc"} and len(r["iou"]) == 21 for r in vals)
    assert losses[-1]["loss"] < 0.5 * losses[0]["loss"]
    assert losses[-1]["lr"] < losses[0]["lr"] < cfg.lr                  # poly schedule decays
    # classes absent from prediction and target are null; present ones are numbers
    assert vals[-1]["iou"][3] is None and vals[-1]["iou"][1] is not None

    torch.manual_seed(cfg.seed)  # the untrained model of the run
    untrained = build_model(cfg.arch, 21, aux_loss=False)
    before = evaluate(untrained, VOCSegmentation(data, "train"), device="cpu", workers=0, progress=False)
    assert result["best_miou"] > before.miou + 0.25
    assert result["best_miou"] == max(r["miou"] for r in vals)
    assert result["iteration"] == 30


def test_checkpoints(overfit):
    data, run, cfg, result = overfit
    last, best = read_checkpoint_meta(run / "last"), read_checkpoint_meta(run)  # run dir -> best
    assert best["path"] == str(run / "best")
    assert last["iteration"] == 30 and last["num_classes"] == 21 and last["class_names"][15] == "person"
    assert best["iteration"] == result["best_iteration"] and best["best_miou"] == result["best_miou"]
    assert last["config"]["crop_size"] == 64 and last["scheduler"]["last_epoch"] == 30
    assert sorted(p.name for p in (run / "last").iterdir()) == \
        ["checkpoint.json", "model.safetensors", "training.safetensors"]
    assert sorted(p.name for p in (run / "best").iterdir()) == ["checkpoint.json", "model.safetensors"]
    state = load_file(str(run / "last" / "training.safetensors"))
    assert "rng.torch" in state and any(k.endswith(".exp_avg_sq") for k in state)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # no leftovers of atomic writes

    # evaluating the best checkpoint reproduces the mIoU logged at its iteration
    scores = evaluate(run / "best", data, split="train", device="cpu", workers=0, progress=False)
    assert scores.miou == pytest.approx(result["best_miou"], abs=1e-9)


def test_evaluate_cli(overfit, tmp_path, capsys):
    data, run, cfg, result = overfit
    out = tmp_path / "eval"
    rc = main(["evaluate", "--checkpoint", str(run / "best"), "--voc", str(data), "--split", "train",
               "--out", str(out), "--save-predictions", "--device", "cpu", "--workers", "0", "--no-progress"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| class | IoU | Acc |" in stdout and "| aeroplane |" in stdout and "| **mean** |" in stdout
    scores = json.loads((out / "scores.json").read_text())
    assert scores["miou"] == pytest.approx(result["best_miou"]) and scores["images"] == 4
    assert (out / "scores.csv").read_text().startswith("class,iou,acc\nbackground,")
    preds = sorted((out / "predictions").iterdir())
    assert [p.stem for p in preds] == ["000000", "000001", "000002", "000003"]
    assert load_mask(preds[0]).shape == (64, 64) and load_mask(preds[0]).max() < 21


def test_resume_matches_uninterrupted(tmp_path):
    data = make_blocks_tree(tmp_path / "data", n=3, size=48, class_names=["background", "cat", "dog"])
    kw = dict(iters=10, val_every=5, log_every=1, crop_size=48)
    full = train(small_config(data, tmp_path / "full", **kw))
    stopped = train(small_config(data, tmp_path / "part", stop_after=6, **kw))
    assert stopped["iteration"] == 6
    assert read_checkpoint_meta(tmp_path / "part" / "last")["iteration"] == 6
    # a kill after iteration 6 left extra log lines behind: resume drops them
    with open(tmp_path / "part" / "log.jsonl", "a") as f:
        f.write(json.dumps({"iter": 7, "loss": 99.0, "lr": 0.0}) + "\n")
    resumed = train(small_config(data, tmp_path / "part", **kw))  # RUN/last exists -> resume
    assert resumed["iteration"] == 10

    log_full, log_part = read_log(tmp_path / "full"), read_log(tmp_path / "part")
    assert [r["iter"] for r in log_part if "loss" in r] == list(range(1, 11))
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
    assert resumed["best_miou"] == pytest.approx(full["best_miou"])

    # a 3-class checkpoint scored on a 21-class VOC tree: one clear line, exit 2
    voc = make_blocks_tree(tmp_path / "voc", n=1)
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "part"), "--voc", str(voc), "--split", "train",
               "--device", "cpu", "--workers", "0", "--no-progress"])
    assert rc == 2


def test_class_count_error_message(tmp_path, capsys):
    data = make_blocks_tree(tmp_path / "data", n=2, size=32, class_names=["background", "cat", "dog"])
    train(small_config(data, tmp_path / "run", iters=1, val=None, log_every=1, crop_size=32, batch_size=2))
    voc = make_blocks_tree(tmp_path / "voc", n=1, size=32)
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "run" / "last"), "--voc", str(voc), "--split", "train",
               "--device", "cpu", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "checkpoint predicts 3 classes but dataset" in err and "has 21" in err


def test_augment_pads_crops_flips(tmp_path):
    image = torch.full((3, 20, 30), 200, dtype=torch.uint8)
    mask = torch.ones(20, 30, dtype=torch.long)
    rng = np.random.default_rng(0)
    for _ in range(10):
        x, y = augment(image, mask, rng, crop_size=64, scale=(0.5, 2.0))
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y.shape == (64, 64)
        assert (y == 255).any() and set(y.unique().tolist()) == {1, 255}   # padded: 255 in the mask
        pad = y == 255
        expected_pad = torch.tensor([(0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
        torch.testing.assert_close(x[:, pad].mean(1), expected_pad)   # ... and 0 in the image
    a = augment(image, mask, np.random.default_rng(3), 16)
    b = augment(image, mask, np.random.default_rng(3), 16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_stream_is_sharded_and_resumable(tmp_path):
    per_rank, world = 3, 2
    all_ranks = [list(StreamSampler(0, 5, per_rank, r, world)) for r in range(world)]
    assert sorted(all_ranks[0] + all_ranks[1]) == list(range(5 * per_rank * world))
    assert list(StreamSampler(2, 5, per_rank, 1, world)) == all_ranks[1][2 * per_rank:]
    data = make_blocks_tree(tmp_path / "d", n=5, size=16)
    stream = TrainStream(VOCSegmentation(data, "train"), seed=1, crop_size=16, scale=(1.0, 1.0))
    epoch0 = [stream.index(k) for k in range(5)]
    assert sorted(epoch0) == list(range(5))                  # every image once per epoch
    assert sorted(stream.index(k) for k in range(5, 10)) == list(range(5))
    assert torch.equal(stream[7][0], TrainStream(stream.base, 1, 16, (1.0, 1.0))[7][0])


def test_backbone_weights_offline_fallback(tmp_path, monkeypatch, caplog):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def offline(*a, **k):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with caplog.at_level(logging.WARNING, logger="pccseg.train"):
        assert resolve_backbone_weights("mobilenet_v3_large") is None
    assert len(caplog.records) == 1 and "random initialisation" in caplog.text
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / "mobilenet_v3_large-8738ca79.pth").write_bytes(b"")
    assert resolve_backbone_weights("mobilenet_v3_large") is not None   # cached: no download attempted


def test_distributed_world_size_one(tmp_path, monkeypatch):
    """The DDP path (gloo, one process): process group, DDP wrapper, all-reduced loss and scores."""
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
    assert r["iteration"] == 2 and r["best_miou"] is not None and not math.isnan(r["best_miou"])
    assert "module." not in next(iter(load_file(str(tmp_path / "run" / "last" / "model.safetensors"))))

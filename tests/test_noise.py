"""What the commands print: one bar of their own, no library bars without -v, units said, one summary line."""

import json

import pytest

from pccseg.cli import main


def test_generate_loads_the_model_without_library_bars_unless_verbose(tmp_path, monkeypatch):
    import pccseg.capture.pipeline as P

    seen = []
    real = P.load_pipeline

    def spy(*args, **kwargs):
        seen.append(kwargs.get("progress"))
        return real(*args, **kwargs)

    monkeypatch.setattr(P, "load_pipeline", spy)
    common = ["generate", "--model", "tiny", "--num", "1", "--steps", "1", "--height", "64", "--width", "64",
              "--threads", "1"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "-v"]) == 0
    assert seen == [False, True]


def test_library_bars_off_inside_the_block(capfd):
    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl

    from pccseg.capture.pipeline import library_bars

    with library_bars(False):
        assert not dl.is_progress_bar_enabled() and not tl.is_progress_bar_enabled()
    assert dl.is_progress_bar_enabled() and tl.is_progress_bar_enabled()


def test_toy_train_saves_without_writing_shards_bars(tmp_path, capfd):
    from pccseg.toy.model import build_vae
    from pccseg.toy.checkpoint import save_pipeline

    save_pipeline(tmp_path / "vae", build_vae())
    assert (tmp_path / "vae" / "config.json").is_file()
    err = capfd.readouterr().err
    assert "Writing" not in err and "%|" not in err


def test_export_draws_one_bar_and_leaves_datasets_bars_as_they_were(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    from pccseg.dataset.synthetic import make_blocks_tree

    root = make_blocks_tree(tmp_path / "ds", n=3, size=32, class_names=["background", "cat", "dog"])
    assert datasets.is_progress_bar_enabled()
    assert main(["export", str(root), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    err = capsys.readouterr().err
    assert "Saving the dataset" not in err and "Generating" not in err and "export: 100%" in err
    assert err.strip().splitlines()[-1].startswith("pccseg export: ")
    assert datasets.is_progress_bar_enabled()


def test_scores_are_printed_in_percent_and_say_so():
    from pccseg.commands.train import train_summary
    from pccseg.train.metrics import percent

    assert percent(0.0084) == "0.84 %" and percent(None) == "n/a" and percent(float("nan")) == "n/a"
    line = train_summary({"iteration": 30, "last_miou": 0.0084, "best_miou": None, "best_iteration": None,
                          "seconds": 75.0, "run_dir": "runs/r"})
    assert line == "pccseg train: 30 iteration(s), 1.2 min; last validation mIoU 0.84 %; the final model is runs/r/last"
    assert "\n" not in line


def test_a_keep_captures_rerun_says_it_makes_the_images_again(tmp_path, capsys):
    common = ["generate", "--model", "tiny", "--num", "2", "--steps", "1", "--height", "64", "--width", "64",
              "--threads", "1", "-q", "--out", str(tmp_path / "d")]
    assert main(common) == 0
    assert "2 new image(s), 0 already done" in capsys.readouterr().err
    assert main([*common, "--keep-captures"]) == 0
    err = capsys.readouterr().err
    assert "0 new image(s), 2 made again with the same seeds for their captures, 0 already done" in err
    assert len(list((tmp_path / "d" / "captures").iterdir())) == 2
    manifest = [json.loads(x) for x in (tmp_path / "d" / "manifest.jsonl").read_text().splitlines()]
    assert [m["id"] for m in manifest] == ["000000", "000001"]


def test_toy_train_writes_tensorboard_curves(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pccseg.toy.config import ToyTrainConfig
    from pccseg.toy.train import train

    cfg = ToyTrainConfig(out=str(tmp_path / "run"), vae_steps=2, vae_batch=2, decoder_steps=2, decoder_batch=2,
                         n_train=4, low_steps=2, high_steps=1, decay_steps=2, low_batch=2, batch=2, ckpt_every=10,
                         eval_every=100)
    train(cfg, evaluate=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"vae/loss", "decoder/loss", "unet/loss"} <= set(tags)
    assert [e.step for e in events.Scalars("unet/loss")] == [1, 2, 3]

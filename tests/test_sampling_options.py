"""generate's sampling options passed through to the diffusers pipeline: --negative-prompt, --scheduler,
--cpu-offload; unused, the images are those of before."""

import json

import numpy as np
import pytest

from pccseg.cli import main
from pccseg.io import load_image

COMMON = ["generate", "--model", "tiny", "--num", "2", "--steps", "2", "--height", "64", "--width", "64",
          "--threads", "1", "-q"]


def _run(tmp_path, name, *extra):
    out = tmp_path / name
    assert main([*COMMON, "--out", str(out), *extra]) == 0
    return out, json.loads((out / "settings.json").read_text())


def _images(out):
    return [load_image(p) for p in sorted((out / "JPEGImages").iterdir())]


def test_negative_prompt_reaches_the_pipeline_and_is_recorded(tmp_path, capsys):
    plain, s_plain = _run(tmp_path, "plain")
    neg, s_neg = _run(tmp_path, "neg", "--negative-prompt", "blurry, low quality")
    assert "negative_prompt" not in s_plain and s_neg["negative_prompt"] == "blurry, low quality"
    assert not all(np.array_equal(a, b) for a, b in zip(_images(plain), _images(neg)))
    # a resume with another negative prompt would mix two runs: refused, nothing written
    assert main([*COMMON, "--out", str(neg), "--negative-prompt", "other"]) == 2
    assert "negative_prompt" in capsys.readouterr().err


def test_unused_options_keep_the_images(tmp_path):
    """The same call without the new options gives the images of the Python API's plain call."""
    from pccseg.capture.pipeline import load_pipeline
    from pccseg.dataset.generate import GenerateConfig, generate
    from pccseg.dataset.prompts import load_prompts

    plain, _ = _run(tmp_path, "plain")
    pipe = load_pipeline("tiny", device="cpu")
    generate(pipe, load_prompts()[:2], tmp_path / "api",
             GenerateConfig(steps=2, height=64, width=64, progress=False, label_workers=0), rank=0, world_size=1)
    assert all(np.array_equal(a, b) for a, b in zip(_images(plain), _images(tmp_path / "api")))


def test_scheduler_choice(tmp_path):
    from pccseg.capture.pipeline import load_pipeline
    from pccseg.errors import InputError

    pipe = load_pipeline("tiny", device="cpu", scheduler="EulerDiscreteScheduler")
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"     # the model's own noise schedule
    with pytest.raises(InputError, match="unknown scheduler"):
        load_pipeline("tiny", device="cpu", scheduler="NoSuchScheduler")
    out, settings = _run(tmp_path, "euler", "--scheduler", "DDIMScheduler")
    assert settings["scheduler_choice"] == "DDIMScheduler" and settings["scheduler"] == "DDIMScheduler"
    with pytest.raises(SystemExit):
        main([*COMMON, "--out", str(tmp_path / "x"), "--scheduler", "NoSuchScheduler"])


def test_cpu_offload_needs_cuda_and_writes_nothing(tmp_path, capsys):
    assert main([*COMMON, "--out", str(tmp_path / "off"), "--cpu-offload", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pccseg generate: error: --cpu-offload:")
    assert not (tmp_path / "off").exists()

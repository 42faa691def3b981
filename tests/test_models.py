"""The table of built-in models (pccseg.capture.models): a toy model is a toy model however it is named or
loaded: by name, as a folder that `pccseg toy train` wrote, or as a pipeline in memory."""

import json
from pathlib import Path

import pytest

from pccseg.capture.models import BUILTIN_MODELS, builtin_model
from pccseg.capture.pipeline import check_model, model_default_size, model_entry
from pccseg.cli import build_parser
from pccseg.dataset.prompts import PROMPT_SETS, default_prompts_path, prompts_option


def toy_folder(root, **unet_changes):
    """A diffusers folder with the toy model's configs and no weights (what the defaults are read from)."""
    from pccseg.toy.model import unet_config, vae_config

    root.mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    for part, cfg in (("unet", {**unet_config(), **unet_changes}), ("vae", vae_config())):
        (root / part).mkdir()
        (root / part / "config.json").write_text(json.dumps(cfg))
    return root


def test_the_table_holds_the_builtin_models():
    assert {"tiny", "tiny-sdxl", "toy"} <= set(BUILTIN_MODELS)
    toy = BUILTIN_MODELS["toy"]
    assert (toy.size, toy.steps, toy.guidance, toy.prompts) == ((128, 128), 25, 5.0, "toy")
    assert BUILTIN_MODELS["tiny"].steps == 4 and BUILTIN_MODELS["tiny"].guidance is None
    assert check_model("toy") == "builtin" and builtin_model("no-such-name") is None


def test_a_folder_of_the_toy_architecture_gets_the_toy_defaults(tmp_path):
    folder = toy_folder(tmp_path / "pipeline")
    assert model_entry(str(folder)) is BUILTIN_MODELS["toy"]
    assert model_default_size(str(folder)) == (128, 128)
    # another architecture (wider UNet) is not the toy model
    other = toy_folder(tmp_path / "other", block_out_channels=[64, 64, 96, 96])
    assert model_entry(str(other)) is None


@pytest.mark.parametrize("model_is_folder", [False, True])
def test_generate_options_default_to_the_toy_model_s(tmp_path, model_is_folder):
    from pccseg.commands.generate import _model_defaults

    model = str(toy_folder(tmp_path / "pipeline")) if model_is_folder else "toy"
    args = build_parser().parse_args(["generate", "--model", model, "--out", str(tmp_path / "out")])
    assert _model_defaults(args).name == "toy"
    assert (args.steps, args.guidance) == (25, 5.0)
    assert args.prompts == str(default_prompts_path(PROMPT_SETS["toy"])) and args.prompts_name == "toy_prompts.json"
    # what the user gives wins
    args = build_parser().parse_args(["generate", "--model", model, "--out", "x", "--steps", "3", "--guidance", "2"])
    _model_defaults(args)
    assert (args.steps, args.guidance) == (3, 2.0)


def test_prompts_toy_names_the_toy_set(tmp_path, monkeypatch):
    from pccseg.commands.generate import _model_defaults

    args = build_parser().parse_args(["generate", "--model", "tiny", "--prompts", "toy", "--out", "x"])
    _model_defaults(args)
    assert args.prompts == str(default_prompts_path("toy_prompts.json")) and args.prompts_name == "toy_prompts.json"
    assert prompts_option(None, "voc") == (default_prompts_path("voc_prompts.json"), "voc_prompts.json")
    monkeypatch.chdir(tmp_path)       # a file of that name here is a file
    (tmp_path / "toy").write_text("[]")
    assert prompts_option("toy") == (Path("toy"), str((tmp_path / "toy").resolve()))


def test_python_generate_with_the_toy_pipeline_uses_the_toy_defaults(tmp_path):
    from pccseg.capture.pipeline import load_pipeline
    from pccseg.dataset.generate import GenerateConfig, generate

    pipe = load_pipeline("toy", device="cpu", progress=False)
    generate(pipe, [], tmp_path / "out", GenerateConfig(progress=False), rank=0, world_size=1)
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert (settings["steps"], settings["guidance"], settings["height"], settings["prompts"]) == \
        (25, 5.0, 128, "toy_prompts.json")


def test_cli_toy_folder_refuses_classes_the_toy_world_does_not_draw(tmp_path, capsys):
    from pccseg.cli import main

    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"id": 0, "prompt_sd": "a sofa", "classes": ["sofa"]}]))
    folder = toy_folder(tmp_path / "pipeline")
    assert main(["generate", "--model", str(folder), "--prompts", str(prompts), "--out", str(tmp_path / "o")]) == 2
    assert "'sofa' is not in the toy world" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

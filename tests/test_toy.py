"""The toy world: renderer, colour judge, dataset, prompts, training plumbing, shipped model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pccseg.toy import colours, world
from pccseg.toy.judge import adherence, colour_labels, majority3, present_classes
from pccseg.vocab import VOC_CLASSES, class_index, prompt_word


def test_render_is_deterministic_and_seed_dependent():
    a, b, c = world.render_scene(5), world.render_scene(5), world.render_scene(6)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.caption == b.caption and a.objects == b.objects
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", range(12))
def test_labels_match_what_was_drawn(seed):
    s = world.render_scene(seed)
    h, sat, v = colours.rgb_to_hsv(s.image.astype(np.float32) / 255)
    bg = s.labels == 0
    # background pixels are weakly saturated, object pixels strongly saturated in their class's hue
    assert sat[bg].max() <= colours.BG_MAX_SAT + 0.01
    assert sat[~bg].min() >= colours.OBJ_MIN_SAT - 0.02 and v[~bg].min() >= colours.OBJ_MIN_VAL - 0.04
    for cls in {o.cls for o in s.objects}:
        m = s.labels == class_index(cls)
        d = np.abs((h[m] - colours.HUES[cls] + 180) % 360 - 180)
        assert m.sum() > 0 and d.max() <= colours.HUE_JITTER + 2.0
    # every object in the caption is visible, and nothing else is labelled
    present = {VOC_CLASSES[i] for i in np.unique(s.labels) if i}
    assert present == set(s.classes) == {o.cls for o in s.objects}


def test_caption_names_each_class_once_in_order():
    for seed in range(40):
        s = world.render_scene(seed)
        words = [prompt_word(c) for c in s.classes]
        pos = [s.caption.find(w.split()[0]) for w in words]
        assert all(p >= 0 for p in pos) and pos == sorted(pos), (s.caption, s.classes)


def test_pick_and_unknown_class():
    s = world.render_scene(3, pick=["dog", "dog"])
    assert s.classes == ("dog",) and s.caption.split()[-1] in ("dogs", "dog")
    with pytest.raises(KeyError, match="not in the toy world"):
        world.render_scene(0, pick=["sofa"])


def test_judge_reads_rendered_scenes():
    hits, agree = 0, []
    for seed in range(30):
        s = world.render_scene(1000 + seed)
        lab = colour_labels(s.image)
        known = lab != 255
        agree.append((lab[known] == s.labels[known]).mean())
        hits += adherence(s.image, s.classes).ok
    assert np.mean(agree) > 0.99 and hits >= 28


def test_majority_filter_known_answer():
    x = np.zeros((5, 5), np.uint8)
    x[2, 2] = 7                       # an isolated pixel goes
    x[0:2, 3:5] = 3                   # a 2x2 block in a corner stays
    y = majority3(x)
    assert y[2, 2] == 0 and (y[0:2, 3:5] == 3).all()


def test_present_classes_threshold():
    lab = np.zeros((100, 100), np.uint8)
    lab[:10, :10] = class_index("cat")          # 1 %
    lab[50, 50:55] = class_index("dog")         # 0.05 %
    assert present_classes(lab) == {"cat"}


def test_present_classes_ignores_blend_strips():
    """A strip two pixels wide (the blend where two objects meet) is no class; a 3-pixel-wide band is."""
    lab = np.zeros((100, 100), np.uint8)
    lab[:20, :20] = class_index("car")
    lab[:20, 22:42] = class_index("bus")
    lab[:20, 20:22] = class_index("cat")        # 40 px: below the share anyway
    lab[30:32, :100] = class_index("cat")       # 200 px = 2 %, but 2 px wide
    assert present_classes(lab) == {"car", "bus"}
    assert present_classes(lab, opening=1) == {"car", "bus", "cat"}
    lab[60:63, :100] = class_index("dog")       # 3 px wide: a thin object, present
    assert "dog" in present_classes(lab)
    assert adherence(np.zeros((4, 4, 3), np.uint8), []).ok


def test_prompt_records_and_shipped_file():
    from pccseg.dataset.prompts import TOY_PROMPTS, default_prompts_path, load_prompts

    recs = world.toy_prompt_records(50, seed=3)
    assert recs == world.toy_prompt_records(50, seed=3) and recs != world.toy_prompt_records(50, seed=4)
    shipped = load_prompts(default_prompts_path(TOY_PROMPTS))
    assert len(shipped) == 5000 and all(set(r.classes) <= set(colours.HUES) for r in shipped)
    assert [r.prompt for r in shipped[:50]] == [r["prompt_sd"] for r in world.toy_prompt_records(50, seed=0)]


def test_toy_dataset_reads_with_voc_reader(tmp_path):
    from pccseg.toy.dataset import write_toy_dataset
    from pccseg.dataset.voc import read_split

    out = tmp_path / "gt"
    res = write_toy_dataset(out, 4, 2, seed=77)
    assert res == {"train": 4, "val": 2, "rendered": 6}
    assert read_split(out, "train") == ["000000", "000001", "000002", "000003"]
    assert read_split(out, "val") == ["000004", "000005"]
    from pccseg.io import load_mask

    assert np.array_equal(load_mask(out / "SegmentationClass" / "000005.png"), world.render_scene(82).labels)
    again = write_toy_dataset(out, 4, 2, seed=77)
    assert again["rendered"] == 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(x)["seed"] for x in lines] == list(range(77, 83))


def test_toy_records_refuse_unknown_classes(tmp_path):
    from pccseg.errors import InputError
    from pccseg.dataset.prompts import load_prompts

    p = tmp_path / "p.json"
    p.write_text(json.dumps([{"id": 1, "prompt_sd": "a dog", "classes": ["dog"]},
                             {"id": 2, "prompt_sd": "a sofa", "classes": ["sofa"]}]))
    with pytest.raises(InputError, match=r"record 1: classes: 'sofa' is not in the toy world"):
        world.check_toy_records(load_prompts(p), p)


def test_cli_unknown_toy_class_and_missing_weights(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps([{"id": 1, "prompt_sd": "a sofa", "classes": ["sofa"]}]))
    r = subprocess.run([sys.executable, "-m", "pccseg", "generate", "--model", "toy", "--prompts", str(p),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "not in the toy world" in r.stderr and r.stderr.count("\n") == 1
    from pccseg.errors import InputError
    from pccseg.toy.model import toy_pipeline

    with pytest.raises(InputError, match="weights are missing"):
        toy_pipeline(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model_index.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot load the toy model"):
        toy_pipeline(bad)


def test_train_config_refuses_bad_values():
    from pccseg.errors import InputError
    from pccseg.toy.config import ToyTrainConfig

    for bad in (dict(batch=0), dict(lr=float("nan")), dict(ema=1.0), dict(vae_steps=-1), dict(threads=1.5),
                dict(decoder_steps=-1), dict(decoder_batch=0), dict(decoder_lr=float("inf")),
                dict(decay_steps=-1), dict(low_steps=10, high_steps=5, decay_steps=16)):
        with pytest.raises(InputError):
            ToyTrainConfig(out="x", **bad)


def test_learning_rate_schedule_known_answers():
    from pccseg.toy.config import ToyTrainConfig
    from pccseg.toy.train import learning_rate

    cfg = ToyTrainConfig(out="x", lr=1.0, warmup=10, low_steps=60, high_steps=40, decay_steps=20)
    got = [learning_rate(cfg, s) for s in (0, 4, 9, 50, 79, 80, 90, 99)]
    assert got == pytest.approx([0.1, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.05])
    flat = ToyTrainConfig(out="x", lr=1.0, warmup=1, low_steps=6, high_steps=4, decay_steps=0)
    assert [learning_rate(flat, s) for s in range(10)] == [1.0] * 10


def test_optimizer_state_round_trip():
    from pccseg.train.deeplab import load_optimizer, optimizer_tensors

    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(3):
        m(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    from safetensors.torch import load, save

    tensors, meta = optimizer_tensors(opt)
    tensors, meta = load(save(tensors)), json.loads(json.dumps(meta))   # through the files' formats
    m2 = torch.nn.Linear(3, 2)
    m2.load_state_dict(m.state_dict())
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1.0)
    load_optimizer(opt2, tensors, meta)
    x = torch.randn(4, 3)
    for mm, oo in ((m, opt), (m2, opt2)):
        oo.zero_grad()
        mm(x).pow(2).sum().backward()
        oo.step()
    assert torch.equal(m.weight, m2.weight)


def test_training_runs_end_to_end_and_resumes(tmp_path, caplog):
    """A few steps of every stage at toy scale; a second call resumes and finds everything done."""
    from pccseg.toy.config import ToyTrainConfig
    from pccseg.toy.model import toy_pipeline
    from pccseg.toy.train import train

    import os

    from pccseg.toy import train as T

    cfg = ToyTrainConfig(out=str(tmp_path / "run"), vae_steps=2, vae_batch=2, decoder_steps=2, decoder_batch=2,
                         n_train=6, low_steps=2, high_steps=1, decay_steps=2, low_batch=2, batch=2, ckpt_every=10,
                         eval_every=100)
    grad_l1, calls = T._grad_l1, []

    def vae_interrupted(a, b):                 # Ctrl-C during the second VAE step
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return grad_l1(a, b)

    T._grad_l1 = vae_interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, evaluate=False)
    finally:
        T._grad_l1 = grad_l1
    state = json.loads((tmp_path / "run" / "vae" / "last" / "state.json").read_text())
    assert state["step"] == 1 and not (tmp_path / "run" / "vae" / "final").exists()

    update = T._EMA.update

    def interrupted(self, named, step):       # Ctrl-C during the second UNet step (the VAE resumed and ended)
        if step == 1:
            raise KeyboardInterrupt
        update(self, named, step)

    T._EMA.update = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, evaluate=False)
    finally:
        T._EMA.update = update
    assert json.loads((tmp_path / "run" / "vae" / "last" / "state.json").read_text())["step"] == 2
    state = json.loads((tmp_path / "run" / "unet" / "last" / "state.json").read_text())
    assert state["step"] == 1                  # checkpointed at the step reached, not at ckpt_every
    # a kill between the renames of a checkpoint's replacement left only its complete new copy: resumed
    unet = tmp_path / "run" / "unet"
    (unet / "last").rename(unet / ".last.deadbeef.pccseg.tmp")
    caplog.set_level("INFO", logger="pccseg")
    final = train(cfg, evaluate=False)
    assert "unet: resumed at step 1" in caplog.text and not [p for p in unet.iterdir() if p.name.startswith(".")]
    mask = os.umask(0)
    os.umask(mask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~mask for p in final.rglob("*") if p.is_file())
    assert final is not None and (final / "model_index.json").is_file()
    state = json.loads((tmp_path / "run" / "unet" / "last" / "state.json").read_text())
    assert state["step"] == 3
    before = (final / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    # a kill between the renames of the pipeline's replacement (and a temporary file of another write)
    import shutil

    final.rename(tmp_path / "run" / ".pipeline.0badf00d.pccseg.tmp")
    shutil.copytree(tmp_path / "run" / ".pipeline.0badf00d.pccseg.tmp", tmp_path / "run" / ".pipeline.0badf00d.old.pccseg.tmp")
    (tmp_path / "run" / "vae" / ".final.1234abcd.pccseg.tmp").mkdir()
    assert train(cfg, evaluate=False) == final
    assert not [p for p in (tmp_path / "run").rglob(".*")]
    assert (final / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    # stage 1b tuned the decoder alone: the encoder (so the latents) is stage 1's, the pipeline's decoder stage 1b's
    from safetensors.torch import load_file

    vae1 = load_file(str(tmp_path / "run" / "vae" / "final" / "diffusion_pytorch_model.safetensors"))
    vae2 = load_file(str(tmp_path / "run" / "vae" / "decoder" / "diffusion_pytorch_model.safetensors"))
    shipped = load_file(str(final / "vae" / "diffusion_pytorch_model.safetensors"))
    enc = [k for k in vae1 if k.startswith(("encoder.", "quant_conv."))]
    dec = [k for k in vae1 if k.startswith(("decoder.", "post_quant_conv."))]
    assert enc and dec and len(enc) + len(dec) == len(vae1)
    assert all(torch.equal(vae1[k], vae2[k]) for k in enc)
    assert not all(torch.equal(vae1[k], vae2[k]) for k in dec)
    assert all(torch.equal(vae2[k], shipped[k]) for k in vae2)
    pipe = toy_pipeline(final)
    out = pipe("a dog", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()


# --- the shipped model (src/pccseg/toy/weights) ---------------------------------------------------------
# Measured on the shipped weights with these prompts and seeds (CPU, float32); the bounds leave a margin
# for other CPUs' float rounding. Retraining the model means measuring them again.
SHIPPED_N, SHIPPED_SEED = 4, 0          # the first records of the shipped prompt set
SHIPPED_ADHERENCE = 0.75               # measured: 4 of 4
SHIPPED_PCC_MIOU = 0.45                # measured: 0.61
SHIPPED_FOUND = 4                        # of the 5 prompted classes of 3 generated samples (measured: 5)

def test_shipped_weights_are_small_fp16_safetensors():
    from safetensors import safe_open

    from pccseg.toy.model import weights_dir

    files = [f for f in weights_dir().rglob("*") if f.is_file()]
    assert (weights_dir() / "model_index.json") in files
    assert sum(f.stat().st_size for f in files) <= 25 * 2**20
    assert {f.suffix for f in files} <= {".json", ".safetensors"}          # no pickle
    tensors = [f for f in files if f.suffix == ".safetensors"]
    assert {f.parent.name for f in tensors} == {"unet", "vae", "text_encoder"}
    for f in tensors:
        with safe_open(str(f), "pt") as st:
            assert {st.get_slice(k).get_dtype() for k in st.keys()} == {"F16"}, f
    for f in files:                       # no path of the machine that exported them
        if f.suffix == ".json" and f.parent.name != "tokenizer":
            assert "_name_or_path" not in json.loads(f.read_text()), f


def test_shipped_model_draws_the_prompted_classes_and_pcc_finds_them():
    """Fixed prompts and seeds on the CPU: the images show what was asked for (by the colour judge), the
    capture leaves them bit-identical, and PCC's masks overlap the judge's ground truth."""
    from pccseg.capture.pipeline import load_pipeline
    from pccseg.toy.config import TOY_GUIDANCE, TOY_SIZE, TOY_STEPS
    from pccseg.toy.quality import score_model

    pipe = load_pipeline("toy")
    records = world.toy_prompt_records(SHIPPED_N, seed=SHIPPED_SEED)
    res = score_model(pipe, records, size=TOY_SIZE, steps=TOY_STEPS, guidance=TOY_GUIDANCE, seed=2024,
                      batch_size=len(records))
    assert res["adherence"] >= SHIPPED_ADHERENCE
    pcc = res["labellers"]["pcc"]
    assert pcc["miou"] >= SHIPPED_PCC_MIOU
    plain = pipe([r["prompt_sd"] for r in records], num_inference_steps=TOY_STEPS, guidance_scale=TOY_GUIDANCE,
                 height=TOY_SIZE, width=TOY_SIZE, output_type="np",
                 generator=[torch.Generator("cpu").manual_seed(2024 + j) for j in range(len(records))]).images
    plain = (plain * 255).round().clip(0, 255).astype(np.uint8)
    assert all(np.array_equal(a, b) for a, b in zip(plain, res["images"]))


def test_generate_on_the_shipped_model_labels_prompted_classes(tmp_path):
    """The README's first command, small: every mask holds its prompt's classes."""
    from PIL import Image

    from pccseg.cli import main

    out = tmp_path / "demo"
    assert main(["generate", "--model", "toy", "--num", "3", "--out", str(out), "-q"]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    found = 0
    for row in rows:
        mask = np.asarray(Image.open(out / "SegmentationClass" / f"{row['id']}.png"))
        wanted = {class_index(c) for c in row["classes"]}
        assert set(np.unique(mask)) <= wanted | {0, 255}
        found += len(wanted & set(np.unique(mask).tolist()))
    assert found >= SHIPPED_FOUND


def test_round_trip_of_a_perfect_and_a_colour_shifting_vae():
    """An identity VAE keeps every scene's classes (l1 0); one that swaps the colour channels (hues turned by
    120 degrees) fails every scene."""
    from types import SimpleNamespace

    from pccseg.toy.quality import round_trip

    class Identity(torch.nn.Module):
        def __init__(self, shift=False):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))
            self.shift = shift

        def encode(self, x):
            return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

        def decode(self, z):
            return SimpleNamespace(sample=z[:, [2, 0, 1]] if self.shift else z)   # RGB -> BRG: hue + 120

    good = round_trip(Identity(), n=6, seed=1000)
    assert good["adherence"] == 1.0 and good["l1"] == 0.0 and good["n"] == 6
    bad = round_trip(Identity(shift=True), n=6, seed=1000)
    assert bad["adherence"] == 0.0 and bad["l1"] > 10


def test_load_pipeline_quiet_has_no_loading_bars(capsys):
    # `pccseg generate -q` printed diffusers' and transformers' loading bars (every worker of `experiment`, too)
    from diffusers.utils import logging as diffusers_logging

    from pccseg.capture.pipeline import load_pipeline

    load_pipeline("toy", progress=False)
    assert capsys.readouterr().err == ""
    assert diffusers_logging.is_progress_bar_enabled()            # as it was before the call
    load_pipeline("toy")
    assert "Loading pipeline components" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [(["--size", "100000"], "--size: must be a multiple of 8 from 32 to 4096"),
                                          (["--seed", "-1"], "--seed: must be an integer from 0 to 2**63 - 1")])
def test_render_refuses_sizes_and_seeds_out_of_range(tmp_path, capsys, argv, needle):
    from pccseg.cli import main

    assert main(["toy", "render", "--out", str(tmp_path / "r"), "--num", "1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "r").exists()


def test_render_removes_what_a_killed_render_left(tmp_path):
    from pccseg.toy.dataset import write_toy_dataset

    write_toy_dataset(tmp_path / "r", 1, size=32)
    left = [tmp_path / "r" / "JPEGImages" / ".000001.jpg.0badf00d.pccseg.tmp", tmp_path / "r" / ".x.1234abcd.pccseg.tmp"]
    for p in left:
        p.write_bytes(b"partial")
    write_toy_dataset(tmp_path / "r", 2, size=32)
    assert not any(p.exists() for p in left)

"""generate: prompts -> VOC-layout dataset with the tiny pipeline; resume, settings guard, process split, CLI."""

import json

import numpy as np
import pytest
import torch

from pccseg import cli
from pccseg.capture.format import load_capture
from pccseg.dataset.folder import DatasetFolder, read_manifest, settings_diff
from pccseg.errors import InputError
from pccseg.dataset.generate import GenerateConfig, generate, split_records
from pccseg.io import load_image, load_mask
from pccseg.dataset.prompts import PromptRecord, load_prompts, select
from pccseg.capture.tiny import tiny_pipeline
from pccseg.vocab import VOC_CLASSES

KW = dict(steps=2, height=64, width=64, seed=2024)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(0)


@pytest.fixture(scope="module")
def records():
    return select(load_prompts(), start=0, num=3)


def gen(pipe, records, out, *, rank=0, world_size=1, **options):
    """generate() with the tests' small settings (KW, no progress bar) and ``options``."""
    config = GenerateConfig(**{**KW, "progress": False, **options})
    return generate(pipe, records, out, config, rank=rank, world_size=world_size)


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_split_records_by_index():
    recs = [PromptRecord(index=i, id=100 + i, prompt="p", classes=("cat",)) for i in range(3, 13)]
    for world in (1, 2, 3, 4):
        parts = [split_records(recs, r, world) for r in range(world)]
        assert sorted(x.index for p in parts for x in p) == list(range(3, 13))       # a partition
        for r, p in enumerate(parts):
            assert all(x.index % world == r for x in p)
    with pytest.raises(ValueError):
        split_records(recs, 2, 2)


def test_generate_writes_a_voc_dataset(pipe, records, tmp_path):
    out = tmp_path / "ds"
    rep = gen(pipe, records, out, batch_size=2, keep_captures=True)
    assert rep.generated == 3 and rep.skipped == 0 and rep.dataset_size == 3
    stems = ["000000", "000001", "000002"]
    assert (out / "ImageSets/Segmentation/train.txt").read_text().split() == stems
    manifest = read_manifest(out)
    assert [e["id"] for e in manifest] == stems
    for e, r in zip(manifest, records):
        assert e["record_id"] == r.id and e["prompt"] == r.prompt and e["classes"] == list(r.classes)
        assert e["seed"] == 2024 + r.index
        assert set(e["timings"]) == {"generate", "label"} and 0 <= e["uncertain_share"] <= 1
        mask = load_mask(out / "SegmentationClass" / f"{e['id']}.png")
        assert mask.shape == (64, 64)
        allowed = {0, 255} | {VOC_CLASSES.index(c) for c in r.classes}
        assert set(np.unique(mask).tolist()) <= allowed
        assert sum(e["class_pixels"].values()) == int((mask != 255).sum())
        assert load_image(out / "JPEGImages" / f"{e['id']}.jpg").shape == (64, 64, 3)
        cap = load_capture(out / "captures" / e["id"])
        assert cap.meta["seed"] == e["seed"] and cap.token_classes[0] == 0 and cap.tokens[-1] == "<|endoftext|>"
    settings = json.loads((out / "settings.json").read_text())
    assert settings["steps"] == 2 and settings["height"] == 64 and settings["guidance"] == 7.5
    assert settings["label_params"]["ks"] == [4, 7, 10] and settings["class_names"][15] == "person"
    assert settings["labeller"] == "pcc"
    assert not [f for f in _files(out) if "/." in "/" + f]                               # no temp files
    # torchvision reads the folder, unchanged, as Pascal VOC 2012 (the documented call)
    from torchvision.datasets import VOCSegmentation

    voc = VOCSegmentation(str(out), image_set="train")
    img, target = voc[1]
    assert len(voc) == 3 and img.size == (64, 64) and target.mode == "P"
    assert np.array_equal(np.asarray(target), load_mask(out / "SegmentationClass" / "000001.png"))
    assert np.array_equal(np.asarray(img), load_image(out / "JPEGImages" / "000001.jpg"))
    assert all(not (out / "VOCdevkit/VOC2012" / d).resolve().is_relative_to(out / "VOCdevkit")
               for d in ("JPEGImages", "SegmentationClass", "ImageSets"))      # links, no copies, no loop

    # batch independence: record 1 alone gives the same image as in its batch of 2
    out1 = tmp_path / "ds1"
    gen(pipe, records[1:2], out1, batch_size=1, keep_captures=True)
    a = load_capture(out / "captures" / "000001").image.int()
    b = load_capture(out1 / "captures" / "000001").image.int()
    assert (a - b).abs().max() <= 1


def test_resume_skips_done_and_repairs(pipe, records, tmp_path):
    out = tmp_path / "ds"
    gen(pipe, records, out)
    before = {f: (out / f).read_bytes() for f in _files(out) if f.startswith("SegmentationClass")}
    rep = gen(pipe, records, out)
    assert rep.generated == 0 and rep.skipped == 3
    # lose one sample's mask (a kill before the mask) and tear the shard's last line
    (out / "SegmentationClass" / "000001.png").unlink()
    with open(out / "manifest.d" / "rank-0000.jsonl", "a") as f:
        f.write('{"id": "000009", "reco')
    rep = gen(pipe, records, out)
    assert rep.generated == 1 and rep.stems == ["000001"]
    assert [e["id"] for e in read_manifest(out)] == ["000000", "000001", "000002"]
    after = {f: (out / f).read_bytes() for f in _files(out) if f.startswith("SegmentationClass")}
    assert after == before                      # deterministic: the regenerated mask is the same


def test_resuming_with_another_thread_count_warns_that_images_may_differ(pipe, records, tmp_path, caplog):
    # on the CPU torch's kernels round differently with other thread counts (tests/test_kill.py saw it)
    import logging

    from pccseg.labellers.pcc import torch_threads

    out = tmp_path / "ds"
    with torch_threads(1):
        gen(pipe, records[:1], out)
    s = json.loads((out / "settings.json").read_text())
    assert s["device"] == "cpu" and s["threads"] == 1
    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    with caplog.at_level(logging.WARNING, logger="pccseg.dataset.generate"):
        with torch_threads(1):
            assert gen(pipe, records[:2], out).generated == 1
        assert warnings() == []
        with torch_threads(2):
            assert gen(pipe, records, out).generated == 1
    [warning] = warnings()
    assert warning.startswith(f"{out / 'settings.json'}: resuming with threads 1 -> 2: the images still to make")
    assert json.loads((out / "settings.json").read_text())["threads"] == 1          # the run's first start


def test_rerun_with_keep_captures_adds_the_captures(pipe, records, tmp_path):
    out = tmp_path / "ds"
    gen(pipe, records[:2], out)
    masks = {f: (out / f).read_bytes() for f in _files(out) if f.startswith("SegmentationClass")}
    assert not (out / "captures").exists()
    rep = gen(pipe, records[:2], out, keep_captures=True)
    assert rep.generated == 2 and sorted(p.name for p in (out / "captures").iterdir()) == ["000000", "000001"]
    assert {f: (out / f).read_bytes() for f in _files(out) if f.startswith("SegmentationClass")} == masks
    assert [e["id"] for e in read_manifest(out)] == ["000000", "000001"]
    rep = gen(pipe, records[:2], out, keep_captures=True)
    assert rep.generated == 0 and rep.skipped == 2


def test_failure_mid_run_leaves_only_complete_samples(pipe, records, tmp_path, monkeypatch):
    from pccseg.labellers import registry
    from pccseg.labellers.pcc import label

    out = tmp_path / "ds"
    calls = []

    def flaky(cap, params):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return label(cap, params)

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(registry, "label", flaky)
        gen(pipe, records, out, label_workers=0)
    assert _files(out / "SegmentationClass") == ["000000.png"]
    assert (out / "ImageSets/Segmentation/train.txt").read_text().split() == ["000000"]
    assert not [f for f in _files(out) if "/." in "/" + f]
    rep = gen(pipe, records, out)
    assert rep.generated == 2 and len(read_manifest(out)) == 3


def test_different_settings_refused_before_model_work(pipe, records, tmp_path):
    out = tmp_path / "ds"
    gen(pipe, records[:1], out)

    class NoPipe:  # generate must refuse before touching the model
        def __getattr__(self, name):
            return getattr(pipe, name)

        def __call__(self, *a, **k):
            raise AssertionError("the pipeline was called")

    with pytest.raises(InputError, match=r"settings.json: this folder holds a run with other settings \(steps: 2 -> 3\)"):
        gen(NoPipe(), records, out, steps=3)
    assert settings_diff({"steps": 2, "batch_size": 1}, {"steps": 2, "batch_size": 8}) == []


def test_fake_processes_share_the_work(pipe, records, tmp_path):
    out = tmp_path / "ds"
    reps = [gen(pipe, records, out, rank=r, world_size=2) for r in (1, 0)]
    assert reps[0].stems == ["000001"] and reps[1].stems == ["000000", "000002"]
    assert sorted(p.name for p in (out / "manifest.d").iterdir()) == ["rank-0000.jsonl", "rank-0001.jsonl"]
    assert [e["id"] for e in read_manifest(out)] == ["000000", "000001", "000002"]   # rebuilt by rank 0
    assert DatasetFolder(out).rebuild() == (3, 3)


def test_given_processes_leave_the_temporaries_of_the_others(pipe, records, tmp_path):
    from pccseg.io import TEMP_SUFFIX

    out = tmp_path / "ds"
    writing = out / "JPEGImages" / f".000001.jpg.x{TEMP_SUFFIX}"       # process 1 is writing it
    writing.parent.mkdir(parents=True)
    writing.write_bytes(b"x")
    gen(pipe, records, out, rank=0, world_size=2)
    assert writing.is_file()                    # no barrier: process 0 must not repair under the others
    gen(pipe, records[:1], out)
    assert not writing.exists()                 # alone: it repairs


def test_cli_generate_tiny(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    args = ["generate", "--model", "tiny", "--num", "2", "--start", "5", "--out", str(out), "--height", "64",
            "--width", "64", "--steps", "2", "-q", "--preset", "authors", "--refine-k", "8"]
    assert cli.main(args) == 0
    assert (out / "ImageSets/Segmentation/train.txt").read_text().split() == ["000005", "000006"]
    s = json.loads((out / "settings.json").read_text())
    assert s["model"] == "tiny" and s["label_params"]["vote_rule"] == "authors" and s["label_params"]["refine_k"] == 8

    import pccseg.capture.pipeline

    def no_load(*a, **k):
        raise AssertionError("model loaded")

    monkeypatch.setattr(pccseg.capture.pipeline, "load_pipeline", no_load)
    assert cli.main(args) == 0                                              # all done: no model needed
    assert cli.main(args[:-1] + ["9"]) == 2                                 # other label params
    assert cli.main(["generate", "--model", str(tmp_path / "nope"), "--out", str(out)]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1, "prompt_sd": "x", "classes": ["unicorn"]}]')
    assert cli.main(["generate", "--model", "tiny", "--prompts", str(bad), "--out", str(tmp_path / "o")]) == 2


def test_cli_generate_with_another_labeller_then_relabel(tmp_path, capsys):
    out = tmp_path / "attn"
    args = ["generate", "--model", "tiny", "--num", "2", "--out", str(out), "--height", "64", "--width", "64",
            "--steps", "2", "-q", "--labeller", "attn", "--attn-threshold", "0.5", "--keep-captures"]
    assert cli.main(args) == 0
    s = json.loads((out / "settings.json").read_text())
    assert s["labeller"] == "attn" and s["label_params"] == {"threshold": 0.5, "uncertain_threshold": None,
                                                            "interpolation": "bicubic", "token_merge": "max"}
    assert len(read_manifest(out)) == 2
    capsys.readouterr()
    assert cli.main(args[:-5]) == 2                                       # resume with pcc: refused
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "settings.json" in err[0] and "labeller: 'attn' -> 'pcc'" in err[0]
    # the kept captures relabel with another labeller, no generation
    relabel = tmp_path / "relabel"
    assert cli.main(["label", str(out / "captures"), "--out", str(relabel), "-q", "--ks", "3"]) == 0
    assert sorted(p.name for p in relabel.glob("*.png")) == ["000000.png", "000001.png"]
    assert load_capture(out / "captures" / "000000").self_probs is not None
    assert cli.main(["label", str(out / "captures"), "--out", str(tmp_path / "dd"), "-q", "--labeller", "dd"]) == 0


def test_cli_generate_dd(tmp_path):
    out = tmp_path / "dd"
    assert cli.main(["generate", "--model", "tiny", "--num", "1", "--out", str(out), "--height", "64", "--width",
                     "64", "--steps", "2", "-q", "--labeller", "dd"]) == 0
    assert json.loads((out / "settings.json").read_text())["labeller"] == "dd"
    assert load_mask(out / "SegmentationClass" / "000000.png").shape == (64, 64)


def test_cli_custom_classes(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": 3, "prompt_sd": "a red fire hydrant", "classes": ["hydrant"]}\n')
    out = tmp_path / "o"
    assert cli.main(["generate", "--model", "tiny", "--prompts", str(p), "--classes", "background,hydrant",
                     "--out", str(out), "--height", "64", "--width", "64", "--steps", "1", "-q"]) == 0
    assert set(np.unique(load_mask(out / "SegmentationClass" / "000003.png")).tolist()) <= {0, 1, 255}
    assert read_manifest(out)[0]["seed"] == 2024


def test_load_pipeline_tiny_folder_and_errors(pipe, tmp_path, monkeypatch):
    from pccseg.capture.pipeline import check_model, load_pipeline

    folder = tmp_path / "tiny-sd"
    pipe.save_pretrained(str(folder))
    loaded = load_pipeline(str(folder), device="cpu")
    assert loaded.safety_checker is None and loaded.unet.dtype == torch.float32
    assert check_model(str(folder)) == "folder" and check_model("tiny") == "builtin"
    kw = dict(num_inference_steps=1, height=64, width=64, output_type="np")
    a = pipe("a cat", generator=torch.Generator().manual_seed(0), **kw).images
    b = loaded("a cat", generator=torch.Generator().manual_seed(0), **kw).images
    assert np.array_equal(a, b)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no model_index.json"):
        load_pipeline(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="no such model folder"):
        load_pipeline(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="neither a built-in model"):
        check_model("not-a-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(InputError, match="not in the local Hugging Face cache"):
        load_pipeline("someone/some-model")


def test_val_share_holds_out_a_fixed_part(pipe, tmp_path):
    from torchvision.datasets import VOCSegmentation as TorchvisionVOC

    from pccseg.dataset.folder import val_stems
    from pccseg.dataset.voc import VOCSplit

    records = select(load_prompts(), start=0, num=4)
    out = tmp_path / "ds"
    gen(pipe, records, out, val_share=0.5)
    train = (out / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (out / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(val) == 2 and sorted(train + val) == ["000000", "000001", "000002", "000003"]
    assert set(val) == val_stems(train + val, 0.5) == val_stems(sorted(val + train, reverse=True), 0.5)
    assert json.loads((out / "settings.json").read_text())["val_share"] == 0.5
    assert VOCSplit(out, "val").stems == val and len(TorchvisionVOC(str(out), image_set="val")) == 2
    # a rerun with another share is another dataset: refused, before any work
    with pytest.raises(InputError, match="val_share: 0.5 -> 0.25"):
        gen(pipe, records, out, val_share=0.25)
    with pytest.raises(InputError, match="val_share: must be a finite number >= 0 and < 1"):
        gen(pipe, records, tmp_path / "x", val_share=float("nan"))
    # the split is a property of the stems, not of their order or of the run
    stems = [f"{i:06d}" for i in range(1000)]
    held = val_stems(stems, 0.1)
    assert len(held) == 100 and held == val_stems(stems[::-1], 0.1) and held < val_stems(stems, 0.2)


def test_cli_generate_threads(tmp_path, capsys):
    """--threads sets torch's threads for sampling on CPU; 0 is refused before any model work."""
    import torch

    assert cli.main(["generate", "--model", "tiny", "--num", "1", "--out", str(tmp_path / "a"), "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        args = ["generate", "--model", "tiny", "--num", "1", "--out", str(tmp_path / "b"), "--height", "64",
                "--width", "64", "--steps", "2", "-q", "--threads", "1", "--device", "cpu"]
        assert cli.main(args) == 0
        assert torch.get_num_threads() == 1
        assert (tmp_path / "b" / "SegmentationClass" / "000000.png").is_file()
    finally:
        torch.set_num_threads(before)

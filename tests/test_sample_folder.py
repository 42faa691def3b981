"""The dataset folder owns a sample (pccseg.dataset.folder): every folder pccseg writes (generate,
label --dataset, the experiment's relabelled sets, toy render) is read unchanged by torchvision's
``VOCSegmentation`` and gives the pixels pccseg's own reader gives; the one writer's order (mask last) and
the explicit splits of toy render."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pccseg import cli
from pccseg.dataset.folder import DatasetFolder, manifest_entry
from pccseg.dataset.voc import VOCSplit
from pccseg.errors import InputError

from test_generate import gen, pipe  # noqa: F401 (fixture: the tiny pipeline)


def same_as_torchvision(root: Path, split: str) -> int:
    """torchvision reads ``root`` as VOC 2012 (the documented call) with the pixels of :class:`VOCSplit`."""
    from torchvision.datasets import VOCSegmentation

    ours, theirs = VOCSplit(root, split), VOCSegmentation(str(root), image_set=split)
    assert len(theirs) == len(ours) > 0
    for i in range(len(ours)):
        img, target = theirs[i]
        image, mask = ours.read(i)
        assert target.mode == "P"
        assert np.array_equal(np.asarray(img), image) and np.array_equal(np.asarray(target), mask)
    return len(ours)


@pytest.fixture(scope="module")
def generated(tmp_path_factory, pipe):  # noqa: F811
    """The experiment's layout: the toy prompts generated (tiny model, captures kept) into generated/."""
    from pccseg.toy.experiment import Layout, toy_records

    lay = Layout(tmp_path_factory.mktemp("exp"))
    gen(pipe, toy_records(3), lay.generated, keep_captures=True, val_share=0.34)
    return lay


def test_generate_and_label_dataset_folders_read_with_torchvision(generated, tmp_path):
    assert same_as_torchvision(generated.generated, "train") + same_as_torchvision(generated.generated, "val") == 3
    out = tmp_path / "relabelled"
    assert cli.main(["label", str(generated.generated / "captures"), "--out", str(out), "--dataset",
                     "--labeller", "attn", "-q"]) == 0
    assert same_as_torchvision(out, "train") == 3


def test_the_experiments_relabelled_sets_read_with_torchvision(generated):
    from pccseg.toy.config import ExperimentConfig
    from pccseg.toy.experiment import stage_relabel

    cfg = ExperimentConfig(out=str(generated.root), model="toy", labellers=("pcc", "attn"), num=3, val=2,
                           progress=False)
    assert stage_relabel(cfg, generated, "cpu")
    assert same_as_torchvision(generated.labelled("attn"), "train") == 3
    entries = [json.loads(x) for x in (generated.labelled("attn") / "manifest.jsonl").read_text().splitlines()]
    pcc = [json.loads(x) for x in (generated.generated / "manifest.jsonl").read_text().splitlines()]
    keys = ("id", "record_id", "prompt", "classes", "seed")           # one builder: the same record fields
    assert [{k: e[k] for k in keys} for e in entries] == [{k: e[k] for k in keys} for e in pcc]


def test_toy_render_reads_with_torchvision_and_keeps_its_splits(tmp_path):
    from pccseg.toy import world
    from pccseg.toy.dataset import write_toy_dataset

    out = tmp_path / "gt"
    assert write_toy_dataset(out, 3, 2, seed=5, size=32)["rendered"] == 5
    assert same_as_torchvision(out, "train") == 3 and same_as_torchvision(out, "val") == 2
    from torchvision.datasets import VOCSegmentation

    _, target = VOCSegmentation(str(out), image_set="val")[1]
    assert np.array_equal(np.asarray(target), world.render_scene(5 + 4, (32, 32)).labels)
    entry = json.loads((out / "manifest.jsonl").read_text().splitlines()[4])
    assert entry["split"] == "val" and entry["seed"] == 9 and sum(entry["class_pixels"].values()) == 32 * 32
    # a rerun with one more train scene and one val scene less: sample 3 moves to train, nothing is redrawn
    assert write_toy_dataset(out, 4, 1, seed=5, size=32)["rendered"] == 0
    assert (out / "ImageSets/Segmentation/train.txt").read_text().split() == ["000000", "000001", "000002",
                                                                                "000003"]
    assert (out / "ImageSets/Segmentation/val.txt").read_text().split() == ["000004"]


def test_write_sample_writes_the_mask_last(tmp_path, monkeypatch):
    """A sample whose mask was not written (a crash between its files) is not done, and is made again."""
    import pccseg.io

    folder = DatasetFolder.open(tmp_path / "ds", {"kind": "test"})
    folder.bind()
    image, mask = np.zeros((8, 8, 3), np.uint8), torch.zeros(8, 8, dtype=torch.uint8)
    mask[:2] = 255
    entry = manifest_entry("000000", mask, ("background",), record_id=0, prompt="p", classes=(), seed=1,
                           timings={"label": 0.123456}, capture="x")
    assert entry == {"id": "000000", "record_id": 0, "prompt": "p", "classes": [], "seed": 1,
                     "uncertain_share": 0.25, "class_pixels": {"background": 48}, "timings": {"label": 0.1235},
                     "capture": "x"}

    def crash(path, mask):
        raise OSError("disk full")

    monkeypatch.setattr(pccseg.io, "save_mask", crash)
    with pytest.raises(OSError):
        folder.write_sample("000000", image, mask, entry)
    assert folder.image_path("000000").is_file() and "000000" in folder.read_shards()
    assert folder.todo(["000000"]) == ["000000"]
    monkeypatch.undo()
    folder.write_sample("000000", image, mask, entry)
    assert folder.todo(["000000"]) == [] and folder.rebuild() == (1, 1)


def test_open_checks_the_settings_once_a_sample_binds_them(tmp_path):
    root = tmp_path / "ds"
    first = DatasetFolder.open(root, {"kind": "a"})
    first.bind()
    DatasetFolder.open(root, {"kind": "b"}).bind()                    # no sample yet: not bound, replaced
    assert json.loads((root / "settings.json").read_text()) == {"kind": "b"}
    folder = DatasetFolder.open(root, {"kind": "b"})
    folder.write_sample("000000", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8), {"id": "000000"})
    with pytest.raises(InputError, match=r"settings.json: this folder holds a run with other settings \(kind"):
        DatasetFolder.open(root, {"kind": "a"})
    DatasetFolder.open(root, {"kind": "a"}, overwrite=True).bind()     # every sample redone: replaced
    assert json.loads((root / "settings.json").read_text()) == {"kind": "a"}
    (root / "manifest.d" / "rank-0000.jsonl").write_text('{"id": "000000", "split": "../x"}\n')
    with pytest.raises(InputError, match="split: must be 'train' or 'val'"):
        DatasetFolder(root).rebuild()


def test_generate_config_is_checked_when_made_and_filled_from_the_pipeline(pipe, tmp_path):  # noqa: F811
    from pccseg.dataset.generate import GenerateConfig, generate

    for bad, needle in ((dict(steps=0), "steps: must be an integer from 1 to 1000"), (dict(height=65), "height: must be a multiple"),
                        (dict(query_half="both"), "query_half: must be one of uncond, cond"),
                        (dict(label_workers=-1), "label_workers: must be an integer >= 0"),
                        (dict(val_share=1.0), "val_share: must be a finite number >= 0 and < 1")):
        with pytest.raises(InputError, match=needle.replace("[", r"\[").replace(")", r"\)")):
            GenerateConfig(**bad)
    cfg = GenerateConfig(steps=2).for_pipeline(pipe)
    assert (cfg.steps, cfg.guidance, cfg.height, cfg.width, cfg.prompts) == (2, 7.5, 128, 128, "voc_prompts.json")
    assert cfg.for_pipeline(pipe) == cfg and cfg.label_params is not None        # nothing left to fill
    record = cfg.record(dtype="float32")
    assert (record["steps"], record["labeller"], record["batch_size"]) == (2, "pcc", 1) and "val_share" not in record
    # a folder opened (checked) by the caller is not checked again, but must have been opened for this config
    folder = DatasetFolder.open(tmp_path / "ds", GenerateConfig(steps=3).for_pipeline(pipe).record(dtype="float32"))
    with pytest.raises(ValueError, match="opened with other settings"):
        generate(pipe, [], folder, GenerateConfig(steps=2, progress=False), rank=0, world_size=1)

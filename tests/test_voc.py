"""Reading VOC-layout trees: a fabricated mini tree, and every error path (API and CLI)."""

import json

import numpy as np
import pytest
import torch

from pccseg.cli import main
from pccseg.errors import InputError
from pccseg.io import load_mask, save_image, save_mask
from pccseg.dataset.voc import VOCSplit, read_class_names


def make_voc_tree(root, n=3, size=(24, 32), split="train", values=(0, 1, 15), seed=0):
    """Tiny VOC tree: JPEG images, palette masks using ``values`` (plus a 255 band), one split file."""
    rng = np.random.default_rng(seed)
    stems = []
    for i in range(n):
        h, w = size
        img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        mask = np.asarray(values, np.uint8)[rng.integers(0, len(values), (h, w))]
        mask[0] = 255
        stem = f"2007_{i:06d}"
        stems.append(stem)
        save_image(root / "JPEGImages" / f"{stem}.jpg", img)
        save_mask(root / "SegmentationClass" / f"{stem}.png", mask)
    (root / "ImageSets/Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return stems


def test_read_tree(tmp_path):
    stems = make_voc_tree(tmp_path, split="val")
    ds = VOCSplit(tmp_path, "val")
    assert len(ds) == 3 and ds.stems == stems and ds.num_classes == 21
    image, mask = ds[1]
    assert image.shape == (3, 24, 32) and image.dtype == torch.uint8
    assert mask.shape == (24, 32) and mask.dtype == torch.int64
    assert torch.equal(mask, torch.from_numpy(load_mask(ds.masks[1])).long())
    assert set(mask.unique().tolist()) <= {0, 1, 15, 255} and (mask[0] == 255).all()
    ds.check()


def test_class_names_from_settings(tmp_path):
    make_voc_tree(tmp_path, values=(0, 1, 2))
    (tmp_path / "settings.json").write_text(json.dumps({"class_names": ["background", "cat", "dog"]}))
    assert read_class_names(tmp_path) == ["background", "cat", "dog"]
    ds = VOCSplit(tmp_path, "train")
    assert ds.num_classes == 3
    ds.check()


def _break(tmp_path, what):
    stems = make_voc_tree(tmp_path)
    if what == "missing image":
        (tmp_path / "JPEGImages" / f"{stems[1]}.jpg").unlink()
        return f"{stems[1]}.jpg"
    if what == "missing mask":
        (tmp_path / "SegmentationClass" / f"{stems[2]}.png").unlink()
        return f"{stems[2]}.png"
    if what == "bad value":
        m = load_mask(tmp_path / "SegmentationClass" / f"{stems[0]}.png")
        m[5, 5] = 21
        save_mask(tmp_path / "SegmentationClass" / f"{stems[0]}.png", m)
        return "[21]"
    if what == "size mismatch":
        save_mask(tmp_path / "SegmentationClass" / f"{stems[2]}.png", np.zeros((20, 32), np.uint8))
        return "32x20 differs from image size 32x24"
    if what == "missing split":
        (tmp_path / "ImageSets/Segmentation/train.txt").unlink()
        return "train.txt"
    if what == "missing folder":
        for p in (tmp_path / "SegmentationClass").iterdir():
            p.unlink()
        (tmp_path / "SegmentationClass").rmdir()
        return "SegmentationClass"
    raise AssertionError(what)


CASES = ["missing image", "missing mask", "bad value", "size mismatch", "missing split", "missing folder"]


@pytest.mark.parametrize("what", CASES)
def test_errors_api(tmp_path, what):
    needle = _break(tmp_path, what)
    with pytest.raises(InputError) as e:
        ds = VOCSplit(tmp_path, "train")
        for i in range(len(ds)):  # per-read checks (no up-front check)
            ds[i]
    assert needle in str(e.value)
    if what in ("bad value", "size mismatch"):  # the up-front check finds it too
        with pytest.raises(InputError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            VOCSplit(tmp_path, "train").check()


@pytest.mark.parametrize("what", CASES)
def test_errors_cli_exit_2(tmp_path, what, capsys):
    needle = _break(tmp_path / "d", what)
    rc = main(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--model",
               "mobilenet_v3_large", "--backbone-weights", "none", "--device", "cpu", "--workers", "0",
               "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("pccseg train: error: ") and needle in err


def test_missing_root_cli(tmp_path, capsys):
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "nope"), "--voc", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "not a checkpoint" in err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from pccseg.train.deeplab import build_model, save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "last"
    save_checkpoint(path, build_model("mobilenet_v3_large", 21, aux_loss=False),
                    {"iteration": 1, "arch": "mobilenet_v3_large", "num_classes": 21, "aux_loss": False})
    return path


@pytest.mark.parametrize("line", ["../../escape_target/evil", "/etc/passwd", "a/b", "..", "x\\y"])
def test_split_lines_are_stems_not_paths(tmp_path, capsys, checkpoint, line):
    """A split line that would make train/evaluate read (or --save-predictions write) outside the
    dataset root: one line naming the split file and the line number, nothing written."""
    stems = make_voc_tree(tmp_path / "d")
    split = tmp_path / "d/ImageSets/Segmentation/train.txt"
    split.write_text("\n".join([stems[0], line, stems[1]]) + "\n")
    with pytest.raises(InputError) as e:
        VOCSplit(tmp_path / "d", "train")
    assert str(e.value).startswith(f"{split}: line 2: {line!r} is not a plain file name")
    rc = main(["evaluate", "--checkpoint", str(checkpoint), "--voc", str(tmp_path / "d"), "--split", "train",
               "--out", str(tmp_path / "out"), "--save-predictions", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "train.txt: line 2:" in err
    rc = main(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--backbone-weights",
               "none", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "train.txt: line 2:" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_out_that_cannot_be_created_is_one_line(tmp_path, capsys, checkpoint):
    """``evaluate --out`` and ``train --out`` under a file: one line naming --out, exit 2."""
    make_voc_tree(tmp_path / "d")
    (tmp_path / "file").write_text("x")
    for argv in (["evaluate", "--checkpoint", str(checkpoint), "--voc", str(tmp_path / "d"), "--split", "train"],
                 ["train", "--data", str(tmp_path / "d"), "--model", "mobilenet_v3_large", "--backbone-weights",
                  "none", "--device", "cpu", "--workers", "0", "--no-progress", "--no-tensorboard"]):
        rc = main([*argv, "--out", str(tmp_path / "file" / "out")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "--out: cannot create the folder" in err, err


def test_non_utf8_split_file(tmp_path):
    make_voc_tree(tmp_path)
    (tmp_path / "ImageSets/Segmentation/train.txt").write_bytes(b"2007_000000\n\xff\xfe\n")
    with pytest.raises(InputError, match="train.txt: not UTF-8 text"):
        VOCSplit(tmp_path, "train")


def test_torchvision_style_root(tmp_path):
    """The folder above VOCdevkit/VOC2012 (torchvision's root) is read as the VOC root."""
    stems = make_voc_tree(tmp_path / "VOCdevkit/VOC2012", split="val")
    ds = VOCSplit(tmp_path, "val")
    assert ds.root == tmp_path / "VOCdevkit/VOC2012" and ds.stems == stems


def test_a_folder_that_cannot_be_looked_at_is_one_line(tmp_path, monkeypatch):
    """An unreadable --data folder (EACCES: not reproducible as root, so raised here by a patched
    stat) is one line naming it, not a traceback."""
    import errno
    import pathlib

    from pccseg.dataset.synthetic import make_blocks_tree

    root = make_blocks_tree(tmp_path / "ds", n=1, size=32)
    real = pathlib.Path.is_dir

    def is_dir(self):
        if self.name == "SegmentationClass":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)
    monkeypatch.setattr(pathlib.Path, "is_dir", is_dir)
    with pytest.raises(InputError, match=r"SegmentationClass: unreadable \(Permission denied\)"):
        VOCSplit(root, "train")

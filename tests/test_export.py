"""Export to Hugging Face datasets: the export reads back with load_from_disk, image for image and label
for label."""

import json

import numpy as np
import pytest

from pccseg.cli import main
from pccseg.errors import InputError
from pccseg.io import load_image, load_mask

from pccseg.dataset.synthetic import make_blocks_tree

datasets = pytest.importorskip("datasets")


def test_export_hf_reads_back(tmp_path, capsys):
    root = make_blocks_tree(tmp_path / "ds", n=3, size=32, class_names=["background", "cat", "dog"])
    (root / "ImageSets/Segmentation/val.txt").write_text("000002\n")
    (root / "manifest.jsonl").write_text("".join(json.dumps({"id": f"{i:06d}", "prompt": f"prompt {i}",
                                                             "classes": ["cat", "dog"]}) + "\n" for i in range(3)))
    out = tmp_path / "hf"
    assert main(["export", str(root), "--format", "hf", "--out", str(out), "-q"]) == 0
    assert "train 3, validation 1" in capsys.readouterr().err

    back = datasets.load_from_disk(str(out))
    assert sorted(back) == ["train", "validation"] and back["train"].num_rows == 3
    assert isinstance(back["train"].features["image"], datasets.Image)
    assert isinstance(back["train"].features["mask"], datasets.Image)
    row = back["validation"][0]
    assert row["id"] == "000002" and row["prompt"] == "prompt 2" and row["classes"] == ["cat", "dog"]
    assert np.array_equal(np.asarray(row["mask"]), load_mask(root / "SegmentationClass/000002.png"))
    assert np.array_equal(np.asarray(row["image"].convert("RGB")), load_image(root / "JPEGImages/000002.jpg"))
    assert set(np.unique(np.asarray(back["train"][1]["mask"]))) <= {0, 1, 2, 255}
    assert json.loads((out / "id2label.json").read_text()) == {"0": "background", "1": "cat", "2": "dog"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_export_refuses_what_is_not_a_dataset(tmp_path):
    from pccseg.dataset.export import export_hf

    (tmp_path / "src").mkdir()
    with pytest.raises(InputError, match="no split files"):
        export_hf(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_never_deletes_what_out_holds(tmp_path, capsys):
    """A folder holding anything but an earlier export, the dataset itself or a folder inside it, a link,
    a file: one line, exit 2, nothing written or removed. An earlier export is replaced."""
    root = make_blocks_tree(tmp_path / "ds", n=2, size=32)
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious.txt").write_text("precious")
    (tmp_path / "file").write_text("a file")
    (tmp_path / "link").symlink_to(keep)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for out, needle in ((keep, "is not empty and not an earlier export"), (root, "is the dataset"),
                        (root / "JPEGImages", "is the dataset"), (root / "new", "is the dataset"),
                        (tmp_path / "file", "is not a folder"), (tmp_path / "link", "is a symbolic link")):
        assert main(["export", str(root), "--out", str(out), "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"pccseg export: error: {out}: --out: {needle}"), err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (keep / "precious.txt").read_text() == "precious"

    out = tmp_path / "hf"
    assert main(["export", str(root), "--out", str(out), "-q"]) == 0
    assert json.loads((out / "pccseg-export.json").read_text())["entries"]
    assert main(["export", str(root), "--out", str(out), "-q"]) == 0     # its own earlier export: replaced
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(root), "--out", str(out), "-q"]) == 2     # ... unless it holds more
    assert "holds what an export did not write (notes.txt)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and datasets.load_from_disk(str(out))["train"].num_rows == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_refuses_a_split_that_cannot_be_a_hugging_face_split(tmp_path, capsys):
    root = make_blocks_tree(tmp_path / "ds", n=2, size=32)
    (root / "ImageSets/Segmentation/train-aug.txt").write_text("000000\n")
    assert main(["export", str(root), "--out", str(tmp_path / "hf"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train-aug.txt: split 'train-aug' cannot be a Hugging Face split" in err
    assert not (tmp_path / "hf").exists()
    assert main(["export", str(root), "--out", str(tmp_path / "hf"), "--splits", "train", "-q"]) == 0


def test_export_never_follows_a_link_out_of_the_dataset(tmp_path, capsys):
    """A dataset image that links to a file outside the dataset is refused, not embedded; the dataset's
    own VOCdevkit/VOC2012 links (to its JPEGImages, ...) are read."""
    from pccseg.dataset.folder import DatasetFolder
    from pccseg.dataset.voc import VOCSplit

    root = make_blocks_tree(tmp_path / "ds", n=2, size=32)
    DatasetFolder(root).link_voc_layout()
    assert len(VOCSplit(root / "VOCdevkit" / "VOC2012", "train")) == 2
    (tmp_path / "secret.jpg").write_bytes((root / "JPEGImages" / "000001.jpg").read_bytes())
    (root / "JPEGImages" / "000001.jpg").unlink()
    (root / "JPEGImages" / "000001.jpg").symlink_to(tmp_path / "secret.jpg")
    assert main(["export", str(root), "--out", str(tmp_path / "hf"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "000001.jpg: is a symbolic link out of the dataset" in err, err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("name", ["manifest.jsonl", "settings.json", "ImageSets/Segmentation/train.txt"])
def test_dataset_files_linked_out_of_the_dataset_are_not_read(tmp_path, capsys, name):
    root = make_blocks_tree(tmp_path / "ds", n=2, size=32, class_names=["background", "cat", "dog"])
    (root / "manifest.jsonl").write_text(json.dumps({"id": "000000", "prompt": "p", "classes": []}) + "\n")
    outside = tmp_path / "outside"
    (root / name).rename(outside)
    (root / name).symlink_to(outside)
    assert main(["export", str(root), "--out", str(tmp_path / "hf"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{name}: is a symbolic link out of the dataset" in err, err

"""Export to Hugging Face datasets: the export reads back with load_from_disk, image for image and label
for label."""

import json

import numpy as np
import pytest

from pccseg.cli import main
from pccseg.errors import InputError
from pccseg.io import load_image, load_mask

from test_train import make_blocks_tree

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

    with pytest.raises(InputError, match="no split files"):
        export_hf(tmp_path, tmp_path / "out")

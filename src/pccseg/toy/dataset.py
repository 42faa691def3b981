"""Rendered toy scenes with their exact label maps, as a VOC-layout dataset (train and val splits).

    pccseg toy render --out runs/toy-gt --num 2000 --val 500

Sample ``<id>`` (six digits) is the scene of seed ``seed + id``: train ids are ``0 .. num-1``, val ids
``num .. num+val-1``. The folder is the one ``generate`` writes (:mod:`pccseg.dataset.folder`, each sample
written by :meth:`~pccseg.dataset.folder.DatasetFolder.write_sample`; its manifest line names the sample's
split and the objects drawn), so it reads with ``pccseg train`` / ``pccseg evaluate`` and with torchvision's
``VOCSegmentation(out, image_set="train")``. A rerun resumes: samples that are done are skipped; one that a
rerun with other ``num`` / ``val`` moves to the other split gets a new manifest line. The split files and
the manifest are rebuilt at the end (atomically) and list every sample in the folder.
"""

from __future__ import annotations

from pathlib import Path

from ..dataset.folder import DatasetFolder, manifest_entry, sample_stem
from ..errors import InputError
from ..io import make_dir
from ..limits import check_seed
from ..vocab import VOC_CLASSES
from .config import RENDER_SEED

#: The largest rendered side (the toy model works at 128; scenes are drawn per pixel on the CPU).
MAX_RENDER_SIZE = 4096


def write_toy_dataset(out: str | Path, num: int, val: int = 0, *, seed: int = RENDER_SEED, size: int = 128,
                      progress: bool = False) -> dict:
    """Render ``num`` train and ``val`` val scenes into ``out``; returns {"train": n, "val": n, "rendered": n}."""
    import torch
    from tqdm import tqdm

    from .world import render_scene

    if num < 0 or val < 0 or num + val < 1:
        raise InputError(f"need at least one scene (num={num}, val={val})", field="--num/--val")
    if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 8 or size > MAX_RENDER_SIZE:
        raise InputError(f"must be a multiple of 8 from 32 to {MAX_RENDER_SIZE}, got {size}", field="--size")
    check_seed(seed, "--seed", count=num + val)
    ds = DatasetFolder.open(out, {"kind": "toy-render", "seed": int(seed), "size": int(size)})
    make_dir(ds.root)
    ds.repair()                                       # what a killed render left
    ds.bind()
    split = {sample_stem(i): "train" if i < num else "val" for i in range(num + val)}
    todo, entries = set(ds.todo(list(split))), ds.read_shards()
    rendered = 0
    for i, (stem, name) in enumerate(tqdm(split.items(), desc="render", unit="img", disable=not progress)):
        if stem in todo:
            scene = render_scene(seed + i, (size, size))
            mask = torch.from_numpy(scene.labels)
            entry = manifest_entry(stem, mask, VOC_CLASSES, record_id=i, prompt=scene.caption, classes=scene.classes,
                                   seed=seed + i, split=name, objects=[o.cls for o in scene.objects])
            ds.write_sample(stem, scene.image, mask, entry)
            rendered += 1
        elif entries[stem].get("split") != name:       # a rerun with other --num / --val
            ds.append_manifest(0, dict(entries[stem], split=name))
    ds.rebuild()
    return {"train": num, "val": val, "rendered": rendered}

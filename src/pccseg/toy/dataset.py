"""Rendered toy scenes with their exact label maps, as a VOC-layout dataset (train and val splits).

    pccseg toy render --out runs/toy-gt --num 2000 --val 500

Sample ``<id>`` (six digits) is the scene of seed ``seed + id``: train ids are ``0 .. num-1``, val ids
``num .. num+val-1``. The folder reads with ``pccseg train`` / ``pccseg evaluate`` and torchvision's
``VOCSegmentation``. A rerun resumes: samples whose mask exists are skipped; the split files and the
manifest are rewritten at the end (atomically).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..dataset.folder import JPEG_QUALITY, Dataset, sample_stem
from ..errors import InputError
from ..io import atomic_path, save_image, save_mask
from ..dataset.voc import SPLIT_DIR
from ..limits import check_seed
from .config import RENDER_SEED

#: The largest rendered side (the toy model works at 128; scenes are drawn per pixel on the CPU).
MAX_RENDER_SIZE = 4096


def write_toy_dataset(out: str | Path, num: int, val: int = 0, *, seed: int = RENDER_SEED, size: int = 128,
                      progress: bool = False) -> dict:
    """Render ``num`` train and ``val`` val scenes into ``out``; returns {"train": n, "val": n, "rendered": n}."""
    from .world import render_scene

    if num < 0 or val < 0 or num + val < 1:
        raise InputError(f"need at least one scene (num={num}, val={val})", field="--num/--val")
    if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 8 or size > MAX_RENDER_SIZE:
        raise InputError(f"must be a multiple of 8 from 32 to {MAX_RENDER_SIZE}, got {size}", field="--size")
    check_seed(seed, "--seed", count=num + val)
    ds = Dataset(out)
    settings = {"kind": "toy-render", "seed": int(seed), "size": int(size)}
    ds.check_settings(settings)
    ds.write_settings(settings)
    ds.repair()                                       # what a killed render left
    from tqdm import tqdm

    stems = {"train": [sample_stem(i) for i in range(num)], "val": [sample_stem(i) for i in range(num, num + val)]}
    rendered = 0
    entries = []
    for i in tqdm(range(num + val), desc="render", unit="img", disable=not progress):
        stem = sample_stem(i)
        scene = None
        if not ds.is_done(stem):
            scene = render_scene(seed + i, (size, size))
            save_image(ds.image_path(stem), scene.image, quality=JPEG_QUALITY)
            save_mask(ds.mask_path(stem), scene.labels)       # last: marks the sample done
            rendered += 1
        entries.append(_entry(i, seed, scene or render_scene(seed + i, (size, size)), stem))
    for split, names in stems.items():
        if names:
            with atomic_path(Path(out) / SPLIT_DIR / f"{split}.txt") as tmp:
                tmp.write_text("".join(s + "\n" for s in names))
    with atomic_path(ds.manifest_path) as tmp:
        tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return {"train": num, "val": val, "rendered": rendered}


def _entry(i: int, seed: int, scene, stem: str) -> dict:
    return {"id": stem, "record_id": i, "prompt": scene.caption, "classes": list(scene.classes), "seed": seed + i,
            "objects": [o.cls for o in scene.objects]}


def write_prompt_file(path: str | Path, num: int, seed: int = 0) -> None:
    """A toy prompt file (JSON list of ``{"id", "prompt_sd", "classes"}``, a record per line) of ``num``
    records."""
    from .world import toy_prompt_records

    with atomic_path(path) as tmp:
        tmp.write_text("[\n" + ",\n".join(json.dumps(r) for r in toy_prompt_records(num, seed=seed)) + "\n]\n")

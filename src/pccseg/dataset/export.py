"""A pccseg dataset in the formats other tools share datasets in: Hugging Face ``datasets``
(``pccseg export DIR --format hf --out OUT``).

The export is a ``datasets.DatasetDict`` written with ``save_to_disk``: one split per split file of
``DIR/ImageSets/Segmentation`` (``train`` stays ``train``, ``val`` becomes ``validation``), each row
``{"id", "image", "mask", "prompt", "classes"}``: ``image`` and ``mask`` are ``datasets.Image()`` features
holding the files' own bytes (the JPEG, and the palette PNG whose pixel values are the labels, 255 =
uncertain); ``prompt`` and ``classes`` come from ``manifest.jsonl`` (empty when the dataset has none).
``OUT/id2label.json`` maps label values to class names, as Hugging Face segmentation models expect.
``datasets.load_from_disk(OUT)`` reads it back; ``push_to_hub`` publishes it.

``OUT`` is replaced atomically, and only when it is missing, empty, or an earlier export holding nothing
else: ``OUT/pccseg-export.json`` (:data:`MARKER`) names the source and every entry the export wrote. Any
other ``OUT`` is refused before anything is written: a folder holding other files, the source dataset or
a folder inside it, a file, a symbolic link.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

from .folder import MANIFEST, read_manifest
from ..errors import InputError
from ..io import TEMP_SUFFIX, atomic_path, make_dir, read_bytes, read_json, remove_temps
from .voc import SPLIT_DIR, VOCSplit, voc_root

#: pccseg split name -> Hugging Face split name, where they differ.
HF_SPLIT_NAMES = {"val": "validation"}
ID2LABEL = "id2label.json"
#: What marks a folder as an export (and lists what it holds), so that a new export may replace it.
MARKER = "pccseg-export.json"


def check_out(source: str | Path, out: str | Path) -> Path:
    """``out`` as an export may write it, or :class:`InputError` (field ``--out``): it must not be a link,
    a file, the ``source`` dataset or inside it, nor a folder holding anything but an earlier export."""
    out = Path(out)
    if out.is_symlink():
        raise InputError("is a symbolic link: give the folder it points to, or a new folder", path=out,
                         field="--out")
    if out.exists() and not out.is_dir():
        raise InputError("is not a folder", path=out, field="--out")
    src, dst = Path(source).resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise InputError(f"is the dataset {source} or inside it: give a folder outside it", path=out,
                         field="--out")
    try:
        entries = sorted(os.listdir(out)) if out.is_dir() else []
    except OSError as e:
        raise InputError(f"unreadable ({e.strerror or e})", path=out, field="--out") from None
    if entries:
        wrote = None
        if MARKER in entries and (out / MARKER).is_file():
            try:
                wrote = read_json(out / MARKER).get("entries")
            except InputError:
                wrote = None
        if not isinstance(wrote, list):
            raise InputError("is not empty and not an earlier export (no pccseg-export.json): give a new or "
                             "empty folder", path=out, field="--out")
        other = [e for e in entries if e not in wrote and e != MARKER]
        if other:
            raise InputError(f"holds what an export did not write ({', '.join(other[:3])}"
                             f"{', ...' if len(other) > 3 else ''}): give a new or empty folder", path=out,
                             field="--out")
    return out


#: the progress bars of exports in progress, by a key (``datasets`` pickles the generator's arguments)
_BARS: dict[str, object] = {}


def _rows(samples: list[tuple[str, str, str, str, list[str]]], bar: str | None = None):
    for stem, image, mask, prompt, classes in samples:
        if bar in _BARS:
            _BARS[bar].update(1)
        yield {"id": stem, "image": {"bytes": read_bytes(image), "path": Path(image).name},
               "mask": {"bytes": read_bytes(mask), "path": Path(mask).name},
               "prompt": prompt, "classes": classes}


def export_hf(root: str | Path, out: str | Path, *, splits: Sequence[str] | None = None, progress: bool = True):
    """Write the dataset at ``root`` to ``out`` as a Hugging Face ``DatasetDict`` (see the module
    docstring); returns it. ``splits``: split names to export (default: every split file). Needs the
    ``datasets`` package (``pip install 'pccseg[hf]'``); ``out`` is written atomically."""
    try:
        import datasets
    except ImportError:
        raise InputError("the Hugging Face export needs the 'datasets' package: pip install 'pccseg[hf]'",
                         field="--format") from None
    source = root
    out = check_out(source, out)
    root = voc_root(root)
    if splits is None:
        splits = sorted(p.stem for p in (root / SPLIT_DIR).glob("*.txt")) if (root / SPLIT_DIR).is_dir() else []
        if not splits:
            raise InputError(f"no split files in {SPLIT_DIR}/ (not a dataset folder?)", path=root)
    for split in splits:
        name = HF_SPLIT_NAMES.get(split, split)
        if not re.fullmatch(r"\w+(\.\w+)*", name):
            raise InputError(f"split {split!r} cannot be a Hugging Face split name (letters, digits, _ and .): "
                             "rename the file, or leave it out with --splits", path=root / SPLIT_DIR / f"{split}.txt")
    manifest = {str(e.get("id")): e for e in read_manifest(root)} if (root / MANIFEST).is_file() else {}
    make_dir(out.parent)
    remove_temps(out.parent, name=out.name)   # what a killed export left
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                  "mask": datasets.Image(), "prompt": datasets.Value("string"),
                                  "classes": datasets.Sequence(datasets.Value("string"))})
    # one bar of ours over the rows (progress=True); datasets' own bars ("Generating train split", then
    # "Saving the dataset", drawn again when it closes) are off during the export, then as they were
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return _export(datasets, source, root, out, splits, manifest, features, progress)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def _export(datasets, source: str | Path, root: Path, out: Path, splits: Sequence[str], manifest: dict, features,
            progress: bool):
    # datasets' arrow cache, as big as the export: beside OUT under a temporary name, so that what a killed
    # export leaves is removed by the rerun's remove_temps (in the system's temp folder it would stay)
    cache = out.parent / f".{out.name}.{secrets.token_hex(4)}.cache{TEMP_SUFFIX}"
    cache.mkdir()
    try:
        return _export_rows(datasets, source, root, out, splits, manifest, features, progress, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _export_rows(datasets, source: str | Path, root: Path, out: Path, splits: Sequence[str], manifest: dict,
                 features, progress: bool, cache: Path):
    from tqdm import tqdm

    parts, class_names = {}, None
    with tqdm(desc="export", unit="img", disable=not progress) as bar:
        key = f"{os.getpid()}-{id(bar)}"
        _BARS[key] = bar
        try:
            for split in splits:
                ds = VOCSplit(root, split)
                class_names = ds.class_names
                samples = [(stem, str(image), str(mask), manifest.get(stem, {}).get("prompt") or "",
                            list(manifest.get(stem, {}).get("classes") or []))
                           for stem, image, mask in zip(ds.stems, ds.images, ds.masks)]
                bar.total = (bar.total or 0) + len(samples)
                parts[HF_SPLIT_NAMES.get(split, split)] = datasets.Dataset.from_generator(
                    _rows, features=features, gen_kwargs={"samples": samples, "bar": key}, cache_dir=str(cache),
                    split=datasets.NamedSplit(HF_SPLIT_NAMES.get(split, split)))
        finally:
            _BARS.pop(key, None)
        result = datasets.DatasetDict(parts)
        with atomic_path(out, directory=True) as tmp:
            result.save_to_disk(str(tmp))
            (tmp / ID2LABEL).write_text(json.dumps({str(i): n for i, n in enumerate(class_names)}, indent=2) + "\n")
            (tmp / MARKER).write_text(json.dumps({"format": "hf", "source": str(Path(source).resolve()),
                                                  "splits": list(parts), "entries": sorted(os.listdir(tmp))},
                                                 indent=2) + "\n")
    return datasets.load_from_disk(str(out))

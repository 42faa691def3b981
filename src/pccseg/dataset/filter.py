"""Filter a dataset's samples by the labeller's own evidence, into a split file (``pccseg filter``).

A generated sample is suspect when its labeller says so: many uncertain pixels (255), a prompted class it
found no pixel of (the model did not draw it, or the labeller missed it), or a class whose area is far
from that class's usual area in the dataset (a class map that spilled over the background, or a speck).
:func:`filter_split` reads the masks (and ``manifest.jsonl``'s prompted classes, where there is one),
applies a :class:`FilterRule` and writes the kept stems as ``ImageSets/Segmentation/<out_split>.txt``;
no image or mask changes, and training on the result is ``pccseg train --train-split <out_split>``.

The area rule is robust: per object class, over the samples that hold it, the log of its share of the
image; a sample is an outlier when that log lies more than ``area_mad`` scaled median absolute deviations
(MAD x 1.4826, the standard deviation of a normal distribution) from the class's median. Classes present
in fewer than :data:`MIN_AREA_SAMPLES` samples are not judged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..params import Bool, OrNone, Real, check, param, parameters
from ..io import atomic_path, check_stem, load_mask, read_jsonl
from ..vocab import IGNORE_INDEX
from .folder import MANIFEST, SETS

MIN_AREA_SAMPLES = 5


@parameters
@dataclass(frozen=True)
class FilterRule:
    """Which samples to drop (``None`` / ``False``: that test is off)."""

    max_uncertain: float | None = param(0.5, "drop a sample with more uncertain (255) pixels than this share; None "
                                              "(-1 on the command line): off", OrNone(Real(0, 1), "off"))
    area_mad: float | None = param(3.0, "drop a sample where a class's log-area is more than this many robust sds "
                                        "from the class's median; None (0 on the command line): off",
                                   OrNone(Real(0, closed="neither"), "off"))
    missing: bool = param(True, "drop a sample where a prompted class (manifest.jsonl's classes) has no pixel",
                          Bool())

    def __post_init__(self):
        check(self)


@dataclass(frozen=True)
class SampleStats:
    """What a mask says of itself: its uncertain share, each label's share of the image (0 and 255
    excluded) and, from the manifest, the prompted class names (None when unknown)."""

    stem: str
    uncertain: float
    areas: dict[int, float]
    prompted: tuple[str, ...] | None = None


def mask_stats(stem: str, mask: np.ndarray, prompted: Sequence[str] | None = None) -> SampleStats:
    """:class:`SampleStats` of an (H, W) uint8 mask."""
    counts = np.bincount(mask.reshape(-1), minlength=256)
    n = mask.size
    areas = {int(v): counts[v] / n for v in np.flatnonzero(counts) if 0 < v < IGNORE_INDEX}
    return SampleStats(stem, counts[IGNORE_INDEX] / n, areas, None if prompted is None else tuple(prompted))


def select(stats: Sequence[SampleStats], rule: FilterRule, class_names: Sequence[str]) -> tuple[list[str], dict]:
    """(kept stems in their order, ``{dropped stem: [reasons]}``) under ``rule``. Reasons:
    ``uncertain 0.62``, ``missing dog``, ``area cat 0.004 (median 0.12)``."""
    reasons: dict[str, list[str]] = {}
    if rule.area_mad is not None:
        per_class: dict[int, list[tuple[str, float]]] = {}
        for s in stats:
            for c, a in s.areas.items():
                per_class.setdefault(c, []).append((s.stem, a))
        for c, items in per_class.items():
            if len(items) < MIN_AREA_SAMPLES:
                continue
            logs = np.log([a for _, a in items])
            median = float(np.median(logs))
            spread = 1.4826 * float(np.median(np.abs(logs - median)))
            if spread == 0:
                continue
            for (stem, a), x in zip(items, logs):
                if abs(x - median) > rule.area_mad * spread:
                    name = class_names[c] if c < len(class_names) else str(c)
                    reasons.setdefault(stem, []).append(f"area {name} {a:.4f} (median {math.exp(median):.4f})")
    index = {name: i for i, name in enumerate(class_names)}
    for s in stats:
        if rule.max_uncertain is not None and s.uncertain > rule.max_uncertain:
            reasons.setdefault(s.stem, []).insert(0, f"uncertain {s.uncertain:.2f}")
        if rule.missing and s.prompted is not None:
            for name in s.prompted:
                if index.get(name) not in s.areas:
                    reasons.setdefault(s.stem, []).append(f"missing {name}")
    kept = [s.stem for s in stats if s.stem not in reasons]
    return kept, {s.stem: reasons[s.stem] for s in stats if s.stem in reasons}


def prompted_classes(root: Path) -> dict[str, tuple[str, ...]]:
    """``{stem: prompted class names}`` from ``root/manifest.jsonl`` (empty without one)."""
    path = root / MANIFEST
    if not path.is_file():
        return {}
    out = {}
    for n, entry in enumerate(read_jsonl(path), 1):
        stem, classes = entry.get("id"), entry.get("classes")
        if not isinstance(stem, str) or not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise InputError("a manifest line needs a string id and a list of class names", path=path,
                             field=f"line {n}")
        out[check_stem(stem, path=path, line=n, key="id")] = tuple(classes)
    return out


def filter_split(root: str | Path, *, split: str = "train", out_split: str = "filtered",
                 rule: FilterRule = FilterRule()) -> dict:
    """Write ``ImageSets/Segmentation/<out_split>.txt`` of ``root``: the stems of ``split`` that ``rule``
    keeps (see the module docstring). Returns ``{"split", "out_split", "kept", "dropped", "reasons":
    {reason kind: samples}, "dropped_stems": {stem: [reasons]}}``. Nothing else is written."""
    check_stem(out_split, key="--out-split")
    if out_split == split:
        raise InputError(f"the filtered split must get a name of its own, not {split!r} (it would replace the "
                         "split it is read from)", field="--out-split")
    from .voc import VOCSplit     # torch: not for ``pccseg --help``

    ds = VOCSplit(root, split)
    prompted = prompted_classes(ds.root)
    stats = [mask_stats(stem, load_mask(ds.masks[i]), prompted.get(stem)) for i, stem in enumerate(ds.stems)]
    kept, dropped = select(stats, rule, ds.class_names)
    if not kept:
        raise InputError(f"the rule drops all {len(stats)} samples of split {split!r}; loosen it", path=ds.root)
    with atomic_path(ds.root / SETS / f"{out_split}.txt") as tmp:
        tmp.write_text("".join(s + "\n" for s in kept))
    kinds: dict[str, int] = {}
    for rs in dropped.values():
        for kind in {r.split()[0] for r in rs}:
            kinds[kind] = kinds.get(kind, 0) + 1
    return {"split": split, "out_split": out_split, "kept": len(kept), "dropped": len(dropped), "reasons": kinds,
            "dropped_stems": dropped}

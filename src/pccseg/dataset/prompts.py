"""Prompt files (docs/method.md section 0): records ``{"id": int, "prompt_sd": str, "classes": [names]}``.

A prompt file is a JSON list of records or JSON lines (one record per line; blank lines are skipped). The
VOC set of the report (44,426 records, Dataset Diffusion's prompts) ships with the package:
:func:`load_prompts` with no path reads it. Every problem is an :class:`~pccseg.errors.InputError` naming
the file, the record (by its 0-based index in the file) and the field.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .folder import sample_stem
from ..errors import InputError
from ..io import parse_json, read_text
from ..vocab import VOC_CLASSES

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = "voc_prompts.json"
TOY_PROMPTS = "toy_prompts.json"     #: prompts of the toy world (:mod:`pccseg.toy`), 5,000 records
#: the shipped prompt sets by name (``--prompts voc``, ``--prompts toy``; the built-in models name theirs)
PROMPT_SETS = {"voc": DEFAULT_PROMPTS, "toy": TOY_PROMPTS}


@dataclass(frozen=True)
class PromptRecord:
    """One prompt.

    Attributes:
        index: 0-based position in the prompt file (the per-image seed is ``seed + index``).
        id: the record's id (the dataset stem is ``f"{id:06d}"``).
        prompt: the text given to Stable Diffusion.
        classes: class names of the objects in the prompt (a name may repeat).
    """

    index: int
    id: int
    prompt: str
    classes: tuple[str, ...]

    @property
    def stem(self) -> str:
        return sample_stem(self.id)


def default_prompts_path(name: str = DEFAULT_PROMPTS) -> Path:
    """A shipped prompt set: the VOC set (default) or :data:`TOY_PROMPTS` (a file name or a set name of
    :data:`PROMPT_SETS`)."""
    return Path(str(resources.files("pccseg") / "data" / PROMPT_SETS.get(name, name)))


def prompts_option(value: str | None, default_set: str = "voc") -> tuple[Path, str]:
    """``--prompts``: (the file to read, the name settings.json records). ``None`` is ``default_set``; a
    name of :data:`PROMPT_SETS` that is not a file here is that shipped set (recorded by its file name, as
    when it is the default); anything else is a file (recorded by its absolute path)."""
    if value is None or (value in PROMPT_SETS and not Path(value).exists()):
        name = PROMPT_SETS[default_set if value is None else value]
        return default_prompts_path(name), name
    return Path(value), str(Path(value).resolve())


def parse_classes_option(text: str) -> tuple[str, ...]:
    """``--classes background,cat,dog`` -> a class list (index 0 is the background)."""
    names = tuple(n.strip() for n in text.split(","))
    if len(names) < 2 or any(not n for n in names):
        raise InputError("expected at least two comma-separated names, the first being the background "
                         f"(got {text!r})", field="--classes")
    if len(set(names)) != len(names):
        raise InputError(f"a class is named twice in {text!r}", field="--classes")
    if len(names) > 255:
        raise InputError(f"{len(names)} classes: at most 255 fit a PNG mask with 255 as uncertain",
                         field="--classes")
    return names


def _raw_records(path: Path) -> list:
    if not path.exists():
        raise InputError("no such prompt file", path=path)
    text = read_text(path)
    stripped = text.lstrip()
    if not stripped:
        raise InputError("empty prompt file", path=path)
    if stripped.startswith("["):
        return parse_json(text, path=path)
    return [parse_json(line, path=path, field=f"line {n}") for n, line in enumerate(text.splitlines(), 1)
            if line.strip()]


def load_prompts(path: str | Path | None = None, *, class_names: Sequence[str] = VOC_CLASSES
                 ) -> list[PromptRecord]:
    """Read and validate a prompt file (default: the shipped VOC set).

    Checks: every record is an object with an integer ``id``, a non-empty string ``prompt_sd`` and a
    non-empty list ``classes`` of names from ``class_names[1:]``; ids are unique.
    """
    path = default_prompts_path() if path is None else Path(path)
    data = _raw_records(path)
    if not isinstance(data, list):
        raise InputError("expected a JSON list of records (or JSON lines)", path=path)
    known = set(class_names[1:])
    out: list[PromptRecord] = []
    seen: dict[int, int] = {}
    for i, rec in enumerate(data):
        where = f"record {i}"
        if not isinstance(rec, dict):
            raise InputError(f"expected an object, got {type(rec).__name__}", path=path, field=where)
        for key in ("id", "prompt_sd", "classes"):
            if key not in rec:
                raise InputError("missing field", path=path, field=f"{where}: {key}")
        rid = rec["id"]
        try:
            if not isinstance(rid, int):
                raise ValueError(f"expected an integer, got {rid!r}")
            sample_stem(rid)
        except ValueError as e:
            raise InputError(str(e), path=path, field=f"{where}: id") from None
        prompt = rec["prompt_sd"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"expected a non-empty string, got {prompt!r}", path=path, field=f"{where}: prompt_sd")
        classes = rec["classes"]
        if not isinstance(classes, list) or not classes:
            raise InputError("expected a non-empty list of class names", path=path, field=f"{where}: classes")
        for name in classes:
            if not isinstance(name, str) or name not in known:
                hint = "" if len(known) > 30 else f" (known: {', '.join(class_names[1:])})"
                raise InputError(f"unknown class name {name!r}{hint}; give your class list with --classes",
                                 path=path, field=f"{where}: classes")
        if rid in seen:
            raise InputError(f"duplicate id {rid} (also record {seen[rid]})", path=path, field=f"{where}: id")
        seen[rid] = i
        out.append(PromptRecord(index=i, id=rid, prompt=prompt, classes=tuple(classes)))
    if not out:
        raise InputError("no records", path=path)
    return out


def select(records: Sequence[PromptRecord], *, start: int = 0, num: int | None = None) -> list[PromptRecord]:
    """``records[start : start + num]`` (all from ``start`` when ``num`` is None)."""
    if start < 0:
        raise InputError(f"must be >= 0, got {start}", field="--start")
    if num is not None and num < 1:
        raise InputError(f"must be >= 1, got {num}", field="--num")
    stop = None if num is None else start + num
    return list(records[start:stop])


def check_lengths(records: Sequence[PromptRecord], tokenizer, *, path: str | Path | None = None) -> list[int]:
    """Warn (log) about prompts longer than the tokenizer's context; returns their record indices.

    Stable Diffusion truncates such prompts to the first ``model_max_length`` tokens (SoT and EoT included).
    """
    limit = int(getattr(tokenizer, "model_max_length", 77) or 77)
    if not records or limit >= 10 ** 6:
        return []
    ids = tokenizer([r.prompt for r in records], add_special_tokens=True)["input_ids"]
    long = [r.index for r, x in zip(records, ids) if len(x) > limit]
    for r, x in zip(records, ids):
        if len(x) > limit:
            log.warning("%s: record %d: prompt_sd has %d tokens, more than %d: truncated",
                        path or "prompts", r.index, len(x), limit)
    return long

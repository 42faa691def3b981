"""Old import paths, kept because the README or the docs named them before the package had folders.

Until the layout of issue 13 every module sat in ``pccseg/``; ``import pccseg.labeller`` (and every other
name below) still works and gives the module's new home itself (the same module object, so a
``monkeypatch`` on either name is seen by both). New code uses the new paths; nothing in pccseg imports
the old ones. An old path is resolved by a finder placed last on ``sys.meta_path``, so it is consulted
only for names no file answers.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

#: old module -> its new home
MOVED = {
    "pccseg.capture_format": "pccseg.capture.format",
    "pccseg.pipeline": "pccseg.capture.pipeline",
    "pccseg.tiny": "pccseg.capture.tiny",
    "pccseg.tokenizer": "pccseg.capture.tokenizer",
    "pccseg.synthetic": "pccseg.capture.synthetic",
    "pccseg.labeller": "pccseg.labellers.pcc",
    "pccseg.labeller_dd": "pccseg.labellers.dd",
    "pccseg.labeller_attn": "pccseg.labellers.attn",
    "pccseg.features": "pccseg.labellers.features",
    "pccseg.clusters": "pccseg.labellers.clusters",
    "pccseg.classes": "pccseg.labellers.classes",
    "pccseg.refine": "pccseg.labellers.refine",
    "pccseg.prompts": "pccseg.dataset.prompts",
    "pccseg.generate": "pccseg.dataset.generate",
    "pccseg.export": "pccseg.dataset.export",
    "pccseg.voc": "pccseg.dataset.voc",
    "pccseg.deeplab": "pccseg.train.deeplab",
    "pccseg.evaluate": "pccseg.train.evaluate",
    "pccseg.metrics": "pccseg.train.metrics",
    "pccseg.show": "pccseg.pictures.show",
    "pccseg.report": "pccseg.pictures.report",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old name as its new module."""

    def find_spec(self, fullname, path, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def create_module(self, spec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system has just written the old name's spec over the module's own: put that back
        module.__spec__ = self._specs.pop(module.__spec__.name)


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())

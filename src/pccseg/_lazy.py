"""Lazy re-exports for the packages' ``__init__`` modules (here, not in :mod:`pccseg`, so that a sub-package
imports no other part of pccseg for them)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` giving ``exports[name]`` (a module name) ``.name`` on first use, so that
    importing a package imports none of its heavy modules."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__

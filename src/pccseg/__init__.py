"""pccseg: labelled semantic-segmentation datasets from Stable Diffusion by Principal Component Clustering.

Data flows one way: prompts -> capture -> label -> dataset -> train -> evaluate, and the package's folders
are those parts: :mod:`pccseg.capture` (the model and what its attention records while it generates),
:mod:`pccseg.labellers` (PCC and the baselines), :mod:`pccseg.dataset` (prompts, the dataset on disk,
VOC reading, export), :mod:`pccseg.train` (DeepLabv3 training and scoring), :mod:`pccseg.pictures`
and :mod:`pccseg.toy` (the toy world). The public API is re-exported here lazily (importing ``pccseg``
does not import torch or diffusers).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from . import _moved

__version__ = "0.1.0"

_EXPORTS = {
    # prompts -> capture
    "load_prompts": "pccseg.dataset.prompts",
    "load_pipeline": "pccseg.capture.pipeline",
    "tiny_pipeline": "pccseg.capture.tiny",
    "Capture": "pccseg.capture.format",
    "load_capture": "pccseg.capture.format",
    "save_capture": "pccseg.capture.format",
    # -> label (pcc, dd, attn, fuse; label() picks by the type of the parameters)
    "label": "pccseg.labellers.registry",
    "LabelParams": "pccseg.labellers.pcc",
    "LabelResult": "pccseg.labellers.pcc",
    "DDParams": "pccseg.labellers.dd",
    "AttnParams": "pccseg.labellers.attn",
    "MapsResult": "pccseg.labellers.attn",
    "FuseParams": "pccseg.labellers.fuse",
    "FuseResult": "pccseg.labellers.fuse",
    # -> train -> evaluate
    "TrainConfig": "pccseg.train.config",
    # pictures
    "stage_figure": "pccseg.pictures.show",
    "make_report": "pccseg.pictures.report",
    # vocabulary, errors
    "InputError": "pccseg.errors",
    "VOC_CLASSES": "pccseg.vocab",
    "VOC_PALETTE": "pccseg.vocab",
}


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` giving ``exports[name]`` (a module name) ``.name`` on first use, so that
    importing a package imports none of its heavy modules."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS) + ["__version__"]

_moved.install()

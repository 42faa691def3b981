"""pccseg: labelled semantic-segmentation datasets from Stable Diffusion by Principal Component Clustering.

Data flows one way: prompts -> capture -> label -> dataset -> train -> evaluate. The public API is
re-exported here lazily (importing ``pccseg`` does not import diffusers). The functions named like their
module are imported from it: ``from pccseg.capture import capture``, ``from pccseg.generate import
generate``, ``from pccseg.train import train``, ``from pccseg.evaluate import evaluate``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # prompts -> capture
    "load_prompts": "pccseg.prompts",
    "load_pipeline": "pccseg.pipeline",
    "tiny_pipeline": "pccseg.tiny",
    "Capture": "pccseg.capture_format",
    "load_capture": "pccseg.capture_format",
    "save_capture": "pccseg.capture_format",
    # -> label (pcc, dd, attn; label() picks by the type of the parameters)
    "label": "pccseg.labellers",
    "LabelParams": "pccseg.labeller",
    "LabelResult": "pccseg.labeller",
    "DDParams": "pccseg.labeller_dd",
    "AttnParams": "pccseg.labeller_attn",
    "MapsResult": "pccseg.labeller_attn",
    # -> train -> evaluate
    "TrainConfig": "pccseg.train_config",
    # pictures
    "stage_figure": "pccseg.show",
    "make_report": "pccseg.report",
    # vocabulary, errors
    "InputError": "pccseg.errors",
    "VOC_CLASSES": "pccseg.vocab",
    "VOC_PALETTE": "pccseg.vocab",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pccseg' has no attribute {name!r}")


__all__ = sorted(_EXPORTS) + ["__version__"]

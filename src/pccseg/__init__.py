"""pccseg: labelled semantic-segmentation datasets from Stable Diffusion by Principal Component Clustering.

Data flows one way: prompts -> capture -> label -> dataset -> train -> evaluate, and the package's folders
are those parts: :mod:`pccseg.capture` (the model and what its attention records while it generates),
:mod:`pccseg.labellers` (PCC and the baselines), :mod:`pccseg.dataset` (prompts, the dataset on disk,
VOC reading, export), :mod:`pccseg.train` (DeepLabv3 training and scoring), :mod:`pccseg.pictures`
and :mod:`pccseg.toy` (the toy world). The public API is re-exported here lazily (importing ``pccseg``
does not import torch or diffusers).
"""

from __future__ import annotations

from ._lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS) + ["__version__"]

# the toy model registers in the table of built-in models (pccseg.capture.models); the capture layer does
# not import the toy world, which sits above it
from .toy import config as _toy_config  # noqa: E402,F401

"""The built-in models, in one table: ``--model tiny``, ``tiny-sdxl`` and ``toy``, with their defaults.

Each :class:`BuiltinModel` says how to load the model (a ``"module:function"`` imported on first use, so
that this table imports no torch), its default image size, denoising steps, guidance and shipped prompt
set, and which UNet configuration is its architecture. :func:`builtin_model` finds the entry of a model
by its name, and of any other model (a folder that ``pccseg toy train`` wrote, a pipeline in memory) by its
UNet's configuration, so that a toy model gets the toy defaults however it is named or loaded.

``tiny`` and ``tiny-sdxl`` are registered here (they are :mod:`pccseg.capture.tiny`'s); ``toy`` registers
itself from :mod:`pccseg.toy.config`, which importing :mod:`pccseg` imports (data flows capture -> ... ->
toy, never back).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: UNet config keys that define an architecture (compared when a model is recognised by its config)
ARCH_KEYS = ("sample_size", "block_out_channels", "down_block_types", "up_block_types", "cross_attention_dim",
             "attention_head_dim", "layers_per_block", "addition_embed_type")


@dataclass(frozen=True)
class BuiltinModel:
    """One built-in model and its defaults.

    Attributes:
        name: the ``--model`` name.
        loader: ``"module:function"`` taking ``dtype``, ``device`` (and ``seed`` when ``takes_seed``) and
            returning the pipeline. A folder of this architecture loads as any diffusers folder does.
        pipeline_class: ``_class_name`` of its model_index.json.
        size: default (height, width).
        steps: default denoising steps.
        guidance: default guidance scale (None: the pipeline's own, 7.5 for SD, 5.0 for SDXL).
        prompts: name of the shipped prompt set it draws (``"voc"``, ``"toy"``).
        unet: ``"module:function"`` returning the UNet config of this architecture (called only when a model
            is recognised by its config, so never for ``--help``); a folder or a pipeline whose UNet config
            has the same values under :data:`ARCH_KEYS` gets this entry's defaults. None: by name only.
        check_records: ``"module:function(records, path)"`` raising InputError for a prompt record the
            model cannot draw, or None.
        takes_seed: whether the loader's ``seed`` picks the weights (random-weight models).
    """

    name: str
    loader: str
    pipeline_class: str
    size: tuple[int, int]
    steps: int
    guidance: float | None
    prompts: str
    unet: str | None = None
    check_records: str | None = None
    takes_seed: bool = False

    def load(self, **kwargs):
        """The pipeline (``kwargs``: ``dtype``, ``device`` and, for random weights, ``seed``)."""
        if not self.takes_seed:
            kwargs.pop("seed", None)
        return _function(self.loader)(**kwargs)

    def check(self, records, path) -> None:
        """InputError for a prompt record this model cannot draw (nothing when any is fine)."""
        if self.check_records:
            _function(self.check_records)(records, path)

    def matches(self, unet_config: Mapping[str, Any] | None) -> bool:
        """Whether a UNet config (a dict, or diffusers' FrozenDict) is this model's architecture."""
        if not self.unet or not unet_config:
            return False
        ref = _function(self.unet)()
        return all(_plain(unet_config.get(k)) == _plain(ref[k]) for k in ARCH_KEYS if k in ref)


#: diffusers schedulers ``--scheduler`` may put in place of the pipeline's own (built from its config, so the
#: noise schedule and prediction type stay the model's)
SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "DEISMultistepScheduler", "DPMSolverMultistepScheduler",
              "DPMSolverSinglestepScheduler", "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler",
              "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "LMSDiscreteScheduler", "PNDMScheduler",
              "UniPCMultistepScheduler")


BUILTIN_MODELS: dict[str, BuiltinModel] = {}


def register(model: BuiltinModel) -> BuiltinModel:
    """Add a model to :data:`BUILTIN_MODELS` (a name registered twice: the last one counts)."""
    BUILTIN_MODELS[model.name] = model
    return model


def builtin_model(model: str | None = None, unet_config: Mapping[str, Any] | None = None) -> BuiltinModel | None:
    """The entry of a built-in model name, else the entry whose architecture ``unet_config`` is, else None."""
    if model in BUILTIN_MODELS:
        return BUILTIN_MODELS[model]
    for entry in BUILTIN_MODELS.values():
        if entry.matches(unet_config):
            return entry
    return None


def pipeline_model(pipe) -> BuiltinModel | None:
    """The built-in entry of a loaded pipeline, recognised by its UNet's configuration (None: not built in)."""
    unet = getattr(pipe, "unet", None)
    return builtin_model(None, getattr(unet, "config", None))


def _plain(v: Any) -> Any:
    """JSON-like view for comparing configs: tuples as lists."""
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def _function(spec: str) -> Callable:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


TINY_SIZE = (128, 128)    #: ``--model tiny`` / ``tiny-sdxl``: finishes in seconds on a CPU
TINY_STEPS = 4

register(BuiltinModel("tiny", "pccseg.capture.tiny:tiny_pipeline", "StableDiffusionPipeline", TINY_SIZE,
                      TINY_STEPS, None, "voc", "pccseg.capture.tiny:tiny_unet_config", takes_seed=True))
register(BuiltinModel("tiny-sdxl", "pccseg.capture.tiny:tiny_sdxl_pipeline", "StableDiffusionXLPipeline",
                      TINY_SIZE, TINY_STEPS, None, "voc", "pccseg.capture.tiny:tiny_sdxl_unet_config",
                      takes_seed=True))

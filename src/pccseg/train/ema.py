"""An exponential moving average of a model's weights (``pccseg train --ema DECAY``).

After every optimizer step ``t`` (1, 2, ...) each floating-point entry of the model's ``state_dict`` —
parameters and BatchNorm running statistics — moves towards the model's::

    shadow <- d_t * shadow + (1 - d_t) * value,      d_t = min(decay, (1 + t) / (10 + t))

(the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=t)``: without it a short run's
average would still hold much of the random initialisation; from ``t = 9 decay / (1 - decay) - 1`` on,
``d_t = decay``). Integer entries (``num_batches_tracked``) are copied. The shadow starts as the weights
before the first step.

In a run directory the average is saved twice, at every save of ``RUN/last``: as ``RUN/last/ema.safetensors``
(so that a resumed run continues the same average) and as ``RUN/ema``, a checkpoint directory of its own
that ``pccseg evaluate --checkpoint RUN/ema`` scores like any other.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import InputError
from .deeplab import unwrap

EMA_FILE = "ema.safetensors"     #: the average's state inside RUN/last
EMA_DIR = "ema"                  #: the average as a checkpoint directory of its own (RUN/ema)


def ema_decay(decay: float, updates: int) -> float:
    """The decay of update number ``updates`` (1, 2, ...): ``min(decay, (1 + t) / (10 + t))``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class WeightEMA:
    """The moving average of ``model``'s ``state_dict`` (see the module docstring); ``updates`` counts the
    steps averaged so far."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        self.decay, self.updates = float(decay), 0
        self.shadow = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average in the model's current weights (call after each optimizer step)."""
        self.updates += 1
        d = ema_decay(self.decay, self.updates)
        for k, v in unwrap(model).state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.mul_(d).add_(v.detach().to(s.dtype), alpha=1.0 - d)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, on the CPU (torchvision key names: a model loads them directly)."""
        return {k: v.detach().contiguous().cpu() for k, v in self.shadow.items()}

    def copy_to(self, model: nn.Module) -> nn.Module:
        """Load the average into ``model`` (a module of the same architecture); returns it."""
        unwrap(model).load_state_dict(self.shadow)
        return model

    def tensors(self) -> dict[str, torch.Tensor]:
        """What :func:`load_ema` restores: the average plus its update count (``ema.updates``)."""
        return {**{f"shadow.{k}": v for k, v in self.state_dict().items()},
                "ema.updates": torch.tensor([self.updates], dtype=torch.int64)}

    def load_tensors(self, tensors: dict[str, torch.Tensor], where: Path) -> None:
        shadow = {k[len("shadow."):]: v for k, v in tensors.items() if k.startswith("shadow.")}
        if set(shadow) != set(self.shadow) or "ema.updates" not in tensors:
            raise InputError("the weight average does not match the model; start afresh with --no-resume",
                             path=where)
        for k, v in shadow.items():
            self.shadow[k].copy_(v)
        self.updates = int(tensors["ema.updates"][0])


def load_ema(ema: WeightEMA, checkpoint: Path) -> None:
    """Restore ``ema`` from ``checkpoint/ema.safetensors`` (a ``RUN/last`` that a run with ``--ema`` saved);
    a checkpoint without it (the run had no average) is one line: start afresh or leave ``--ema`` off."""
    path = Path(checkpoint) / EMA_FILE
    if not path.is_file():
        raise InputError("this run was trained without --ema, so there is no average to continue: start afresh "
                         "with --no-resume, or resume without --ema", path=path)
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise InputError(f"cannot read the weight average ({e})", path=path) from None
    ema.load_tensors(tensors, path)

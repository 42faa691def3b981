"""The toy training's resume checkpoints and model folders (safetensors + JSON, no pickle): a stage's
modules by prefix, its optimizer and any further tensors in ``state.safetensors`` + ``state.json``, written
atomically and never cut short by a signal; :func:`resume` reads them back, after putting back the complete
copy that a kill inside an atomic replacement left.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..train.deeplab import load_optimizer, optimizer_tensors
from ..io import atomic_path, read_json, remove_temps, respect_umask, save_tensors
from ..signals import hold_interrupts

log = logging.getLogger(__name__)


def prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd``'s tensors as ``prefix.key``, detached, contiguous, on the CPU (to save)."""
    return {f"{prefix}.{k}": v.detach().contiguous().cpu() for k, v in sd.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors saved under ``prefix.``, without it (to load)."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _save_state(folder: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """A resume checkpoint: ``state.safetensors`` + ``state.json``, atomically, not cut short by a signal."""
    with hold_interrupts(), atomic_path(folder, directory=True) as tmp:
        save_tensors(tmp / "state.safetensors", tensors)
        (tmp / "state.json").write_text(json.dumps(meta, default=int) + "\n")


def resume(last: Path, stage: str, opt: torch.optim.Optimizer,
           modules: dict[str, torch.nn.Module]) -> tuple[int, dict, dict[str, torch.Tensor]]:
    """Load the resume checkpoint in ``last``, if there is one, into ``modules`` (prefix -> module) and ``opt``.

    Returns:
        (the step reached, the checkpoint's JSON, all its tensors); (0, {}, {}) when there is none.
    """
    from safetensors.torch import load_file

    # a kill inside the atomic replacement of ``last``: put its complete copy back, remove the rest
    remove_temps(last.parent, name=last.name, complete=lambda p: (p / "state.json").is_file())
    if not (last / "state.json").is_file():
        return 0, {}, {}
    meta = read_json(last / "state.json")
    tensors = load_file(str(last / "state.safetensors"))
    for prefix, module in modules.items():
        module.load_state_dict(unprefixed(prefix, tensors))
    load_optimizer(opt, tensors, meta["optimizer"])
    step = int(meta["step"])
    log.info("%s: resumed at step %d", stage, step)
    return step, meta, tensors


def save_checkpoint(last: Path, step: int, opt: torch.optim.Optimizer, modules: dict[str, torch.nn.Module],
                    tensors: dict[str, torch.Tensor] | None = None, **meta: Any) -> None:
    """The resume checkpoint that :func:`resume` reads: ``modules``' weights by prefix, the optimizer, and
    any further ``tensors`` and JSON ``meta``."""
    state, ometa = optimizer_tensors(opt)
    for prefix, module in modules.items():
        state.update(prefixed(prefix, module.state_dict()))
    _save_state(last, {**state, **(tensors or {})}, {"step": step, "optimizer": ometa, **meta})


def save_pipeline(folder: Path, pipe) -> None:
    """``pipe.save_pretrained`` (safetensors) into ``folder``, atomically, files respecting the umask."""
    from ..capture.pipeline import library_bars

    # transformers draws a "Writing model shards" bar per save; the stage's own bar is the progress
    with hold_interrupts(), library_bars(False), atomic_path(folder, directory=True) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        respect_umask(tmp)

"""TensorBoard event files of ``pccseg toy train`` (``OUT/tensorboard``), as ``pccseg train`` writes them.

``tensorboard --logdir runs/toy-model/tensorboard``: the loss of each stage (``vae/loss``,
``decoder/loss``, ``unet/loss`` with ``unet/lr``) and the evaluations during training (``eval/adherence``,
``eval/pcc_miou``, ...). :func:`opened` holds one writer for the run; :func:`scalar` is a no-op outside it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

FOLDER = "tensorboard"
_writer: list = []


@contextlib.contextmanager
def opened(out: str | Path) -> Iterator[None]:
    """Write the run's scalars to ``out/tensorboard`` inside the block (a resumed run adds event files)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(Path(out) / FOLDER))
    _writer.append(writer)
    try:
        yield
    finally:
        _writer.remove(writer)
        writer.close()


def scalar(tag: str, value, step: int) -> None:
    """One point of a curve (numbers only: None, NaN and strings are left out)."""
    if _writer and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        _writer[-1].add_scalar(tag, float(value), int(step))


def scalars(prefix: str, record: dict, step: int) -> None:
    """Every number of a JSON record as ``prefix/key``."""
    for key, value in record.items():
        scalar(f"{prefix}/{key}", value, step)

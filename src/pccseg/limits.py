"""Bounds that options share across commands: the seed range, and sizes checked against the memory there
is, so that an option fails in one line before the first file is written rather than after.

Every seed is an integer in ``0 .. MAX_SEED`` (torch's and numpy's generators take it as a signed 64-bit
integer; derived seeds, such as generate's ``seed + record index``, must stay in range too). A size is
refused when a lower bound of the memory it needs exceeds the memory of the device it would run on
(:func:`check_fits`): it could not be allocated, and a smaller size that can still takes very long.
"""

from __future__ import annotations

import math
import os
from typing import Any

from .errors import InputError

#: The largest seed: the largest signed 64-bit integer.
MAX_SEED = 2**63 - 1


def check_seed(value: Any, field: str = "seed", *, count: int = 1) -> int:
    """``value`` if ``value .. value + count - 1`` are all seeds (integers in 0..MAX_SEED), else
    :class:`InputError` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED - max(count - 1, 0):
        extra = f" - {count - 1} (it seeds {count} records: seed + index)" if count > 1 else ""
        raise InputError(f"must be an integer from 0 to 2**63 - 1{extra}, got {value!r}", field=field)
    return value


def device_memory(device: Any = None) -> int:
    """Bytes of memory of ``device`` (a torch device or its name; None or a CPU: the machine's RAM)."""
    kind = str(getattr(device, "type", device) or "cpu").split(":")[0]
    if kind == "cuda":
        import torch

        index = getattr(device, "index", None)
        if index is None and isinstance(device, str) and ":" in device:
            index = int(device.split(":")[1])
        return int(torch.cuda.get_device_properties(torch.cuda.current_device() if index is None
                                                    else index).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 62


def _gb(n: float) -> str:
    return f"{n / 2**30:.3g} GB" if n < 1000 * 2**30 else f"{n / 2**30:,.0f} GB"


def check_fits(nbytes: float, field: str, what: str, device: Any = None) -> None:
    """:class:`InputError` naming ``field`` when ``nbytes`` (a lower bound of what ``what`` needs) is more
    than the memory of ``device`` (see :func:`device_memory`)."""
    have = device_memory(device)
    if not math.isfinite(nbytes) or nbytes > have:
        kind = str(getattr(device, "type", device) or "cpu")
        raise InputError(f"too large: {what} needs at least {_gb(nbytes)}, more than the {kind}'s {_gb(have)}",
                         field=field)

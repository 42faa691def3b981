"""``pccseg pictures``: placeholder until the command lands."""

from __future__ import annotations


def register(sub) -> None:  # pragma: no cover - replaced by the real command
    pass

"""The stage figure of any labeller's result, saved as a PNG: PCC's stages (:func:`~.show.stage_figure`),
the fuse labeller's (:func:`~.fuse_figure.fuse_figure`), or the class maps of dd and attn
(:func:`~.show.maps_figure`). Its own module so that :mod:`.show` and :mod:`.fuse_figure` do not import each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .fuse_figure import fuse_figure
from .show import maps_figure, save_figure, stage_figure


def save_stage_figure(capture: Any, result: Any, path: str | Path, **kwargs: Any) -> Path:
    """:func:`stage_figure` (PCC's result), :func:`fuse_figure` (fuse) or :func:`maps_figure` (dd, attn) saved as a PNG at ``path``
    (atomically); returns the path. ``n_heads`` is ignored for dd and attn."""
    if hasattr(result, "pca"):
        return save_figure(stage_figure(capture, result, **kwargs), path)
    kwargs.pop("n_heads", None)
    if hasattr(result, "shares"):                          # the fuse labeller
        return save_figure(fuse_figure(capture, result, **kwargs), path)
    return save_figure(maps_figure(capture, result, **kwargs), path)

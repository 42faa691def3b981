"""Capture during generation (the method's sections 0-1): the model, and what its attention records
while it generates.

- :mod:`.attention`: ``with capture(pipe, classes) as cap:`` and the :class:`~.attention.Recorder` it
  returns (1a: self-attention of every head at the last step; 1b: OVAM class maps, step by step);
  :mod:`.hook`: the processors that wrap the installed ones; :mod:`.text`: the class text of each image;
  :mod:`.layers`: which layers are read, their grids, :func:`capture_nbytes`;
- :mod:`.format`: :class:`Capture` and the capture directory on disk;
- :mod:`.pipeline`: :func:`load_pipeline` (SD 1.x / 2.x, SDXL, a local folder, ``tiny``, ``toy``);
- :mod:`.tiny`: SD-architecture pipelines with random weights; :mod:`.tokenizer`: the CLIP tokenizer
  built offline;
- :mod:`.synthetic`: captures with a planted layout, for tests and figures.

The names below load on first use, so importing this package imports no torch.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "capture": "pccseg.capture.attention",
    "capture_nbytes": "pccseg.capture.layers",
    "Capture": "pccseg.capture.format",
    "load_capture": "pccseg.capture.format",
    "save_capture": "pccseg.capture.format",
    "load_pipeline": "pccseg.capture.pipeline",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

"""Training and scoring a segmenter on the dataset (the method's section 5).

- :mod:`.config`: :class:`TrainConfig`, every option checked where it is defined;
- :mod:`.loop`: :func:`train`, read top to bottom (set-up, loop, validation, checkpoints);
- :mod:`.augment`: the training stream (augmentation, seeded sampling); :mod:`.checkpoint`: the run
  folder across starts (fresh start or resume, checkpoints, Ctrl-C / SIGTERM, log.jsonl);
- :mod:`.ema`: the weight average (``--ema``); :mod:`.selftrain`: :func:`self_train` (``--self-train``);
  :mod:`.determinism`: thread count and deterministic algorithms;
- :mod:`.evaluate`: :func:`evaluate` on VOC val; :mod:`.metrics`: confusion matrix and scores;
- :mod:`.deeplab`: what both share: the model, its checkpoints, the input normalisation.

``from pccseg.train import TrainConfig, train`` works as before; the names load on first use, so
importing this package imports no torch.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "train": "pccseg.train.loop",
    "self_train": "pccseg.train.selftrain",
    "TrainConfig": "pccseg.train.config",
    "ARCHS": "pccseg.train.config",
    "load_model": "pccseg.train.deeplab",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

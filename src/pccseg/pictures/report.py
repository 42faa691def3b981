"""A static HTML page about a generated dataset, a training run or an experiment (``pccseg report``):
:func:`make_report` picks the report by what the folder holds.

* :mod:`.dataset_report`: a dataset directory (class pixel frequency, images per class, uncertain share,
  samples per class, the generation settings);
* :mod:`.training_report`: a training run directory (``log.jsonl``: loss, learning rate, mIoU, per-class
  IoU, wall time, hyperparameters);
* :mod:`.results_report`: an experiment directory (``results.json``: tables, pictures, times, settings).

:mod:`.page` is the HTML they share. Every file is written atomically; links in ``index.html`` are
relative file names in the output directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .dataset_report import dataset_report
from ..errors import InputError
from .results_report import RESULTS, results_report
from .training_report import LOG, training_report


def make_report(directory: str | Path, out: str | Path, **kwargs: Any) -> Path:
    """A results page when ``directory`` holds ``results.json`` (an experiment), a training report when it
    holds ``log.jsonl``, else a dataset report."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError("not a directory", path=directory)
    if (directory / RESULTS).is_file():
        return results_report(directory, out)
    if (directory / LOG).is_file():
        return training_report(directory, out)
    return dataset_report(directory, out, **kwargs)

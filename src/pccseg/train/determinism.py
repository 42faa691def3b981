"""What makes a training run repeat itself to the last digit on one machine (``TrainConfig.threads``,
``TrainConfig.deterministic``).

* The data: the training stream is a function of the seed alone (:mod:`pccseg.train.loop`'s docstring):
  which image, its augmentation and the batch order do not depend on the DataLoader workers or their
  timing; the model's initialisation and the dropout stream are seeded.
* The arithmetic: on a CPU, torch splits its loops and reductions over its threads, so the float rounding
  (and, over hundreds of iterations, the trained weights) depends on the thread count; ``threads`` fixes
  it. On CUDA, cuDNN's benchmark may pick another algorithm at each start and some kernels add in a
  varying order: :func:`configure` turns the benchmark off and asks for deterministic algorithms (a
  warning, not an error, for an op that has none).

Across machines nothing is promised: another CPU (its vector instructions pick other oneDNN kernels),
another torch, oneDNN or MKL build, another GPU or driver round differently, and a training run
amplifies the difference of one rounding into that of another seed (see docs/experiment.md).
"""

from __future__ import annotations

import os

import torch


def configure(device: torch.device, threads: int | None, deterministic: bool) -> None:
    """Set this process's torch thread count (``None``: leave it) and, with ``deterministic``, torch's
    deterministic algorithms (warn-only), cuDNN without benchmark, and cuBLAS's fixed workspace."""
    if threads is not None:
        torch.set_num_threads(threads)
    if deterministic:
        if device.type == "cuda":     # before the first cuBLAS call: its reductions repeat with this set
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True

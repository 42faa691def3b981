"""Settings of the toy world that the CLI needs without importing torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..errors import InputError

#: Scene seeds below this train the toy model; datasets rendered with ``pccseg toy render`` start here.
RENDER_SEED = 1_000_000


@dataclass(frozen=True)
class ToyTrainConfig:
    """Every setting of a toy-model training run (checked here, so the API refuses what the CLI does)."""

    out: str
    device: str | None = None            # None: CUDA when available
    threads: int = 1                     # torch threads on CPU
    seed: int = 0
    # VAE
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6
    # training scenes
    n_train: int = 40000
    # UNet + text encoder
    low_steps: int = 3000                # at 64x64
    high_steps: int = 1500               # at 128x128
    low_batch: int = 64
    batch: int = 32
    lr: float = 8e-4
    warmup: int = 200
    weight_decay: float = 0.01
    ema: float = 0.999
    uncond_prob: float = 0.1
    snr_gamma: float = 5.0
    ckpt_every: int = 100
    eval_every: int = 500
    eval_prompts: int = 32
    eval_steps: int = 20

    def __post_init__(self):
        ints = {f.name: getattr(self, f.name) for f in fields(self) if f.type in ("int", int)}
        for name, v in ints.items():
            if not isinstance(v, int) or isinstance(v, bool):
                raise InputError(f"expected an integer, got {v!r}", field=f"--{name.replace('_', '-')}")
        for name in ("threads", "vae_batch", "n_train", "low_batch", "batch", "ckpt_every", "eval_every",
                     "eval_prompts", "eval_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"must be >= 1, got {getattr(self, name)}", field=f"--{name.replace('_', '-')}")
        for name in ("vae_steps", "low_steps", "high_steps", "warmup", "seed"):
            if getattr(self, name) < 0:
                raise InputError(f"must be >= 0, got {getattr(self, name)}", field=f"--{name.replace('_', '-')}")
        for name in ("vae_lr", "vae_kl", "lr", "weight_decay", "ema", "uncond_prob", "snr_gamma"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InputError(f"must be a finite number >= 0, got {v!r}", field=f"--{name.replace('_', '-')}")
        if not 0 <= self.ema < 1 or not 0 <= self.uncond_prob < 1:
            raise InputError("ema and uncond_prob must lie in [0, 1)", field="--ema/--uncond-prob")

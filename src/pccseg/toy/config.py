"""Settings of the toy world that the CLI needs without importing torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..capture.models import BuiltinModel, register
from ..errors import InputError

#: Scene seeds below this train the toy model; datasets rendered with ``pccseg toy render`` start here.
RENDER_SEED = 1_000_000

TOY_SIZE = 128        #: image side (px)
TOY_STEPS = 25        #: default denoising steps (DPM-Solver++)
TOY_GUIDANCE = 5.0    #: default classifier-free guidance scale

#: ``--model toy`` and any folder of its architecture (what ``pccseg toy train`` writes) get these defaults
TOY_MODEL = register(BuiltinModel(
    "toy", "pccseg.toy.model:toy_pipeline", "StableDiffusionPipeline", (TOY_SIZE, TOY_SIZE), TOY_STEPS,
    TOY_GUIDANCE, "toy", "pccseg.toy.model:unet_config", check_records="pccseg.toy.world:check_toy_records"))


@dataclass(frozen=True)
class ToyTrainConfig:
    """Every setting of a toy-model training run (checked here, so the API refuses what the CLI does)."""

    out: str
    device: str | None = None            # None: CUDA when available
    threads: int = 1                     # torch threads on CPU
    seed: int = 0
    # VAE
    vae_steps: int = 3000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6
    # the decoder alone, at 128x128 (stage 1b; 0 skips it)
    decoder_steps: int = 1000
    decoder_batch: int = 8
    decoder_lr: float = 3e-4
    # training scenes
    n_train: int = 40000
    # UNet + text encoder
    low_steps: int = 3000                # at 64x64
    high_steps: int = 1800               # at 128x128
    low_batch: int = 64
    batch: int = 32
    lr: float = 8e-4
    warmup: int = 200
    decay_steps: int = 700               # the last steps of the schedule anneal the learning rate linearly to 0
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
        for name in ("threads", "vae_batch", "decoder_batch", "n_train", "low_batch", "batch", "ckpt_every", "eval_every",
                     "eval_prompts", "eval_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"must be >= 1, got {getattr(self, name)}", field=f"--{name.replace('_', '-')}")
        for name in ("vae_steps", "decoder_steps", "low_steps", "high_steps", "warmup", "decay_steps", "seed"):
            if getattr(self, name) < 0:
                raise InputError(f"must be >= 0, got {getattr(self, name)}", field=f"--{name.replace('_', '-')}")
        for name in ("vae_lr", "vae_kl", "decoder_lr", "lr", "weight_decay", "ema", "uncond_prob", "snr_gamma"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InputError(f"must be a finite number >= 0, got {v!r}", field=f"--{name.replace('_', '-')}")
        if self.decay_steps > self.low_steps + self.high_steps:
            raise InputError(f"must be <= low_steps + high_steps ({self.low_steps + self.high_steps}), got "
                             f"{self.decay_steps}", field="--decay-steps")
        if not 0 <= self.ema < 1 or not 0 <= self.uncond_prob < 1:
            raise InputError("ema and uncond_prob must lie in [0, 1)", field="--ema/--uncond-prob")


#: ExperimentConfig fields that may differ when an experiment folder is resumed: they change where and how
#: fast the work runs, not its results (on one kind of device).
EXPERIMENT_RUNTIME_FIELDS = ("out", "device", "jobs", "threads", "progress")


@dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of ``pccseg experiment toy`` (:mod:`pccseg.toy.experiment`); checked here, so the API
    refuses what the CLI does. Error messages name the command-line option."""

    out: str
    model: str = "toy"                   # "toy" (shipped weights) or a diffusers folder of the toy architecture
    num: int = 200                       # generated images = rendered images of the upper bound
    val: int = 200                       # held-out rendered images with exact labels (downstream scores)
    labellers: tuple[str, ...] = ("pcc", "dd", "attn", "fuse")
    # generation
    steps: int = TOY_STEPS
    guidance: float = TOY_GUIDANCE
    seed: int = 2024                     # record i: seed + i
    batch_size: int = 8
    # DeepLabv3 (MobileNetV3-Large, random init) on each set
    iters: int = 600
    train_batch_size: int = 8
    crop_size: int = 96
    lr: float = 2e-3
    warmup: int = 50                     # iterations of linear learning-rate warm-up (pccseg train --warmup)
    train_seed: int = 0                  # the first training seed
    train_seeds: int = 3                 # every downstream row trains with seeds train_seed .. + train_seeds - 1
    # recipe options, each an extra downstream row (measured against the plain recipe, seed by seed)
    ema: float | None = None             # also score an exponential moving average of the weights (decay)
    self_train: float | None = None      # one round of self-training at this confidence threshold
    filter: bool = False                 # also train each labeller's set filtered by its own evidence
    # judge error, pictures
    judge_scenes: int = 300
    pictures: int = 8
    # how it runs
    device: str | None = None            # None: CUDA when available
    jobs: int | None = None              # processes; None: 1 on CUDA, 2 on CPU
    threads: int = 1                     # torch threads per process on CPU
    progress: bool = True

    def __post_init__(self):
        def fail(name: str, message: str):
            raise InputError(message, field="--" + name.replace("_", "-"))

        for name in ("num", "val", "steps", "batch_size", "iters", "train_batch_size", "crop_size", "judge_scenes",
                     "pictures", "jobs", "threads", "seed", "train_seed", "train_seeds", "warmup"):
            v = getattr(self, name)
            low = 0 if name in ("seed", "train_seed", "pictures", "warmup") else 1
            if v is None and name == "jobs":
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                fail(name, f"must be an integer >= {low}, got {v!r}")
        if self.train_batch_size < 2:
            fail("train_batch_size", f"must be >= 2 (BatchNorm after ASPP's pooling), got {self.train_batch_size}")
        if self.ema is not None and (isinstance(self.ema, bool) or not isinstance(self.ema, (int, float))
                                     or not 0 < self.ema < 1):
            fail("ema", f"must be a decay between 0 and 1 (exclusive), got {self.ema!r}")
        if self.self_train is not None and (isinstance(self.self_train, bool) or not isinstance(self.self_train, (int, float))
                                            or not 0 < self.self_train <= 1):
            fail("self_train", f"must be a confidence threshold in (0, 1], got {self.self_train!r}")
        if not isinstance(self.filter, bool):
            fail("filter", f"must be true or false, got {self.filter!r}")
        for name in ("guidance", "lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                fail(name, f"must be a finite number > 0, got {v!r}")
        if not isinstance(self.labellers, tuple) or not self.labellers:
            fail("labellers", f"must name at least one labeller, got {self.labellers!r}")
        from ..labellers.registry import get_labeller

        for name in self.labellers:
            try:
                get_labeller(name)
            except InputError as e:
                fail("labellers", e.message)
        if len(set(self.labellers)) != len(self.labellers):
            fail("labellers", f"a labeller is named twice: {' '.join(self.labellers)}")
        if not isinstance(self.model, str) or not self.model:
            fail("model", "must be 'toy' or a diffusers folder")

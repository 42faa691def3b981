"""Settings of the toy world that the CLI needs without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from ..capture.models import BuiltinModel, register
from ..errors import InputError
from ..params import NAME, PATH, SEED, TEXT, Bool, Int, OrNone, Real, Seq, Where, check, param, parameters

#: Scene seeds below this train the toy model; datasets rendered with ``pccseg toy render`` start here.
RENDER_SEED = 1_000_000

TOY_SIZE = 128        #: image side (px)
TOY_STEPS = 25        #: default denoising steps (DPM-Solver++)
TOY_GUIDANCE = 5.0    #: default classifier-free guidance scale

#: ``--model toy`` and any folder of its architecture (what ``pccseg toy train`` writes) get these defaults
TOY_MODEL = register(BuiltinModel(
    "toy", "pccseg.toy.model:toy_pipeline", "StableDiffusionPipeline", (TOY_SIZE, TOY_SIZE), TOY_STEPS,
    TOY_GUIDANCE, "toy", "pccseg.toy.model:unet_config", check_records="pccseg.toy.world:check_toy_records"))


@parameters
@dataclass(frozen=True)
class ToyTrainConfig:
    """Every setting of a toy-model training run (checked here, so the API refuses what the CLI does)."""

    out: str = param(help="run directory (created or resumed)", check=PATH)
    device: str | None = param(None, "torch device; None: CUDA when available", OrNone(TEXT, "CUDA when available"))
    threads: int = param(1, "torch threads on CPU", Int(1))
    seed: int = param(0, "torch seed of every stage (initialisation, noise, caption dropout); the training "
                         "scenes are fixed", SEED)
    # VAE
    vae_steps: int = param(3000, "VAE training steps", Int(0))
    vae_batch: int = param(16, "VAE batch size", Int(1))
    vae_lr: float = param(1e-3, "VAE learning rate", Real(0))
    vae_kl: float = param(1e-6, "weight of the VAE's KL term", Real(0))
    # the decoder alone, at 128x128 (stage 1b; 0 skips it)
    decoder_steps: int = param(1000, "steps of the decoder alone at 128x128 (0 skips them)", Int(0))
    decoder_batch: int = param(8, "decoder batch size", Int(1))
    decoder_lr: float = param(3e-4, "decoder learning rate", Real(0))
    # training scenes
    n_train: int = param(40000, "training scenes (their latents are computed once)", Int(1))
    # UNet + text encoder
    low_steps: int = param(3000, "UNet + text encoder steps at 64x64", Int(0))
    high_steps: int = param(1800, "UNet + text encoder steps at 128x128", Int(0))
    low_batch: int = param(64, "batch size at 64x64", Int(1))
    batch: int = param(32, "batch size at 128x128", Int(1))
    lr: float = param(8e-4, "UNet + text encoder learning rate", Real(0))
    warmup: int = param(200, "linear warm-up steps of the learning rate", Int(0))
    decay_steps: int = param(700, "the last steps of the schedule anneal the learning rate linearly to 0 (at most "
                                  "low_steps + high_steps)", Int(0))
    weight_decay: float = param(0.01, "AdamW weight decay", Real(0))
    ema: float = param(0.999, "decay of the weights' exponential moving average", Real(0, 1, "left"))
    uncond_prob: float = param(0.1, "share of the captions dropped (classifier-free guidance training)",
                               Real(0, 1, "left"))
    snr_gamma: float = param(5.0, "min-SNR loss weighting gamma", Real(0))
    ckpt_every: int = param(100, "checkpoint every this many steps", Int(1))
    eval_every: int = param(500, "evaluate prompt adherence and mask quality every this many steps", Int(1))
    eval_prompts: int = param(32, "prompts of each evaluation", Int(1))
    eval_steps: int = param(20, "denoising steps of each evaluation", Int(1))

    def __post_init__(self):
        check(self)

    def _validate(self) -> None:
        if self.decay_steps > self.low_steps + self.high_steps:
            raise InputError(f"must be <= low_steps + high_steps ({self.low_steps + self.high_steps}), got "
                             f"{self.decay_steps}", field="decay_steps")


#: ExperimentConfig fields that may differ when an experiment folder is resumed: they change where and how
#: fast the work runs, not its results (on one kind of device).
EXPERIMENT_RUNTIME_FIELDS = ("out", "device", "jobs", "threads", "progress")


@parameters
@dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of ``pccseg experiment toy`` (:mod:`pccseg.toy.experiment`); checked here, so the API
    refuses what the CLI does."""

    out: str = param(help="experiment folder (created or resumed)", check=PATH)
    model: str = param("toy", "'toy' (the shipped toy model) or a diffusers folder of the toy architecture",
                       Where(lambda v: isinstance(v, str) and v != "", "'toy' or a diffusers folder"))
    num: int = param(200, "generated images, and rendered images of the upper bound", Int(1))
    val: int = param(200, "held-out rendered images with exact labels that score every segmenter", Int(1))
    labellers: tuple[str, ...] = param(("pcc", "dd", "attn", "fuse"), "labellers to compare (pcc dd attn fuse)",
                                       Seq(NAME, unique=True))
    # generation
    steps: int = param(TOY_STEPS, "denoising steps", Int(1))
    guidance: float = param(TOY_GUIDANCE, "classifier-free guidance scale", Real(0, closed="neither"))
    seed: int = param(2024, "record i of the toy prompts is generated with seed SEED + i", SEED)
    batch_size: int = param(8, "images per pipeline call", Int(1))
    # DeepLabv3 (MobileNetV3-Large, random init) on each set
    iters: int = param(600, "DeepLabv3 training iterations per set", Int(1))
    train_batch_size: int = param(8, "DeepLabv3 batch size", Int(2, why="BatchNorm after ASPP's pooling"))
    crop_size: int = param(96, "DeepLabv3 training crop (px)", Int(1))
    lr: float = param(2e-3, "DeepLabv3 AdamW learning rate (backbone and heads)", Real(0, closed="neither"))
    warmup: int = param(50, "DeepLabv3 iterations of linear learning-rate warm-up (pccseg train --warmup)", Int(0))
    train_seed: int = param(0, "first DeepLabv3 seed (init, data order, augmentation)", SEED)
    train_seeds: int = param(3, "DeepLabv3 seeds per row (TRAIN_SEED, TRAIN_SEED + 1, ...): tables give their mean "
                                "and sd", Int(1))
    # recipe options, each an extra downstream row (measured against the plain recipe, seed by seed)
    ema: float | None = param(None, "also score each run's exponential moving average of the weights with this "
                                    "decay (rows '+ EMA'); None: off", OrNone(Real(0, 1, "neither"), "off"))
    self_train: float | None = param(None, "rows '+ self-train': the plain run relabels its set's uncertain pixels "
                                           "where its probability >= this threshold, a second DeepLabv3 trains on "
                                           "the result; None: off", OrNone(Real(0, 1, "right"), "off"))
    filter: bool = param(False, "rows '+ filter': each labeller's set filtered by its own evidence (pccseg "
                                "filter's defaults)", Bool())
    # judge error, pictures
    judge_scenes: int = param(300, "rendered scenes that measure the judge's own error", Int(1))
    pictures: int = param(8, "images in samples.png", Int(0))
    # how it runs
    device: str | None = param(None, "torch device; None: CUDA when available", OrNone(TEXT, "CUDA when available"))
    jobs: int | None = param(None, "processes for generation and training; None: 1 on CUDA, 2 on CPU",
                             OrNone(Int(1), "1 on CUDA, 2 on CPU"))
    threads: int = param(1, "torch threads per process on CPU", Int(1))
    progress: bool = param(True, "progress bars", Bool())

    def __post_init__(self):
        check(self)

    def _validate(self) -> None:
        from ..labellers.registry import get_labeller

        for name in self.labellers:
            try:
                get_labeller(name)
            except InputError as e:
                raise InputError(e.message, field="labellers") from None

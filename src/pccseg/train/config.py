"""The settings of a training run (:class:`TrainConfig`), apart from :mod:`pccseg.train.loop` so that the
command line can show them in ``pccseg train --help`` without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..params import PATH, SEED, TEXT, Bool, Choice, Int, OrNone, Real, Where, check, param, parameters

ARCHS = ("resnet50", "resnet101", "mobilenet_v3_large")
#: How self-training's second round labels a pixel (:func:`pccseg.train.selftrain.relabel_mask`):
#: ``fill``: the segmenter's confident prediction where the labeller left the pixel uncertain (255) only;
#: ``all``: the confident prediction everywhere, the labeller's label elsewhere.
SELF_TRAIN_RULES = ("fill", "all")

SPLIT = Where(lambda v: isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and "\\" not in v,
              "a split name (ImageSets/Segmentation/<name>.txt)")
WEIGHTS = Where(lambda v: isinstance(v, str) and v != "", "'imagenet', 'none' or a weights file",
                metavar="imagenet|none|FILE")


@parameters
@dataclass
class TrainConfig:
    """Every setting of a training run (the options of ``pccseg train``), checked on construction
    (:meth:`validate`), so that the API refuses what the command line refuses."""

    data: str = param(help="training root (VOC layout; split file train_split)", check=PATH)
    out: str = param(help="run directory", check=PATH)
    val: str | None = param(None, "validation VOC root (VOCdevkit/VOC2012); None: no validation", OrNone(PATH))
    train_split: str = param("train", "training split name", SPLIT)
    val_split: str = param("val", "validation split name", SPLIT)
    arch: str = param("resnet50", "DeepLabv3 backbone", Choice(*ARCHS))
    backbone_weights: str = param(
        "imagenet", "imagenet: torchvision's ImageNet weights from the torch hub cache (downloaded when missing; "
                    "training stops with one line when they cannot be had); FILE: those weights as a .pth or "
                    ".safetensors file; none: random initialisation", WEIGHTS)
    aux_loss: bool = param(True, "FCN auxiliary head on the stride-8 features of layer 3, weight aux_weight", Bool())
    aux_weight: float = param(0.4, "weight of the auxiliary loss (mmseg: 0.4)", Real(0))
    iters: int = param(20_000, "iterations", Int(1))
    batch_size: int = param(8, "global batch size (split over the processes of a DDP run)", Int(1))
    lr: float = param(1e-4, "head learning rate", Real(0, closed="neither"))
    backbone_lr_mult: float = param(0.1, "backbone lr = lr x this", Real(0))
    weight_decay: float = param(1e-4, "AdamW weight decay", Real(0))
    power: float = param(0.9, "poly schedule power: lr * (1 - i / iters) ** power", Real(0))
    warmup: int = param(0, "iterations of linear learning-rate warm-up (from lr / warmup to lr) before the poly "
                           "schedule; 0: off (for runs from random initialisation, see docs/training.md)", Int(0))
    grad_clip: float | None = param(0.01, "clip the L2 norm of all gradients to this, as Dataset Diffusion's "
                                          "config; None (0 on the command line): off",
                                    OrNone(Real(0, closed="neither"), "off"))
    loss_average: str = param("all", "cross-entropy over the labelled pixels divided by all pixels, 255 included "
                                     "(all: mmseg's avg_non_ignore=False) or by the labelled ones (valid: PyTorch's "
                                     "mean)", Choice("all", "valid"))
    crop_size: int = param(512, "square crop", Int(1))
    short_side: int | None = param(512, "resize images to this short side (long side at most 4x) before the random "
                                        "scale, and for validation, as mmseg's scale (2048, 512); None (0 on the "
                                        "command line): native size", OrNone(Int(1), "native size"))
    scale_min: float = param(0.5, "random scale range: smallest", Real(0, closed="neither"))
    scale_max: float = param(2.0, "random scale range: largest", Real(0, closed="neither"))
    cat_max_ratio: float = param(0.75, "redraw a crop (up to 10 times) while one class covers this share of it; "
                                       "1 = off", Real(0, 1, "right"))
    photometric: bool = param(True, "mmseg's photometric distortion (PhotoMetricDistortion)", Bool())
    workers: int = param(4, "data loader workers", Int(0))
    val_every: int = param(1000, "validate every this many iterations", Int(1))
    val_limit: int | None = param(None, "validate on the first N images only (quick checks); None: all",
                                  OrNone(Int(1), "all"))
    save_every: int | None = param(None, "also save RUN/last every N iterations; None: at each validation",
                                   OrNone(Int(1), "at each validation"))
    log_every: int = param(20, "log every this many iterations", Int(1))
    keep_best: bool = param(False, "also keep RUN/best, the checkpoint with the best validation mIoU: select "
                                   "with it on a split other than the one you report", Bool())
    tensorboard: bool = param(True, "TensorBoard event files in RUN/tensorboard beside log.jsonl", Bool())
    seed: int = param(0, "seed of the initialisation, data order and augmentation", SEED)
    amp: bool | None = param(None, "mixed precision; None: on for CUDA (bf16 where supported, else fp16 + "
                                   "scaler)", OrNone(Bool(), "on for CUDA"))
    device: str | None = param(None, "cuda, cuda:1, cpu; None: cuda if available, else cpu",
                               OrNone(TEXT, "cuda if available"))
    resume: bool | None = param(None, "continue from RUN/last; None: when it exists; False starts afresh, "
                                      "removing RUN/last, RUN/best and RUN/tensorboard",
                                OrNone(Bool(), "when it exists"))
    stop_after: int | None = param(None, "stop after this iteration, saving RUN/last (for time-sliced jobs)",
                                   OrNone(Int(1), "no stop"))
    sync_bn: bool = param(True, "SyncBatchNorm when distributed on CUDA (mmseg's SyncBN)", Bool())
    bn_momentum: float | None = param(None, "BatchNorm momentum; None: torchvision's: 0.1, 0.01 for "
                                            "mobilenet_v3_large; runs of a few hundred iterations want 0.1, see "
                                            "docs/training.md", OrNone(Real(0, 1, "right"), "torchvision's"))
    check_data: bool = param(True, "check every mask of both splits before training", Bool())
    progress: bool = param(True, "tqdm progress bar", Bool())
    threads: int | None = param(None, "torch CPU threads (None: torch's default); the same count repeats a run "
                                      "to the last digit", OrNone(Int(1), "torch's default"))
    deterministic: bool = param(True, "torch's deterministic algorithms (warn where an op has none), no cuDNN "
                                      "benchmark: the same settings on one machine give the same run", Bool())
    ema: float | None = param(None, "also keep an exponential moving average of the weights with this decay "
                                    "(RUN/ema, scored at each validation as ema_miou), e.g. 0.99; None: off",
                              OrNone(Real(0, 1, "neither"), "off"))
    self_train: float | None = param(None, "one round of self-training: the first segmenter (RUN/teacher) "
                                           "relabels the training images where its probability >= this threshold "
                                           "(RUN/relabelled), a second one trains on them in RUN; None: off",
                                     OrNone(Real(0, 1, "right"), "off"))
    self_train_rule: str = param("fill", "fill: relabel the labeller's uncertain pixels only; all: every "
                                         "confident pixel (see SELF_TRAIN_RULES)", Choice(*SELF_TRAIN_RULES))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InputError` (field = the setting) for any setting outside its range
        (:func:`pccseg.params.check`)."""
        check(self)

    def _validate(self) -> None:
        if self.scale_min > self.scale_max:
            raise InputError(f"need scale_min <= scale_max, got {self.scale_min}, {self.scale_max}", field="scale")

"""The settings of a training run (:class:`TrainConfig`), apart from :mod:`pccseg.train` so that the
command line can show them in ``pccseg train --help`` without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

ARCHS = ("resnet50", "resnet101", "mobilenet_v3_large")


@dataclass
class TrainConfig:
    """Every setting of a training run (the CLI options of ``pccseg train``)."""

    data: str                          # VOC-layout training root (a pccseg dataset)
    out: str                           # run directory
    val: str | None = None             # VOC root for validation (None: no validation, no best)
    train_split: str = "train"
    val_split: str = "val"
    arch: str = "resnet50"             # resnet50 | resnet101 | mobilenet_v3_large
    backbone_weights: str = "imagenet"  # imagenet | none
    aux_loss: bool = True              # torchvision's FCN auxiliary head on the stride-8 features
    aux_weight: float = 0.5
    iters: int = 20_000
    batch_size: int = 8                # global batch (split over the processes of a DDP run)
    lr: float = 1e-4                   # head learning rate
    backbone_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    power: float = 0.9                 # poly schedule: lr * (1 - i / iters) ** power
    crop_size: int = 512
    scale_min: float = 0.5
    scale_max: float = 2.0
    workers: int = 4
    val_every: int = 1000
    val_limit: int | None = None       # validate on the first N images only (quick checks)
    save_every: int | None = None      # also save RUN/last every N iterations (default: at validation)
    log_every: int = 20
    seed: int = 0
    amp: bool | None = None            # None: on for CUDA (bf16 where supported, else fp16 + scaler)
    device: str | None = None          # None: cuda if available, else cpu
    resume: bool | None = None         # None: resume when RUN/last exists; False: start afresh
    stop_after: int | None = None      # stop (saving RUN/last) once this iteration is done
    sync_bn: bool = False              # SyncBatchNorm under DDP
    bn_momentum: float | None = None   # BatchNorm momentum override (None: torchvision's, 0.01 for MobileNetV3)
    check_data: bool = True            # check every mask of both splits before training
    progress: bool = True              # tqdm bar

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise InputError(f"unknown model {self.arch!r} (choose from {', '.join(ARCHS)})", field="arch")
        if self.backbone_weights not in ("imagenet", "none"):
            raise InputError("must be 'imagenet' or 'none'", field="backbone_weights")
        for name in ("iters", "batch_size", "crop_size", "val_every", "log_every"):
            if getattr(self, name) < 1:
                raise InputError(f"must be >= 1, got {getattr(self, name)}", field=name)
        if not 0 < self.scale_min <= self.scale_max:
            raise InputError(f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}",
                             field="scale")
        if self.lr <= 0:
            raise InputError(f"must be > 0, got {self.lr}", field="lr")

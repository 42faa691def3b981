"""The settings of a training run (:class:`TrainConfig`), apart from :mod:`pccseg.train.loop` so that the
command line can show them in ``pccseg train --help`` without importing torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError
from ..limits import check_seed

ARCHS = ("resnet50", "resnet101", "mobilenet_v3_large")
#: How self-training's second round labels a pixel (:func:`pccseg.train.selftrain.relabel_mask`):
#: ``fill``: the segmenter's confident prediction where the labeller left the pixel uncertain (255) only;
#: ``all``: the confident prediction everywhere, the labeller's label elsewhere.
SELF_TRAIN_RULES = ("fill", "all")


@dataclass
class TrainConfig:
    """Every setting of a training run (the options of ``pccseg train``), checked on construction
    (:meth:`validate`), so that the API refuses what the command line refuses."""

    data: str                          # VOC-layout training root (a pccseg dataset)
    out: str                           # run directory
    val: str | None = None             # VOC root for validation (None: no validation)
    train_split: str = "train"
    val_split: str = "val"
    arch: str = "resnet50"             # resnet50 | resnet101 | mobilenet_v3_large
    backbone_weights: str = "imagenet"  # imagenet (torch hub cache) | none (random) | a weights file
    aux_loss: bool = True              # FCN auxiliary head on the stride-8 features of layer 3
    aux_weight: float = 0.4            # mmseg: auxiliary loss_weight 0.4
    iters: int = 20_000
    batch_size: int = 8                # global batch (split over the processes of a DDP run)
    lr: float = 1e-4                   # head learning rate
    backbone_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    power: float = 0.9                 # poly schedule: lr * (1 - i / iters) ** power
    warmup: int = 0                    # iterations of linear learning-rate warm-up before the poly schedule
    grad_clip: float | None = 0.01     # clip the L2 norm of all gradients to this (mmseg config); None: off
    loss_average: str = "all"          # all: CE summed over labelled pixels / all pixels (mmseg); valid
    crop_size: int = 512
    short_side: int | None = 512       # images resized to this short side (long <= 4x) before the random
                                       # scale, and for validation; None: native size
    scale_min: float = 0.5
    scale_max: float = 2.0
    cat_max_ratio: float = 0.75        # re-draw a crop (10 tries) while one class covers this share
    photometric: bool = True           # mmseg's PhotoMetricDistortion
    workers: int = 4
    val_every: int = 1000
    val_limit: int | None = None       # validate on the first N images only (quick checks)
    save_every: int | None = None      # also save RUN/last every N iterations (default: at validation)
    log_every: int = 20
    keep_best: bool = False            # also keep RUN/best, selected by validation mIoU
    tensorboard: bool = True           # RUN/tensorboard event files beside log.jsonl
    seed: int = 0
    amp: bool | None = None            # None: on for CUDA (bf16 where supported, else fp16 + scaler)
    device: str | None = None          # None: cuda if available, else cpu
    resume: bool | None = None         # None: resume when RUN/last exists; False: start afresh
    stop_after: int | None = None      # stop (saving RUN/last) once this iteration is done
    sync_bn: bool = True               # SyncBatchNorm when distributed on CUDA (mmseg's SyncBN)
    bn_momentum: float | None = None   # BatchNorm momentum override (None: torchvision's)
    check_data: bool = True            # check every mask of both splits before training
    progress: bool = True              # tqdm bar
    threads: int | None = None         # torch CPU threads (None: torch's default); fixes the float rounding
    deterministic: bool = True         # torch's deterministic algorithms (warn where an op has none), no
                                       # cuDNN benchmark: the same settings on one machine give the same run
    ema: float | None = None           # decay of an exponential moving average of the weights (RUN/ema)
    self_train: float | None = None    # confidence threshold of one round of self-training (None: off)
    self_train_rule: str = "fill"      # fill (uncertain pixels only) | all (see SELF_TRAIN_RULES)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InputError` (field = the setting) for any setting outside its range."""
        def fail(name: str, message: str):
            raise InputError(message, field=name)

        if self.arch not in ARCHS:
            fail("arch", f"unknown model {self.arch!r} (choose from {', '.join(ARCHS)})")
        if not isinstance(self.backbone_weights, str) or not self.backbone_weights:
            fail("backbone_weights", "must be 'imagenet', 'none' or a weights file")
        if self.self_train_rule not in SELF_TRAIN_RULES:
            fail("self_train_rule", f"must be one of {', '.join(SELF_TRAIN_RULES)}, got {self.self_train_rule!r}")
        if self.loss_average not in ("all", "valid"):
            fail("loss_average", f"must be 'all' or 'valid', got {self.loss_average!r}")
        for name in ("train_split", "val_split"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v or "/" in v or "\\" in v or v in (".", ".."):
                fail(name, f"must be a split name (ImageSets/Segmentation/<name>.txt), got {v!r}")
        for name, low, optional in (("iters", 1, False), ("batch_size", 1, False), ("crop_size", 1, False),
                                    ("val_every", 1, False), ("log_every", 1, False), ("workers", 0, False),
                                    ("seed", 0, False), ("warmup", 0, False), ("short_side", 1, True),
                                    ("val_limit", 1, True), ("save_every", 1, True), ("stop_after", 1, True),
                                    ("threads", 1, True)):
            v = getattr(self, name)
            if v is None and optional:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                fail(name, f"must be an integer >= {low}, got {v!r}")
        for name, low, high, open_low, optional in (
                ("lr", 0, None, True, False), ("backbone_lr_mult", 0, None, False, False),
                ("weight_decay", 0, None, False, False), ("power", 0, None, False, False),
                ("aux_weight", 0, None, False, False), ("grad_clip", 0, None, True, True),
                ("scale_min", 0, None, True, False), ("scale_max", 0, None, True, False),
                ("cat_max_ratio", 0, 1, True, False), ("bn_momentum", 0, 1, True, True),
                ("self_train", 0, 1, True, True)):
            v = getattr(self, name)
            if v is None and optional:
                continue
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
                and (v > low if open_low else v >= low) and (high is None or v <= high)
            if not ok:
                rng = f"{'>' if open_low else '>='} {low}" + (f" and <= {high}" if high is not None else "")
                fail(name, f"must be a finite number {rng}, got {v!r}")
        check_seed(self.seed)
        if self.ema is not None and not (isinstance(self.ema, (int, float)) and not isinstance(self.ema, bool)
                                         and 0 < self.ema < 1):
            fail("ema", f"must be a decay between 0 and 1 (exclusive), got {self.ema!r}")
        if self.scale_min > self.scale_max:
            fail("scale", f"need scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")

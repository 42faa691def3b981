"""Train torchvision's DeepLabv3 on a VOC-layout dataset (a ``pccseg generate`` output): the report's
section 3, with Dataset Diffusion's mmsegmentation recipe as the defaults (see docs/training.md for the
recipe and every remaining difference).

:func:`train` reads top to bottom, like torchvision's ``references/segmentation/train.py``:
:func:`_setup` (processes, device, precision), :func:`_data`, :func:`_model`, :func:`_optimizer`,
:func:`_start` (a fresh run or the resumption of ``RUN/last``), then the loop: :func:`_step` per
iteration, :func:`_log_loss` every ``log_every``, :func:`_validate` every ``val_every`` iterations and
:func:`_save` for the checkpoints.
The model, its checkpoints and the input normalisation live in :mod:`pccseg.train.deeplab`, which
:mod:`pccseg.train.evaluate` shares.

Determinism and resume: the training images form one endless stream; sample ``k`` of the stream is
image ``perm(seed, epoch)[k % N]`` with ``epoch = k // N``, augmented by a generator seeded with
``(seed, k)``. Iteration ``i`` (from 1) on rank ``r`` of ``W`` takes stream samples
``((i-1)*W + r)*b .. +b-1`` (``b`` images per rank). So the data of every iteration is fixed by the
seed alone, whatever the worker count, and a resumed run sees exactly the batches the uninterrupted run
would have seen. (This stream sampler replaces ``DistributedSampler``: it shards the same way, and
resumes in the middle of an epoch.) The checkpoint also keeps the losses summed since the last log
line, so the log of a resumed run equals the uninterrupted run's.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn
from torchvision.transforms import InterpolationMode

from .deeplab import (CHECKPOINT_FORMAT, IMAGENET_MEAN, IMAGENET_STD, backbone_state,  # noqa: F401
                      build_model, load_model, load_training_state, normalize, read_checkpoint_meta,
                      rescale_factor, rescaled_size, save_checkpoint, unwrap)
from ..errors import InputError, unwrap_worker_error
from .evaluate import evaluate
from ..io import atomic_path, make_dir, read_jsonl, remove_temps, write_json
from ..signals import blocked_for_children, dataloader_worker_init, hold_interrupts
from .config import ARCHS, TrainConfig  # noqa: F401 (re-exported, as before)
from .determinism import configure as configure_determinism
from .ema import EMA_DIR, EMA_FILE, WeightEMA, load_ema
from ..vocab import IGNORE_INDEX
from ..dataset.voc import VOCSegmentation, voc_root

logger = logging.getLogger(__name__)

LOG, CONFIG, LAST, BEST, TENSORBOARD = "log.jsonl", "config.json", "last", "best", "tensorboard"
#: Settings that may differ when a run is resumed: they do not change what the weights learn.
RUNTIME_FIELDS = frozenset({"out", "resume", "stop_after", "progress", "workers", "device", "amp", "check_data",
                            "val", "val_split", "val_every", "val_limit", "save_every", "log_every",
                            "keep_best", "tensorboard", "threads", "deterministic"})
#: Settings a resumed run may change: applied from the resumption on, and recorded in ``changes``.
SCHEDULE_FIELDS = frozenset({"iters", "lr", "backbone_lr_mult", "weight_decay", "power", "grad_clip"})


# ------------------------------------------------------------------------------------------------ data
def photometric_distortion(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """mmsegmentation's ``PhotoMetricDistortion`` of a (3, H, W) uint8 image, each step with p = 0.5:
    brightness + U(-32, 32); contrast x U(0.5, 1.5), either first or last (p = 0.5); saturation
    x U(0.5, 1.5) and hue + U{-18..18} (of OpenCV's 180) in HSV. Values are clipped to 0..255."""
    img = np.ascontiguousarray(image.permute(1, 2, 0).numpy())

    def convert(a: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(a.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def contrast(a: np.ndarray) -> np.ndarray:
        return convert(a, alpha=rng.uniform(0.5, 1.5)) if rng.integers(2) else a

    if rng.integers(2):
        img = convert(img, beta=rng.uniform(-32, 32))
    contrast_first = bool(rng.integers(2))
    if contrast_first:
        img = contrast(img)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = convert(hsv[..., 1], alpha=rng.uniform(0.5, 1.5))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + int(rng.integers(-18, 19))) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first:
        img = contrast(img)
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def _crop_origin(mask: torch.Tensor, crop_size: int, rng: np.random.Generator,
                 cat_max_ratio: float) -> tuple[int, int]:
    """Top-left corner of a random crop; with ``cat_max_ratio < 1`` re-drawn (at most 10 times) until the
    crop holds two classes or more and none covers ``cat_max_ratio`` of its labelled pixels (mmseg)."""
    H, W = mask.shape

    def draw() -> tuple[int, int]:
        return int(rng.integers(0, max(H - crop_size, 0) + 1)), int(rng.integers(0, max(W - crop_size, 0) + 1))

    top, left = draw()
    if cat_max_ratio < 1:
        for _ in range(10):
            counts = torch.bincount(mask[top:top + crop_size, left:left + crop_size].reshape(-1),
                                    minlength=IGNORE_INDEX + 1)[:IGNORE_INDEX]
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() < cat_max_ratio * counts.sum():
                break
            top, left = draw()
    return top, left


def augment(image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator, crop_size: int,
            scale: tuple[float, float] = (0.5, 2.0), *, short_side: int | None = None,
            cat_max_ratio: float = 1.0, photometric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """mmsegmentation's training pipeline for one sample, in its order: random resize (bilinear image,
    nearest mask) to ``short_side`` (None: the image's own size) times U(``scale``), random crop (see
    :func:`_crop_origin`), horizontal flip (p = 0.5), photometric distortion, ImageNet normalisation, and
    padding to the crop size at the bottom and right (image 0 after normalisation, i.e. the mean
    colour; mask 255).

    image (3, H, W) uint8, mask (H, W) int64 -> (3, crop, crop) float32, (crop, crop) int64.
    """
    h, w = mask.shape
    nh, nw = rescaled_size(h, w, rng.uniform(*scale) * rescale_factor(h, w, short_side))
    image = TF.resize(image, [nh, nw], InterpolationMode.BILINEAR, antialias=False)
    mask = TF.resize(mask[None], [nh, nw], InterpolationMode.NEAREST)[0]
    top, left = _crop_origin(mask, crop_size, rng, cat_max_ratio)
    image = image[:, top:top + crop_size, left:left + crop_size]
    mask = mask[top:top + crop_size, left:left + crop_size]
    if rng.random() < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    if photometric:
        image = photometric_distortion(image, rng)
    pad = [0, crop_size - mask.shape[1], 0, crop_size - mask.shape[0]]
    return F.pad(normalize(image), pad, value=0.0), F.pad(mask, pad, value=IGNORE_INDEX).contiguous()


class TrainStream(torch.utils.data.Dataset):
    """The endless augmented training stream: ``stream[k]`` is sample ``k`` (see the module docstring);
    ``options`` are :func:`augment`'s (``crop_size``, ``scale``, ``short_side``, ...)."""

    def __init__(self, base: VOCSegmentation, seed: int, **options):
        self.base, self.seed, self.options = base, seed, options
        self._epoch, self._perm = -1, None

    def index(self, k: int) -> int:
        epoch, pos = divmod(k, len(self.base))
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.base))
            self._epoch = epoch
        return int(self._perm[pos])

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.base[self.index(k)]
        return augment(image, mask, np.random.default_rng([self.seed, 1, k]), **self.options)


class StreamSampler(torch.utils.data.Sampler):
    """Stream indices of iterations ``start+1 .. stop`` for one rank (``per_rank`` samples each)."""

    def __init__(self, start: int, stop: int, per_rank: int, rank: int = 0, world: int = 1):
        self.start, self.stop, self.per_rank, self.rank, self.world = start, stop, per_rank, rank, world

    def __iter__(self):
        for it in range(self.start, self.stop):
            first = (it * self.world + self.rank) * self.per_rank
            yield from range(first, first + self.per_rank)

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.per_rank


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, average: str = "all") -> torch.Tensor:
    """Cross-entropy of (N, C, H, W) logits against (N, H, W) labels, 255 ignored. ``"all"``: the sum over
    labelled pixels divided by all pixels, 255 included (mmsegmentation's ``avg_non_ignore=False``);
    ``"valid"``: divided by the labelled pixels (PyTorch's mean)."""
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    if average == "all":
        return total / target.numel()
    return total / (target != IGNORE_INDEX).sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------- steps
@dataclass
class _Env:
    """Where this process runs: rank and world size, device, precision."""

    rank: int
    world: int
    device: torch.device
    amp: bool
    amp_dtype: torch.dtype
    sync_bn: bool = False              # SyncBatchNorm: asked for, distributed, on CUDA (it has no CPU kernel)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1 or torch_dist.is_initialized()


@dataclass
class _Progress:
    """What a checkpoint carries from one start of a run to the next."""

    iteration: int = 0
    last_miou: float | None = None
    best_miou: float | None = None
    best_iteration: int | None = None
    loss_sum: float = 0.0              # losses since the last log line, summed (mean over ranks)
    loss_n: int = 0
    seconds: float = 0.0               # training wall time before this start
    changes: list = field(default_factory=list)   # settings changed on resume: {"iteration", "changed"}
    ema_miou: float | None = None      # the weight average's at the last validation (with --ema)


def _setup(config: TrainConfig) -> _Env:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe, pick the device and
    the precision."""
    rank, world, local_rank = 0, 1, 0
    configure_determinism(torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu")),
                          config.threads, config.deterministic)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        use_cuda = torch.cuda.is_available() and (config.device is None or config.device.startswith("cuda"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if config.device:
        device = torch.device(config.device)
    else:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    amp = device.type == "cuda" if config.amp is None else bool(config.amp)
    amp_dtype = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    env = _Env(rank, world, device, amp, amp_dtype, sync_bn=config.sync_bn and world > 1 and device.type == "cuda")
    if config.batch_size % world:
        raise InputError(f"batch size {config.batch_size} is not divisible by {world} processes",
                         field="batch_size")
    if config.batch_size // world < 2 and not env.sync_bn:
        raise InputError("needs at least 2 images per process (BatchNorm after ASPP's global pooling)",
                         field="batch_size")
    return env


def _data(config: TrainConfig, env: _Env):
    """(training split, validation split or None, class names); both splits must name the same classes."""
    train_set = VOCSegmentation(config.data, config.train_split)
    class_names = train_set.class_names
    val_set = None
    if config.val:
        val_set = VOCSegmentation(config.val, config.val_split)
        if val_set.class_names != class_names:
            raise InputError(f"validation classes ({val_set.num_classes}: {', '.join(val_set.class_names[:4])}"
                             f", ...) differ from the training classes ({len(class_names)}: "
                             f"{', '.join(class_names[:4])}, ...)", path=config.val, field="class_names")
    if config.check_data and env.main:
        train_set.check()
        if val_set is not None:
            val_set.check()
    if val_set is not None and config.val_limit:
        val_set = torch.utils.data.Subset(val_set, range(min(config.val_limit, len(val_set))))
    return train_set, val_set, class_names


def _backbone(config: TrainConfig, env: _Env) -> dict | None:
    """The backbone weights; rank 0 reads (or downloads) them first and tells the others if it failed."""
    state, error = None, None
    if env.main:
        try:
            state = backbone_state(config.arch, config.backbone_weights)
        except InputError as e:
            error = e
    if env.distributed:
        box = [None if error is None else str(error)]
        torch_dist.broadcast_object_list(box, src=0)
        if box[0] is not None and error is None:
            raise InputError(box[0])
        if not env.main:
            state = backbone_state(config.arch, config.backbone_weights)
    if error is not None:
        raise error
    return state


def _model(config: TrainConfig, num_classes: int, env: _Env) -> nn.Module:
    torch.manual_seed(config.seed)
    model = build_model(config.arch, num_classes, backbone=_backbone(config, env), aux_loss=config.aux_loss)
    if config.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = config.bn_momentum
    if env.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(env.device)


def _optimizer(config: TrainConfig, model: nn.Module, env: _Env):
    """AdamW with the backbone at ``lr x backbone_lr_mult``; poly schedule per iteration; grad scaler."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": backbone, "lr": config.lr * config.backbone_lr_mult},
                                   {"params": heads, "lr": config.lr}],
                                  lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=config.iters, power=config.power)
    scaler = torch.amp.GradScaler(env.device.type, enabled=env.amp and env.amp_dtype == torch.float16)
    return optimizer, scheduler, scaler


def _apply_schedule(config: TrainConfig, optimizer, scheduler, start: int) -> None:
    """Put the optimisation settings of ``config`` in force from iteration ``start + 1`` on: base rates,
    weight decay, and the poly schedule's closed form at ``start`` of ``config.iters``."""
    factor = (1 - start / config.iters) ** config.power
    bases = (config.lr * config.backbone_lr_mult, config.lr)
    for group, base in zip(optimizer.param_groups, bases):
        group.update(initial_lr=base, lr=base * factor, weight_decay=config.weight_decay)
    scheduler.base_lrs = list(bases)
    scheduler.total_iters, scheduler.power = config.iters, config.power
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def _settings(config: TrainConfig, env: _Env) -> dict:
    """The settings in force, as recorded in config.json and the checkpoints (precision resolved)."""
    return dict(dataclasses.asdict(config), amp=env.amp, device=str(env.device))


def _start(config: TrainConfig, env: _Env, model, optimizer, scheduler, scaler, class_names) -> _Progress:
    """A fresh run (an emptied run directory), or the resumption of ``RUN/last``: weights, optimizer,
    schedule, RNG and progress restored; settings that change the training refused, schedule settings
    applied and recorded."""
    out = Path(config.out)
    if env.main and out.is_dir():
        remove_temps(out)
    resume = (out / LAST / "checkpoint.json").is_file() if config.resume is None else config.resume
    if not resume:
        if env.main:
            for name in (LAST, BEST, TENSORBOARD):
                shutil.rmtree(out / name, ignore_errors=True)
            make_dir(out)
            with atomic_path(out / LOG) as tmp:
                tmp.write_text("")
        torch.manual_seed(config.seed + 1 + env.rank)  # the dropout stream
        return _Progress()

    meta = read_checkpoint_meta(out / LAST)
    if meta["arch"] != config.arch or meta["num_classes"] != len(class_names) \
            or bool(meta.get("aux_loss")) != config.aux_loss:
        raise InputError(f"cannot resume: checkpoint is {meta['arch']} with {meta['num_classes']} classes "
                         f"(aux {meta.get('aux_loss')}), this run {config.arch} with {len(class_names)} "
                         f"(aux {config.aux_loss})", path=out / LAST)
    start = meta["iteration"]
    saved = meta.get("config") or {}
    defaults = json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(TrainConfig)
                                      if f.default is not dataclasses.MISSING}))
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}  # settings newer than the run
    new = json.loads(json.dumps(_settings(config, env)))
    changed = {k: [saved.get(k, "<unset>"), v] for k, v in new.items()
               if k not in RUNTIME_FIELDS and saved.get(k, "<unset>") != v}
    refused = {k: v for k, v in changed.items() if k not in SCHEDULE_FIELDS}
    if refused:
        raise InputError("cannot resume with other settings (" + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b)
                         in refused.items()) + "): give the run's settings (see its config.json), or start "
                         "afresh with --no-resume", path=out / LAST)
    if config.iters < start:
        raise InputError(f"the run is at iteration {start}: --iters {config.iters} ends before it", field="iters")
    load_training_state(out / LAST, meta, model, optimizer, scheduler, scaler)
    progress = _Progress(iteration=start, last_miou=meta.get("last_miou"), best_miou=meta.get("best_miou"),
                         best_iteration=meta.get("best_iteration"), loss_sum=float(meta.get("loss_sum", 0.0)),
                         loss_n=int(meta.get("loss_n", 0)), seconds=float(meta.get("train_seconds", 0.0)),
                         changes=list(meta.get("changes", [])))
    if changed:
        _apply_schedule(config, optimizer, scheduler, start)
        progress.changes.append({"iteration": start, "changed": changed})
    if env.rank:  # the other ranks' dropout streams (rank 0's generator was restored with the checkpoint)
        torch.manual_seed(config.seed + 1 + env.rank + 7919 * start)
    if env.main:  # drop log lines written after the checkpoint (a kill between a save and the next)
        kept = [r for r in (read_jsonl(out / LOG) if (out / LOG).is_file() else [])
                if r.get("iter", 0) < start or (r.get("iter") == start and "changed" not in r)]
        if changed:
            kept.append({"iter": start, "changed": changed})
        with atomic_path(out / LOG) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        logger.info("resuming %s from iteration %d%s", out, start,
                    "; from now on " + ", ".join(f"{k} {b!r} (was {a!r})" for k, (a, b) in changed.items())
                    if changed else "")
    return progress


def _step(config: TrainConfig, env: _Env, model, images, masks, optimizer, scheduler, scaler):
    """One iteration: forward, loss (main + aux_weight x auxiliary), backward, gradient clipping, AdamW
    step, schedule step. Returns (the loss, detached; the heads' lr this step used)."""
    images = images.to(env.device, non_blocking=True)
    masks = masks.to(env.device, non_blocking=True)
    model.train()
    with torch.autocast(env.device.type, dtype=env.amp_dtype, enabled=env.amp):
        output = model(images)
        loss = segmentation_loss(output["out"], masks, config.loss_average)
        if config.aux_loss:
            loss = loss + config.aux_weight * segmentation_loss(output["aux"], masks, config.loss_average)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config.grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    lr = optimizer.param_groups[-1]["lr"]
    scheduler.step()
    return loss.detach(), lr


def _mean_over_ranks(x: torch.Tensor, env: _Env) -> torch.Tensor:
    if env.distributed:
        x = x.clone()
        torch_dist.all_reduce(x)
        x /= env.world
    return x


def _finite(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _loader(config: TrainConfig, env: _Env, train_set: VOCSegmentation, start: int, stop: int):
    """The batches of iterations ``start + 1 .. stop`` for this rank (see the module docstring)."""
    per_rank = config.batch_size // env.world
    stream = TrainStream(train_set, config.seed, crop_size=config.crop_size,
                         scale=(config.scale_min, config.scale_max), short_side=config.short_side,
                         cat_max_ratio=config.cat_max_ratio, photometric=config.photometric)
    return torch.utils.data.DataLoader(
        stream, batch_size=per_rank, num_workers=config.workers, pin_memory=env.device.type == "cuda",
        sampler=StreamSampler(start, stop, per_rank, env.rank, env.world),
        worker_init_fn=dataloader_worker_init,  # with the iterator made in blocked_for_children (train())
        generator=torch.Generator().manual_seed(config.seed))  # own generator: keeps the global RNG exact


def _log_loss(env: _Env, progress: _Progress, loss_sum: torch.Tensor, lr: float, seconds: float, log: _Log,
              bar) -> None:
    """Log the mean loss (over the iterations since the last line and the ranks), then start the sum
    afresh; a loss that is not finite stops the run."""
    it = progress.iteration
    mean = _mean_over_ranks(loss_sum / progress.loss_n, env).item()
    if not math.isfinite(mean):
        raise RuntimeError(f"loss is {mean} at iteration {it}; lower --lr or check the data")
    log.write({"iter": it, "loss": mean, "lr": lr, "time": round(seconds, 3)})
    loss_sum.zero_()
    progress.loss_n = 0
    if bar is not None:
        bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")


def _validate(config: TrainConfig, env: _Env, model, val_set, class_names, progress: _Progress, log,
              ema: WeightEMA | None = None) -> None:
    """Score the validation split as ``evaluate`` does (images split over the ranks), log the scores (with
    ``ema`` also the average's mIoU, ``ema_miou``), and with ``keep_best`` save ``RUN/best`` when the mIoU
    is the best so far."""
    def score(m):
        return evaluate(m, val_set, class_names=class_names, device=env.device, amp=env.amp,
                        workers=config.workers, rank=env.rank, world=env.world, progress=False,
                        short_side=config.short_side)

    scores = score(unwrap(model))
    it, progress.last_miou = progress.iteration, _finite(scores.miou)
    record = {"iter": it, "miou": progress.last_miou, "iou": [_finite(x) for x in scores.iou],
              "acc": [_finite(x) for x in scores.acc]}
    if ema is not None:
        progress.ema_miou = record["ema_miou"] = _finite(score(ema.copy_to(copy.deepcopy(unwrap(model)))).miou)
    log.write(record)
    if env.main:
        logger.info("iteration %d: mIoU %.2f", it, 100 * scores.miou)
    if config.keep_best and progress.last_miou is not None \
            and (progress.best_miou is None or progress.last_miou > progress.best_miou):
        progress.best_miou, progress.best_iteration = progress.last_miou, it
        if env.main:
            _save(config, env, BEST, model, progress, class_names, miou=progress.last_miou)


def _save(config: TrainConfig, env: _Env, name: str, model, progress: _Progress, class_names, *,
          miou: float | None, optimizer=None, scheduler=None, scaler=None, ema: WeightEMA | None = None) -> None:
    """Write checkpoint ``RUN/<name>``; with ``ema`` also its state in it and the average as ``RUN/ema``."""
    meta = {"iteration": progress.iteration, "arch": config.arch, "num_classes": len(class_names),
            "class_names": class_names, "aux_loss": config.aux_loss, "miou": miou,
            "last_miou": progress.last_miou, "best_miou": progress.best_miou, "best_iteration": progress.best_iteration,
            "loss_sum": progress.loss_sum, "loss_n": progress.loss_n, "train_seconds": progress.seconds,
            "changes": progress.changes, "config": _settings(config, env)}
    if name == BEST:
        meta["selected_on"] = {"dataset": str(voc_root(config.val).resolve()), "split": config.val_split,
                               "images": config.val_limit}
    with hold_interrupts():  # SIGTERM / Ctrl-C: the checkpoint is finished first
        save_checkpoint(Path(config.out) / name, model, meta, optimizer=optimizer, scheduler=scheduler,
                        scaler=scaler, extra={EMA_FILE: ema.tensors()} if ema is not None else None)
        if ema is not None:
            save_checkpoint(Path(config.out) / EMA_DIR, ema.state_dict(),
                            {**meta, "miou": progress.ema_miou if miou is not None else None,
                             "ema": {"decay": ema.decay, "updates": ema.updates}})


class _Log:
    """log.jsonl (and TensorBoard) lines, written by rank 0 only."""

    def __init__(self, config: TrainConfig, env: _Env, class_names, start: int):
        self.path = Path(config.out) / LOG
        self.class_names = class_names
        self.writer = None
        if env.main and config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise InputError("TensorBoard logs need the tensorboard package (pip install tensorboard); "
                                 "or --no-tensorboard", field="tensorboard") from None
            self.writer = SummaryWriter(str(Path(config.out) / TENSORBOARD), purge_step=start + 1 if start else None)
        self.main = env.main

    def write(self, record: dict) -> None:
        if not self.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is None:
            return
        it = record["iter"]
        if "loss" in record:
            self.writer.add_scalar("train/loss", record["loss"], it)
            self.writer.add_scalar("train/lr", record["lr"], it)
        if record.get("miou") is not None:
            self.writer.add_scalar("val/mIoU", record["miou"], it)
            for name, iou in zip(self.class_names, record["iou"]):
                if iou is not None:
                    self.writer.add_scalar(f"val/IoU/{name}", iou, it)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ------------------------------------------------------------------------------------------------ train
def train(config: TrainConfig) -> dict:
    """Train DeepLabv3 as ``config`` says; returns ``{"iteration", "last_miou", "best_miou",
    "best_iteration", "seconds", "run_dir"}`` (mIoU as fractions, ``None`` without validation;
    ``best_*`` only with ``keep_best``; seconds: training wall time over all starts)."""
    config.validate()
    if config.self_train is not None:    # two rounds, each a plain run: pccseg.train.selftrain
        raise ValueError("config.self_train is set: self-training is pccseg.train.selftrain.self_train(config)")
    env = _setup(config)
    train_set, val_set, class_names = _data(config, env)
    model = _model(config, len(class_names), env)
    optimizer, scheduler, scaler = _optimizer(config, model, env)
    progress = _start(config, env, model, optimizer, scheduler, scaler, class_names)
    ema = WeightEMA(model, config.ema) if config.ema is not None else None
    if ema is not None and progress.iteration:
        load_ema(ema, Path(config.out) / LAST)
    out = Path(config.out)
    if env.main:
        write_json(out / CONFIG, dict(_settings(config, env), changes=progress.changes))
    if env.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, **({"device_ids": [env.device.index]} if env.device.type == "cuda" else {}))

    stop = config.iters if config.stop_after is None else min(config.iters, config.stop_after)
    with blocked_for_children():      # the workers start with SIGTERM / Ctrl-C blocked (pccseg.signals)
        batches = iter(_loader(config, env, train_set, progress.iteration, stop))
    log = _Log(config, env, class_names, progress.iteration)
    bar = None
    if env.main and config.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=stop, initial=progress.iteration, desc="train", dynamic_ncols=True)

    start, before, t0 = progress.iteration, progress.seconds, time.perf_counter()
    loss_sum = torch.tensor(progress.loss_sum, device=env.device)
    while progress.iteration < stop:
        try:
            images, masks = next(batches)
        except InputError as e:
            raise unwrap_worker_error(e) from None
        loss, lr = _step(config, env, model, images, masks, optimizer, scheduler, scaler)
        if ema is not None:
            ema.update(model)
        it = progress.iteration = progress.iteration + 1
        loss_sum += loss
        progress.loss_n += 1
        seconds = before + time.perf_counter() - t0
        if it % config.log_every == 0 or it == config.iters:
            _log_loss(env, progress, loss_sum, lr, seconds, log, bar)
        if bar is not None:
            bar.update(1)

        validated = val_set is not None and (it % config.val_every == 0 or it == config.iters)
        if validated:
            _validate(config, env, model, val_set, class_names, progress, log, ema)
        if validated or it % (config.save_every or config.val_every) == 0 or it == stop:
            progress.loss_sum, progress.seconds = _mean_over_ranks(loss_sum, env).item(), seconds
            if env.main:
                _save(config, env, LAST, model, progress, class_names,
                      miou=progress.last_miou if validated else None,
                      optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema)
    if bar is not None:
        bar.close()
    log.close()
    if env.distributed:
        torch_dist.barrier()
    if env.main and progress.iteration > start:
        logger.info("trained iterations %d..%d in %.1f s", start + 1, progress.iteration, progress.seconds - before)
    return {"iteration": progress.iteration, "last_miou": progress.last_miou, "best_miou": progress.best_miou,
            "best_iteration": progress.best_iteration, "seconds": round(progress.seconds, 3), "run_dir": str(out)}

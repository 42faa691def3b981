"""Train torchvision's DeepLabv3 on a VOC-layout dataset (a ``pccseg generate`` output): the report's
section 3, with Dataset Diffusion's mmsegmentation recipe as the defaults (see docs/training.md for the
recipe and every remaining difference).

:func:`train` reads top to bottom, like torchvision's ``references/segmentation/train.py``:
:func:`_setup` (processes, device, precision), :func:`_data`, :func:`_model`, :func:`_optimizer`,
:func:`~pccseg.train.checkpoint.start` (a fresh run or the resumption of ``RUN/last``), then the loop:
:func:`_step` per iteration, :func:`_log_loss` every ``log_every``, :func:`_validate` every ``val_every``
iterations and :func:`~pccseg.train.checkpoint.save` for the checkpoints (:mod:`pccseg.train.checkpoint`:
the run folder across starts). Ctrl-C and SIGTERM finish the step under way, save ``RUN/last`` of the
iteration reached, and stop; the rerun resumes from it as if uninterrupted.
The model, its checkpoints and the input normalisation live in :mod:`pccseg.train.deeplab`, which
:mod:`pccseg.train.evaluate` shares; the augmentation and the training stream in
:mod:`pccseg.train.augment`.

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
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from .augment import StreamSampler, TrainStream
from .checkpoint import BEST, CONFIG, LAST, Progress, RunLog, save, settings, start
from .deeplab import backbone_state, build_model, unwrap
from ..errors import InputError, unwrap_worker_error
from .evaluate import evaluate
from .metrics import percent
from ..capture.pipeline import resolve_device
from ..io import write_json
from ..limits import check_fits
from ..signals import blocked_for_children, dataloader_worker_init, hold_interrupts, save_on_interrupt
from .config import TrainConfig
from .determinism import configure as configure_determinism
from .ema import WeightEMA, load_ema
from .schedule import make_scheduler
from ..vocab import IGNORE_INDEX
from ..dataset.voc import VOCSplit

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ loss
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


def _setup(config: TrainConfig) -> _Env:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe, pick the device and
    the precision."""
    rank, world, local_rank = 0, 1, 0
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        use_cuda = torch.cuda.is_available() and (config.device is None or config.device.startswith("cuda"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if config.device:
        device = resolve_device(config.device)
    else:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    configure_determinism(device, config.threads, config.deterministic)   # before the first cuBLAS call
    amp = device.type == "cuda" if config.amp is None else bool(config.amp)
    amp_dtype = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    env = _Env(rank, world, device, amp, amp_dtype, sync_bn=config.sync_bn and world > 1 and device.type == "cuda")
    if config.batch_size % world:
        raise InputError(f"batch size {config.batch_size} is not divisible by {world} processes",
                         field="batch_size")
    if config.batch_size // world < 2 and not env.sync_bn:
        raise InputError("needs at least 2 images per process (BatchNorm after ASPP's global pooling)",
                         field="batch_size")
    _check_sizes_fit(config, env)
    return env


def _check_sizes_fit(config: TrainConfig, env: _Env) -> None:
    """Refuse (one line, before anything is written) a batch, crop or short side whose tensors cannot fit
    in the device's memory: at least the float32 image and int64 mask of every crop (20 bytes a pixel)
    and the backbone's 16-channel float32 stem at half resolution (16 bytes a pixel); with validation,
    the same for one image resized to the short side; and the uint8 image and int64 mask resized to the
    short side times ``scale_min`` before cropping (11 bytes a pixel)."""
    per_pixel = 20 + 16
    crops = config.batch_size // env.world * config.crop_size ** 2
    check_fits(crops * per_pixel, "batch_size / crop_size",
               f"a batch of {config.batch_size // env.world} crop(s) of {config.crop_size} px", env.device)
    if config.short_side:
        side = config.short_side * config.scale_min
        check_fits(side * side * 11, "short_side", f"resizing to a short side of {config.short_side} px",
                   env.device)
        if config.val:
            check_fits(config.short_side ** 2 * per_pixel, "short_side",
                       f"validating at a short side of {config.short_side} px", env.device)


def _data(config: TrainConfig, env: _Env):
    """(training split, validation split or None, class names); both splits must name the same classes."""
    train_set = VOCSplit(config.data, config.train_split)
    class_names = train_set.class_names
    val_set = None
    if config.val:
        val_set = VOCSplit(config.val, config.val_split)
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
    """AdamW with the backbone at ``lr x backbone_lr_mult``; poly schedule per iteration after ``warmup``
    iterations of linear warm-up (:mod:`pccseg.train.schedule`); grad scaler."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": backbone, "lr": config.lr * config.backbone_lr_mult},
                                   {"params": heads, "lr": config.lr}],
                                  lr=config.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config.iters, config.power, config.warmup)
    scaler = torch.amp.GradScaler(env.device.type, enabled=env.amp and env.amp_dtype == torch.float16)
    return optimizer, scheduler, scaler


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


@dataclass
class _Run:
    """What the loop of one start keeps track of, for the checkpoint saved on Ctrl-C / SIGTERM."""

    saved: int                         # the iteration of RUN/last on disk
    seconds: float                     # training wall time up to the last step
    mid_step: bool = False             # a second signal cut a step short: its state is torn, keep RUN/last
    rng: torch.Tensor | None = None    # the random state before the validation under way


def _mean_over_ranks(x: torch.Tensor, env: _Env) -> torch.Tensor:
    if env.distributed:
        x = x.clone()
        torch_dist.all_reduce(x)
        x /= env.world
    return x


def _finite(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _loader(config: TrainConfig, env: _Env, train_set: VOCSplit, start: int, stop: int):
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


def _log_loss(env: _Env, progress: Progress, loss_sum: torch.Tensor, lr: float, seconds: float, log: RunLog,
              bar, run_saved: int = 0) -> None:
    """Log the mean loss (over the iterations since the last line and the ranks), then start the sum
    afresh; a loss that is not finite stops the run."""
    it = progress.iteration
    mean = _mean_over_ranks(loss_sum / progress.loss_n, env).item()
    if not math.isfinite(mean):
        raise InputError(f"the loss is {mean} at iteration {it} (RUN/last of iteration {run_saved} kept): lower "
                         "the learning rate, keep gradient clipping on, or check the data", field="lr")
    log.write({"iter": it, "loss": mean, "lr": lr, "time": round(seconds, 3)})
    loss_sum.zero_()
    progress.loss_n = 0
    if bar is not None:
        bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")


def _validate(config: TrainConfig, env: _Env, model, val_set, class_names, progress: Progress, log,
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
        logger.info("iteration %d: validation mIoU %s", it, percent(scores.miou))
    if config.keep_best and progress.last_miou is not None \
            and (progress.best_miou is None or progress.last_miou > progress.best_miou):
        progress.best_miou, progress.best_iteration = progress.last_miou, it
        if env.main:
            save(config, env, BEST, model, progress, class_names, miou=progress.last_miou)


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
    progress = start(config, env, model, optimizer, scheduler, scaler, class_names)
    ema = WeightEMA(model, config.ema) if config.ema is not None else None
    if ema is not None and progress.iteration:
        load_ema(ema, Path(config.out) / LAST)
    out = Path(config.out)
    if env.main:
        write_json(out / CONFIG, dict(settings(config, env), changes=progress.changes))
    if env.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, **({"device_ids": [env.device.index]} if env.device.type == "cuda" else {}))

    stop = config.iters if config.stop_after is None else min(config.iters, config.stop_after)
    with blocked_for_children():      # the workers start with SIGTERM / Ctrl-C blocked (pccseg.signals)
        batches = iter(_loader(config, env, train_set, progress.iteration, stop))
    log = RunLog(config, env, class_names, progress.iteration)
    bar = None
    if env.main and config.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=stop, initial=progress.iteration, desc="train", dynamic_ncols=True)

    begin, before, t0 = progress.iteration, progress.seconds, time.perf_counter()
    loss_sum = torch.tensor(progress.loss_sum, device=env.device)
    run = _Run(saved=begin, seconds=before)

    def save_last(validated: bool, rng: torch.Tensor | None = None, reduce: bool = True) -> None:
        progress.loss_sum = (_mean_over_ranks(loss_sum, env) if reduce else loss_sum).item()
        if not math.isfinite(progress.loss_sum):          # never overwrite a good checkpoint with NaN weights
            raise InputError(f"the loss is {progress.loss_sum} before iteration {progress.iteration} (RUN/last of "
                             f"iteration {run.saved} kept): lower the learning rate, keep gradient clipping on, "
                             "or check the data", field="lr")
        progress.seconds = run.seconds
        if env.main:
            save(config, env, LAST, model, progress, class_names, miou=progress.last_miou if validated else None,
                 optimizer=optimizer, scheduler=scheduler, scaler=scaler, rng=rng, ema=ema)
        run.saved = progress.iteration

    def validate() -> None:
        progress.pending_validation, run.rng = True, torch.get_rng_state()
        _validate(config, env, model, val_set, class_names, progress, log, ema)
        progress.pending_validation = False

    def on_interrupt() -> None:
        """Ctrl-C / SIGTERM: ``RUN/last`` of the iteration reached, unless it is there already, a second
        signal cut a step short, or the run is distributed (its ranks stop at different points; the last
        periodic checkpoint stays)."""
        if env.distributed or run.mid_step or run.saved == progress.iteration:
            return
        save_last(False, rng=run.rng if progress.pending_validation else None, reduce=False)
        logger.debug("interrupted: saved %s at iteration %d", out / LAST, progress.iteration)

    with save_on_interrupt(on_interrupt):
        if progress.pending_validation:     # saved on a signal during this validation: run it again
            validate()
            save_last(True)
        while progress.iteration < stop:
            try:
                images, masks = next(batches)
            except InputError as e:
                raise unwrap_worker_error(e) from None
            with hold_interrupts():         # a signal waits for the step and its bookkeeping
                run.mid_step = True
                loss, lr = _step(config, env, model, images, masks, optimizer, scheduler, scaler)
                if ema is not None:
                    ema.update(model)
                it = progress.iteration = progress.iteration + 1
                loss_sum += loss
                progress.loss_n += 1
                run.seconds = before + time.perf_counter() - t0
                if it % config.log_every == 0 or it == config.iters:
                    _log_loss(env, progress, loss_sum, lr, run.seconds, log, bar, run.saved)
                run.mid_step = False
            if bar is not None:
                bar.update(1)

            validated = val_set is not None and (it % config.val_every == 0 or it == config.iters)
            if validated:
                validate()
            if validated or it % (config.save_every or config.val_every) == 0 or it == stop:
                save_last(validated)
    if bar is not None:
        bar.close()
    log.close()
    if env.distributed:
        torch_dist.barrier()
    if env.main and progress.iteration > begin:
        logger.debug("trained iterations %d..%d in %.1f s", begin + 1, progress.iteration, progress.seconds - before)
    return {"iteration": progress.iteration, "last_miou": progress.last_miou, "best_miou": progress.best_miou,
            "best_iteration": progress.best_iteration, "seconds": round(progress.seconds, 3), "run_dir": str(out)}

"""A training run's folder across starts: the fresh start or the resumption of ``RUN/last``, the
checkpoints :func:`save` writes, and the log lines a resumption keeps.

``RUN/last`` is replaced atomically (:func:`pccseg.io.atomic_path`: the old copy renamed aside, the new one
renamed in); a rerun puts back a complete copy that a kill left under a temporary name
(:func:`pccseg.io.remove_temps`), and refuses a ``last/`` without ``checkpoint.json`` rather than start
afresh over ``best/`` and ``tensorboard/``. A checkpoint saved on Ctrl-C / SIGTERM while a validation
was under way says so (``pending_validation``) and carries the random state from before it, so that the
resumption validates first and goes on as the uninterrupted run did.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .deeplab import load_training_state, read_checkpoint_meta, save_checkpoint
from .ema import EMA_DIR, EMA_FILE
from ..errors import InputError
from ..io import atomic_path, make_dir, read_jsonl, remove_temps
from ..signals import hold_interrupts
from ..dataset.voc import voc_root

logger = logging.getLogger(__name__)

LOG, CONFIG, LAST, BEST, TENSORBOARD = "log.jsonl", "config.json", "last", "best", "tensorboard"
#: Settings that may differ when a run is resumed: they do not change what the weights learn.
RUNTIME_FIELDS = frozenset({"out", "resume", "stop_after", "progress", "workers", "device", "amp", "check_data",
                            "val", "val_split", "val_every", "val_limit", "save_every", "log_every",
                            "keep_best", "tensorboard", "threads", "deterministic"})
#: Settings a resumed run may change: applied from the resumption on, and recorded in ``changes``.
SCHEDULE_FIELDS = frozenset({"iters", "lr", "backbone_lr_mult", "weight_decay", "power", "grad_clip"})


@dataclass
class Progress:
    """What a checkpoint carries from one start of a run to the next."""

    iteration: int = 0
    last_miou: float | None = None
    best_miou: float | None = None
    best_iteration: int | None = None
    loss_sum: float = 0.0              # losses since the last log line, summed (mean over ranks)
    loss_n: int = 0
    seconds: float = 0.0               # training wall time before this start
    changes: list = field(default_factory=list)   # settings changed on resume: {"iteration", "changed"}
    pending_validation: bool = False   # saved on a signal during the validation of ``iteration``
    ema_miou: float | None = None      # the weight average's at the last validation (with --ema)


def settings(config, env) -> dict:
    """The settings in force, as recorded in config.json and the checkpoints (precision resolved)."""
    return dict(dataclasses.asdict(config), amp=env.amp, device=str(env.device))


def is_checkpoint(folder: Path) -> bool:
    """Whether a checkpoint folder is complete (:func:`save_checkpoint` writes ``checkpoint.json`` last)."""
    return (folder / "checkpoint.json").is_file()


def apply_schedule(config, optimizer, scheduler, start: int) -> None:
    """Put the optimisation settings of ``config`` in force from iteration ``start + 1`` on: base rates,
    weight decay, and the poly schedule's closed form at ``start`` of ``config.iters``."""
    from .schedule import lr_factor

    factor = lr_factor(start, config.iters, config.power, getattr(scheduler, "warmup", 0))
    bases = (config.lr * config.backbone_lr_mult, config.lr)
    for group, base in zip(optimizer.param_groups, bases):
        group.update(initial_lr=base, lr=base * factor, weight_decay=config.weight_decay)
    scheduler.base_lrs = list(bases)
    scheduler.total_iters, scheduler.power = config.iters, config.power
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def _wants_resume(config, env) -> bool:
    """Put back what a kill left under temporary names, then: resume (``RUN/last`` is there, or
    ``--resume``), or start afresh (no ``RUN/last``, or ``--no-resume``). A ``last`` that is a link or
    lacks ``checkpoint.json`` is refused rather than started over."""
    out = Path(config.out)
    if env.main and out.is_dir():
        remove_temps(out, complete=is_checkpoint)
    if env.distributed:
        import torch.distributed as torch_dist
        torch_dist.barrier()                       # every rank sees what rank 0 restored
    last = out / LAST
    if config.resume is False:
        return False
    if last.is_symlink():
        raise InputError("is a symbolic link: a run folder's checkpoint must be a folder inside it", path=last)
    if last.is_dir() and not is_checkpoint(last):
        raise InputError("incomplete checkpoint (no checkpoint.json): move it away to resume from nothing, or "
                         "start afresh with --no-resume (removes RUN/last, RUN/best and RUN/tensorboard)",
                         path=last)
    if config.resume and not last.is_dir():
        raise InputError("nothing to resume (no last/ checkpoint here)", path=out, field="--resume")
    return last.is_dir()


def start(config, env, model, optimizer, scheduler, scaler, class_names) -> Progress:
    """A fresh run (an emptied run directory), or the resumption of ``RUN/last``: weights, optimizer,
    schedule, RNG and progress restored; settings that change the training refused, schedule settings
    applied and recorded."""
    out = Path(config.out)
    if not _wants_resume(config, env):
        if env.main:
            for name in (LAST, BEST, TENSORBOARD):
                if (out / name).is_symlink():
                    (out / name).unlink()
                shutil.rmtree(out / name, ignore_errors=True)
            make_dir(out)
            with atomic_path(out / LOG) as tmp:
                tmp.write_text("")
        torch.manual_seed(config.seed + 1 + env.rank)  # the dropout stream
        return Progress()

    meta = read_checkpoint_meta(out / LAST)
    if meta["arch"] != config.arch or meta["num_classes"] != len(class_names) \
            or bool(meta.get("aux_loss")) != config.aux_loss:
        raise InputError(f"cannot resume: checkpoint is {meta['arch']} with {meta['num_classes']} classes "
                         f"(aux {meta.get('aux_loss')}), this run {config.arch} with {len(class_names)} "
                         f"(aux {config.aux_loss})", path=out / LAST)
    begin = meta.get("iteration")
    if begin is None:
        raise InputError("missing: cannot resume without it; start afresh with --no-resume",
                         path=out / LAST / "checkpoint.json", field="iteration")
    saved = meta.get("config") or {}
    defaults = json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(type(config))
                                      if f.default is not dataclasses.MISSING}))
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}  # settings newer than the run
    new = json.loads(json.dumps(settings(config, env)))
    changed = {k: [saved.get(k, "<unset>"), v] for k, v in new.items()
               if k not in RUNTIME_FIELDS and saved.get(k, "<unset>") != v}
    refused = {k: v for k, v in changed.items() if k not in SCHEDULE_FIELDS}
    if refused:
        raise InputError("cannot resume with other settings (" + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b)
                         in refused.items()) + "): give the run's settings (see its config.json), or start "
                         "afresh with --no-resume", path=out / LAST)
    if config.iters < begin:
        raise InputError(f"the run is at iteration {begin}: --iters {config.iters} ends before it", field="iters")
    try:
        progress = Progress(iteration=begin, last_miou=meta.get("last_miou"), best_miou=meta.get("best_miou"),
                            best_iteration=meta.get("best_iteration"), loss_sum=float(meta.get("loss_sum", 0.0)),
                            loss_n=int(meta.get("loss_n", 0)), seconds=float(meta.get("train_seconds", 0.0)),
                            changes=list(meta.get("changes", [])),
                            pending_validation=bool(meta.get("pending_validation")))
    except (TypeError, ValueError) as e:
        raise InputError(f"cannot resume from this checkpoint ({e}); start afresh with --no-resume",
                         path=out / LAST / "checkpoint.json") from None
    load_training_state(out / LAST, meta, model, optimizer, scheduler, scaler)
    if changed:
        apply_schedule(config, optimizer, scheduler, begin)
        progress.changes.append({"iteration": begin, "changed": changed})
    if env.rank:  # the other ranks' dropout streams (rank 0's generator was restored with the checkpoint)
        torch.manual_seed(config.seed + 1 + env.rank + 7919 * begin)
    if env.main:
        _trim_log(out / LOG, begin, changed, progress.pending_validation)
        logger.info("resuming %s from iteration %d%s", out, begin,
                    "; from now on " + ", ".join(f"{k} {b!r} (was {a!r})" for k, (a, b) in changed.items())
                    if changed else "")
    return progress


def _trim_log(path: Path, begin: int, changed: dict, pending_validation: bool) -> None:
    """Keep the log lines up to the checkpoint at iteration ``begin``: those written after it (a kill
    between a save and the next), a line torn by a kill mid-append, and the scores of a validation that
    the resumption runs again are dropped."""
    kept = [r for r in (read_jsonl(path, torn_tail=True) if path.is_file() else [])
            if r.get("iter", 0) < begin
            or (r.get("iter") == begin and "changed" not in r and not (pending_validation and "miou" in r))]
    if changed:
        kept.append({"iter": begin, "changed": changed})
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))


def save(config, env, name: str, model, progress: Progress, class_names, *, miou: float | None, optimizer=None,
         scheduler=None, scaler=None, rng: torch.Tensor | None = None, ema=None) -> None:
    """Write checkpoint ``RUN/<name>`` (``last`` with the optimiser, schedule and scaler; ``best``);
    ``rng``: the random state to record instead of the current one (see the module docstring); ``ema``
    (a :class:`~pccseg.train.ema.WeightEMA`): its state in the checkpoint too, and the average as ``RUN/ema``."""
    meta = {"iteration": progress.iteration, "arch": config.arch, "num_classes": len(class_names),
            "class_names": class_names, "aux_loss": config.aux_loss, "miou": miou,
            "last_miou": progress.last_miou, "best_miou": progress.best_miou, "best_iteration": progress.best_iteration,
            "loss_sum": progress.loss_sum, "loss_n": progress.loss_n, "train_seconds": progress.seconds,
            "changes": progress.changes, "config": settings(config, env)}
    if progress.pending_validation:
        meta["pending_validation"] = True
    if name == BEST:
        meta["selected_on"] = {"dataset": str(voc_root(config.val).resolve()), "split": config.val_split,
                               "images": config.val_limit}
    with hold_interrupts():  # SIGTERM / Ctrl-C: the checkpoint is finished first
        current = None
        if rng is not None:
            current = torch.get_rng_state()
            torch.set_rng_state(rng)
        try:
            save_checkpoint(Path(config.out) / name, model, meta, optimizer=optimizer, scheduler=scheduler,
                            scaler=scaler, extra={EMA_FILE: ema.tensors()} if ema is not None else None)
            if ema is not None:
                save_checkpoint(Path(config.out) / EMA_DIR, ema.state_dict(),
                                {**meta, "miou": progress.ema_miou if miou is not None else None,
                                 "ema": {"decay": ema.decay, "updates": ema.updates}})
        finally:
            if current is not None:
                torch.set_rng_state(current)


class RunLog:
    """log.jsonl (and TensorBoard) lines, written by rank 0 only."""

    def __init__(self, config, env, class_names, start: int):
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

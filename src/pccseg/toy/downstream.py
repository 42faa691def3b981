"""The experiment's downstream part (stage 5 of :mod:`pccseg.toy.experiment`): which DeepLabv3 runs make
the table's rows, how each is trained and scored, and the rows' means and spreads over the seeds.

A *row* is a training set (the rendered upper bound, or a labeller's masks) under a recipe: the plain
one, ``filter`` (the labeller's set filtered by its own evidence, :mod:`pccseg.dataset.filter`),
``self-train`` (one round of self-training whose teacher is the plain row's run of the same seed) and, with
``ema``, each of those scored with its weight average (same runs, other weights). Every row is trained
with every seed of :func:`seeds`; a row's figure is the mean over the seeds, with the standard deviation,
and a recipe's gain is the mean (and sd) of its difference from the plain row *seed by seed* (same
images, same seed).

This module imports nothing of :mod:`pccseg.toy.experiment`: its stages get the experiment's ``Layout``
as an argument.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from pathlib import Path

from ..errors import InputError
from .config import ExperimentConfig
from .jobs import run_jobs

log = logging.getLogger(__name__)

UPPER = "rendered"          #: the training set with exact labels (the upper bound)
PLAIN, FILTER, SELF_TRAIN, EMA = "", "filter", "self-train", "ema"
FILTERED_SPLIT = "filtered"


@dataclasses.dataclass(frozen=True)
class Row:
    """One downstream row: ``key`` names its folders (``runs/<key>/seed-<s>``, ``scores/<key>/``);
    ``base`` is the training set (UPPER or a labeller); ``recipe`` the option on top (PLAIN: none);
    ``ema``: scored with the weight average of row ``trained``'s runs."""

    key: str
    base: str
    recipe: str = PLAIN
    ema: bool = False

    @property
    def trained(self) -> str:
        """The key of the runs this row's scores come from."""
        return self.key[:-len("+" + EMA)] if self.ema else self.key

    @property
    def label(self) -> str:
        if self.key == UPPER:
            return f"{UPPER} (exact labels, upper bound)"
        return " + ".join([self.base] + [x for x in (self.recipe, "EMA" if self.ema else "") if x])


def seeds(cfg: ExperimentConfig) -> list[int]:
    return list(range(cfg.train_seed, cfg.train_seed + cfg.train_seeds))


def rows(cfg: ExperimentConfig) -> list[Row]:
    """The table's rows, in order: per training set its plain row, then each recipe option asked for; with
    ``ema`` each followed by its average's row."""
    out = []
    for base in (UPPER, *cfg.labellers):
        recipes = [PLAIN] + ([FILTER] if cfg.filter and base != UPPER else []) \
            + ([SELF_TRAIN] if cfg.self_train is not None and base != UPPER else [])
        for recipe in recipes:
            row = Row("+".join(x for x in (base, recipe) if x), base, recipe)
            out.append(row)
            if cfg.ema is not None:
                out.append(Row(row.key + "+" + EMA, base, recipe, ema=True))
    return out


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run and its scoring: ``data`` (split ``split``) -> ``run`` -> ``scores`` (and, with an
    average, ``ema_scores``) on ``val`` (a VOC root, split val)."""

    key: str
    seed: int
    data: Path
    split: str
    run: Path
    scores: Path
    val: Path
    ema_scores: Path | None = None


def train_config(cfg: ExperimentConfig, data: Path, out: Path, device: str, progress: bool = False, *,
                 seed: int | None = None, split: str = "train"):
    """The :class:`~pccseg.train.config.TrainConfig` of one training set: DeepLabv3-MobileNetV3, random init
    (no ImageNet weights: the toy world is its own domain), no auxiliary head, no validation during
    training (the final weights are scored). The toy world's class cue is colour at 128 px, so no
    photometric distortion (it shifts hues) and no resize to a 512 short side. ``threads`` fixed and
    deterministic algorithms: the same settings give the same numbers on one machine."""
    from ..train.config import TrainConfig

    return TrainConfig(data=str(data), out=str(out), train_split=split, arch="mobilenet_v3_large",
                       backbone_weights="none", aux_loss=False, iters=cfg.iters, batch_size=cfg.train_batch_size,
                       lr=cfg.lr, warmup=cfg.warmup, backbone_lr_mult=1.0, crop_size=cfg.crop_size,
                       scale_min=0.75, scale_max=1.25,
                       bn_momentum=0.1, photometric=False, short_side=None, workers=0,
                       save_every=max(1, min(100, cfg.iters)), log_every=20, tensorboard=False,
                       seed=cfg.train_seed if seed is None else seed, device=device, progress=progress,
                       threads=cfg.threads, deterministic=True, ema=cfg.ema)


def train_and_score(cfg: ExperimentConfig, job: Job, device: str, progress: bool = False) -> dict:
    """Train ``job`` (resuming its run), score its final weights (and their average) on the rendered val
    split, and write the scores files."""
    from ..dataset.voc import VOCSplit
    from ..io import write_json
    from ..train.ema import EMA_DIR
    from ..train.evaluate import evaluate
    from ..train.checkpoint import LAST
    from ..train.loop import train

    t0 = time.perf_counter()
    train(train_config(cfg, job.data, job.run, device, progress and cfg.progress, seed=job.seed, split=job.split))
    seconds = time.perf_counter() - t0
    val = VOCSplit(job.val, "val")
    result = None
    for weights, path in ((EMA_DIR, job.ema_scores), (LAST, job.scores)):      # the plain scores last: done
        if path is None:
            continue
        scores = evaluate(job.run / weights, val, device=device, workers=0, progress=False, short_side=None)
        result = {"set": job.key + ("+" + EMA if weights == EMA_DIR else ""), "seed": job.seed,
                  **scores.to_dict(), "train_seconds": round(seconds, 1)}
        write_json(path, result)
        log.info("%s seed %d%s: mIoU %.2f %% on the rendered val split (trained in %.0f s)", job.key, job.seed,
                 " (EMA)" if weights == EMA_DIR else "", 100 * scores.miou, seconds)
    return result


def relabel_for_self_training(cfg: ExperimentConfig, teacher: Path, data: Path, out: Path, device: str) -> dict:
    """The self-training row's training set of one seed: ``data`` relabelled by the teacher run ``teacher``
    (its average with ``ema``) into ``out`` (:func:`pccseg.train.selftrain.relabel_dataset`, rule fill)."""
    from ..train.ema import EMA_DIR
    from ..train.checkpoint import LAST
    from ..train.selftrain import relabel_dataset

    return relabel_dataset(teacher / (EMA_DIR if cfg.ema is not None else LAST), data, out, threshold=cfg.self_train,
                           rule="fill", device=device, short_side=None)


# ------------------------------------------------------------------------------------------ stage 5
def stage_filter(cfg: ExperimentConfig, lay) -> bool:
    """With ``filter``: each labeller's set filtered by its own evidence (:func:`pccseg.dataset.filter.
    filter_split`, default rule) into the split file ``filtered``; the reports in ``filter.json``."""
    from ..dataset.filter import filter_split
    from ..io import write_json

    path = lay.root / "filter.json"
    if not cfg.filter or path.is_file():
        return False
    reports = {name: filter_split(lay.labelled(name), split="train", out_split=FILTERED_SPLIT)
               for name in cfg.labellers}
    write_json(path, reports)
    return True


def _job(cfg: ExperimentConfig, lay, key: str, seed: int) -> Job:
    row = next(r for r in rows(cfg) if r.key == key)
    data, split = lay.training_set(row.base), "train"
    if row.recipe == FILTER:
        split = FILTERED_SPLIT
    elif row.recipe == SELF_TRAIN:
        data = lay.self_trained(row.base, seed)
    return Job(key, seed, data, split, lay.run(key, seed), lay.scores(key, seed), lay.rendered,
               lay.scores(key + "+ema", seed) if cfg.ema is not None else None)


def stale(cfg: ExperimentConfig, job: Job, device: str) -> list[str]:
    """Where the run of ``job`` already in the folder (its ``config.json``) was trained with settings other
    than this code's :func:`train_config` (``key: old -> new``; settings the run lacks count as equal; the
    paths and how it ran do not count): a finished run's scores are never reused for other training
    settings, e.g. after a code change."""
    import json

    from ..io import read_json
    from ..train.checkpoint import RUNTIME_FIELDS

    path = job.run / "config.json"
    if not path.is_file():
        return []
    saved = read_json(path)
    want = json.loads(json.dumps(dataclasses.asdict(train_config(cfg, job.data, job.run, device, seed=job.seed,
                                                                 split=job.split))))
    return [f"{k}: {saved[k]!r} -> {v!r}" for k, v in want.items()
            if k not in RUNTIME_FIELDS and k != "data" and k in saved and saved[k] != v]


def stage_train(cfg: ExperimentConfig, lay, device: str, processes: int) -> bool:
    """Train and score every row at every seed that has no scores yet: the plain and filtered rows first,
    then the self-training rows, whose teachers are the plain rows' runs."""
    trained = [r for r in rows(cfg) if not r.ema]

    def todo(keys) -> list[Job]:
        jobs = [_job(cfg, lay, r.key, s) for s in seeds(cfg) for r in trained if r.key in keys]  # seed by seed
        for j in jobs:
            diff = stale(cfg, j, device)
            if diff:
                raise InputError(f"the run {j.run} was trained with other settings ({'; '.join(diff)}), so its "
                                 "scores are not this experiment's: use another --out", path=j.run / "config.json")
        return [j for j in jobs if not j.scores.is_file() or (j.ema_scores is not None and not j.ema_scores.is_file())]

    did = False
    first, then = [r.key for r in trained if r.recipe != SELF_TRAIN], [r.key for r in trained if r.recipe == SELF_TRAIN]
    for phase in (first, then):
        jobs = todo(phase)
        if not jobs:
            continue
        for j in jobs:
            if j.key.endswith("+" + SELF_TRAIN):               # its teacher: the plain row's run, same seed
                base = j.key[:-len("+" + SELF_TRAIN)]
                relabel_for_self_training(cfg, lay.run(base, j.seed), lay.training_set(base), j.data, device)
        n = min(processes, len(jobs))
        log.info("train: DeepLabv3 on %s (%d iterations each) in %d process(es)",
                 ", ".join(f"{j.key} seed {j.seed}" for j in jobs), cfg.iters, n)
        run_jobs(train_and_score, [(cfg, j, device, n == 1) for j in jobs], n, cfg.threads)
        did = True
    return did


# ------------------------------------------------------------------------------------------ summaries
def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else None


def _sd(xs: list) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.stdev(xs) if len(xs) >= 2 else None


def _pct(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else 100.0 * x


def summary(cfg: ExperimentConfig, scores: dict[str, dict[int, dict]], class_order) -> dict:
    """Tables' content (percent) from ``scores[row key][seed]`` (each an evaluate ``to_dict()``):

    ``downstream``: per row ``[label, mean IoU per class of class_order..., mean mIoU, sd, % of the upper
    bound's mean]``; ``per_seed``: per row ``[label, mIoU of each seed...]``; ``gains``: per row with a
    recipe option ``[label, mean gain over the plain row, sd, seeds]`` (paired by seed, mIoU points).
    """
    ss = seeds(cfg)
    table_rows = rows(cfg)
    miou = {r.key: [_pct(scores[r.key][s]["miou"]) for s in ss] for r in table_rows}
    upper = _mean(miou[UPPER])
    down, per_seed, gains = [], [], []
    for r in table_rows:
        per_class = []
        for c in class_order:
            vals = []
            for s in ss:
                iou = dict(zip(scores[r.key][s]["class_names"], scores[r.key][s]["iou"]))
                vals.append(_pct(iou.get(c)))
            per_class.append(_mean(vals))
        m = _mean(miou[r.key])
        down.append([r.label, *per_class, m, _sd(miou[r.key]), 100.0 * m / upper if upper and m is not None else None])
        per_seed.append([r.label, *miou[r.key]])
        if r.recipe or r.ema:
            plain = miou[r.base]
            diff = [a - b for a, b in zip(miou[r.key], plain) if a is not None and b is not None]
            gains.append([r.label, _mean(diff), _sd(diff), len(diff)])
    return {"downstream": down, "per_seed": per_seed, "gains": gains, "seeds": ss}

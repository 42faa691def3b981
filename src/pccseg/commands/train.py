"""``pccseg train`` and ``pccseg evaluate``: DeepLabv3 on a generated dataset, scored on Pascal VOC.

    pccseg train --data DIR --val VOC_ROOT --out RUN_DIR [options]
    pccseg evaluate --checkpoint RUN_DIR --voc VOC_ROOT [--split val] [--out DIR] [--save-predictions]

Under ``torchrun --nproc-per-node N -m pccseg train ...`` (or ``accelerate launch``) training is
distributed (DDP); ``--batch-size`` stays the global batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from ..errors import InputError


def register(sub) -> None:
    from ..train.config import ARCHS, TrainConfig

    d = TrainConfig(data="", out="")
    p = sub.add_parser("train", help="train DeepLabv3 on a VOC-layout dataset, validate on VOC val",
                       description="Train torchvision DeepLabv3 on a VOC-layout dataset (a pccseg generate "
                                   "output) with Dataset Diffusion's mmsegmentation recipe as the defaults; "
                                   "validate on a VOC root every --val-every iterations; keep RUN/last (the "
                                   "final model at the end); log to RUN/log.jsonl and RUN/tensorboard.")
    p.add_argument("--data", required=True, help="training root (VOC layout; split file --train-split)")
    p.add_argument("--val", default=None, help="validation VOC root (VOCdevkit/VOC2012); omit for none")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--train-split", default=d.train_split, help="training split name (default: %(default)s)")
    p.add_argument("--val-split", default=d.val_split, help="validation split name (default: %(default)s)")
    p.add_argument("--model", dest="arch", choices=ARCHS, default=d.arch,
                   help="DeepLabv3 backbone (default: %(default)s)")
    p.add_argument("--backbone-weights", default=d.backbone_weights, metavar="imagenet|none|FILE",
                   help="imagenet: torchvision's ImageNet weights from the torch hub cache (downloaded when "
                        "missing; training stops with one line when they cannot be had); FILE: those weights "
                        "as a .pth or .safetensors file; none: random initialisation (default: %(default)s)")
    p.add_argument("--aux-loss", action=argparse.BooleanOptionalAction, default=d.aux_loss,
                   help="FCN auxiliary head, weight --aux-weight (default: on)")
    p.add_argument("--aux-weight", type=float, default=d.aux_weight, help="default: %(default)s (mmseg)")
    p.add_argument("--iters", type=int, default=d.iters, help="iterations (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="global batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="head learning rate (default: %(default)s)")
    p.add_argument("--backbone-lr-mult", type=float, default=d.backbone_lr_mult,
                   help="backbone lr = lr x this (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW (default: %(default)s)")
    p.add_argument("--power", type=float, default=d.power, help="poly schedule power (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup, metavar="N",
                   help="linear learning-rate warm-up over the first N iterations, then the poly schedule "
                        "(default: %(default)s)")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, metavar="MAX_NORM",
                   help="clip the L2 norm of all gradients; 0 = off (default: %(default)s, as Dataset "
                        "Diffusion's config)")
    p.add_argument("--loss-average", choices=("all", "valid"), default=d.loss_average,
                   help="cross-entropy over the labelled pixels divided by all pixels, 255 included "
                        "(all: mmseg's avg_non_ignore=False) or by the labelled ones (valid: PyTorch's mean) "
                        "(default: %(default)s)")
    p.add_argument("--crop-size", type=int, default=d.crop_size, help="square crop (default: %(default)s)")
    p.add_argument("--short-side", type=int, default=d.short_side, metavar="PX",
                   help="resize images to this short side (long side at most 4x) before the random scale, and "
                        "for validation; 0 = native size (default: %(default)s, mmseg's scale (2048, 512))")
    p.add_argument("--scale", type=float, nargs=2, metavar=("MIN", "MAX"), default=(d.scale_min, d.scale_max),
                   help="random scale range (default: 0.5 2.0)")
    p.add_argument("--cat-max-ratio", type=float, default=d.cat_max_ratio,
                   help="redraw a crop (up to 10 times) while one class covers this share of it; 1 = off "
                        "(default: %(default)s)")
    p.add_argument("--photometric", action=argparse.BooleanOptionalAction, default=d.photometric,
                   help="mmseg's photometric distortion (default: on)")
    p.add_argument("--workers", type=int, default=d.workers, help="data loader workers (default: %(default)s)")
    p.add_argument("--val-every", type=int, default=d.val_every, help="default: %(default)s")
    p.add_argument("--val-limit", type=int, default=None, help="validate on the first N images only")
    p.add_argument("--save-every", type=int, default=None,
                   help="save RUN/last every N iterations (default: at each validation)")
    p.add_argument("--log-every", type=int, default=d.log_every, help="default: %(default)s")
    p.add_argument("--keep-best", action="store_true",
                   help="also keep RUN/best, the checkpoint with the best validation mIoU: select with it on a "
                        "split other than the one you report")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=d.tensorboard,
                   help="TensorBoard event files in RUN/tensorboard (default: on)")
    p.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="continue from RUN/last (default: when it exists); --no-resume starts afresh, "
                        "removing RUN/last, RUN/best and RUN/tensorboard")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this iteration, saving RUN/last (for time-sliced jobs)")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=d.sync_bn,
                   help="SyncBatchNorm when distributed (default: on, as mmseg's SyncBN)")
    p.add_argument("--bn-momentum", type=float, default=None,
                   help="BatchNorm momentum (default: torchvision's: 0.1, 0.01 for mobilenet_v3_large; "
                        "runs of a few hundred iterations want 0.1, see docs/training.md)")
    p.add_argument("--check-data", action=argparse.BooleanOptionalAction, default=d.check_data,
                   help="check every mask before training (default: on)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); the same count repeats a run to the last digit")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=d.deterministic,
                   help="torch's deterministic algorithms, no cuDNN benchmark (default: on)")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="also keep an exponential moving average of the weights (RUN/ema, scored at each "
                        "validation as ema_miou), e.g. 0.99 (default: off)")
    p.add_argument("--self-train", type=float, default=None, metavar="THRESHOLD",
                   help="one round of self-training: the first segmenter (RUN/teacher) relabels the training "
                        "images where its probability >= THRESHOLD (RUN/relabelled), a second one trains on "
                        "them in RUN (default: off)")
    p.add_argument("--self-train-rule", choices=("fill", "all"), default=d.self_train_rule,
                   help="fill: relabel the labeller's uncertain pixels only; all: every confident pixel "
                        "(default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_with_options(run_train, p))

    e = sub.add_parser("evaluate", help="mIoU, per-class IoU and accuracy of a checkpoint on a VOC split",
                       description="Score a pccseg train checkpoint on a VOC-layout split as mmsegmentation "
                                   "does (short side 512, logits resized back): Markdown table on stdout; "
                                   "scores.json and scores.csv in --out; --save-predictions writes VOC "
                                   "palette PNGs to OUT/predictions.")
    e.add_argument("--checkpoint", required=True,
                   help="checkpoint directory, or a run directory (then its last/: the final model)")
    e.add_argument("--voc", required=True, help="VOC root (VOCdevkit/VOC2012 or any VOC-layout dataset)")
    e.add_argument("--split", default="val", help="split name (default: %(default)s)")
    e.add_argument("--out", default=None, help="directory for scores.json, scores.csv, predictions/")
    e.add_argument("--save-predictions", action="store_true", help="write OUT/predictions/<stem>.png")
    e.add_argument("--limit", type=int, default=None, help="first N images only")
    e.add_argument("--short-side", type=int, default=None, metavar="PX",
                   help="test-time resize of the short side; 0 = native size (default: the training run's, "
                        "else 512)")
    e.add_argument("--device", default=None, help="default: cuda if available")
    e.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA)")
    e.add_argument("--workers", type=int, default=2, help="data loader workers (default: %(default)s)")
    e.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    e.set_defaults(func=_with_options(run_evaluate, e))


def _with_options(func, parser):
    """``func`` whose :class:`InputError` names the option (``--batch-size``) rather than the setting
    (``batch_size``), as the other commands' errors do."""
    from ..errors import as_options

    def run(args) -> int:
        try:
            return func(args)
        except InputError as e:
            raise as_options(e, parser, {"scale_min": "scale", "scale_max": "scale"}) from None
    return run


def run_train(args) -> int:
    from ..train.loop import train
    from ..train.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in names}
    kw["scale_min"], kw["scale_max"] = args.scale
    kw["grad_clip"] = args.grad_clip or None
    kw["short_side"] = args.short_side or None
    config = TrainConfig(**kw)
    logging.getLogger("pccseg.train").debug("config: %s", dataclasses.asdict(config))
    if config.self_train is not None:
        from ..train.selftrain import self_train
        result = self_train(config)
    else:
        result = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(train_summary(result), file=sys.stderr)
    return 0


def train_summary(result: dict) -> str:
    """The one line ``pccseg train`` ends with, from :func:`pccseg.train.train`'s result (mIoU in percent;
    log.jsonl and the checkpoints keep fractions)."""
    from ..train.metrics import percent

    s = float(result["seconds"])
    took = f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"
    line = f"pccseg train: {result['iteration']} iteration(s), {took}"
    if result.get("last_miou") is not None:
        line += f"; last validation mIoU {percent(result['last_miou'])}"
    if result.get("best_miou") is not None:
        line += f", best {percent(result['best_miou'])} at iteration {result['best_iteration']}"
    return line + f"; the final model is {Path(result['run_dir']) / 'last'}"


def run_evaluate(args) -> int:
    from ..train.deeplab import read_checkpoint_meta
    from ..train.evaluate import evaluate, selected_on
    from ..io import atomic_path, make_dir, remove_temps, write_json
    from ..dataset.voc import VOCSegmentation

    if args.save_predictions and not args.out:
        raise InputError("--save-predictions needs --out", field="--out")
    meta = read_checkpoint_meta(args.checkpoint)
    dataset = VOCSegmentation(args.voc, args.split)
    if args.out:
        remove_temps(make_dir(args.out))
    short_side = args.short_side
    if short_side is None:
        short_side = (meta.get("config") or {}).get("short_side", 512)
    short_side = short_side or None
    out = Path(args.out) if args.out else None
    scores = evaluate(args.checkpoint, dataset, device=args.device, amp=args.amp, workers=args.workers,
                      limit=args.limit, predictions_dir=out / "predictions" if args.save_predictions else None,
                      progress=args.progress, short_side=short_side)
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    same = selected_on(meta, dataset)
    print(f"{meta['path']} (iteration {meta.get('iteration')}) on {args.voc} {args.split} "
          f"({n} image{'s' if n != 1 else ''}, short side {short_side or 'native'})\n")
    if same:
        print("note: this checkpoint was selected as the best on this very split, so this score is optimistic; "
              "report the final checkpoint (RUN/last) or score on a split not used for selection\n")
    print(scores.markdown())
    if out is not None:
        write_json(out / "scores.json", dict(scores.to_dict(), checkpoint=meta["path"],
                                             iteration=meta.get("iteration"), dataset=str(args.voc),
                                             split=args.split, images=n, short_side=short_side,
                                             selected_on_this_split=same))
        with atomic_path(out / "scores.csv") as tmp:
            tmp.write_text(scores.csv())
    return 0

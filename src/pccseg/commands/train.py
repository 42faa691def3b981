"""``pccseg train`` and ``pccseg evaluate``: DeepLabv3 on a generated dataset, scored on Pascal VOC.

    pccseg train --data DIR --val VOC_ROOT --out RUN_DIR [options]
    pccseg evaluate --checkpoint RUN_DIR --voc VOC_ROOT [--split val] [--out DIR] [--save-predictions]

Under ``torchrun --nproc-per-node N -m pccseg train ...`` (or ``accelerate launch``) training is
distributed (DDP); ``--batch-size`` stays the global batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from ..errors import InputError
from ..params import with_options

#: the fields that --scale sets
SCALE = {"scale_min": "scale", "scale_max": "scale"}


def register(sub) -> None:
    from ..params import add_options
    from ..train.config import TrainConfig

    d = TrainConfig(data="", out="")
    p = sub.add_parser("train", help="train DeepLabv3 on a VOC-layout dataset, validate on VOC val",
                       description="Train torchvision DeepLabv3 on a VOC-layout dataset (a pccseg generate "
                                   "output) with Dataset Diffusion's mmsegmentation recipe as the defaults; "
                                   "validate on a VOC root every --val-every iterations; keep RUN/last (the "
                                   "final model at the end); log to RUN/log.jsonl and RUN/tensorboard.")
    add_options(p, TrainConfig, names={"arch": "model"}, skip=("scale_min", "scale_max", "progress"), shown=d,
                unset=True, extra={"keep_best": dict(action="store_true"), "grad_clip": dict(metavar="MAX_NORM"),
                                   "short_side": dict(metavar="PX"), "ema": dict(metavar="DECAY"),
                                   "self_train": dict(metavar="THRESHOLD"), "warmup": dict(metavar="N")})
    p.add_argument("--scale", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                   help=f"random scale range (default: {d.scale_min} {d.scale_max})")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    p.add_argument("--config", metavar="FILE", default=None,
                   help="settings from this JSON file ({setting: value}, as --print-config writes them); the "
                        "options given override them; --data and --out are always the command line's")
    p.add_argument("--print-config", action="store_true",
                   help="print the settings this command resolves to as JSON and exit without training")
    p.set_defaults(func=with_options(run_train, p, SCALE))

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
    e.set_defaults(func=with_options(run_evaluate, e))


def train_config(args):
    """The :class:`~pccseg.train.config.TrainConfig` of ``pccseg train``'s options: the defaults, then the
    settings of ``--config FILE``, then the options given (``--grad-clip 0`` and ``--short-side 0``: None)."""
    from ..params import read_config, values
    from ..train.config import TrainConfig

    kw = read_config(args.config, TrainConfig) if args.config else {}
    given = {k: v for k, v in values(args, TrainConfig).items() if v is not None}
    if args.scale is not None:
        given["scale_min"], given["scale_max"] = args.scale
    for name in ("grad_clip", "short_side"):
        if name in given:
            given[name] = given[name] or None
    return TrainConfig(**{**kw, **given})


def run_train(args) -> int:
    config = train_config(args)
    if args.print_config:
        print(json.dumps(dataclasses.asdict(config), indent=2))
        return 0
    logging.getLogger("pccseg.train").debug("config: %s", dataclasses.asdict(config))
    if config.self_train is not None:
        from ..train.selftrain import self_train
        result = self_train(config)
    else:
        from ..train.loop import train
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
    from ..dataset.voc import VOCSplit

    if args.save_predictions and not args.out:
        raise InputError("--save-predictions needs --out", field="--out")
    meta = read_checkpoint_meta(args.checkpoint)
    dataset = VOCSplit(args.voc, args.split)
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

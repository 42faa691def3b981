"""``pccseg train`` and ``pccseg evaluate``: DeepLabv3 on a generated dataset, scored on Pascal VOC.

    pccseg train --data DIR --val VOC_ROOT --out RUN_DIR [options]
    pccseg evaluate --checkpoint CKPT --voc VOC_ROOT [--split val] [--out DIR] [--save-predictions]

Under ``torchrun --nproc-per-node N -m pccseg train ...`` (or ``accelerate launch``) training is
distributed (DDP); ``--batch-size`` stays the global batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from ..errors import InputError

logger = logging.getLogger(__name__)


def register(sub) -> None:
    from ..train_config import ARCHS, TrainConfig

    d = TrainConfig(data="", out="")
    p = sub.add_parser("train", help="train DeepLabv3 on a VOC-layout dataset, validate on VOC val",
                       description="Train torchvision DeepLabv3 on a VOC-layout dataset (a pccseg generate "
                                   "output); validate on a VOC root every --val-every iterations; keep "
                                   "RUN/last and RUN/best checkpoints; log to RUN/log.jsonl.")
    p.add_argument("--data", required=True, help="training root (VOC layout; split file --train-split)")
    p.add_argument("--val", default=None, help="validation VOC root (VOCdevkit/VOC2012); omit for none")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--train-split", default=d.train_split, help="training split name (default: %(default)s)")
    p.add_argument("--val-split", default=d.val_split, help="validation split name (default: %(default)s)")
    p.add_argument("--model", dest="arch", choices=ARCHS, default=d.arch,
                   help="DeepLabv3 backbone (default: %(default)s)")
    p.add_argument("--backbone-weights", choices=("imagenet", "none"), default=d.backbone_weights,
                   help="ImageNet backbone weights through torchvision (random init, with a warning, when "
                        "they cannot be loaded) or none (default: %(default)s)")
    p.add_argument("--aux-loss", action=argparse.BooleanOptionalAction, default=d.aux_loss,
                   help="FCN auxiliary head, weight --aux-weight (default: on)")
    p.add_argument("--aux-weight", type=float, default=d.aux_weight, help="default: %(default)s")
    p.add_argument("--iters", type=int, default=d.iters, help="iterations (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="global batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="head learning rate (default: %(default)s)")
    p.add_argument("--backbone-lr-mult", type=float, default=d.backbone_lr_mult,
                   help="backbone lr = lr x this (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW (default: %(default)s)")
    p.add_argument("--power", type=float, default=d.power, help="poly schedule power (default: %(default)s)")
    p.add_argument("--crop-size", type=int, default=d.crop_size, help="square crop (default: %(default)s)")
    p.add_argument("--scale", type=float, nargs=2, metavar=("MIN", "MAX"), default=(d.scale_min, d.scale_max),
                   help="random scale range (default: 0.5 2.0)")
    p.add_argument("--workers", type=int, default=d.workers, help="data loader workers (default: %(default)s)")
    p.add_argument("--val-every", type=int, default=d.val_every, help="default: %(default)s")
    p.add_argument("--val-limit", type=int, default=None, help="validate on the first N images only")
    p.add_argument("--save-every", type=int, default=None,
                   help="save RUN/last every N iterations (default: at each validation)")
    p.add_argument("--log-every", type=int, default=d.log_every, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="continue from RUN/last (default: when it exists); --no-resume starts afresh")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this iteration, saving RUN/last (for time-sliced jobs)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP")
    p.add_argument("--bn-momentum", type=float, default=None,
                   help="BatchNorm momentum (default: torchvision's; 0.01 for mobilenet_v3_large, which "
                        "short runs may want at 0.1)")
    p.add_argument("--check-data", action=argparse.BooleanOptionalAction, default=d.check_data,
                   help="check every mask before training (default: on)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run_train)

    e = sub.add_parser("evaluate", help="mIoU, per-class IoU and accuracy of a checkpoint on a VOC split",
                       description="Score a pccseg train checkpoint on a VOC-layout split at full "
                                   "resolution: Markdown table on stdout; scores.json and scores.csv in "
                                   "--out; --save-predictions writes VOC palette PNGs to OUT/predictions.")
    e.add_argument("--checkpoint", required=True, help="checkpoint directory (RUN/best), or a run directory")
    e.add_argument("--voc", required=True, help="VOC root (VOCdevkit/VOC2012 or any VOC-layout dataset)")
    e.add_argument("--split", default="val", help="split name (default: %(default)s)")
    e.add_argument("--out", default=None, help="directory for scores.json, scores.csv, predictions/")
    e.add_argument("--save-predictions", action="store_true", help="write OUT/predictions/<stem>.png")
    e.add_argument("--limit", type=int, default=None, help="first N images only")
    e.add_argument("--device", default=None, help="default: cuda if available")
    e.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA)")
    e.add_argument("--workers", type=int, default=2, help="data loader workers (default: %(default)s)")
    e.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    e.set_defaults(func=run_evaluate)


def run_train(args) -> int:
    from ..train import train
    from ..train_config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in names}
    kw["scale_min"], kw["scale_max"] = args.scale
    result = train(TrainConfig(**kw))
    print(json.dumps(result))
    return 0


def run_evaluate(args) -> int:
    from ..evaluate import evaluate
    from ..io import write_json
    from ..train import read_checkpoint_meta
    from ..voc import VOCSegmentation

    if args.save_predictions and not args.out:
        raise InputError("--save-predictions needs --out", field="--out")
    meta = read_checkpoint_meta(args.checkpoint)
    dataset = VOCSegmentation(args.voc, args.split)
    out = Path(args.out) if args.out else None
    scores = evaluate(args.checkpoint, dataset, device=args.device, amp=args.amp, workers=args.workers,
                      limit=args.limit, predictions_dir=out / "predictions" if args.save_predictions else None,
                      progress=args.progress)
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    print(f"{meta['path']} (iteration {meta.get('iteration')}) on {args.voc} {args.split} ({n} images)\n")
    print(scores.markdown())
    if out is not None:
        from ..io import atomic_path

        write_json(out / "scores.json", dict(scores.to_dict(), checkpoint=meta["path"],
                                             iteration=meta.get("iteration"), dataset=str(args.voc),
                                             split=args.split, images=n))
        with atomic_path(out / "scores.csv") as tmp:
            tmp.write_text(scores.csv())
    return 0

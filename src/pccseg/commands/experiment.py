"""``pccseg experiment toy --out DIR``: the report's comparison on the toy world (:mod:`pccseg.toy.experiment`).

    pccseg experiment toy --out runs/exp                    # the default size; run it again to resume
    pccseg experiment toy --out runs/exp-quick --num 40 --iters 200 --model runs/toy/unet/step-003000
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

_HELP = {
    "model": "'toy' (the shipped toy model) or a diffusers folder of the toy architecture",
    "num": "generated images, and rendered images of the upper bound",
    "val": "held-out rendered images with exact labels that score every segmenter",
    "labellers": "labellers to compare (pcc dd attn fuse)",
    "steps": "denoising steps",
    "guidance": "classifier-free guidance scale",
    "seed": "record i of the toy prompts is generated with seed SEED + i",
    "batch_size": "images per pipeline call",
    "iters": "DeepLabv3 training iterations per set",
    "train_batch_size": "DeepLabv3 batch size",
    "crop_size": "DeepLabv3 training crop (px)",
    "lr": "DeepLabv3 AdamW learning rate (backbone and heads)",
    "warmup": "DeepLabv3 linear learning-rate warm-up (iterations; pccseg train --warmup)",
    "train_seed": "first DeepLabv3 seed (init, data order, augmentation)",
    "train_seeds": "DeepLabv3 seeds per row (TRAIN_SEED, TRAIN_SEED + 1, ...): tables give their mean and sd",
    "ema": "also score each run's exponential moving average of the weights with this decay (rows '+ EMA')",
    "self_train": "rows '+ self-train': the plain run relabels its set's uncertain pixels where its probability "
                  ">= this threshold, a second DeepLabv3 trains on the result",
    "filter": "rows '+ filter': each labeller's set filtered by its own evidence (pccseg filter's defaults)",
    "judge_scenes": "rendered scenes that measure the judge's own error",
    "pictures": "images in samples.png",
    "device": "torch device (default: CUDA when available)",
    "jobs": "processes for generation and training (default: 2 on CPU, 1 on CUDA)",
    "threads": "torch threads per process on CPU",
}


def run(args: argparse.Namespace) -> int:
    from ..toy.config import ExperimentConfig
    from ..toy.experiment import Table, run_experiment

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentConfig) if f.name != "progress"}
    values["labellers"] = tuple(values["labellers"])
    cfg = ExperimentConfig(**values, progress=not args.quiet)
    results = run_experiment(cfg)
    print("\n".join(Table(**t).markdown() for t in results["tables"]))
    print(f"pccseg experiment: tables in {cfg.out}/results.md, page {cfg.out}/report/index.html", file=sys.stderr)
    return 0


def register(sub) -> None:
    from ..toy.config import ExperimentConfig

    p = sub.add_parser("experiment", help="the report's comparison of labellers, end to end (toy world)",
                       description="Experiments that produce the report's tables.")
    esub = p.add_subparsers(dest="experiment_command", metavar="EXPERIMENT", required=True)
    t = esub.add_parser(
        "toy", help="PCC vs Dataset Diffusion's rule vs attention alone on the toy world, with ground truth",
        description="Generate images with the toy model keeping the captures, label them with every labeller, "
                    "score the masks against the colour-family ground truth, train DeepLabv3 on each labelled "
                    "set and on rendered images with exact labels (the upper bound), score each on held-out "
                    "rendered images, and write the tables (results.md, CSV, JSON), samples.png and "
                    "report/index.html into --out. Running it again resumes.")
    defaults = {f.name: f.default for f in dataclasses.fields(ExperimentConfig)
                if f.default is not dataclasses.MISSING}
    t.add_argument("--out", required=True, metavar="DIR", help="experiment folder (created or resumed)")
    types = {"model": str, "guidance": float, "lr": float, "device": str, "ema": float, "self_train": float}
    for name, help_ in _HELP.items():
        opt = "--" + name.replace("_", "-")
        default = defaults[name]
        shown = "" if default is None else f" (default: {' '.join(default) if isinstance(default, tuple) else default})"
        kwargs = dict(nargs="+") if name == "labellers" else dict(action=argparse.BooleanOptionalAction) \
            if name == "filter" else dict(type=types.get(name, int))
        t.add_argument(opt, default=default, help=help_ + shown, **kwargs)
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=run)

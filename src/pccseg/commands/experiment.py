"""``pccseg experiment toy --out DIR``: the report's comparison on the toy world (:mod:`pccseg.toy.experiment`).

    pccseg experiment toy --out runs/exp                    # the default size; run it again to resume
    pccseg experiment toy --out runs/exp-quick --num 40 --iters 200 --model runs/toy/unet/step-003000
"""

from __future__ import annotations

import argparse
import sys

def run(args: argparse.Namespace) -> int:
    from ..params import values
    from ..toy.config import ExperimentConfig
    from ..toy.experiment import Table, run_experiment

    cfg = ExperimentConfig(**values(args, ExperimentConfig), progress=not args.quiet)
    results = run_experiment(cfg)
    print("\n".join(Table(**t).markdown() for t in results["tables"]))
    print(f"pccseg experiment: tables in {cfg.out}/results.md, page {cfg.out}/report/index.html", file=sys.stderr)
    return 0


def register(sub) -> None:
    from ..params import add_options, with_options
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
    add_options(t, ExperimentConfig, skip=("progress",), extra={"out": dict(metavar="DIR")})
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=with_options(run, t))

"""``pccseg toy``: the toy world — render a dataset with exact ground truth, train the toy model.

    pccseg toy render --out runs/toy-gt --num 2000 --val 500     # VOC layout, exact label maps
    pccseg toy train --out runs/toy-model                         # VAE, latents, UNet + text encoder; resumes
"""

from __future__ import annotations

import argparse
import sys


def run_render(args: argparse.Namespace) -> int:
    from ..toy.dataset import write_toy_dataset

    res = write_toy_dataset(args.out, args.num, args.val, seed=args.seed, size=args.size, progress=not args.quiet)
    print(f"pccseg toy render: {res['rendered']} new scene(s); {res['train']} train and {res['val']} val "
          f"sample(s) in {args.out}", file=sys.stderr)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from ..params import values
    from ..toy.config import ToyTrainConfig

    cfg = ToyTrainConfig(**values(args, ToyTrainConfig))
    from ..toy.train import train      # torch: after the settings are checked
    final = train(cfg, evaluate=not args.no_eval)   # Ctrl-C / SIGTERM: checkpointed, then the CLI's one line
    print(f"pccseg toy train: done; the pipeline is in {final} (load it with --model {final})", file=sys.stderr)
    return 0


def register(sub) -> None:
    from ..params import add_options, with_options
    from ..toy.config import RENDER_SEED, ToyTrainConfig

    p = sub.add_parser("toy", help="the toy world: render a dataset with exact ground truth, train the toy model",
                       description="The toy world: procedurally drawn scenes of 10 VOC classes with exact label "
                                   "maps, and the small text-to-image model trained on them that ships with "
                                   "pccseg (--model toy).")
    tsub = p.add_subparsers(dest="toy_command", metavar="TOY_COMMAND", required=True)

    r = tsub.add_parser("render", help="render scenes with exact label maps as a VOC-layout dataset",
                        description="Render toy scenes and their exact label maps into a VOC-layout dataset "
                                    "(JPEGImages, SegmentationClass, ImageSets/Segmentation/train.txt and val.txt, "
                                    "manifest.jsonl). Sample <id> is the scene of seed SEED + id. Resumes.")
    r.add_argument("--out", required=True, metavar="DIR", help="dataset directory (created or resumed)")
    r.add_argument("--num", type=int, default=1000, help="train scenes (default 1000)")
    r.add_argument("--val", type=int, default=0, help="val scenes after the train ones (default 0)")
    r.add_argument("--seed", type=int, default=RENDER_SEED,
                   help=f"seed of sample 0 (default {RENDER_SEED}; the toy model trained on seeds below it)")
    r.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=run_render)

    t = tsub.add_parser("train", help="train the toy model from scratch (resumes)",
                        description="Train the toy text-to-image model: the VAE, then the latents of the "
                                    "training scenes, then the UNet and the text encoder (64x64, then 128x128), "
                                    "with an evaluation of prompt adherence and mask quality every --eval-every "
                                    "steps. Checkpoints are safetensors + JSON; the same command resumes. One "
                                    "torch thread per process on CPU by default; CUDA when available.")
    add_options(t, ToyTrainConfig, extra={"out": dict(metavar="DIR")})
    t.add_argument("--no-eval", action="store_true", help="skip the evaluations during training")
    t.set_defaults(func=with_options(run_train, t))

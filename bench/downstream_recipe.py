"""Probe the downstream recipe's seed spread (not a test): train the experiment's DeepLabv3 recipe
(:func:`pccseg.toy.downstream.train_config`) on one training set of an experiment folder with some
settings changed, at several seeds, score each run on the folder's rendered val split, and print per
variant the mIoU at each seed, mean, sd, and each run's loss curve at a few points.

    python bench/downstream_recipe.py runs/exp --set rendered --iters 300 --seeds 0 1 2 \
        --variant base: --variant warm50:warmup=50 --jobs 2 --out runs/probe

``--set``: ``rendered`` (the upper bound) or a labeller's set (``pcc``: ``generated/``, others
``sets/<name>/``). A variant is ``NAME:field=value,...`` over :class:`pccseg.train.config.TrainConfig`
fields. Runs go to ``OUT/<variant>/seed-<s>`` and resume; scores are cached in ``OUT/<variant>/seed-<s>.json``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path


def parse_variant(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    out = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return name, out


def one(folder: str, train_set: str, iters: int, seed: int, overrides: dict, run: str, threads: int) -> dict:
    import torch

    from pccseg.dataset.voc import VOCSplit
    from pccseg.io import write_json
    from pccseg.toy.config import ExperimentConfig
    from pccseg.toy.downstream import train_config
    from pccseg.train.evaluate import evaluate
    from pccseg.train.loop import LAST, train

    torch.set_num_threads(threads)
    root = Path(folder)
    saved = json.loads((root / "experiment.json").read_text())
    cfg = ExperimentConfig(**{**saved, "labellers": tuple(saved["labellers"]), "out": folder, "iters": iters,
                              "threads": threads})
    data = root / ("rendered" if train_set == "rendered" else "generated" if train_set == "pcc"
                   else f"sets/{train_set}")
    tc = dataclasses.replace(train_config(cfg, data, Path(run), "cpu", seed=seed), **overrides)
    t0 = time.process_time()
    train(tc)
    scores = evaluate(Path(run) / LAST, VOCSplit(root / "rendered", "val"), device="cpu", workers=0,
                      progress=False, short_side=None)
    result = {"miou": scores.miou, "iou": scores.iou, "cpu_s": time.process_time() - t0}
    write_json(Path(run + ".json"), result)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--set", default="rendered")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variant", action="append", default=None)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/probe")
    args = ap.parse_args()
    variants = [parse_variant(v) for v in (args.variant or ["base:"])]
    from pccseg.toy.jobs import run_jobs

    jobs, keys = [], []
    for name, over in variants:
        for s in args.seeds:
            run = f"{args.out}/{args.set}-{args.iters}/{name}/seed-{s}"
            if not Path(run + ".json").is_file():
                jobs.append((args.folder, args.set, args.iters, s, over, run, args.threads))
            keys.append((name, s, run))
    run_jobs(one, jobs, args.jobs, args.threads)
    print(f"| variant ({args.set}, {args.iters} it) | " + " | ".join(f"seed {s}" for s in args.seeds)
          + " | mean | sd | loss at 20 / 25% / 50% / end (per seed) |")
    print("|---|" + "---:|" * (len(args.seeds) + 2) + "---|")
    for name, over in variants:
        ms, curves = [], []
        for s in args.seeds:
            run = f"{args.out}/{args.set}-{args.iters}/{name}/seed-{s}"
            ms.append(100 * json.loads(Path(run + ".json").read_text())["miou"])
            log = [json.loads(x) for x in Path(run, "log.jsonl").read_text().splitlines() if x.strip()]
            loss = {r["iter"]: r["loss"] for r in log if "loss" in r}
            pts = [20, args.iters // 4 // 20 * 20, args.iters // 2 // 20 * 20, args.iters]
            curves.append("/".join(f"{loss.get(p, float('nan')):.2f}" for p in pts))
        sd = statistics.stdev(ms) if len(ms) > 1 else float("nan")
        print(f"| {name} {over} | " + " | ".join(f"{m:.2f}" for m in ms)
              + f" | {statistics.mean(ms):.2f} | {sd:.2f} | {'; '.join(curves)} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

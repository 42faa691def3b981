"""Is a downstream training of ``pccseg experiment toy`` repeatable, and what moves it? Trains the
experiment's recipe (:func:`pccseg.toy.downstream.train_config`: DeepLabv3-MobileNetV3, random init,
batch 8, crop 96, lr 4e-3) on one set several times, each with a thread count and a seed, and prints per
run the logged losses, whether the final weights equal the first run's bit for bit, the largest weight
difference, and the mIoU on the set's val split.

    python bench/bench_repeat.py --data runs/exp/rendered --iters 60 --runs 1:0 1:0 2:0 1:1

``--runs THREADS:SEED ...``: the first is the reference. Same threads and seed as the reference: the run
must be identical; other threads: the same data and seed, only the float rounding differs; another seed:
what a new seed does.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from pccseg.dataset.voc import VOCSplit
from pccseg.toy.config import ExperimentConfig
from pccseg.toy.downstream import train_config
from pccseg.train.evaluate import evaluate
from pccseg.train.loop import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a VOC-layout set with train and val splits (experiment's rendered/)")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--runs", nargs="+", default=["1:0", "1:0", "2:0", "1:1"], metavar="THREADS:SEED")
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_repeat."))
    val = VOCSplit(args.data, "val")
    ref = None
    print("| run | threads | seed | losses (every 20 iterations) | weights equal the first run's | max abs weight diff | mIoU on val | s |")
    print("|---|---:|---:|---|---|---:|---:|---:|")
    for i, spec in enumerate(args.runs):
        threads, seed = (int(x) for x in spec.split(":"))
        cfg = ExperimentConfig(out=str(out), iters=args.iters, threads=threads, train_seed=seed)
        run = out / f"run{i}-t{threads}-s{seed}"
        t0 = time.perf_counter()
        train(train_config(cfg, Path(args.data), run, "cpu", seed=seed))
        seconds = time.perf_counter() - t0
        losses = [json.loads(x)["loss"] for x in (run / "log.jsonl").read_text().splitlines() if '"loss"' in x]
        weights = load_file(str(run / "last" / "model.safetensors"))
        torch.set_num_threads(1)
        miou = evaluate(run / "last", val, device="cpu", workers=0, progress=False, short_side=None).miou
        if ref is None:
            ref = weights
        same = all(torch.equal(ref[k], weights[k]) for k in ref)
        diff = max(float((ref[k].double() - weights[k].double()).abs().max()) for k in ref if ref[k].is_floating_point())
        print(f"| {i} | {threads} | {seed} | {' '.join(f'{x:.6f}' for x in losses)} | {'yes' if same else 'no'} | "
              f"{diff:.3g} | {100 * miou:.2f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()

"""The downstream rows of one or more ``pccseg experiment toy`` folders, seed by seed: each row's mIoU at
every seed found, the mean, the sd over the seeds, and each recipe row's gain over its set's plain row
(paired by seed). Folders of one setting that differ only in ``--train-seed`` (run side by side to use
more processes) combine into one set of seeds: a run depends on its seed, not on its folder.

    python bench/downstream_spread.py runs/exp                     # one folder
    python bench/downstream_spread.py runs/e300-s0 runs/e300-s1    # seeds run in separate folders

Prints a Markdown table; mIoU in %, sd in mIoU points (sample standard deviation).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    args = ap.parse_args()
    runs: dict[str, dict[int, float]] = {}
    seconds: list[float] = []
    settings = None
    for folder in args.folders:
        cfg = json.loads((folder / "experiment.json").read_text())
        key = {k: v for k, v in cfg.items() if k not in ("train_seed", "train_seeds")}
        if settings is not None and key != settings:
            raise SystemExit(f"{folder}: other settings than {args.folders[0]}; only --train-seed may differ")
        settings = key
        for path in sorted((folder / "scores").glob("*/seed-*.json")):
            s = json.loads(path.read_text())
            seed = int(path.stem.split("-")[1])
            runs.setdefault(path.parent.name, {})[seed] = 100 * s["miou"]
            if not path.parent.name.endswith("+ema"):
                seconds.append(s["train_seconds"])
    print(f"{settings['num']} images, {settings['iters']} iterations; training wall seconds per run: median "
          f"{statistics.median(seconds):.0f} (beside other work)\n")
    print("| row | seeds | mIoU per seed | mean | sd | gain over the plain row (paired) | sd of the gain |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for row in sorted(runs, key=lambda r: (r.split("+")[0] != "rendered", r)):
        per = runs[row]
        seeds = sorted(per)
        vals = [per[s] for s in seeds]
        mean = statistics.fmean(vals)
        sd = statistics.stdev(vals) if len(vals) > 1 else None
        base = row.split("+")[0]
        gain = gain_sd = None
        if row != base:
            diff = [per[s] - runs[base][s] for s in seeds if s in runs.get(base, {})]
            gain = statistics.fmean(diff) if diff else None
            gain_sd = statistics.stdev(diff) if len(diff) > 1 else None

        def f(x):
            return "-" if x is None else f"{x:.2f}"

        print(f"| {row} | {len(vals)} | {' '.join(f'{s}: {v:.2f}' for s, v in zip(seeds, vals))} | {mean:.2f} | "
              f"{f(sd)} | {f(gain)} | {f(gain_sd)} |")


if __name__ == "__main__":
    main()

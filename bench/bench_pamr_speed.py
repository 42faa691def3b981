"""The cost of the fuse labeller's stages at SD 2.1 shapes (not a test): pcc, fuse without the map spread
(``map_spread`` 0), fuse (the default) and, with ``--pamr``, fuse without PAMR and with PAMR at the full
image size, interleaved run by run on one planted capture (512x512, latent 64x64), one torch thread. Prints
median seconds, the ratio to pcc, mIoU against the planted layout and the median seconds of the refinement
and affinity stages.

    PYTHONPATH=src python bench/bench_pamr_speed.py --runs 9 [--pamr]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_label import miou


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--pamr", action="store_true", help="also fuse without PAMR and with PAMR at the image size")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from pccseg.capture.synthetic import planted_capture, planted_layout
    from pccseg.labellers.fuse import FuseParams
    from pccseg.labellers.pcc import LabelParams
    from pccseg.labellers.registry import label

    cap, layout = planted_capture(seed=0), planted_layout()
    rows = [("pcc", LabelParams()), ("fuse, no map spread (map_spread 0)", FuseParams(map_spread=0.0)),
            ("fuse (default)", FuseParams())]
    if args.pamr:
        rows += [("fuse, segments only", FuseParams(refine="segments")),
                 ("fuse, PAMR at the image size", FuseParams(pamr_scale=0))]
    times: dict[str, list[float]] = {n: [] for n, _ in rows}
    stages: dict[str, dict[str, list[float]]] = {n: {"refine": [], "affinity": []} for n, _ in rows}
    res = {}
    for _ in range(args.runs):                   # interleaved: a change of load hits every row alike
        for n, p in rows:
            t0 = time.perf_counter()
            res[n] = label(cap, p)
            times[n].append(time.perf_counter() - t0)
            for k in stages[n]:
                stages[n][k].append(res[n].timings.get(k, 0.0))
    base = statistics.median(times["pcc"])
    print("| row | median (s) | / pcc | mIoU vs planted layout | refine (s) | affinity (s) |\n"
          "|---|---:|---:|---:|---:|---:|")
    for n, _ in rows:
        t = statistics.median(times[n])
        print(f"| {n} | {t:.3f} | {t / base:.2f} | {miou(res[n].mask.cpu(), layout, over='b'):.4f} | "
              f"{statistics.median(stages[n]['refine']):.3f} | {statistics.median(stages[n]['affinity']):.3f} |")


if __name__ == "__main__":
    main()

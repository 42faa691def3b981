"""The labellers side by side on one planted capture at SD 2.1 shapes (not a test).

A planted synthetic capture (512x512 image, latent 64x64, 210 heads of dim 64, self-attention
probabilities at 32x32) is labelled N times by each labeller (pcc, dd, attn, fuse) with its default parameters.
Prints a Markdown table: median seconds, the ratio to pcc's time in the same run, mIoU against the planted
layout and the uncertain share. The planted capture is easy for every labeller; this measures speed and
checks that each one runs at full size, not which one is better on real images.

    .venv/bin/python bench/bench_labellers.py --runs 5 [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_label import miou


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs of each labeller (median reported; default 5)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from pccseg.labellers.registry import LABELLERS, label
    from pccseg.capture.synthetic import planted_capture, planted_layout

    cap = planted_capture(seed=0, device=args.device)
    layout = planted_layout()
    rows = {}
    for name, lab in LABELLERS.items():
        params = lab.params()
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            res = label(cap, params)
            if cap.token_maps.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        rows[name] = (statistics.median(times), miou(res.mask.cpu(), layout, over="b"), res.uncertain_share)
    print(f"planted capture 512x512, latent 64x64, self_probs {tuple(cap.self_probs.shape)}, {args.runs} runs, "
          f"device {args.device}, torch threads {torch.get_num_threads()}\n")
    print("| labeller | median (s) | / pcc | mIoU vs planted layout | uncertain share |")
    print("|---|---:|---:|---:|---:|")
    for name, (t, m, u) in rows.items():
        print(f"| {name} | {t:.4f} | {t / rows['pcc'][0]:.3f} | {m:.4f} | {u:.4f} |")


if __name__ == "__main__":
    main()

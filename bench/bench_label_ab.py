"""Labelling speed of two versions of pccseg, side by side in one run (not a test).

Two worker processes, one per source tree, each label the same planted capture at SD 2.1 shapes (512x512
image, latent 64x64, 210 heads of dim 64) once per request; requests alternate between them (before,
after, after, before, ...) so that both see the same moments of a noisy machine. The table gives each
stage's median seconds and the median of the paired ratios after / before. Before timing, both versions
label a set of captures (planted ones at the default noise and with more noise, and with ``--toy N``
captures of the shipped toy model) with four parameter sets, and the last line counts the final masks
that are equal.

    mkdir -p /tmp/before && git archive c62844f src | tar -x -C /tmp/before
    .venv/bin/python bench/bench_label_ab.py --before /tmp/before/src --threads 1 --calls 30 --toy 12
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import hashlib, json, sys, torch
from pathlib import Path
torch.set_num_threads(int(sys.argv[1]))
from pccseg.capture.format import load_capture
from pccseg.capture.synthetic import planted_capture
from pccseg.labellers.pcc import LabelParams, label
cap = planted_capture(seed=0)
params = LabelParams.preset(sys.argv[2])
checks = json.loads(sys.argv[3])
captures = {f"planted{i}": planted_capture(seed=i) for i in range(checks["planted"])}
captures.update({f"noisy{i}": planted_capture(seed=i, noise=3.0, image_noise=30.0) for i in range(checks["planted"])})
captures.update({d.name: load_capture(d) for d in sorted(Path(checks["toy"]).iterdir())[:checks["n_toy"]]}
                if checks["toy"] else {})
sets = {"report": LabelParams(), "authors": LabelParams.preset("authors"), "votes3": LabelParams(seed_votes=3, seed=7),
        "restarts3": LabelParams(kmeans_restarts=3, seed=11)}
masks = {f"{s}/{c}": hashlib.sha256(label(x, p).mask.contiguous().numpy().tobytes()).hexdigest()
         for s, p in sets.items() for c, x in captures.items()}
print(json.dumps(masks), flush=True)
label(cap, params)
for _ in sys.stdin:
    print(json.dumps(label(cap, params).timings), flush=True)
"""

STAGES = ("pca", "features", "kmeans", "segments", "refine_segments", "total")


def start(src: Path, threads: int, preset: str, checks: dict) -> tuple[subprocess.Popen, dict]:
    env = dict(os.environ, PYTHONPATH=str(src.resolve()))
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(threads), preset, json.dumps(checks)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    return proc, json.loads(proc.stdout.readline())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="the src folder of the version to compare with")
    ap.add_argument("--after", type=Path, default=Path(__file__).resolve().parents[1] / "src",
                    help="the src folder of the version to measure (default: this checkout's)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each worker")
    ap.add_argument("--calls", type=int, default=30, help="labelling calls per version")
    ap.add_argument("--preset", default="report", choices=("report", "authors"))
    ap.add_argument("--planted", type=int, default=3,
                    help="mask check: planted captures at the default noise and as many noisier ones")
    ap.add_argument("--toy", type=int, default=0, help="mask check: this many toy-model captures as well")
    ap.add_argument("--toy-cache", type=Path, default=Path("runs/bench_seeds_toy"),
                    help="where the toy captures are generated once (bench_seeds.py's cache)")
    args = ap.parse_args()
    for name in ("before", "after"):
        if not (getattr(args, name) / "pccseg").is_dir():
            sys.exit(f"error: --{name} {getattr(args, name)}: no pccseg package in this folder")

    checks = {"planted": args.planted, "toy": "", "n_toy": args.toy}
    if args.toy:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_seeds import toy_captures

        toy_captures("toy", args.toy, args.toy_cache, 128, 25, 5.0)
        checks["toy"] = str(args.toy_cache.resolve())
    procs, masks = {}, {}
    for name in ("before", "after"):
        procs[name], masks[name] = start(getattr(args, name), args.threads, args.preset, checks)
    times: dict[str, list[dict]] = {"before": [], "after": []}
    try:
        for i in range(args.calls):
            for name in (("before", "after") if i % 2 == 0 else ("after", "before")):
                procs[name].stdin.write("go\n")
                procs[name].stdin.flush()
                times[name].append(json.loads(procs[name].stdout.readline()))
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()

    print(f"PCC labelling, SD 2.1 shapes, preset {args.preset}, torch threads {args.threads}, "
          f"{args.calls} alternating calls per version\n")
    print("| stage | before (s) | after (s) | after / before |")
    print("|---|---:|---:|---:|")
    for stage in STAGES:
        b = [t.get(stage, 0.0) for t in times["before"]]
        a = [t.get(stage, 0.0) for t in times["after"]]
        ratios = [x / y for x, y in zip(a, b) if y > 0]
        ratio = f"{statistics.median(ratios):.2f}x" if ratios else "-"
        print(f"| {stage} | {statistics.median(b):.4f} | {statistics.median(a):.4f} | {ratio} |")
    differ = sorted(k for k in masks["after"] if masks["before"].get(k) != masks["after"][k])
    print(f"\n- final masks equal: {len(masks['after']) - len(differ)} of {len(masks['after'])} (parameter set / "
          f"capture: report, authors, seed_votes=3, kmeans_restarts=3 on {args.planted} planted, {args.planted} "
          f"noisier planted and {args.toy} toy captures)" + (f"; differ: {', '.join(differ)}" if differ else ""))


if __name__ == "__main__":
    main()

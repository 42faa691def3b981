"""Labelling throughput with worker processes (not a test): images per second for 1, 2 and N workers, on a
machine as found and under an added competing load, with same-run ratios; and generate's labelling worker.

**label** — ``--captures`` planted captures at SD 2.1 shapes (512x512, latent 64x64, 210 heads of dim 64),
saved as ``generate --keep-captures`` saves them, are labelled from disk (load + PCC, report parameters) by

* ``threads``: this process, torch's default threads (one ``label()`` at a time, its stages side by side);
* ``1``: this process, one torch thread (``--workers 1``);
* ``2``, ``N``: :class:`pccseg.labellers.workers.LabelPool` with 2 and N worker processes, one torch thread each
  (``--workers 2``, ``--workers N``; N = the cores this process may use);

each ``--reps`` times (after one warm-up pass), in rotating order. Then ``--load`` competing processes
start (each a torch matmul loop with torch's default threads, as another job's training would be) and
everything runs again. The table gives the median images per second, the ratio to ``1`` in the same
condition, and loaded / no added load. The load average before and after each condition is printed, so
that the conditions are stated (on a shared machine "no added load" is not quiet).

**generate** — ``pccseg.dataset.generate.generate`` on the CPU with the tiny model at ``--gen-size`` (random weights,
SD's architecture; its sampling is cheap, so labelling is a large share of the time: the case where a
labelling worker matters most), labelling in this process (``label_workers=0``) and in one worker process
(``label_workers=1``, the CPU default), ``--gen-images`` images, ``--reps`` runs each, alternating; the
masks of both are compared.

    .venv/bin/python bench/bench_workers.py [--captures 16] [--reps 3] [--load 2] [--skip-generate]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _burn(stop) -> None:
    """A competing job: matmuls with torch's default threads until ``stop`` is set."""
    a = torch.randn(512, 512)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def label_rate(dirs: list[Path], mode: str) -> float:
    """Images per second labelling ``dirs`` from disk in ``mode``: 'threads', or a number of processes."""
    from pccseg.capture.format import load_capture
    from pccseg.labellers.pcc import LabelParams, label
    from pccseg.labellers.workers import LabelPool

    params = LabelParams()
    t0 = time.perf_counter()
    if mode == "threads":
        for d in dirs:
            label(load_capture(d), params)
    else:
        n = int(mode)
        with LabelPool(params, 0 if n == 1 else n) as pool:
            for _ in pool.map_dirs(dirs):
                pass
    return len(dirs) / (time.perf_counter() - t0)


def label_table(dirs: list[Path], modes: list[str], reps: int, load: int) -> None:
    rates: dict[tuple[str, str], list[float]] = {}
    for condition in ("no added load", "loaded"):
        stop, burners = None, []
        if condition == "loaded":
            if not load:
                break
            ctx = multiprocessing.get_context("spawn")
            stop = ctx.Event()
            burners = [ctx.Process(target=_burn, args=(stop,), daemon=True) for _ in range(load)]
            for b in burners:
                b.start()
            time.sleep(3)
        before = os.getloadavg()[0]
        for m in modes:                                   # warm-up: page cache, worker start-up paths
            label_rate(dirs[:2], m)
        for r in range(reps):
            for m in modes[r % len(modes):] + modes[:r % len(modes)]:
                rates.setdefault((condition, m), []).append(label_rate(dirs, m))
        print(f"- {condition}: load average {before:.1f} before, {os.getloadavg()[0]:.1f} after"
              + (f" ({load} competing processes)" if condition == "loaded" else ""))
        if stop is not None:
            stop.set()
            for b in burners:
                b.join()
    conditions = sorted({c for c, _ in rates}, key=("no added load", "loaded").index)
    print()
    print("| workers | " + " | ".join(f"{c} img/s | {c} / 1" for c in conditions)
          + (" | loaded / no added load |" if len(conditions) == 2 else " |"))
    print("|---|" + "---:|---:|" * len(conditions) + ("---:|" if len(conditions) == 2 else ""))
    med = {k: statistics.median(v) for k, v in rates.items()}
    for m in modes:
        cells = [f"{med[c, m]:.2f} | {med[c, m] / med[c, '1']:.2f}x" for c in conditions]
        last = f" {med['loaded', m] / med['no added load', m]:.2f}x |" if len(conditions) == 2 else ""
        print(f"| {m} | " + " | ".join(cells) + " |" + last)


def generate_table(size: int, n: int, reps: int) -> None:
    import numpy as np

    from pccseg.dataset.generate import GenerateConfig, generate
    from pccseg.io import load_mask
    from pccseg.dataset.prompts import load_prompts, select
    from pccseg.capture.tiny import tiny_pipeline

    pipe, records = tiny_pipeline(0), select(load_prompts(), start=0, num=n)
    times: dict[int, list[float]] = {0: [], 1: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(reps):
            for workers in ((0, 1) if r % 2 == 0 else (1, 0)):
                out = Path(tmp) / f"w{workers}-{r}"
                t0 = time.perf_counter()
                generate(pipe, records, out, GenerateConfig(steps=4, height=size, width=size, progress=False,
                                                            label_workers=workers), rank=0, world_size=1)
                times[workers].append(time.perf_counter() - t0)
        same = all(np.array_equal(load_mask(Path(tmp) / "w0-0" / "SegmentationClass" / f"{rec.stem}.png"),
                                  load_mask(Path(tmp) / "w1-0" / "SegmentationClass" / f"{rec.stem}.png"))
                   for rec in records)
    med = {w: n / statistics.median(t) for w, t in times.items()}
    print(f"generate, tiny model at {size}x{size}, 4 steps, {n} images, median of {reps} runs, "
          f"torch threads {torch.get_num_threads()} (sampling):\n")
    print("| labelling | img/s | / in this process |")
    print("|---|---:|---:|")
    print(f"| in this process (label_workers=0) | {med[0]:.3f} | 1.00x |")
    print(f"| one worker process (label_workers=1) | {med[1]:.3f} | {med[1] / med[0]:.2f}x |")
    print(f"\n- masks equal: {same}")


def main() -> None:
    from pccseg.labellers.workers import default_workers

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--captures", type=int, default=16, help="planted captures to label (default 16)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (median reported; default 3)")
    ap.add_argument("--load", type=int, default=2, help="competing processes (default 2; 0: none)")
    ap.add_argument("--workers", type=int, default=None, help="N (default: the cores, %d here)" % default_workers())
    ap.add_argument("--skip-label", action="store_true")
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--gen-size", type=int, default=512)
    ap.add_argument("--gen-images", type=int, default=6)
    args = ap.parse_args()

    print(f"{os.cpu_count()} CPUs, {default_workers()} usable by this process, torch {torch.__version__}, "
          f"torch default threads {torch.get_num_threads()}\n")
    if not args.skip_label:
        from pccseg.capture.format import save_capture
        from pccseg.capture.synthetic import planted_capture

        n = args.workers or default_workers()
        modes = list(dict.fromkeys(["threads", "1", "2", str(n)]))
        with tempfile.TemporaryDirectory() as tmp:
            dirs = [save_capture(Path(tmp) / f"{i:06d}", planted_capture(seed=i % 4)) for i in range(args.captures)]
            print(f"label: {args.captures} planted captures at SD 2.1 shapes from disk, report parameters, "
                  f"median of {args.reps}:\n")
            label_table(dirs, modes, args.reps, args.load)
        print()
    if not args.skip_generate:
        generate_table(args.gen_size, args.gen_images, args.reps)


if __name__ == "__main__":
    main()

"""Seed luck of PCC labelling (not a test): mIoU over k-means seeds, as mean +- sd, per parameter set.

Every parameter set labels the same captures once per trial, trial i with k-means seed 1000 i (with
``seed_votes`` = n it votes over the seeds 1000 i .. 1000 i + n - 1, so trials share no seed); the table
gives the mIoU's mean, sample standard deviation and range over the trials, and the median seconds per
label.

* planted captures (``pccseg.capture.synthetic``) at SD 2.1 shapes, with more attention noise and image noise than
  the default so that the k-means have real choices to make; the truth is the planted layout, scored per
  capture over the layout's classes and averaged over the captures;
* the toy world (``--toy toy`` for the shipped model, or a diffusers folder such as a training checkpoint):
  ``--toy-images`` prompts of the toy prompt set generated with attention capture (cached in
  ``--cache``), the truth is the colour-family judge (``pccseg.toy.judge.colour_labels``); one confusion
  matrix over all images per seed (uncertain predictions count as wrong, unknown truth is left out).

Parameter sets are ``PRESET[:field=value,...]`` (``report``, ``authors:kmeans_restarts=10``), plus
``sklearn``: the authors' code, i.e. the ``authors`` preset with scikit-learn's ``KMeans(random_state=seed)``
for both k-means (``bench_label.baseline_label``).

    .venv/bin/python bench/bench_seeds.py [--seeds 10] [--captures 4] [--configs report authors ...]
    .venv/bin/python bench/bench_seeds.py --toy /work/toyrun/out/unet/step-003000 --size 64 --toy-images 16
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_label import baseline_label, miou  # noqa: E402

DEFAULT_CONFIGS = ("report", "report:kmeans_restarts=10", "report:seed_votes=3", "report:seed_votes=5", "authors",
                   "authors:seed_votes=5", "sklearn")
#: the k-means seeds of trial i: i * SEED_STRIDE (+ 0..n-1 with seed_votes=n, so that trials share no seed)
SEED_STRIDE = 1000
#: planted captures: attention noise 3 (default 0.5) and image noise 30 (default 8)
PLANTED = dict(noise=3.0, image_noise=30.0)


def parse_config(spec: str):
    """``PRESET[:field=value,...]`` -> LabelParams factory of the seed (``sklearn``: None)."""
    from pccseg.labellers.pcc import LabelParams

    if spec == "sklearn":
        return None
    preset, _, rest = spec.partition(":")
    fields = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        fields[key] = ast.literal_eval(value)
    LabelParams.preset(preset, **fields)                       # refuse a bad spec before any work
    return lambda seed: LabelParams.preset(preset, seed=seed, **fields)


def label_mask(cap, make, seed: int) -> torch.Tensor:
    from pccseg.labellers.pcc import LabelParams, label

    if make is None:
        return baseline_label(cap, LabelParams.preset("authors"), random_state=seed)[0]
    return label(cap, make(seed)).mask


def planted(n: int):
    from pccseg.capture.synthetic import planted_capture, planted_layout

    return [(planted_capture(seed=i, **PLANTED), planted_layout()) for i in range(n)]


def toy_captures(model: str, n: int, cache: Path, size: int, steps: int, guidance: float):
    """``n`` toy captures with their colour-judge truth, generated once into ``cache``."""
    from pccseg.capture.format import load_capture, save_capture
    from pccseg.toy.judge import colour_labels
    from pccseg.toy.world import toy_prompt_records

    records = toy_prompt_records(n, seed=4242)
    dirs = [cache / f"{i:06d}" for i in range(n)]
    todo = [i for i, d in enumerate(dirs) if not d.is_dir()]
    if todo:
        from pccseg.capture import capture
        from pccseg.toy.model import toy_pipeline

        pipe = toy_pipeline(None if model == "toy" else model)
        for i in todo:
            r = records[i]
            with capture(pipe, [r["classes"]]) as cap:
                out = pipe([r["prompt_sd"]], num_inference_steps=steps, guidance_scale=guidance, height=size,
                           width=size, generator=[torch.Generator().manual_seed(2024 + i)], output_type="np")
            save_capture(dirs[i], cap.captures(out.images, meta=dict(prompt=r["prompt_sd"], model=model))[0])
    caps = [load_capture(d) for d in dirs]
    return [(c, torch.from_numpy(colour_labels(c.image.numpy()))) for c in caps]


def run(data, kind: str, configs, seeds: int):
    from pccseg.toy.quality import MaskScore

    rows = []
    for spec in configs:
        make = parse_config(spec)
        scores, times = [], []
        for seed in range(0, seeds * SEED_STRIDE, SEED_STRIDE):
            per, total = [], MaskScore()
            for cap, truth in data:
                t0 = time.perf_counter()
                mask = label_mask(cap, make, seed).cpu()
                times.append(time.perf_counter() - t0)
                if kind == "planted":
                    per.append(miou(mask, truth, "b"))
                else:
                    total.add(mask.numpy(), truth.numpy())
            scores.append(float(np.mean(per)) if kind == "planted" else total.summary()["miou"])
        rows.append((spec, scores, statistics.median(times)))
        print(f"  {spec}: " + " ".join(f"{s:.3f}" for s in scores), file=sys.stderr, flush=True)
    return rows


def table(rows) -> None:
    base = rows[0][2]
    print("| parameters | mIoU mean +- sd | min - max | median s / label | / first |")
    print("|---|---:|---:|---:|---:|")
    for spec, scores, t in rows:
        sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
        print(f"| {spec} | {np.mean(scores):.4f} +- {sd:.4f} | {min(scores):.4f} - {max(scores):.4f} | "
              f"{t:.3f} | {t / base:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="trials, each with its own k-means seeds (default 10)")
    ap.add_argument("--captures", type=int, default=4, help="planted captures (default 4; 0: none)")
    ap.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="parameter sets (see above)")
    ap.add_argument("--toy", default=None, metavar="MODEL", help="'toy' or a toy diffusers folder")
    ap.add_argument("--toy-images", type=int, default=16)
    ap.add_argument("--size", type=int, default=128, help="toy image size (64 for a first-phase checkpoint)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--cache", default="runs/bench_seeds_toy", help="where the toy captures are kept")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for spec in args.configs:
        parse_config(spec)

    print(f"{args.seeds} trials, k-means seeds 0, {SEED_STRIDE}, ..., {(args.seeds - 1) * SEED_STRIDE}, "
          f"torch threads {torch.get_num_threads()}\n")
    if args.captures:
        print(f"**Planted captures** ({args.captures}, SD 2.1 shapes, {PLANTED}), mIoU vs the planted layout:\n")
        table(run(planted(args.captures), "planted", args.configs, args.seeds))
        print()
    if args.toy:
        data = toy_captures(args.toy, args.toy_images, Path(args.cache), args.size, args.steps, args.guidance)
        print(f"**Toy world** ({args.toy}, {len(data)} images at {args.size}, {args.steps} steps), "
              "mIoU vs the colour judge over all images:\n")
        table(run(data, "toy", args.configs, args.seeds))


if __name__ == "__main__":
    main()

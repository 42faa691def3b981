"""The fuse labeller's ablation (docs/labeller.md, "fuse"): every idea added one at a time, beside PCC, dd
and attn, on three instruments:

* ``--toy DIR``: kept captures of toy-model images (a folder of ``pccseg generate --keep-captures``, or an
  experiment's ``generated/``), scored against the colour judge's ground truth of the JPEG images, as the
  experiment's label-quality table (uncertain pixels count as wrong); repeat for a second model's folder;
* ``--planted N``: planted captures (:func:`pccseg.capture.synthetic.planted_capture`) with a random
  layout per seed (1-3 ellipses or rectangles of random classes on a background), seeds 0..N-1, at toy
  shapes (128x128 image, 32x32 latent, 3 layers x 2 heads at 8, 16 and 32, head dim 16), and with
  ``--sd21`` at SD 2.1 shapes (512x512, the default layers).

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_ablation.py --toy runs/gen1 --toy runs/gen2
    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_ablation.py --planted 12 [--sd21 3]
    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_ablation.py --toy runs/gen1 --rows 0,7 --per-class

Prints one line per row: mIoU, mIoU on certain pixels, uncertain share, median seconds per image.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pccseg.labellers.attn import AttnParams
from pccseg.labellers.dd import DDParams
from pccseg.labellers.fuse import FuseParams
from pccseg.labellers.pcc import LabelParams
from pccseg.labellers.registry import label

S0 = FuseParams(map_spread=0.0)                  # the default before the class maps were spread
F0 = replace(S0, map_weight=0.0, background_weight=0.0, upsample="nearest", refine="none")
#: (name, params): the baselines, then the fuse labeller with one idea added per row, then alternatives.
ROWS = [
    ("pcc (report)", LabelParams()),
    ("dd", DDParams()),
    ("attn", AttnParams()),
    ("fuse 0: PCC's votes as shares, argmax, nearest", F0),
    ("  + class maps fused", replace(F0, map_weight=1.0, background_weight=2.0)),
    ("  + bilinear upsampling", replace(F0, map_weight=1.0, background_weight=2.0, upsample="bilinear")),
    ("  + colour segments", replace(S0, refine="segments")),
    ("  + PAMR before the segments", S0),
    ("  + class maps spread through DiffCut's affinity (default)", FuseParams()),
    ("  + propagation (4x self_probs)", replace(S0, propagate=4)),
    ("  + margin 0.1 (uncertain band)", replace(S0, margin=0.1)),
    ("  + small regions (< 0.2 % of the image)", lambda h, w: replace(S0, min_region=max(1, round(0.002 * h * w)))),
    ("alt: PAMR instead of segments", replace(S0, refine="pamr")),
    ("alt: PAMR at the image size (pamr_scale 0)", replace(S0, pamr_scale=0)),
    ("alt: PAMR at 2 pixels per latent pixel", replace(S0, pamr_scale=2)),
    ("alt: background weight 1", replace(S0, background_weight=1.0)),
    ("alt: background weight 1.5", replace(S0, background_weight=1.5)),
    ("alt: background weight 2.5", replace(S0, background_weight=2.5)),
    ("alt: the spread maps alone (map_spread 1)", FuseParams(map_spread=1.0)),
    ("alt: affinity power 5", FuseParams(affinity_alpha=5.0)),
    ("alt: affinity power 20", FuseParams(affinity_alpha=20.0)),
    ("alt: + DiffCut's regions vote (ncut_tau 0.5)", FuseParams(ncut_tau=0.5)),
    ("alt: DiffCut's regions vote, no spread (ncut_tau 0.5, map_spread 0)", replace(S0, ncut_tau=0.5)),
]


def toy_set(folder: Path, n: int):
    from pccseg.capture.format import load_capture
    from pccseg.io import load_image
    from pccseg.toy.judge import colour_labels

    stems = sorted(p.name for p in (folder / "captures").iterdir())[:n]
    return [(load_capture(folder / "captures" / s), colour_labels(load_image(folder / "JPEGImages" / f"{s}.jpg")))
            for s in stems if (folder / "JPEGImages" / f"{s}.jpg").is_file()]


def random_layout(seed: int, size: int) -> np.ndarray:
    """Background 0 and 1-3 ellipses or rectangles of random toy classes (later ones on top)."""
    rng = np.random.default_rng([seed, 21])
    classes = [1, 3, 4, 6, 7, 8, 12, 13, 15, 16]
    yy, xx = np.mgrid[0:size, 0:size] / size
    lay = np.zeros((size, size), np.int64)
    for c in rng.choice(classes, rng.integers(1, 4), replace=False):
        cy, cx = rng.uniform(0.25, 0.75, 2)
        ry, rx = rng.uniform(0.1, 0.3, 2)
        if rng.random() < 0.5:
            region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            region = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        lay[region] = c
    return lay


def planted_set(n: int, sd21: bool):
    from pccseg.capture.synthetic import planted_capture

    out = []
    for s in range(n):
        if sd21:
            lay = random_layout(s, 512)
            cap = planted_capture(lay, seed=s)
        else:
            lay = random_layout(s, 128)
            layers = [(f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1", 2, f)
                      for b, f in ((1, 4), (2, 2), (3, 1)) for a in range(2)]
            cap = planted_capture(lay, image_size=(128, 128), latent=(32, 32), layers=layers, head_dim=16, seed=s)
        out.append((cap, lay.astype(np.uint8)))
    return out


def run(data, rows, per_class: bool = False) -> None:
    from pccseg.toy.quality import MaskScore

    for name, params in rows:
        if callable(params):                      # a row whose parameters depend on the image size
            params = params(*data[0][0].image_size)
        score, secs = MaskScore(), []
        for cap, gt in data:
            t0 = time.perf_counter()
            mask = label(cap, params).mask
            secs.append(time.perf_counter() - t0)
            score.add(mask.cpu().numpy(), gt)
        s = score.summary()
        print(f"| {name} | {s['miou']:.4f} | {s['miou_certain']:.4f} | {s['uncertain']:.4f} | "
              f"{statistics.median(secs):.4f} |", flush=True)
        if per_class:
            print("    IoU per class: " + ", ".join(f"{k} {v:.3f}" for k, v in s["iou"].items()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--toy", action="append", default=[], type=Path, help="folder with captures/ and JPEGImages/")
    ap.add_argument("--num", type=int, default=200, help="toy images per folder")
    ap.add_argument("--planted", type=int, default=0, help="planted seeds at toy shapes")
    ap.add_argument("--sd21", type=int, default=0, help="planted seeds at SD 2.1 shapes")
    ap.add_argument("--rows", default="", help="comma-separated row numbers (default: all)")
    ap.add_argument("--per-class", action="store_true", help="also print each row's IoU per class")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = ROWS if not args.rows else [ROWS[int(i)] for i in args.rows.split(",")]
    header = "| row | mIoU | mIoU (certain) | uncertain | s / image |\n|---|---:|---:|---:|---:|"
    for folder in args.toy:
        print(f"\n{folder}: {args.num} toy images\n{header}")
        run(toy_set(folder, args.num), rows, args.per_class)
    if args.planted:
        print(f"\nplanted, toy shapes, seeds 0..{args.planted - 1}\n{header}")
        run(planted_set(args.planted, False), rows)
    if args.sd21:
        print(f"\nplanted, SD 2.1 shapes, seeds 0..{args.sd21 - 1}\n{header}")
        run(planted_set(args.sd21, True), rows)


if __name__ == "__main__":
    main()

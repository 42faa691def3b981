"""Figures of the toy model (not a test): prompt adherence, speed, the judge's own error, a picture.

    .venv/bin/python bench/bench_toy.py [--model toy] [--prompts 200] [--steps 25] [--guidance 5]
                                        [--picture docs/img/toy_grid.png]

Prints Markdown tables:

* **judge error** — the colour-family ground truth (``pccseg.toy.judge``) against the exact label maps
  of rendered scenes saved as JPEG (quality 95): pixel accuracy, unknown share, mIoU, and adherence of
  the rendered scenes themselves;
* **the VAE's ceiling** — adherence of rendered scenes after the model's VAE encoded and decoded them
  (``pccseg.toy.quality.round_trip``): no image of the model can do better than its decoder;
* **adherence** — of ``--prompts`` prompts (the shipped toy prompt set, first N records; seeds 2024 + i),
  the share of images showing every prompted class and no other (by the judge), and the shares missing a
  class or showing an extra one;
* **masks** — of the same images (captured while they were generated): mIoU, mIoU over certain pixels
  and uncertain share of the masks of PCC, Dataset Diffusion's rule and the class maps alone
  (``pccseg.labellers`` pcc, dd and attn, default parameters) against the judge's ground truth, and
  per-class IoU;
* **speed** — images per second of a plain pipeline call and of a captured + PCC-labelled call (batch
  ``--batch-size``, same run, median of ``--reps``), and the thread count;

and writes a grid of prompts and images (``--picture``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def speed(pipe, records, steps, guidance, batch_size, reps):
    from pccseg.capture.attention import capture
    from pccseg.labellers.pcc import label

    b = records[:batch_size]
    call = dict(num_inference_steps=steps, guidance_scale=guidance, output_type="np")
    plain, labelled = [], []
    for rep in range(reps):
        gens = [torch.Generator().manual_seed(rep * 100 + j) for j in range(len(b))]
        t0 = time.perf_counter()
        pipe([r["prompt_sd"] for r in b], generator=gens, **call)
        plain.append((time.perf_counter() - t0) / len(b))
        gens = [torch.Generator().manual_seed(rep * 100 + j) for j in range(len(b))]
        t0 = time.perf_counter()
        with capture(pipe, [r["classes"] for r in b]) as cap:
            out = pipe([r["prompt_sd"] for r in b], generator=gens, **call)
        for c in cap.captures(out.images):
            label(c)
        labelled.append((time.perf_counter() - t0) / len(b))
    return statistics.median(plain), statistics.median(labelled)


def grid(images, prompts, path, cols=6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * 2.15), dpi=110)
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, im, p in zip(np.ravel(axes), images, prompts):
        ax.imshow(im)
        ax.set_title(p if len(p) < 32 else p[:30] + "...", fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy")
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--picture", default=None)
    ap.add_argument("--judge-scenes", type=int, default=300)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from pccseg.capture.pipeline import load_pipeline
    from pccseg.dataset.prompts import TOY_PROMPTS, default_prompts_path
    from pccseg.toy.config import TOY_SIZE
    from pccseg.toy.judge import adherence
    from pccseg.toy.quality import judge_error, score_model

    records = json.loads(default_prompts_path(TOY_PROMPTS).read_text())[:a.prompts]
    pipe = load_pipeline(a.model, device="cpu")

    j = judge_error(a.judge_scenes)
    print(f"\n## Judge error (colour families vs exact labels, {j['n']} rendered scenes, JPEG q95)\n")
    print("| pixel accuracy | unknown | mIoU | adherence of the rendered scenes |\n|---:|---:|---:|---:|")
    print(f"| {j['pixel_acc']:.4f} | {j['unknown']:.4f} | {j['miou']:.3f} | {j['adherence']:.3f} |")

    from pccseg.toy.quality import round_trip

    rt = round_trip(pipe.vae, a.judge_scenes // 3 * 2)
    print(f"\n## The VAE's ceiling ({rt['n']} rendered scenes encoded and decoded, then judged)\n")
    print("| adherence | adherence, every pixel counted (no opening) | mean abs. error (0-255) |\n|---:|---:|---:|")
    print(f"| {rt['adherence']:.3f} | {rt['adherence_all_pixels']:.3f} | {rt['l1']:.2f} |")

    t0 = time.perf_counter()
    res = score_model(pipe, records, size=TOY_SIZE, steps=a.steps, guidance=a.guidance, seed=2024,
                      batch_size=a.batch_size, labellers=("pcc", "dd", "attn"))
    t_adh = time.perf_counter() - t0
    images = res["images"]
    rows = [adherence(im, rec["classes"]) for im, rec in zip(images, records)]
    ok = np.mean([r.ok for r in rows])
    miss = np.mean([bool(r.missing) for r in rows])
    extra = np.mean([bool(r.extra) for r in rows])
    by_n = {}
    for r, rec in zip(rows, records):
        by_n.setdefault(len(rec["classes"]), []).append(r.ok)
    print(f"\n## Prompt adherence ({len(rows)} prompts, {a.steps} steps, guidance {a.guidance})\n")
    print("| adherence | missing a class | an extra class | " + " | ".join(f"{k} class(es)" for k in sorted(by_n))
          + " |\n|---:|---:|---:|" + "---:|" * len(by_n))
    print(f"| {ok:.3f} | {miss:.3f} | {extra:.3f} | " + " | ".join(f"{np.mean(v):.3f} (n={len(v)})"
                                                               for k, v in sorted(by_n.items())) + " |")

    print(f"\n## Masks of the same images against the judge's ground truth\n")
    print("| labeller | mIoU | mIoU, certain pixels | uncertain |\n|---|---:|---:|---:|")
    for name, m in res["labellers"].items():
        print(f"| {name} | {m['miou']:.3f} | {m['miou_certain']:.3f} | {m['uncertain']:.3f} |")
    classes = list(res["labellers"]["pcc"]["iou"])
    print("\n| labeller | " + " | ".join(classes) + " |\n|---|" + "---:|" * len(classes))
    for name, m in res["labellers"].items():
        print(f"| {name} | " + " | ".join(f"{m['iou'].get(c, float('nan')):.2f}" for c in classes) + " |")

    plain, labelled = speed(pipe, records, a.steps, a.guidance, a.batch_size, a.reps)
    print(f"\n## Speed (CPU, {torch.get_num_threads()} thread(s), batch {a.batch_size}, {a.steps} steps, "
          f"median of {a.reps})\n")
    print("| call | s/image | images/s | vs plain |\n|---|---:|---:|---:|")
    print(f"| plain | {plain:.3f} | {1 / plain:.2f} | 1.000 |")
    print(f"| captured + PCC-labelled | {labelled:.3f} | {1 / labelled:.2f} | {labelled / plain:.3f} |")
    print(f"\n(the adherence and mask run took {t_adh:.0f} s; processor: {platform.processor() or platform.machine()})")

    if a.picture:
        grid(images[:24], [r["prompt_sd"] for r in records[:24]], a.picture)
        print(f"\npicture: {a.picture}")


if __name__ == "__main__":
    main()

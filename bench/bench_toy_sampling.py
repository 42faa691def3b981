"""Sampling settings against prompt adherence of a toy model (not a test).

    .venv/bin/python bench/bench_toy_sampling.py [--model toy] [--prompts 104] [--variants base g4 s50 neg]

Generates the first ``--prompts`` records of the shipped toy prompt set (seed 2024 + i, 128x128, batch 8,
one torch thread) once per variant, each changing one setting of the default call (25 DPM-Solver++ steps,
guidance 5, empty negative prompt), and prints a Markdown table: prompt adherence (every prompted class
and no other, by ``pccseg.toy.judge``), the shares missing a class and showing an extra one, the
difference from ``base`` in images (same run, same seeds), and the classes most often extra.

Variants:

* ``base``: the defaults;
* ``g3``, ``g4``, ``g6``, ``g7.5`` (any ``gX``): guidance X;
* ``s15``, ``s50`` (any ``sN``): N steps;
* ``neg``: the names of the toy classes that are NOT prompted as the negative prompt (in place of the
  empty caption of classifier-free guidance).
"""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np
import torch


def variant_call(name: str) -> dict:
    """Variant name -> overrides of the pipeline call (``neg``: none; :func:`run` adds its negative prompts)."""
    if name in ("base", "neg"):
        return {}
    try:
        if name.startswith("g"):
            return {"guidance_scale": float(name[1:])}
        if name.startswith("s"):
            return {"num_inference_steps": int(name[1:])}
    except ValueError:
        pass
    raise SystemExit(f"bench_toy_sampling: unknown variant {name!r} (base, gX, sN, neg)")


def run(pipe, records, overrides: dict, negative: bool = False, batch_size: int = 8) -> list:
    from pccseg.toy.config import TOY_GUIDANCE, TOY_SIZE, TOY_STEPS
    from pccseg.toy.judge import adherence
    from pccseg.toy.world import TOY_CLASSES
    from pccseg.vocab import prompt_word

    call = {"num_inference_steps": TOY_STEPS, "guidance_scale": TOY_GUIDANCE, **overrides}
    rows = []
    for i in range(0, len(records), batch_size):
        batch = records[i:i + batch_size]
        gens = [torch.Generator("cpu").manual_seed(2024 + i + j) for j in range(len(batch))]
        if negative:
            call["negative_prompt"] = [", ".join(prompt_word(c) for c in TOY_CLASSES if c not in r["classes"])
                                       for r in batch]
        out = pipe([r["prompt_sd"] for r in batch], height=TOY_SIZE, width=TOY_SIZE, generator=gens,
                   **call)
        rows += [adherence(np.asarray(im), r["classes"]) for r, im in zip(batch, out.images)]   # PIL: uint8
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy")
    ap.add_argument("--prompts", type=int, default=104)
    ap.add_argument("--variants", nargs="+", default=["base", "g4", "s50", "neg"])
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    calls = {v: variant_call(v) for v in a.variants}
    if "base" not in calls:
        calls = {"base": {}, **calls}

    from pccseg.capture.pipeline import load_pipeline
    from pccseg.dataset.prompts import TOY_PROMPTS, default_prompts_path

    records = json.loads(default_prompts_path(TOY_PROMPTS).read_text())[:a.prompts]
    pipe = load_pipeline(a.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    results = {v: run(pipe, records, c, negative=v == "neg") for v, c in calls.items()}
    base_ok = sum(r.ok for r in results["base"])
    print(f"\n## Sampling settings and prompt adherence ({len(records)} prompts, model {a.model})\n")
    print("| variant | adherence | missing a class | an extra class | images vs base | most often extra |")
    print("|---|---:|---:|---:|---:|---|")
    for v, rows in results.items():
        ok = sum(r.ok for r in rows)
        extra = collections.Counter(c for r in rows for c in r.extra).most_common(3)
        print(f"| {v} | {ok / len(rows):.3f} | {np.mean([bool(r.missing) for r in rows]):.3f} | "
              f"{np.mean([bool(r.extra) for r in rows]):.3f} | {ok - base_ok:+d} | "
              f"{', '.join(f'{c} {n}' for c, n in extra)} |")


if __name__ == "__main__":
    main()

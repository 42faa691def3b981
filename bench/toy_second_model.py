"""A second toy model, cheaply: the shipped UNet and text encoder trained on for a few hundred more steps
with another seed, other scenes and a fresh optimizer, so that a labeller's choice can be checked on a
model it was not chosen on (issue 21). Not shipped.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/toy_second_model.py --out runs/toy2 --steps 300

Training from scratch takes hours on a CPU (docs/toy.md); this takes ~30 min on one core. Same loss as
``pccseg toy train``'s UNet stage (epsilon prediction, min-SNR-5 weights, 10 % empty captions, AdamW,
clipping at 1, EMA) at 128x128, batch ``--batch``; the learning rate warms up over 50 steps to ``--lr``
and anneals linearly to 0 over the second half. Scenes are rendered and encoded on the fly from seed
3,000,000 + 10,000 * seed (not the model's training seeds below 1,000,000, nor the experiment's rendered
sets from 1,000,000). Writes ``OUT/pipeline`` (a diffusers folder: ``--model OUT/pipeline``) with the EMA
weights, ``OUT/step-XXXXXX`` every ``--save-every`` steps, and ``OUT/log.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--ema", type=float, default=0.99)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--save-every", type=int, default=100, help="also write OUT/step-XXXXXX (EMA) every N steps")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    from pccseg.capture.tokenizer import clip_tokenizer
    from pccseg.toy.model import noise_scheduler, toy_pipeline
    from pccseg.toy.unet_step import tokenize
    from pccseg.toy.unet_step import denoising_loss, descend
    from pccseg.toy.world import render_scene

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = toy_pipeline()                               # the shipped weights, float32
    unet, text, vae = pipe.unet.train(), pipe.text_encoder.train(), pipe.vae.eval()
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema = {n: p.detach().clone() for n, p in [*(("u." + k, v) for k, v in unet.named_parameters()),
                                               *(("t." + k, v) for k, v in text.named_parameters())]}
    sched, tok = noise_scheduler(), clip_tokenizer()
    empty = tokenize(tok, [""])[0]
    rng = np.random.default_rng([args.seed, 21])
    base = 3_000_000 + 10_000 * args.seed
    sf = vae.config.scaling_factor
    t0 = time.perf_counter()
    for step in range(args.steps):
        scenes = [render_scene(base + step * args.batch + i) for i in range(args.batch)]
        x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.no_grad():
            x0 = vae.encode(x).latent_dist.mean * sf
        tokens = tokenize(tok, [s.caption for s in scenes])
        tokens[torch.from_numpy(rng.random(args.batch) < 0.1)] = empty
        loss = denoising_loss(unet, text, sched, x0, tokens, rng, 5.0)
        half = args.steps // 2
        lr = args.lr * min(1.0, (step + 1) / 50) * (1.0 if step < half else (args.steps - step) / (args.steps - half))
        descend(opt, params, loss, lr)
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            for n, p in [*(("u." + k, v) for k, v in unet.named_parameters()),
                         *(("t." + k, v) for k, v in text.named_parameters())]:
                ema[n].lerp_(p.detach(), 1 - d)
        if (step + 1) % 25 == 0:
            row = {"step": step + 1, "loss": round(loss.item(), 5), "lr": lr,
                   "s_per_step": round((time.perf_counter() - t0) / (step + 1), 2)}
            print(json.dumps(row), flush=True)
            with open(out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            folder = out / ("pipeline" if step + 1 == args.steps else f"step-{step + 1:06d}")
            save_ema(unet, text, vae, ema, folder)
            print("wrote", folder, flush=True)


def save_ema(unet, text, vae, ema: dict, folder: Path) -> None:
    """The EMA weights as a diffusers folder (copies: the training models are untouched)."""
    import copy

    from pccseg.toy.model import assemble

    u, t = copy.deepcopy(unet).eval(), copy.deepcopy(text).eval()
    with torch.no_grad():
        for k, v in u.named_parameters():
            v.copy_(ema["u." + k])
        for k, v in t.named_parameters():
            v.copy_(ema["t." + k])
    assemble(vae, u, t).save_pretrained(str(folder), safe_serialization=True)


if __name__ == "__main__":
    main()

"""Benchmark: the capture's extra compute per UNet call, counted rather than timed.

Builds the full-size SD 2.1-base or SDXL-base architecture (configs of ``bench_generate.py``) on the
``meta`` device — no weights, no memory, seconds — and counts with ``torch.utils.flop_counter.FlopCounterMode``
the floating-point operations of UNet calls (matrix products, convolutions, attention; element-wise ops and
softmax are not counted) for one image with classifier-free guidance: a plain call, then the calls of a
``capture()`` block (first call: the processor check; middle calls: the OVAM class maps, and with
``--self-probs`` the self-attention probabilities; final call: the per-head self-attention), and the extra
averaged over a whole sampling run of ``--calls`` UNet calls. On a CPU shared with other jobs, timings of
a 1 % effect drown in noise; the counts do not.

    .venv/bin/python bench/bench_capture_flops.py                       # SD 2.1 at 512x512, 81 UNet calls
    .venv/bin/python bench/bench_capture_flops.py --arch sdxl --calls 50 # SDXL at 1024x1024, 50 Euler steps
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch


def meta_pipeline(arch: str) -> SimpleNamespace:
    """What ``capture()`` reads of a pipeline (UNet, tokenizer, text encoders), built on the meta device."""
    from bench_generate import SD21_TEXT, SD21_UNET, SDXL_TEXT, SDXL_TEXT2, SDXL_UNET
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pccseg.capture.tokenizer import clip_tokenizer

    with torch.device("meta"):
        if arch == "sd21":
            return SimpleNamespace(unet=UNet2DConditionModel(**SD21_UNET), tokenizer=clip_tokenizer(),
                                   text_encoder=CLIPTextModel(CLIPTextConfig(**SD21_TEXT)))
        return SimpleNamespace(unet=UNet2DConditionModel(**SDXL_UNET), tokenizer=clip_tokenizer(),
                               text_encoder=CLIPTextModel(CLIPTextConfig(**SDXL_TEXT)),
                               text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("sd21", "sdxl"), default="sd21")
    ap.add_argument("--size", type=int, default=None, help="image size (default: 512 for sd21, 1024 for sdxl)")
    ap.add_argument("--calls", type=int, default=81,
                    help="UNet calls of the sampling run to average over (default 81: PNDM, 80 steps)")
    ap.add_argument("--self-probs", action="store_true", help="also count capture(..., self_probs=True)")
    args = ap.parse_args()
    if args.calls < 3:
        ap.error("--calls must be >= 3 (first, middle, final)")

    from torch.utils.flop_counter import FlopCounterMode

    from pccseg.capture.attention import capture

    pipe = meta_pipeline(args.arch)
    unet = pipe.unet
    size = args.size or (512 if args.arch == "sd21" else 1024)
    latent = torch.empty(2, 4, size // 8, size // 8, device="meta")          # one image, both CFG halves
    kwargs = dict(encoder_hidden_states=torch.empty(2, 77, unet.config.cross_attention_dim, device="meta"))
    if args.arch == "sdxl":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.empty(2, 1280, device="meta"),
                                       "time_ids": torch.empty(2, 6, device="meta")}
    t = torch.tensor(500.0, device="meta")

    def count() -> int:
        with FlopCounterMode(display=False) as fc:
            unet(latent, t, **kwargs)
        return fc.get_total_flops()

    plain = count()
    print(f"### Capture FLOPs per UNet call, {args.arch} architecture, {size}x{size}, one image with CFG "
          f"(plain call {plain / 1e9:,.1f} GFLOP)\n")
    print(f"| variant | first call | middle calls | final call | over {args.calls} calls |")
    print("|---|---:|---:|---:|---:|")
    for probs in (False, True) if args.self_probs else (False,):
        with capture(pipe, [["person", "car"]], steps=3, **({"self_probs": True} if probs else {})):
            first, middle, final = count(), count(), count()
        whole = (first + (args.calls - 2) * middle + final) / (args.calls * plain)
        name = "captured + self_probs" if probs else "captured"
        print(f"| {name} | +{100 * (first / plain - 1):.2f} % | +{100 * (middle / plain - 1):.2f} % | "
              f"+{100 * (final / plain - 1):.2f} % | +{100 * (whole - 1):.2f} % |")


if __name__ == "__main__":
    main()

"""Benchmark: the cost of attention capture + PCC labelling against a plain Stable Diffusion call.

Builds the full-size SD 2.1-base architecture from config with random weights (UNet 320/640/1280/1280,
5/10/20/20 heads, cross-attention 1024, linear projections; an OpenCLIP-H-like text encoder, 1024 wide,
23 layers; SD's VAE) on the CPU, then in the same run, alternating:

* plain:    ``pipe(prompt, ...)``
* captured: ``with capture(...)`` around the same call, then ``cap.captures(...)``
* + label:  the captured call plus ``label()`` of the image

and prints Markdown tables: median seconds per image, overhead against plain; the per-UNet-call time (from
forward hooks on the plain run) to extrapolate the overhead to the report's 80 steps; and the capture's
memory at two step counts (bytes held by its buffers, and the process's peak RSS growth during the call).

    .venv/bin/python bench/bench_generate.py                       # 512x512, 2 steps, 2 reps
    .venv/bin/python bench/bench_generate.py --size 256 --reps 2   # quicker
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch


def sd21_base_pipeline(seed: int = 0):
    """SD 2.1-base's architecture (from its configs) with seeded random weights, float32, CPU."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pccseg.tiny import SD_SCHEDULER
    from pccseg.tokenizer import clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280),
                                    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                                    use_linear_projection=True, layers_per_block=2)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                                            num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu",
                                            max_position_embeddings=77, projection_dim=512,
                                            bos_token_id=49406, eos_token_id=49407, pad_token_id=0))
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            sample_size=512, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text.eval(), tokenizer=clip_tokenizer(pad_token="!"),
                                   unet=unet.eval(), scheduler=PNDMScheduler(**SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class PeakRSS:
    """Peak resident memory of this process during a block (sampled every 5 ms), minus the start."""

    def __enter__(self):
        import psutil

        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.delta = self.peak - self.start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="image height and width (default 512)")
    ap.add_argument("--steps", type=int, default=2, help="denoising steps of the timing runs (default 2)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions of each variant (default 2)")
    ap.add_argument("--memory-steps", type=int, nargs=2, default=(2, 8), help="step counts of the memory runs")
    ap.add_argument("--memory-size", type=int, default=256, help="image size of the memory runs (default 256)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from pccseg.capture import capture, capture_nbytes
    from pccseg.labeller import label

    t0 = time.perf_counter()
    pipe = sd21_base_pipeline()
    print(f"built SD 2.1-base architecture (random weights) in {time.perf_counter() - t0:.1f} s; "
          f"{torch.get_num_threads()} threads")
    prompt, classes = "a photo of a dog on a sofa", ["dog", "sofa"]
    call = dict(height=args.size, width=args.size, guidance_scale=7.5, output_type="np")
    mcall = dict(call, height=args.memory_size, width=args.memory_size)

    unet_times: list[float] = []
    starts: list[float] = []
    pre = pipe.unet.register_forward_pre_hook(lambda *a: starts.append(time.perf_counter()))
    post = pipe.unet.register_forward_hook(lambda *a: unet_times.append(time.perf_counter() - starts[-1]))

    def run(kind: str, steps: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        t = time.perf_counter()
        with torch.no_grad():
            if kind == "plain":
                out = pipe(prompt, num_inference_steps=steps, generator=gen, **call)
                return time.perf_counter() - t, {}, out
            with capture(pipe, [classes]) as cap:
                out = pipe(prompt, num_inference_steps=steps, generator=gen, **call)
            c = cap.captures(out.images)[0]
            t_cap = time.perf_counter() - t
            res = label(c)
        return t_cap, {"label": time.perf_counter() - t - t_cap, "cap": cap, "capture": c, "res": res}, out

    # warm-up (first-call allocations, page faults of fresh weights), not timed
    run("plain", 1, 0)
    run("captured", 1, 0)
    plain, captured, labelled, label_only, unet_all = [], [], [], [], []
    same = True
    for r in range(args.reps):
        unet_times.clear()
        tp, _, out_p = run("plain", args.steps, 100 + r)
        unet_all += unet_times
        n_calls = len(unet_times)
        plain.append(tp)
        tc, extra, out_c = run("captured", args.steps, 100 + r)
        captured.append(tc)
        labelled.append(tc + extra["label"])
        label_only.append(extra["label"])
        same &= bool((out_p.images == out_c.images).all())
    pre.remove()
    post.remove()

    med = statistics.median
    mp, mc, ml, mlab = med(plain), med(captured), med(labelled), med(label_only)
    # same-run ratios: each captured run against the plain run just before it (robust to load drifts)
    rc = med([c / p for c, p in zip(captured, plain)])
    rl = med([x / p for x, p in zip(labelled, plain)])
    runs = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    print(f"\n### Capture overhead, SD 2.1-base architecture, {args.size}x{args.size}, {args.steps} steps "
          f"({n_calls} UNet calls, PNDM), CFG, CPU, {args.reps} runs each, alternating\n")
    print("| variant | median s / image | min s / image | median of paired ratios vs plain | runs (s) |")
    print("|---|---:|---:|---:|---|")
    print(f"| plain pipeline call | {mp:.2f} | {min(plain):.2f} | 1.000 | {runs(plain)} |")
    print(f"| captured call (+ captures()) | {mc:.2f} | {min(captured):.2f} | {rc:.3f} | {runs(captured)} |")
    print(f"| captured call + PCC label | {ml:.2f} | {min(labelled):.2f} | {rl:.3f} | {runs(labelled)} |")
    print(f"\nimages bit-identical (plain vs captured, same seed): {same}")
    # extrapolate to the report's 80 steps from the least disturbed (fastest) runs
    per_call = min(unet_all)
    fixed = min(plain) - n_calls * per_call
    calls80 = 81
    p80 = fixed + calls80 * per_call
    extra_per_call = (min(captured) - min(plain)) / n_calls
    c80 = p80 + calls80 * extra_per_call
    lab = min(label_only)
    print(f"\n### Extrapolated to 80 steps ({calls80} UNet calls) from the fastest runs: UNet call {per_call:.2f} s, "
          f"rest of the pipeline {fixed:.2f} s, capture's extra per UNet call {extra_per_call:+.3f} s, "
          f"label {lab:.2f} s\n")
    print("| variant | s / image | vs plain |")
    print("|---|---:|---:|")
    print(f"| plain | {p80:.1f} | 1.000 |")
    print(f"| captured | {c80:.1f} | {c80 / p80:.3f} |")
    print(f"| captured + label | {c80 + lab:.1f} | {(c80 + lab) / p80:.3f} |")

    # memory at two step counts
    rows = []
    for steps in args.memory_steps:
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad(), PeakRSS() as plain_rss:
            pipe(prompt, num_inference_steps=steps, generator=gen, **mcall)
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad(), PeakRSS() as cap_rss:
            with capture(pipe, [classes]) as cap:
                out = pipe(prompt, num_inference_steps=steps, generator=gen, **mcall)
            held = cap.buffer_bytes()
            cap.captures(out.images)
        rows.append((steps, cap.calls, held, plain_rss.delta, cap_rss.delta))
    print(f"\n### Capture memory, {args.memory_size}x{args.memory_size} (float32 on CPU)\n")
    print("| steps | UNet calls | capture buffers (bytes) | peak RSS growth, plain (MB) | peak RSS growth, captured (MB) |")
    print("|---:|---:|---:|---:|---:|")
    for steps, calls, held, pr, cr in rows:
        print(f"| {steps} | {calls} | {held:,} | {pr / 2**20:.0f} | {cr / 2**20:.0f} |")
    n = capture_nbytes(pipe.unet, 512, 512, 5)
    print(f"\nOne image's capture at SD 2.1 shapes (512x512, 5 class tokens, float16 self-attention): "
          f"self-attention {n['self_attn']:,} B, token maps {n['token_maps']:,} B, "
          f"OVAM accumulators during sampling {n['ovam_buffers']:,} B")


if __name__ == "__main__":
    main()

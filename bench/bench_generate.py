"""Benchmark: the cost of attention capture + PCC labelling against a plain Stable Diffusion call.

By default builds the full-size SD 2.1-base architecture from config with random weights (UNet
320/640/1280/1280, 5/10/20/20 heads, cross-attention 1024, linear projections; an OpenCLIP-H-like text
encoder, 1024 wide, 23 layers; SD's VAE); ``--arch sdxl`` builds SDXL-base's instead (UNet 320/640/1280,
1/2/10 transformer layers, 5/10/20 heads, cross-attention 2048, text-and-time conditioning; CLIP ViT-L and
OpenCLIP-bigG text encoders; SDXL's VAE and Euler scheduler) — or loads ``--model`` (``tiny``,
``tiny-sdxl``, a local diffusers folder, a hub id) through :func:`pccseg.capture.pipeline.load_pipeline` — on
``--device`` in ``--dtype``, then in the same run,
alternating (plain first on even repetitions, captured first on odd ones), ``--batch-size`` images per
pipeline call (one prompt and one class list per image):

* plain:    ``pipe(prompts, ...)``
* captured: ``with capture(...)`` around the same call, then ``cap.captures(...)`` (``--self-probs``: with
  the self-attention probabilities that Dataset Diffusion's labeller needs)
* + label:  the captured call plus ``label()`` of every image, on the capture's device

and prints Markdown tables: images per hour and seconds per image (medians), same-run paired ratios against
plain, peak GPU memory per variant on CUDA (``torch.cuda.max_memory_allocated``, reset before each call);
on the CPU the per-UNet-call time (from forward hooks on the plain run) to extrapolate the overhead to the
report's 80 steps; and, unless ``--skip-memory``, the capture's memory at two step counts (bytes held by its
buffers, the process's peak RSS growth and, on CUDA, the peak GPU memory during the call).

On CUDA the timed region is bracketed by ``torch.cuda.synchronize()`` (never inside the sampling loop).

    .venv/bin/python bench/bench_generate.py                       # CPU: 512x512, 2 steps, 2 reps
    .venv/bin/python bench/bench_generate.py --size 256 --reps 2   # quicker
    .venv/bin/python bench/bench_generate.py --device cuda --batch-size 8 --steps 50 --reps 3 --skip-memory
    .venv/bin/python bench/bench_generate.py --device cuda --arch sdxl --batch-size 4 --steps 50 --reps 3 --skip-memory
    .venv/bin/python bench/bench_generate.py --model tiny-sdxl --steps 2 --reps 2      # CPU check of the SDXL path
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch


#: SD 2.1-base's configs: UNet 320/640/1280/1280, 5/10/20/20 heads of 64, cross-attention 1024, linear
#: projections; an OpenCLIP-H-like text encoder, 1024 wide, 23 layers; SD's VAE
SD21_UNET = dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                 cross_attention_dim=1024, use_linear_projection=True, layers_per_block=2)
_CLIP = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407)
SD21_TEXT = dict(_CLIP, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                 hidden_act="gelu", projection_dim=512, pad_token_id=0)
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)

#: SDXL-base's configs: UNet 320/640/1280, 1/2/10 transformer layers, 5/10/20 heads of 64, cross-attention
#: 2048, text-and-time conditioning; CLIP ViT-L and OpenCLIP-bigG text encoders; SDXL's VAE
SDXL_UNET = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
SDXL_TEXT = dict(_CLIP, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 hidden_act="quick_gelu", projection_dim=768, pad_token_id=49407)
SDXL_TEXT2 = dict(_CLIP, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                  hidden_act="gelu", projection_dim=1280, pad_token_id=0)
SDXL_VAE = dict(SD_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)


def sd21_base_pipeline(seed: int = 0):
    """SD 2.1-base's architecture (from its configs) with seeded random weights, float32, CPU."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pccseg.capture.tiny import SD_SCHEDULER
    from pccseg.capture.tokenizer import clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD21_UNET)
        text = CLIPTextModel(CLIPTextConfig(**SD21_TEXT))
        vae = AutoencoderKL(**SD_VAE)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text.eval(), tokenizer=clip_tokenizer(pad_token="!"),
                                   unet=unet.eval(), scheduler=PNDMScheduler(**SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_base_pipeline(seed: int = 0):
    """SDXL-base's architecture (from its configs) with seeded random weights, float32, CPU."""
    from pccseg.capture.tiny import sdxl_pipeline

    return sdxl_pipeline(SDXL_UNET, SDXL_TEXT, SDXL_TEXT2, SDXL_VAE, seed=seed)


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



#: (prompt, class names) cycled over the images of a batch
PROMPTS = [("a photo of a dog on a sofa", ["dog", "sofa"]),
           ("a cat next to a potted plant", ["cat", "pottedplant"]),
           ("a person riding a bicycle in the street", ["person", "bicycle"]),
           ("a car parked near a bus", ["car", "bus"]),
           ("a bird sitting on a boat", ["bird", "boat"]),
           ("a horse in front of a train", ["horse", "train"]),
           ("a bottle on a dining table with a chair", ["bottle", "diningtable", "chair"]),
           ("a sheep and a cow on a meadow", ["sheep", "cow"])]

#: --arch -> (builder of the full-size architecture with random weights, its name, its image size)
ARCHS = {"sd21": (sd21_base_pipeline, "SD 2.1-base architecture, random weights", 512),
         "sdxl": (sdxl_base_pipeline, "SDXL-base architecture, random weights", 1024)}


def build_pipeline(model: str | None, device: torch.device, dtype: torch.dtype, seed: int = 0, arch: str = "sd21"):
    """The benchmarked pipeline on ``device`` in ``dtype``, and a name for it.

    ``model=None``: the architecture ``arch`` with random weights. They are always drawn in float32 on the
    CPU from ``seed`` (the same weights on every machine, whatever the device's RNG) and then cast: drawing
    them directly in float16 would round PyTorch's default initialisation differently per device. The
    random network is scale-safe in float16: every block normalises its input (GroupNorm / LayerNorm),
    attention outputs are convex combinations of values. Measured with forward hooks on every module of a
    float32 run (128x128, 50 PNDM steps): largest |output| 40 in the UNet, 5 in the text encoder, 169 in
    the VAE decoder, latents 56, kept self-attention outputs 1 (the OVAM accumulators are float32 anyway);
    float16 overflows at 65,504, so a NaN / Inf in a capture would be a real bug, not an artefact of random
    weights. The timing loop still catches the labeller's InputError for a
    non-finite capture and reports it instead of crashing, so that a GPU run always prints its table.
    """
    if model is None:
        build, name, _ = ARCHS[arch]
        pipe = build(seed)
        pipe.to(device=device, dtype=dtype, silence_dtype_warnings=True)
        return pipe, name
    from pccseg.capture.pipeline import load_pipeline

    return load_pipeline(model, dtype=dtype, device=device, seed=seed), model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    ap.add_argument("--dtype", default=None, help="float16 / bfloat16 / float32 (default: float16 on CUDA, "
                    "float32 on CPU)")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="sd21",
                    help="architecture built with random weights when --model is not given (default sd21)")
    ap.add_argument("--model", default=None, help="default: --arch's architecture with random weights; or 'tiny', "
                    "'tiny-sdxl', a local diffusers folder, a hub id (loaded by pccseg.capture.pipeline.load_pipeline)")
    ap.add_argument("--batch-size", type=int, default=1, help="images per pipeline call (default 1)")
    ap.add_argument("--size", type=int, default=None,
                    help="image height and width (default: 512 for --arch sd21, 1024 for sdxl, else the model's)")
    ap.add_argument("--steps", type=int, default=2, help="denoising steps of the timing runs (default 2)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions of each variant (default 2)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed warm-up rounds (one plain + one captured+labelled call each, at the timed "
                         "batch and size, min(steps, 2) steps; default 1)")
    ap.add_argument("--self-probs", action="store_true",
                    help="captured variants also accumulate the self-attention probabilities (capture(self_probs=True))")
    ap.add_argument("--skip-memory", action="store_true", help="skip the capture-memory runs")
    ap.add_argument("--memory-steps", type=int, nargs=2, default=(2, 8), help="step counts of the memory runs")
    ap.add_argument("--memory-size", type=int, default=256, help="image size of the memory runs (default 256)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="what the timings count: wall seconds (default), or this process's CPU seconds "
                         "(time.process_time: on a CPU shared with other jobs it counts the work, not the "
                         "waiting; CPU device only)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1 or args.reps < 1 or args.steps < 1 or args.warmup < 0:
        ap.error("--batch-size, --reps and --steps must be >= 1, --warmup >= 0")

    import diffusers
    import numpy as np

    from pccseg.capture import capture, capture_nbytes
    from pccseg.errors import InputError
    from pccseg.dataset.generate import default_size
    from pccseg.labellers.pcc import label
    from pccseg.capture.pipeline import resolve_device, resolve_dtype

    dev = resolve_device(args.device)
    dt = resolve_dtype(args.dtype, dev)
    cuda = dev.type == "cuda"
    if cuda and args.clock == "cpu":
        ap.error("--clock cpu counts CPU work: it cannot time a CUDA device")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    cap_kw = {"self_probs": True} if args.self_probs else {}
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {dev}: CUDA is not available in this torch build / machine")
    dev_name = torch.cuda.get_device_name(dev) if cuda else f"CPU, {torch.get_num_threads()} threads"
    dt_name = str(dt).replace("torch.", "")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def peak_mib() -> float:
        return torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else float("nan")

    def reset_peak() -> None:
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)

    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}; device {dev} ({dev_name}); dtype {dt_name}")
    t0 = time.perf_counter()
    pipe, model_name = build_pipeline(args.model, dev, dt, arch=args.arch)
    sync()
    print(f"built / loaded {model_name} in {time.perf_counter() - t0:.1f} s")
    default = ARCHS[args.arch][2] if args.model is None else default_size(pipe)[0]
    size = args.size or default
    B = args.batch_size
    batch = [PROMPTS[i % len(PROMPTS)] for i in range(B)]
    prompts, classes = [p for p, _ in batch], [c for _, c in batch]
    call = dict(height=size, width=size, guidance_scale=7.5, output_type="np")
    weights_mib = torch.cuda.memory_allocated(dev) / 2**20 if cuda else float("nan")

    # per-UNet-call times for the 80-step extrapolation: only meaningful where the host waits for the
    # computation (CPU); on CUDA it would need a synchronisation inside the sampling loop
    unet_times: list[float] = []
    starts: list[float] = []
    hooks = []
    if not cuda:
        hooks = [pipe.unet.register_forward_pre_hook(lambda *a: starts.append(clock())),
                 pipe.unet.register_forward_hook(lambda *a: unet_times.append(clock() - starts[-1]))]

    def run(kind: str, steps: int, seed: int) -> dict:
        """One pipeline call of B images; seconds per call, peak GPU memory, errors; images as numpy."""
        gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(B)]
        r: dict = {}
        reset_peak()
        sync()
        t = clock()
        with torch.no_grad():
            if kind == "plain":
                out = pipe(prompts, num_inference_steps=steps, generator=gens, **call)
                sync()
                r.update(call=clock() - t, peak=peak_mib(), images=np.asarray(out.images))
                return r
            with capture(pipe, classes, **cap_kw) as cap:
                out = pipe(prompts, num_inference_steps=steps, generator=gens, **call)
            try:
                caps = cap.captures(out.images)
            except InputError as e:  # non-finite capture (see build_pipeline): report, don't crash
                caps, r["error"] = None, f"captures(): {e}"
            sync()
            r.update(call=clock() - t, peak=peak_mib(), images=np.asarray(out.images),
                     unet_calls=cap.calls, buffer_bytes=cap.buffer_bytes())
            del cap, out
            if caps is None:
                return r
            t1 = clock()
            try:
                for c in caps:
                    label(c)
            except InputError as e:
                r["error"] = f"label(): {e}"
                return r
            sync()
            r.update(label=clock() - t1, peak_label=peak_mib())
        return r

    wsteps = min(args.steps, 2)
    for w in range(args.warmup):  # first-call allocations, kernel selection, page faults of fresh weights
        run("plain", wsteps, w)
        run("captured", wsteps, w)

    plain, captured, labelled, label_only = [], [], [], []
    peaks = {"plain": [], "captured": [], "labelled": []}
    errors: list[str] = []
    pairs: list[tuple[float, float, float | None]] = []
    same, max_diff, finite, unet_all = True, 0.0, True, []
    n_calls = None
    for rep in range(args.reps):
        seed = 100 + 1000 * rep
        order = ("plain", "captured") if rep % 2 == 0 else ("captured", "plain")
        res = {}
        for kind in order:
            unet_times.clear()
            res[kind] = run(kind, args.steps, seed)
            if kind == "plain":
                unet_all += unet_times
        p, c = res["plain"], res["captured"]
        n_calls = c["unet_calls"]
        plain.append(p["call"])
        captured.append(c["call"])
        peaks["plain"].append(p["peak"])
        peaks["captured"].append(c["peak"])
        if "error" in c:
            errors.append(f"rep {rep}: {c['error']}")
            pairs.append((p["call"], c["call"], None))
        else:
            labelled.append(c["call"] + c["label"])
            label_only.append(c["label"])
            peaks["labelled"].append(c["peak_label"])
            pairs.append((p["call"], c["call"], c["call"] + c["label"]))
        finite &= bool(np.isfinite(p["images"]).all() and np.isfinite(c["images"]).all())
        same &= bool(np.array_equal(p["images"], c["images"]))
        max_diff = max(max_diff, float(np.nanmax(np.abs(p["images"].astype(np.float64) - c["images"]))))
    for h in hooks:
        h.remove()

    med = statistics.median
    runs = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    rc = med([c / p for p, c, _ in pairs])
    lab_pairs = [x / p for p, _, x in pairs if x is not None]
    sched = type(pipe.scheduler).__name__
    probs = (", capture with self_probs" if args.self_probs else "") + (", CPU seconds" if args.clock == "cpu" else "")
    print(f"\n### Throughput, {model_name}, {size}x{size}, {args.steps} steps ({n_calls} UNet calls, {sched}), "
          f"CFG 7.5, batch {B}, {dev_name}, {dt_name}, {args.reps} runs each, alternating{probs}\n")
    print("| variant | images / hour | s / image | median s / call | min s / call | median of paired ratios "
          "vs plain (time) | runs (s / call) |")
    print("|---|---:|---:|---:|---:|---:|---|")

    def row(name: str, xs: list[float], ratio: float) -> None:
        m = med(xs)
        print(f"| {name} | {3600 * B / m:,.0f} | {m / B:.3f} | {m:.2f} | {min(xs):.2f} | {ratio:.3f} | {runs(xs)} |")

    row("plain pipeline call", plain, 1.0)
    row("captured call (+ captures())", captured, rc)
    if labelled:
        row("captured call + PCC label", labelled, med(lab_pairs))
    else:
        print("| captured call + PCC label | n/a | n/a | n/a | n/a | n/a | every run failed, see below |")
    print(f"\nimages bit-identical (plain vs captured, same seeds): {same} (max abs difference {max_diff:.2e}); "
          f"images finite: {finite}")
    if label_only:
        print(f"PCC labelling alone: median {med(label_only) / B:.3f} s / image on {dev}")
    if errors:
        print(f"\nWARNING: {len(errors)} of {args.reps} captured runs failed (non-finite capture?), excluded from "
              f"the labelled row (their captured-call times stop at the failure):")
        for e in errors:
            print(f"  {e}")
    if cuda:
        print(f"\n### Peak GPU memory (torch.cuda.max_memory_allocated, reset before each call; weights and "
              f"other resident tensors: {weights_mib:,.0f} MiB)\n")
        print("| variant | peak MiB (max over runs) | vs plain |")
        print("|---|---:|---:|")
        pp = max(peaks["plain"])
        for name, key in (("plain pipeline call", "plain"), ("captured call (+ captures())", "captured"),
                          ("captured call + PCC label", "labelled")):
            if peaks[key]:
                print(f"| {name} | {max(peaks[key]):,.0f} | {max(peaks[key]) / pp:.3f} |")
    elif unet_all and labelled and not errors:
        # extrapolate to the report's 80 steps from the least disturbed (fastest) runs
        per_call = min(unet_all)
        fixed = min(plain) - n_calls * per_call
        calls80 = 81
        p80 = fixed + calls80 * per_call
        extra_per_call = (min(captured) - min(plain)) / n_calls
        c80 = p80 + calls80 * extra_per_call
        lab = min(label_only)
        print(f"\n### Extrapolated to 80 steps ({calls80} UNet calls) from the fastest runs, per call of {B} "
              f"image(s): UNet call {per_call:.2f} s, rest of the pipeline {fixed:.2f} s, capture's extra per "
              f"UNet call {extra_per_call:+.3f} s, label {lab:.2f} s\n")
        print("| variant | s / image | vs plain |")
        print("|---|---:|---:|")
        print(f"| plain | {p80 / B:.1f} | 1.000 |")
        print(f"| captured | {c80 / B:.1f} | {c80 / p80:.3f} |")
        print(f"| captured + label | {(c80 + lab) / B:.1f} | {(c80 + lab) / p80:.3f} |")

    if args.skip_memory:
        return
    # memory at two step counts, one image
    mcall = dict(call, height=args.memory_size, width=args.memory_size)
    rows = []
    for steps in args.memory_steps:
        gen = torch.Generator().manual_seed(7)
        reset_peak()
        with torch.no_grad(), PeakRSS() as plain_rss:
            pipe(prompts[0], num_inference_steps=steps, generator=gen, **mcall)
            sync()
        plain_gpu = peak_mib()
        gen = torch.Generator().manual_seed(7)
        reset_peak()
        with torch.no_grad(), PeakRSS() as cap_rss:
            with capture(pipe, classes[:1], **cap_kw) as cap:
                out = pipe(prompts[0], num_inference_steps=steps, generator=gen, **mcall)
            held = cap.buffer_bytes()
            cap.captures(out.images)
            sync()
        rows.append((steps, cap.calls, held, plain_rss.delta, cap_rss.delta, plain_gpu, peak_mib()))
    print(f"\n### Capture memory, {args.memory_size}x{args.memory_size}, one image ({dt_name} on {dev})\n")
    gpu_head, gpu_rule = (" peak GPU MiB, plain | peak GPU MiB, captured |", "---:|---:|") if cuda else ("", "")
    print("| steps | UNet calls | capture buffers (bytes) | peak RSS growth, plain (MB) | peak RSS growth, captured (MB) "
          "|" + gpu_head)
    print("|---:|---:|---:|---:|---:|" + gpu_rule)
    for steps, calls, held, pr, cr, pg, cg in rows:
        gpu = f" {pg:,.0f} | {cg:,.0f} |" if cuda else ""
        print(f"| {steps} | {calls} | {held:,} | {pr / 2**20:.0f} | {cr / 2**20:.0f} |" + gpu)
    n = capture_nbytes(pipe.unet, default, default, 5, self_probs=True)
    print(f"\nOne image's capture at {default}x{default} for this UNet (5 class tokens, float16 self-attention): "
          f"self-attention {n['self_attn']:,} B, token maps {n['token_maps']:,} B, "
          f"OVAM accumulators during sampling {n['ovam_buffers']:,} B; with self_probs {n['self_probs']:,} B more")


if __name__ == "__main__":
    main()

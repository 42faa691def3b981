"""Train the toy model from scratch: the VAE and its decoder at full size, then the latents of the training scenes, then the UNet and
the text encoder together, first at 64x64 (16x16 latents), then at 128x128 (32x32 latents).

    pccseg toy train --out runs/toy            # resumes from runs/toy when it is run again

Stages and their folders under ``out``:

* ``vae/`` — AutoencoderKL on freshly rendered scenes (L1 + L1 of image gradients + a small KL term);
  ``vae/final`` is a diffusers folder whose ``scaling_factor`` makes the latents unit-variance.
  ``vae/decoder`` — the same VAE after its decoder alone was tuned on whole 128x128 scenes (the encoder
  frozen, so the latents stay those of ``vae/final``); the pipelines use it.
* ``latents/`` — ``n_train`` scenes (seeds 0 .. n_train-1), rendered, captioned and encoded (the
  posterior mean) at 128 and 64 px, in chunks of :data:`~.train_data.CHUNK` (``chunk-XXXX.safetensors`` +
  ``.json``; :mod:`.train_data`).
* ``unet/`` — epsilon prediction with SD's noise schedule, min-SNR-5 loss weights, 10 % empty captions,
  AdamW, an EMA of the weights; ``unet/last`` (resume state) every ``ckpt_every`` steps, an evaluation of
  the EMA weights every ``eval_every`` steps (``eval.jsonl``: prompt adherence and mask quality, and a
  picture), ``unet/step-XXXXXX`` kept at each evaluation.
* ``pipeline/`` — the final diffusers folder (EMA weights, safetensors), loadable with
  ``load_pipeline(path)``.
* ``tensorboard/`` — the losses and evaluations as TensorBoard curves (:mod:`pccseg.toy.board`).

Every file is written atomically; checkpoints are safetensors + JSON (:mod:`.checkpoint`). Ctrl-C or SIGTERM (under
:func:`pccseg.signals.handle_interrupts`, as the CLI runs it) saves a checkpoint of the step reached and
stops; the same command resumes. On CPU one thread per process by default (``threads``): torch's
default threads oversubscribe a small shared machine.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..io import read_json, remove_temps, write_json
from ..signals import save_on_interrupt
from . import board
from .checkpoint import prefixed, resume, save_checkpoint, save_pipeline
from .config import ToyTrainConfig
from .train_data import batch_images, encode_scenes, load_latents
from .unet_step import denoising_loss, descend, tokenize

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# the steps of a stage
def _steps(stage: str, step: int, steps: int, one_step, save, ckpt_every: int) -> None:
    """Run ``one_step(step) -> loss`` from ``step`` to ``steps``, logging every 50 steps; ``save(step)``
    every ``ckpt_every`` steps, at the end, and on Ctrl-C / SIGTERM (then ``KeyboardInterrupt`` goes on)."""
    t0, losses = time.perf_counter(), []

    def on_interrupt() -> None:
        log.warning("%s: stopped at step %d; checkpointing", stage, step)
        save(step)

    with save_on_interrupt(on_interrupt):
        while step < steps:
            losses.append(one_step(step))
            step += 1
            board.scalar(f"{stage}/loss", losses[-1], step)
            if step % 50 == 0:
                log.info("%s step %d/%d loss %.4f (%.2f s/step)", stage, step, steps, np.mean(losses[-50:]),
                         (time.perf_counter() - t0) / len(losses))
            if step % ckpt_every == 0 or step == steps:
                save(step)


# ----------------------------------------------------------------------------------------------------------
# stage 1: the VAE
def _grad_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


def train_vae(cfg: ToyTrainConfig, device: torch.device) -> Path:
    """Stage 1; returns the ``vae/final`` folder."""
    from .model import build_vae

    root = Path(cfg.out) / "vae"
    final = root / "final"
    if (final / "config.json").is_file():
        return final
    torch.manual_seed(cfg.seed)
    vae = build_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    last = root / "last"
    step, _, _ = resume(last, "vae", opt, {"vae": vae})

    def one_step(step: int) -> float:
        lr = cfg.vae_lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        # 64x64 windows of full-size scenes (the VAE is convolutional; 4x cheaper than whole images), and a
        # quarter of the batches whole scenes at 64x64 (the first UNet phase)
        seeds = [10_000_000 + step * cfg.vae_batch + i for i in range(cfg.vae_batch)]
        x = batch_images(seeds, 64, crop=None if step % 4 == 3 else 64).to(device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / x[0].numel()
        loss = (rec - x).abs().mean() + 0.5 * _grad_l1(rec, x) + cfg.vae_kl * kl * x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        return loss.item()

    _steps("vae", step, cfg.vae_steps, one_step, lambda n: save_checkpoint(last, n, opt, {"vae": vae}),
           cfg.ckpt_every)
    # the scaling factor: unit variance of the latents of fresh scenes
    vae.eval()
    with torch.no_grad():
        zs = [vae.encode(batch_images([20_000_000 + i * 16 + j for j in range(16)], 128).to(device)).latent_dist.mean
              for i in range(8)]
    std = float(torch.cat(zs).float().std())
    vae.register_to_config(scaling_factor=1.0 / std)
    save_pipeline(final, vae)
    log.info("vae: done, latent std %.3f", std)
    return final


def tune_decoder(cfg: ToyTrainConfig, vae_dir: Path, device: torch.device) -> Path:
    """Stage 1b: the VAE's decoder alone, on whole 128x128 scenes, the encoder frozen; returns the
    ``vae/decoder`` folder (the whole VAE with the tuned decoder).

    Stage 1 saw 64x64 windows and whole scenes at 64x64 only; its decoder blurs object edges at 128x128,
    and where two objects touch the blend takes the hue of a third class. The encoder, hence the latents the
    UNet learns, does not change, so this stage is independent of stage 3. ``decoder_steps = 0`` skips it.
    """
    from diffusers import AutoencoderKL

    root = Path(cfg.out) / "vae"
    final = root / "decoder"
    if cfg.decoder_steps == 0:
        return vae_dir
    if (final / "config.json").is_file():
        return final
    torch.manual_seed(cfg.seed + 1)
    vae = AutoencoderKL.from_pretrained(str(vae_dir)).to(device)
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    last = root / "decoder-last"
    step, _, _ = resume(last, "decoder", opt, {"vae": vae})

    def one_step(step: int) -> float:
        lr = cfg.decoder_lr * 0.5 * (1 + math.cos(math.pi * step / cfg.decoder_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        seeds = [30_000_000 + step * cfg.decoder_batch + i for i in range(cfg.decoder_batch)]
        x = batch_images(seeds, 128).to(device)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        rec = vae.decode(z).sample
        loss = (rec - x).abs().mean() + 0.5 * _grad_l1(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    _steps("decoder", step, cfg.decoder_steps, one_step, lambda n: save_checkpoint(last, n, opt, {"vae": vae}),
           cfg.ckpt_every)
    vae.eval()
    save_pipeline(final, vae)
    log.info("decoder: done")
    return final


# ----------------------------------------------------------------------------------------------------------
# stage 3: UNet + text encoder
@dataclass
class _EMA:
    decay: float
    shadow: dict[str, torch.Tensor] = field(default_factory=dict)

    @torch.no_grad()
    def update(self, named: list[tuple[str, torch.nn.Parameter]], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for name, p in named:
            s = self.shadow.get(name)
            if s is None:
                self.shadow[name] = p.detach().clone()
            else:
                s.lerp_(p.detach(), 1 - d)


def learning_rate(cfg: ToyTrainConfig, step: int) -> float:
    """The UNet stage's learning rate at ``step`` (0-based): a linear warm-up over ``warmup`` steps, then
    ``lr``, annealed linearly to 0 over the last ``decay_steps`` steps of ``low_steps + high_steps``."""
    total = cfg.low_steps + cfg.high_steps
    lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
    if step >= total - cfg.decay_steps:
        lr *= (total - step) / cfg.decay_steps
    return lr


def train_unet(cfg: ToyTrainConfig, vae_dir: Path, latents_dir: Path, device: torch.device,
               evaluate_fn=None) -> Path:
    """Stage 3; returns the final pipeline folder."""
    from ..capture.tokenizer import clip_tokenizer
    from .model import build_text_encoder, build_unet, noise_scheduler

    root = Path(cfg.out) / "unet"
    final = Path(cfg.out) / "pipeline"
    if (final / "model_index.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    unet, text = build_unet().to(device), build_text_encoder().to(device)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    named = [("unet." + n, p) for n, p in unet.named_parameters()] + [("text." + n, p) for n, p in text.named_parameters()]
    ema = _EMA(cfg.ema)
    sched = noise_scheduler()
    tok = clip_tokenizer()
    last = root / "last"
    models = {"unet": unet, "text": text}
    step, meta, saved = resume(last, "unet", opt, models)
    ema.shadow = {k[4:]: v.to(device) for k, v in saved.items() if k.startswith("ema.")}
    total = cfg.low_steps + cfg.high_steps
    rng = np.random.default_rng([cfg.seed, 1])
    if "rng" in meta:
        rng.bit_generator.state = meta["rng"]
    data: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    empty = tokenize(tok, [""])[0]

    def phase_data(size: int):
        if size not in data:
            data.clear()
            lat, caps = load_latents(latents_dir, cfg.n_train, size)
            data[size] = (lat, tokenize(tok, caps))
        return data[size]

    def save() -> None:
        save_checkpoint(last, step, opt, models, prefixed("ema", ema.shadow), rng=rng.bit_generator.state,
                    config=asdict(cfg))

    unet.train()
    text.train()
    t0, losses = time.perf_counter(), []
    try:
        while step < total:
            size, bs = (64, cfg.low_batch) if step < cfg.low_steps else (128, cfg.batch)
            lat, ids = phase_data(size)
            idx = torch.from_numpy(rng.integers(0, len(lat), bs))
            x0 = lat[idx].float().to(device)
            tokens = ids[idx].clone()
            tokens[torch.from_numpy(rng.random(bs) < cfg.uncond_prob)] = empty
            loss = denoising_loss(unet, text, sched, x0, tokens, rng, cfg.snr_gamma)
            lr = learning_rate(cfg, step)
            descend(opt, params, loss, lr)
            ema.update(named, step)
            step += 1
            losses.append(loss.item())
            board.scalar("unet/loss", losses[-1], step)
            if step % 25 == 0:
                row = {"step": step, "size": size, "loss": round(float(np.mean(losses[-25:])), 5), "lr": lr,
                       "s_per_step": round((time.perf_counter() - t0) / len(losses), 3), "time": round(time.time(), 1)}
                log.info("unet %s", row)
                board.scalars("unet", {k: row[k] for k in ("lr", "s_per_step")}, step)
                with open(root / "log.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
            if step % cfg.ckpt_every == 0 or step == total or step == cfg.low_steps:
                save()
            if evaluate_fn is not None and (step % cfg.eval_every == 0 or step == cfg.low_steps or step == total):
                pipe = _ema_pipeline(vae_dir, ema, device)
                save_pipeline(root / f"step-{step:06d}", pipe)
                res = evaluate_fn(pipe, size, step)
                board.scalars("eval", res, step)
                with open(root / "eval.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(res) + "\n")
                unet.train()
                text.train()
    except KeyboardInterrupt:
        log.warning("unet: stopped at step %d; checkpointing", step)
        save()
        raise
    pipe = _ema_pipeline(vae_dir, ema, device)
    save_pipeline(final, pipe)
    return final


def _ema_pipeline(vae_dir: Path, ema: _EMA, device: torch.device):
    """A pipeline with the EMA weights (copies; the training models are untouched)."""
    from diffusers import AutoencoderKL

    from .model import assemble, build_text_encoder, build_unet

    unet, text = build_unet(), build_text_encoder()
    unet.load_state_dict({k[5:]: v.cpu() for k, v in ema.shadow.items() if k.startswith("unet.")})
    text.load_state_dict({k[5:]: v.cpu() for k, v in ema.shadow.items() if k.startswith("text.")}, strict=False)
    vae = AutoencoderKL.from_pretrained(str(vae_dir))
    return assemble(vae.eval(), unet.eval(), text.eval()).to(device)


def train(cfg: ToyTrainConfig, evaluate: bool = True) -> Path:
    """Run (or resume) every stage; returns the final pipeline folder. Ctrl-C / SIGTERM checkpoint and
    raise ``KeyboardInterrupt`` (see the module docstring)."""
    from ..capture.pipeline import resolve_device

    device = resolve_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "vae", out / "latents", out / "unet"):   # what a killed run left
        remove_temps(folder, complete=lambda p: (p / "state.json").is_file())   # (a checkpoint: whole)
    cfg_path = out / "config.json"
    if cfg_path.is_file():
        old = read_json(cfg_path).get("config", {})
        changed = {k: (old.get(k), v) for k, v in asdict(cfg).items() if old.get(k) != v}
        if changed:
            log.warning("settings changed since the last start: %s",
                        ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    # what this start uses; earlier starts' settings stay in "history"
    history = read_json(cfg_path).get("history", []) if cfg_path.is_file() else []
    write_json(cfg_path, {"config": asdict(cfg), "history": history + [{"time": round(time.time()),
                                                                         "config": asdict(cfg)}]})
    eval_fn = None
    if evaluate:
        from .quality import training_eval

        eval_fn = lambda pipe, size, step: training_eval(pipe, size, step, cfg)  # noqa: E731
    with board.opened(out):                            # OUT/tensorboard: the loss curves, the evaluations
        vae_dir = train_vae(cfg, device)
        dec_dir = tune_decoder(cfg, vae_dir, device)
        lat_dir = encode_scenes(cfg, vae_dir, device)  # the encoder: the same with or without stage 1b
        return train_unet(cfg, dec_dir, lat_dir, device, eval_fn)

"""One step of the toy UNet's training, shared by ``pccseg toy train`` (:mod:`.train`) and the bench script
that trains a second toy model: the SNR-weighted noise-prediction loss and the clipped optimiser step."""

from __future__ import annotations

import numpy as np
import torch


def snr_weights(sched, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR loss weights min(SNR, ``gamma``) / SNR of timesteps t (B,) -> (B,)."""
    ac = sched.alphas_cumprod.to(t.device)[t]
    snr = ac / (1 - ac)
    return torch.clamp(snr, max=gamma) / snr


def denoising_loss(unet, text, sched, x0: torch.Tensor, tokens: torch.Tensor, rng: np.random.Generator,
                   snr_gamma: float) -> torch.Tensor:
    """The UNet's noise-prediction loss on one batch: noise and timesteps drawn from ``rng`` (in that order),
    per-sample squared error weighted by min(SNR, ``snr_gamma``) / SNR (0: unweighted), averaged.

    x0 (B, 4, h, w) latents, tokens (B, L) token ids -> a scalar loss."""
    device = x0.device
    noise = torch.from_numpy(rng.standard_normal(x0.shape, dtype=np.float32)).to(device)
    t = torch.from_numpy(rng.integers(0, sched.config.num_train_timesteps, len(x0))).long().to(device)
    pred = unet(sched.add_noise(x0, noise, t), t, text(tokens.to(device))[0]).sample
    w = snr_weights(sched, t, snr_gamma) if snr_gamma > 0 else torch.ones_like(t, dtype=torch.float32)
    return ((pred - noise) ** 2).mean(dim=(1, 2, 3)).mul(w).mean()


def descend(opt: torch.optim.Optimizer, params, loss: torch.Tensor, lr: float) -> None:
    """One optimiser step at learning rate ``lr``, gradients clipped to norm 1."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """Captions as token ids (B, L), padded to the tokenizer's length (the empty caption too)."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids

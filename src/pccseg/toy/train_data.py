"""The data of the toy training: rendered scenes as image batches (the VAE stages) and the latents of the
``n_train`` training scenes with their captions (stage 2, :func:`encode_scenes`; read by :func:`load_latents`),
in chunks of :data:`CHUNK` scenes (``chunk-XXXX.safetensors`` + ``.json``).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..io import read_json, save_tensors, write_json
from ..signals import hold_interrupts
from .config import ToyTrainConfig

log = logging.getLogger(__name__)

CHUNK = 1000


def batch_images(seeds: list[int], size: int, crop: int | None = None) -> torch.Tensor:
    """Rendered scenes as a (B, 3, s, s) float tensor in [-1, 1]: resized to ``size``, or a random
    ``crop`` x ``crop`` window (drawn from the scene's seed) of the full-size scene."""
    import cv2

    from .world import render_scene

    imgs = []
    for s in seeds:
        im = render_scene(s).image
        if crop is not None:
            y, x = np.random.default_rng([s, 1]).integers(0, im.shape[0] - crop + 1, 2)
            im = im[y:y + crop, x:x + crop]
        elif size != im.shape[0]:
            im = cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA)
        imgs.append(im)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x


def encode_scenes(cfg: ToyTrainConfig, vae_dir: Path, device: torch.device) -> Path:
    """Stage 2: render, caption and encode ``n_train`` scenes in chunks; returns the folder."""
    import cv2
    from diffusers import AutoencoderKL

    from .world import render_scene

    root = Path(cfg.out) / "latents"
    root.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL.from_pretrained(str(vae_dir)).to(device).eval()
    sf = vae.config.scaling_factor
    n_chunks = math.ceil(cfg.n_train / CHUNK)
    for c in range(n_chunks):
        path = root / f"chunk-{c:04d}.safetensors"
        if path.is_file() and (root / f"chunk-{c:04d}.json").is_file():
            continue
        t0 = time.perf_counter()
        seeds = list(range(c * CHUNK, min((c + 1) * CHUNK, cfg.n_train)))
        scenes = [render_scene(s) for s in seeds]
        out = {128: [], 64: []}
        with torch.no_grad():
            for i in range(0, len(scenes), 50):
                imgs = np.stack([s.image for s in scenes[i:i + 50]])
                for size in (128, 64):
                    ims = imgs if size == 128 else np.stack([cv2.resize(im, (64, 64), interpolation=cv2.INTER_AREA)
                                                             for im in imgs])
                    x = torch.from_numpy(ims).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1.0
                    out[size].append((vae.encode(x).latent_dist.mean * sf).half().cpu())
        with hold_interrupts():
            save_tensors(path, {"latents128": torch.cat(out[128]).contiguous(),
                                "latents64": torch.cat(out[64]).contiguous()})
            write_json(root / f"chunk-{c:04d}.json", {"seeds": seeds, "captions": [s.caption for s in scenes],
                                                       "classes": [list(s.classes) for s in scenes]})
        log.info("latents: chunk %d/%d in %.1f s", c + 1, n_chunks, time.perf_counter() - t0)
    return root


def load_latents(root: Path, n_train: int, size: int) -> tuple[torch.Tensor, list[str]]:
    from safetensors.torch import load_file

    lat, caps = [], []
    for c in range(math.ceil(n_train / CHUNK)):
        lat.append(load_file(str(root / f"chunk-{c:04d}.safetensors"))[f"latents{size}"])
        caps += read_json(root / f"chunk-{c:04d}.json")["captions"]
    return torch.cat(lat), caps

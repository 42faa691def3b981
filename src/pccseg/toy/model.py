"""The toy model: Stable Diffusion's architecture, small, for 128x128 images of the toy world.

* ``AutoencoderKL`` with 4x downsampling (16/32/64 channels): a 128x128 image has a 32x32x4 latent, so
  the UNet's finest attention level is 32x32, as fine relative to the objects as SD's 64x64 at 512.
* ``UNet2DConditionModel`` in SD 2.x's layout: four levels (32/64/96/96 channels at 32, 16, 8 and 4),
  cross-attention down and up blocks at the first three levels (``attn1`` self-attention and ``attn2``
  cross-attention, linear projections, heads of 16 dimensions: 2/4/6 heads), no attention at the last.
* ``CLIPTextModel`` 64 wide with 2 layers and CLIP's full 49,408-token vocabulary, with the real CLIP BPE
  tokenizer (:mod:`pccseg.capture.tokenizer`), trained with the UNet.
* SD's noise schedule (scaled linear, 1000 steps, epsilon prediction); sampling with DPM-Solver++.

:func:`toy_pipeline` builds it (random weights, or a saved folder); ``load_pipeline("toy")`` loads the
weights that ship with the package (:func:`weights_dir`).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from ..capture.tiny import SD_SCHEDULER
from .config import TOY_SIZE

LATENT_FACTOR = 4     #: VAE downsampling


def vae_config() -> dict:
    """AutoencoderKL: 3 blocks (4x downsampling), 16/32/64 channels, 4 latent channels, no mid attention."""
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                block_out_channels=(16, 32, 64), sample_size=TOY_SIZE, mid_block_add_attention=False,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)


def unet_config(cross_attention_dim: int = 64) -> dict:
    """UNet2DConditionModel: SD 2.x's block layout at 32/64/96/96 channels, heads of 16 dimensions."""
    return dict(
        sample_size=TOY_SIZE // LATENT_FACTOR, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 96, 96),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        mid_block_type="UNetMidBlock2DCrossAttn",
        attention_head_dim=(2, 4, 6, 6),   # diffusers' name for the number of heads (as in SD 2.x configs)
        cross_attention_dim=cross_attention_dim, norm_num_groups=16, use_linear_projection=True,
    )


def text_config() -> dict:
    """CLIPTextConfig: CLIP's vocabulary and 77-token context, 64 wide, 2 layers, 4 heads."""
    return dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, projection_dim=64, hidden_act="quick_gelu",
                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**vae_config())


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(text_config()["hidden_size"]))


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**text_config()))


def scheduler():
    """DPM-Solver++ (2M) on SD's noise schedule."""
    from diffusers import DPMSolverMultistepScheduler

    cfg = {k: v for k, v in SD_SCHEDULER.items() if k not in ("skip_prk_steps", "set_alpha_to_one")}
    return DPMSolverMultistepScheduler(**cfg, prediction_type="epsilon", algorithm_type="dpmsolver++")


def noise_scheduler():
    """The training-time DDPM schedule (the same betas)."""
    from diffusers import DDPMScheduler

    cfg = {k: v for k, v in SD_SCHEDULER.items() if k not in ("skip_prk_steps", "set_alpha_to_one", "steps_offset")}
    return DDPMScheduler(**cfg, prediction_type="epsilon")


def assemble(vae, unet, text_encoder):
    """A ``StableDiffusionPipeline`` from the three models (no safety checker, progress bar off)."""
    from diffusers import StableDiffusionPipeline

    from ..capture.tokenizer import clip_tokenizer

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def weights_dir() -> Path:
    """The diffusers folder of the toy model that ships with the package."""
    return Path(str(resources.files("pccseg") / "toy" / "weights"))


def export_weights(src: str | Path, dst: str | Path | None = None, dtype: torch.dtype = torch.float16) -> Path:
    """Write the pipeline folder ``src`` as the shipped weights (default :func:`weights_dir`), stored in
    ``dtype`` (float16: about 15 MB), atomically. Loading casts to the dtype asked for."""
    from ..io import atomic_path, respect_umask

    dst = Path(dst) if dst is not None else weights_dir()
    pipe = toy_pipeline(src)
    pipe.to(dtype=dtype)
    with atomic_path(dst, directory=True) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        for cfg in [tmp / "model_index.json", *tmp.glob("*/*config.json")]:   # no trace of the folder it came from
            data = json.loads(cfg.read_text())
            if data.pop("_name_or_path", None) is not None:
                cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        respect_umask(tmp)
    return dst


def toy_pipeline(path: str | Path | None = None, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
    """The toy ``StableDiffusionPipeline``: from ``path`` (a diffusers folder; default: the shipped
    weights, :func:`weights_dir`) on ``device`` in ``dtype``."""
    from diffusers import StableDiffusionPipeline

    from ..capture.diffusers_compat import dtype_kwarg
    from ..capture.tokenizer import clip_tokenizer
    from ..errors import InputError

    folder = Path(path) if path is not None else weights_dir()
    if not (folder / "model_index.json").is_file():
        raise InputError("the toy model's weights are missing (no model_index.json); reinstall pccseg or train "
                         "them with `pccseg toy train`", path=folder, field="--model")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(str(folder), tokenizer=clip_tokenizer(), safety_checker=None,
                                                       requires_safety_checker=False, **{dtype_kwarg(): dtype})
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise InputError(f"cannot load the toy model ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                         path=folder, field="--model") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)

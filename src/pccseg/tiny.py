"""A tiny Stable Diffusion pipeline with the real architecture and seeded random weights.

For tests, demos and benchmarks without model weights: every component is the diffusers / transformers
class that Stable Diffusion uses, built from a (small) config — a ``UNet2DConditionModel`` with
cross-attention down and up blocks (self-attention ``attn1`` and cross-attention ``attn2`` in the up blocks
at two resolutions), a ``CLIPTextModel`` with CLIP's real 49,408-token vocabulary, an 8x-downsampling
``AutoencoderKL``, the real CLIP tokenizer and SD's PNDM scheduler. The images are noise-like (the weights
are random) but the data flow, shapes and attention processors are exactly those of SD.
"""

from __future__ import annotations

import torch

#: Defaults that make ``pccseg generate --model tiny`` finish in seconds on a CPU.
TINY_HEIGHT = 128
TINY_WIDTH = 128
TINY_STEPS = 4

#: SD's noise schedule (SD 1.x / 2.x base scheduler_config.json).
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)


def tiny_unet_config(cross_attention_dim: int = 32) -> dict:
    """UNet2DConditionModel config: SD's block layout (CrossAttn, CrossAttn, Down / Up, CrossAttn, CrossAttn)
    with 32/64/64 channels, 2/4/4 heads of 16 dims, one layer per down block (two per up block)."""
    return dict(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        attention_head_dim=(2, 4, 4),  # diffusers' name for the number of heads (as in SD 2.x configs)
        cross_attention_dim=cross_attention_dim, norm_num_groups=8, use_linear_projection=True,
    )


def tiny_text_config() -> dict:
    """CLIPTextConfig: CLIP's vocabulary and context, 32 wide, 2 layers."""
    return dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, projection_dim=32, hidden_act="gelu",
                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def tiny_vae_config() -> dict:
    """AutoencoderKL config: 4 blocks (8x downsampling), 8/16/16/16 channels, 4 latent channels."""
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                block_out_channels=(8, 16, 16, 16), sample_size=128,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def tiny_pipeline(seed: int = 0, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """A diffusers ``StableDiffusionPipeline`` with SD's architecture, small, with seeded random weights.

    The same ``seed`` always gives the same weights (the global RNG state is left untouched). No safety
    checker. A 128x128 image with 4 steps takes a fraction of a second on a CPU.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_unet_config())
        vae = AutoencoderKL(**tiny_vae_config())
        text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config()))
    text_encoder.eval()
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
        scheduler=PNDMScheduler(**SD_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    return pipe

"""Tiny Stable Diffusion and SDXL pipelines with the real architectures and seeded random weights.

For tests, demos and benchmarks without model weights: every component is the diffusers / transformers
class that Stable Diffusion uses, built from a (small) config — a ``UNet2DConditionModel`` with
cross-attention down and up blocks (self-attention ``attn1`` and cross-attention ``attn2`` in the up blocks
at two resolutions), a ``CLIPTextModel`` with CLIP's real 49,408-token vocabulary, an 8x-downsampling
``AutoencoderKL``, the real CLIP tokenizer and SD's PNDM scheduler. The images are noise-like (the weights
are random) but the data flow, shapes and attention processors are exactly those of SD.
:func:`tiny_sdxl_pipeline` does the same for SDXL (``"tiny-sdxl"``): SDXL's block layout with several
transformer layers per block, two text encoders (the second with a projection), its text-and-time
conditioning and Euler scheduler.
"""

from __future__ import annotations

import torch

from .models import TINY_SIZE

TINY_HEIGHT, TINY_WIDTH = TINY_SIZE

#: SD's noise schedule (SD 1.x / 2.x base scheduler_config.json).
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)

#: SDXL's Euler sampler (stable-diffusion-xl-base-1.0 scheduler_config.json).
SDXL_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
                      prediction_type="epsilon", use_karras_sigmas=False)


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


def tiny_sdxl_unet_config() -> dict:
    """UNet2DConditionModel config with SDXL's layout: Down / CrossAttn / CrossAttn blocks (up: CrossAttn,
    CrossAttn, Up), 1/1/2 transformer layers per level (SDXL: 1/2/10), 32/64/64 channels, 2/4/4 heads of 16
    dims, cross-attention on both text encoders' features (32 + 32) and SDXL's text-and-time conditioning
    (the pooled text embedding, 32, and six size numbers of 8 dims)."""
    return dict(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 4),
        cross_attention_dim=64, norm_num_groups=8, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
    )


def sdxl_pipeline(unet_config: dict, text_config: dict, text2_config: dict, vae_config: dict, *, seed: int = 0):
    """A diffusers ``StableDiffusionXLPipeline`` built from configs with seeded random weights (float32, CPU).

    Two text encoders (``CLIPTextModel`` and ``CLIPTextModelWithProjection``), the real CLIP tokenizer for
    both (the second pads with "!" as SDXL's does), SDXL's Euler scheduler, no watermark. The same ``seed``
    always gives the same weights (the global RNG state is left untouched).
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .tokenizer import clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        text = CLIPTextModel(CLIPTextConfig(**text_config))
        text2 = CLIPTextModelWithProjection(CLIPTextConfig(**text2_config))
    pipe = StableDiffusionXLPipeline(
        vae=vae.eval(), text_encoder=text.eval(), text_encoder_2=text2.eval(), tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"), unet=unet.eval(), scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """A diffusers ``StableDiffusionXLPipeline`` with SDXL's architecture, small, with seeded random weights
    (``--model tiny-sdxl``): :func:`tiny_sdxl_unet_config`, two 2-layer CLIP text encoders of width 32, the
    tiny 8x VAE with SDXL's latent scale. 128x128 by default, like :func:`tiny_pipeline`."""
    vae = dict(tiny_vae_config(), scaling_factor=0.13025, force_upcast=True)
    pipe = sdxl_pipeline(tiny_sdxl_unet_config(), tiny_text_config(), tiny_text_config(), vae, seed=seed)
    pipe.to(device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    return pipe


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

"""Full-size Stable Diffusion 1.5 and SDXL architectures with random weights, built in-process.

For speed and memory benchmarks only (``benchmarks/generate.py``): the time a UNet step takes does not depend on
its weight values, so these give the real models' throughput without downloading gigabytes. The images are
noise. The shapes follow the published model configurations (SD 1.5: 860 M-parameter UNet, CLIP ViT-L/14 text
encoder; SDXL base: 2.6 B-parameter UNet, CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text encoders).
"""

from __future__ import annotations

from typing import Any

import torch

from diffcoremix.generate.tiny import clip_tokenizer, sd_pipeline
from diffcoremix.seeds import seeded_init


def _text_encoder(hidden: int, layers: int, heads: int, projection: int | None = None) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        max_position_embeddings=77,
        projection_dim=projection or hidden,
        hidden_act="quick_gelu" if projection is None else "gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _vae(scaling_factor: float) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=scaling_factor,
    )


def _scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )


def random_sd15_pipeline(seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """The Stable Diffusion 1.5 architecture (UNet, VAE, CLIP ViT-L/14 text encoder) with random weights."""
    from diffusers import UNet2DConditionModel

    with seeded_init(seed), torch.device("cpu"):
        unet = UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=768,
            attention_head_dim=8,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
        )
        pipe: Any = sd_pipeline(_vae(0.18215), _text_encoder(768, 12, 12), unet, _scheduler())
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def random_sdxl_pipeline(seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """The SDXL base architecture (2.6 B UNet, two text encoders, size conditioning) with random weights."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    with seeded_init(seed), torch.device("cpu"):
        unet = UNet2DConditionModel(
            sample_size=128,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        pipe: Any = StableDiffusionXLPipeline(
            vae=_vae(0.13025),
            text_encoder=_text_encoder(768, 12, 12),
            text_encoder_2=_text_encoder(1280, 32, 20, projection=1280),
            tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(),
            unet=unet,
            scheduler=_scheduler(),
        )
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)

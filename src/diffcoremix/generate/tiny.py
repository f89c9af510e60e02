"""The ``tiny`` presets: the real diffusers pipeline classes at tiny size with seeded random weights.

Built in-process, with nothing downloaded, the way diffusers' own fast tests build theirs: a two-block UNet, a
two-block VAE and a two-layer CLIP text encoder. The tokenizer is the real CLIP BPE tokenizer, built offline from
the vocabulary file that ``open_clip_torch`` ships (the same ids as OpenAI's CLIP tokenizer). The images are
noise-like, but every code path of generation (prompt encoding, classifier-free guidance with the negative
prompt, the denoising loop, VAE decoding, per-image generators) runs exactly as with full-size weights.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path
from typing import Any

from diffcoremix.seeds import seeded_init

CLIP_VOCAB_SIZE = 49408


@functools.cache
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, ...]]]:
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    path = Path(open_clip.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    # As in CLIP's SimpleTokenizer: the first line is a header; 49152 - 256 - 2 merges are used.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == CLIP_VOCAB_SIZE
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer() -> Any:
    """The real CLIP tokenizer (49,408 tokens, 77 positions), built offline from open_clip's BPE file."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe()
    # the tokenizers backend takes merges as (left, right) pairs; the type stubs only say "list of str"
    pairs: Any = list(merges)
    return CLIPTokenizer(vocab=dict(vocab), merges=pairs, model_max_length=77)


def _text_config(hidden: int, projection: int | None = None) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=projection or hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_act="gelu",
    )


def _vae(**overrides: Any) -> Any:
    """A two-block (one downsampling) VAE with four latent channels; ``overrides`` change its other settings."""
    from diffusers import AutoencoderKL

    settings: dict[str, Any] = {"block_out_channels": (8, 16), "norm_num_groups": 4, "sample_size": 64}
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        **{**settings, **overrides},
    )


def sd_pipeline(vae: Any, text_encoder: Any, unet: Any, scheduler: Any) -> Any:
    """A ``StableDiffusionPipeline`` of these components, the CLIP tokenizer, and no safety checker."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _unet(**kwargs: Any) -> Any:
    """A two-level UNet (one plain and one cross-attention block) with the family-specific ``kwargs``."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=16,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        **{"in_channels": 4, **kwargs},
    )


def tiny_sd_pipeline(seed: int = 0) -> Any:
    """A ``StableDiffusionPipeline`` (the SD 1.x family) with tiny, seeded random weights."""
    from transformers import CLIPTextModel

    with seeded_init(seed):
        vae = _vae()  # built in this order: the seeded weights depend on it
        text_encoder = CLIPTextModel(_text_config(32))
        unet = _unet(cross_attention_dim=32, attention_head_dim=4)
        return sd_pipeline(vae, text_encoder, unet, _scheduler())


def tiny_ip2p_pipeline(seed: int = 0) -> Any:
    """A ``StableDiffusionInstructPix2PixPipeline`` with tiny, seeded random weights: the SD 1.x pieces with a UNet of
    8 input channels (the noisy latents and the source image's latents, as InstructPix2Pix's)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from transformers import CLIPTextModel

    with seeded_init(seed):
        vae = _vae()
        text_encoder = CLIPTextModel(_text_config(32))
        unet = _unet(cross_attention_dim=32, attention_head_dim=4, in_channels=8)
        return StableDiffusionInstructPix2PixPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tokenizer(),
            unet=unet,
            scheduler=_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def tiny_sdxl_pipeline(seed: int = 0) -> Any:
    """A ``StableDiffusionXLPipeline`` (two text encoders, size conditioning) with tiny, seeded random weights."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    text_hidden, time_dim = 32, 8
    with seeded_init(seed):
        unet = _unet(
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            transformer_layers_per_block=(1, 1),
            # six size/crop ids embedded to time_dim each, plus text_encoder_2's pooled projection
            projection_class_embeddings_input_dim=6 * time_dim + text_hidden,
            cross_attention_dim=2 * text_hidden,  # the two encoders' hidden states, concatenated
        )
        return StableDiffusionXLPipeline(
            vae=_vae(),
            text_encoder=CLIPTextModel(_text_config(text_hidden)),
            text_encoder_2=CLIPTextModelWithProjection(_text_config(text_hidden, projection=text_hidden)),
            tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(),
            unet=unet,
            scheduler=_scheduler(),
            force_zeros_for_empty_prompt=False,
        )


def tiny_learnable_sd_pipeline(resolution: int = 32, seed: int = 0) -> Any:
    """A ``StableDiffusionPipeline`` small enough to learn a small dataset on a CPU (``finetune --preset tiny``).

    Not a product model: a tool for offline runs, demos and tests, so that what the filter, the judge and the
    mixing see has content. Its weights start random, so ``finetune`` trains the VAE first (a one-downsampling
    autoencoder: ``resolution``/2 latents, four channels, no attention) and then the UNet. The UNet has three
    levels with cross-attention at the lowest one only, and its text conditioning also enters every residual
    block through ``addition_embed_type="text"`` (the attention-pooled prompt embedding added to the time
    embedding), which is what lets a 1.4M-parameter network learn class-conditional images in minutes.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    if resolution < 16 or resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8 and at least 16, got {resolution}")
    with seeded_init(seed):
        vae = _vae(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, sample_size=resolution,
                   mid_block_add_attention=False)  # fmt: skip
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            sample_size=resolution // 2,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
            cross_attention_dim=32,
            attention_head_dim=8,
            addition_embed_type="text",
            addition_embed_type_num_heads=4,
        )
        return sd_pipeline(vae, CLIPTextModel(_text_config(32)), unet, _scheduler())

"""Stable Diffusion 1.x pipelines written as original single-file checkpoints (the LDM key layout).

A user's ``.safetensors`` download (``v1-5-pruned-emaonly.safetensors``) holds the UNet under
``model.diffusion_model.``, the VAE under ``first_stage_model.`` and the CLIP text encoder under
``cond_stage_model.transformer.``, with the original code's module names. diffusers reads such a file with
``from_single_file``; this module writes one from a pipeline built in-process, so that tests can drive the
single-file path without downloading one. The key names follow from the pipeline's own configuration (levels,
layers per block, which levels have attention), so the same code writes the tiny pipelines and SD 1.5's real
architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}  # fmt: skip
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}  # fmt: skip
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_prefixes(config: Any) -> dict[str, str]:
    """diffusers module prefix -> the original UNet's, for this UNet's levels and layers per block."""
    per_level = config.layers_per_block + 1  # the original counts a level's downsampler as one more input block
    levels = len(config.block_out_channels)
    prefixes: dict[str, str] = {}
    for i in range(levels):
        for j in range(config.layers_per_block):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{1 + i * per_level + j}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{1 + i * per_level + j}.1."
        prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * per_level}.0.op."
        up_has_attention = "CrossAttn" in config.up_block_types[i]
        for j in range(per_level):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * per_level + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * per_level + j}.1."
        last = i * per_level + config.layers_per_block
        prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{last}.{2 if up_has_attention else 1}."
    prefixes["mid_block.attentions.0."] = "middle_block.1."
    for j in range(2):
        prefixes[f"mid_block.resnets.{j}."] = f"middle_block.{2 * j}."
    return prefixes


def _rename(key: str, prefixes: dict[str, str], inner: dict[str, str]) -> str:
    """``key`` with its diffusers module prefix replaced, and its inner module names if the prefix is a resnet."""
    for old, new in prefixes.items():
        if key.startswith(old):
            rest = key[len(old) :]
            if "resnets" in old:
                head, _, tail = rest.partition(".")
                rest = f"{inner.get(head, head)}.{tail}"
            return new + rest
    return key


def unet_state_dict(unet: Any) -> dict[str, Any]:
    """The UNet's weights under the original ``model.diffusion_model.`` names."""
    prefixes = _unet_prefixes(unet.config)
    out = {}
    for key, value in unet.state_dict().items():
        module, _, param = key.rpartition(".")
        name = f"{_UNET_TOP[module]}.{param}" if module in _UNET_TOP else _rename(key, prefixes, _RESNET)
        out[f"model.diffusion_model.{name}"] = value
    return out


def _vae_prefixes(config: Any) -> dict[str, str]:
    levels = len(config.block_out_channels)
    prefixes: dict[str, str] = {}
    for i in range(levels):
        for j in range(config.layers_per_block):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        for j in range(config.layers_per_block + 1):  # decoder levels are numbered from the bottom
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{levels - 1 - i}.block.{j}."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{levels - 1 - i}.upsample."
    for part in ("encoder", "decoder"):
        for j in range(2):
            prefixes[f"{part}.mid_block.resnets.{j}."] = f"{part}.mid.block_{j + 1}."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    return prefixes


def vae_state_dict(vae: Any) -> dict[str, Any]:
    """The VAE's weights under the original ``first_stage_model.`` names (attention projections as 1x1 convs)."""
    prefixes = _vae_prefixes(vae.config)
    out = {}
    for key, value in vae.state_dict().items():
        name = _rename(key, prefixes, {"conv_shortcut": "nin_shortcut"})
        if ".mid.attn_1." in name:
            head, _, rest = name.partition(".mid.attn_1.")
            module, _, param = rest.rpartition(".")
            name = f"{head}.mid.attn_1.{_VAE_ATTENTION[module]}.{param}"
            if param == "weight" and value.ndim == 2:
                value = value[:, :, None, None]
        name = name.replace("conv_norm_out.", "norm_out.")
        out[f"first_stage_model.{name}"] = value
    return out


def save_sd_checkpoint(pipe: Any, path: Path, *, vae: bool = True) -> Path:
    """Write ``pipe`` (a ``StableDiffusionPipeline``) to ``path`` as an original single-file ``.safetensors``; with
    ``vae=False`` without the VAE (as some downloads are: the user must name one with ``--vae``)."""
    from safetensors.torch import save_file

    weights = {**unet_state_dict(pipe.unet), **(vae_state_dict(pipe.vae) if vae else {})}
    for key, value in pipe.text_encoder.state_dict().items():  # transformers 5 names them without text_model.
        name = key if key.startswith("text_model.") else f"text_model.{key}"
        weights[f"cond_stage_model.transformer.{name}"] = value
    save_file({k: v.detach().contiguous() for k, v in weights.items()}, path)
    return path


def save_checkpoint_without_vae(pipe: Any, path: Path) -> Path:
    """``pipe``'s UNet and text encoder as one original-layout ``.safetensors`` file (no VAE in it)."""
    return save_sd_checkpoint(pipe, path, vae=False)

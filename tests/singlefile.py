"""Tiny Stable Diffusion 1.x pipelines saved as original (LDM) single-file checkpoints, as the files users download
from model sites are laid out: ``model.diffusion_model.*`` (UNet), ``cond_stage_model.transformer.*`` (CLIP text
encoder) and, when baked in, ``first_stage_model.*`` (VAE). Only the UNet and the text encoder are written here:
that is a checkpoint "with no VAE baked in", which ``--vae`` completes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

UNET_PREFIX = "model.diffusion_model."
TEXT_PREFIX = "cond_stage_model.transformer."
_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}  # fmt: skip
_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))  # fmt: skip


def _block_names(blocks: int, per_block: int) -> dict[str, str]:
    """Diffusers' UNet module prefixes and their LDM names (the inverse of what diffusers' loader maps)."""
    names = {k + ".": v + "." for k, v in _TOP.items()}
    for b in range(blocks):
        for layer in range(per_block):
            ldm = f"input_blocks.{1 + b * (per_block + 1) + layer}"
            names[f"down_blocks.{b}.resnets.{layer}."] = f"{ldm}.0."
            names[f"down_blocks.{b}.attentions.{layer}."] = f"{ldm}.1."
        names[f"down_blocks.{b}.downsamplers.0.conv."] = f"input_blocks.{(b + 1) * (per_block + 1)}.0.op."
        for layer in range(per_block + 1):
            ldm = f"output_blocks.{b * (per_block + 1) + layer}"
            names[f"up_blocks.{b}.resnets.{layer}."] = f"{ldm}.0."
            names[f"up_blocks.{b}.attentions.{layer}."] = f"{ldm}.1."
    names |= {"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
              "mid_block.resnets.1.": "middle_block.2."}  # fmt: skip
    return names


def unet_to_ldm(unet: Any) -> dict[str, Any]:
    """The UNet's weights under their original (LDM) names, ``model.diffusion_model.`` included."""
    config = unet.config
    blocks, per_block = len(config.block_out_channels), config.layers_per_block
    names = _block_names(blocks, per_block)
    state = unet.state_dict()
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith("up_blocks.") and ".upsamplers.0.conv." in key:
            b = int(key.split(".")[1])
            has_attention = any(k.startswith(f"up_blocks.{b}.attentions.") for k in state)
            ldm = f"output_blocks.{b * (per_block + 1) + per_block}.{2 if has_attention else 1}.conv."
            out[UNET_PREFIX + ldm + key.rsplit(".", 1)[1]] = value
            continue
        prefix = max((p for p in names if key.startswith(p)), key=len)
        rest = key[len(prefix) :]
        if ".resnets." in prefix:
            for new, old in _RESNET:
                rest = rest.replace(new, old, 1) if rest.startswith(new) else rest
        out[UNET_PREFIX + names[prefix] + rest] = value
    return out


def save_checkpoint_without_vae(pipe: Any, path: Path) -> Path:
    """``pipe``'s UNet and text encoder as one original-layout ``.safetensors`` file (no VAE in it)."""
    from safetensors.torch import save_file

    tensors = unet_to_ldm(pipe.unet)
    text = pipe.text_encoder.state_dict()  # transformers 5 names them without the "text_model." of the files
    tensors |= {TEXT_PREFIX + ("" if k.startswith("text_model.") else "text_model.") + k: v for k, v in text.items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    return path

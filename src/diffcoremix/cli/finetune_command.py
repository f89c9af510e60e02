"""``diffcoremix finetune``: adapt the generator to DATA (LoRA or full), then ``generate --model/--lora MODEL``
(:func:`diffcoremix.finetune.finetune`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffcoremix.cli.commands import Command, add_config_file, add_overwrite, show_progress
from diffcoremix.cli.options import add_config_options, config_from_args
from diffcoremix.cli.train_command import add_dataset_source_arguments, resolve_dataset
from diffcoremix.data.sources import DataConfig
from diffcoremix.finetune.config import FinetuneConfig


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data", type=Path,
        help="training images: class folders, or a torchvision dataset name (cifar10, flowers102, ...)",
    )  # fmt: skip
    add_dataset_source_arguments(parser)
    parser.add_argument(
        "-o", "--output", type=Path, required=True, metavar="MODEL",
        help="the model folder: a diffusers pipeline (full) or LoRA weights (lora), with finetune.json, loss.png",
    )  # fmt: skip
    add_overwrite(parser)
    add_config_file(parser)
    add_config_options(parser, FinetuneConfig)
    add_config_options(parser, DataConfig)


def _run(args: argparse.Namespace) -> int:
    from diffcoremix.finetune import finetune  # imports torch and diffusers: only when fine-tuning

    config: FinetuneConfig = config_from_args(FinetuneConfig, args, "finetune")
    data = resolve_dataset(args, args.data, "train")
    assert data is not None  # DATA is a required argument
    data_config: DataConfig = config_from_args(DataConfig, args, "data")
    result = finetune(
        data, args.output, config, data_config=data_config, overwrite=args.overwrite, progress=show_progress(args)
    )
    info = result.info
    print(
        f"{info['method']} fine-tuning of {info['base_model']} on {info['images']} image(s): {info['steps']} steps"
        + (f" (+{info['vae_steps']} VAE steps)" if info.get("vae_steps") else "")
        + f", final loss {info['final_loss']:.4f}"
    )
    flag = "--lora" if info["method"] == "lora" else "--model"
    print(f"model: {result.model}   loss curve: {result.model / 'loss.png'}")
    print(f"use it: diffcoremix generate DATA -o OUT --preset {info['preset']} {flag} {result.model}")
    return 0


FINETUNE_COMMAND = Command(
    "finetune",
    "fine-tune the generator on DATA (LoRA adapters, or every UNet weight; the tiny preset learns on a CPU), "
    "for generate --model/--lora",
    _arguments,
    _run,
    FinetuneConfig,
)

"""``diffcoremix train``: one classifier, one method, one recipe (a thin shell over :func:`diffcoremix.train.train`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffcoremix.cli.commands import Command, add_config_file, add_overwrite, show_progress
from diffcoremix.cli.options import add_config_options, config_from_args
from diffcoremix.data.sources import DataConfig
from diffcoremix.train.config import TrainConfig
from diffcoremix.train.loop import train

TRAIN_ALIASES = {"batch_size": ("-b",), "workers": ("-j",), "init": ("--initial-checkpoint",),
                 "method": ("--usage",), "mix_prob": ("--synthetic-prob",)}  # fmt: skip
"""timm ``train.py`` spellings, and DiffDA-Eval's words for how synthetic images enter (``--usage fc``)."""


def add_dataset_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--download`` and ``--data-dir``: for datasets given by torchvision name instead of a folder."""
    parser.add_argument(
        "--download", action="store_true", help="let torchvision download a dataset given by name (needs a network)"
    )
    parser.add_argument(
        "--data-dir", type=Path, metavar="ROOT",
        help="where datasets given by name are kept as class folders [$DIFFCOREMIX_DATA_DIR or "
        "~/.cache/diffcoremix/datasets]",
    )  # fmt: skip


def resolve_dataset(args: argparse.Namespace, spec: Path | None, split: str) -> Path | None:
    """A folder as given, or a torchvision dataset name (``cifar100``) materialised as class folders once."""
    if spec is None:
        return None
    from diffcoremix.data.torchvision_sets import resolve_data

    return resolve_data(spec, split=split, root=args.data_dir, download=args.download, progress=show_progress(args))


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """DATA and the evaluation and generated sets (shared by ``train`` and ``compare``)."""
    names = "class folders, or a torchvision dataset name (cifar10, cifar100, flowers102, stanford_cars, ...)"
    parser.add_argument("data", type=Path, help=f"training set: {names}")
    parser.add_argument("--val", type=Path, help=f"validation set, evaluated after every epoch: {names}")
    parser.add_argument("--test", type=Path, help=f"test set, evaluated at the end: {names}")
    add_dataset_source_arguments(parser)
    parser.add_argument(
        "--synthetic",
        type=Path,
        metavar="OUT",
        help="a filtered generation run (augment/filter output): the partners, extra samples (fc) or samples (fr) of "
        "the methods that use generated images",
    )


def add_recipe_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    add_config_file(parser)
    add_config_options(parser, TrainConfig, skip=skip, aliases=TRAIN_ALIASES)
    add_config_options(parser, DataConfig)


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="RUN", help="the run folder")
    parser.add_argument(
        "--log-samples", action="store_true", help="write RUN/samples.jsonl: the images each process used per step"
    )
    add_overwrite(parser)
    add_recipe_arguments(parser)


def resolve_data_arguments(args: argparse.Namespace) -> None:
    """Turn dataset names among DATA, --val and --test into their class folders (train, val and test splits)."""
    args.data = resolve_dataset(args, args.data, "train")
    args.val = resolve_dataset(args, args.val, "val")
    args.test = resolve_dataset(args, args.test, "test")


def _run(args: argparse.Namespace) -> int:
    config: TrainConfig = config_from_args(TrainConfig, args, "train")
    resolve_data_arguments(args)
    data_config: DataConfig = config_from_args(DataConfig, args, "data")
    result = train(
        args.data,
        config=config,
        output=args.output,
        val=args.val,
        test=args.test,
        synthetic=args.synthetic,
        data_config=data_config,
        overwrite=args.overwrite,
        progress=show_progress(args),
        log_samples=args.log_samples,
    )
    summary = result.summary
    parts = [f"{summary['method']} on {summary['model']}: {summary['steps']} steps"]
    for name in ("val", "test"):
        figures = summary.get(name)
        if figures and figures.get("top1") is not None:
            parts.append(f"{name} top-1 {100 * figures['top1']:.1f}% top-5 {100 * figures['top5']:.1f}%")
    step_s = summary["time"]["step_s"]
    if step_s:
        parts.append(f"{1000 * step_s:.0f} ms/step")
    print("; ".join(parts))
    print(f"run: {result.run}")
    return 0


TRAIN_COMMAND = Command(
    "train",
    "train a classifier (timm model or resnet20) with a method: none, mixup, cutmix, or a way synthetic images "
    "enter (--usage fc, fr, lrr, grr, diffcoremix, diffusemix)",
    _arguments,
    _run,
    TrainConfig,
)

"""``diffcoremix eval``: top-1, top-5 and loss of trained runs on a test set, with per-class accuracy, confusion
matrices and Grad-CAM maps written to a folder (:func:`diffcoremix.train.evaluation.evaluate`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffcoremix.cli.commands import Command, add_overwrite, show_progress
from diffcoremix.cli.options import add_config_options, config_from_args
from diffcoremix.cli.train_command import add_dataset_source_arguments, resolve_dataset
from diffcoremix.data.sources import DataConfig
from diffcoremix.errors import ConfigError


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="finished training run folder(s)")
    parser.add_argument(
        "--data", type=Path, required=True,
        help="test set: class folders (its classes must be classes of every RUN, matched by folder name), or a "
        "torchvision dataset name (its test split)",
    )  # fmt: skip
    add_dataset_source_arguments(parser)
    parser.add_argument(
        "-o", "--output", type=Path,
        help="folder for eval.json, eval.csv, per_class.csv, confusion/<run>.png and saliency.png; needed with "
        "--saliency or several RUNs (without it, the table is only printed)",
    )  # fmt: skip
    parser.add_argument(
        "--saliency", type=int, default=0, metavar="N",
        help="also draw Grad-CAM maps of N test images (seeded, spread over the classes), one column per RUN [0]",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the choice of the saliency images [0]")
    parser.add_argument("-b", "--batch-size", type=int, default=256, help="images per forward pass [256]")
    parser.add_argument("--device", default="auto", help="cuda, cpu, mps, or auto [auto]")
    parser.add_argument("-j", "--workers", type=int, default=0, help="DataLoader worker processes [0]")
    add_overwrite(parser)
    add_config_options(parser, DataConfig)


def _run(args: argparse.Namespace) -> int:
    from diffcoremix.train.evaluation import evaluate  # imports torch: only when evaluating

    if args.output is None and (args.saliency or len(args.runs) > 1):
        raise ConfigError("output", None, "a folder with --saliency or several RUNs")
    data = resolve_dataset(args, args.data, "test")
    listing = config_from_args(DataConfig, args, "data").select(data)
    results = evaluate(args.runs, listing, output=args.output, saliency=args.saliency, batch_size=args.batch_size,
                       device=args.device, workers=args.workers, progress=show_progress(args), seed=args.seed,
                       overwrite=args.overwrite)  # fmt: skip
    width = max(len("run"), *(len(r.name) for r in results))
    top_k = {r.top_k for r in results}
    top = f"top-{top_k.pop()}" if len(top_k) == 1 else "top-k"
    print(f"{'run':<{width}}  {'top-1':>7}  {top:>7}  {'loss':>7}  {'n':>6}")
    for r in results:
        print(f"{r.name:<{width}}  {r.top1:>7.2%}  {r.top5:>7.2%}  {r.loss:>7.4f}  {r.n:>6}")
    if args.output is not None:
        print(f"figures: {args.output / 'eval.json'}   plots: {args.output / 'confusion'}"
              + (f"   saliency: {args.output / 'saliency.png'}" if args.saliency else ""))  # fmt: skip
    return 0


EVAL_COMMAND = Command(
    name="eval",
    help="top-1, top-5, per-class accuracy, confusion matrices and Grad-CAM maps of trained runs on a test set",
    add_arguments=_arguments,
    run=_run,
)

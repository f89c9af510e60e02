"""``diffcoremix judge``: an independent classifier labels every generated image of OUT and agreement with its
prompt's class is recorded (a thin shell over :func:`diffcoremix.judge.judge`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffcoremix.cli.commands import Command, show_progress
from diffcoremix.cli.options import add_config_options, config_from_args
from diffcoremix.cluster.config import ExecutorConfig


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, metavar="OUT", help="a generate or augment output folder")
    parser.add_argument(
        "--classifier", required=True, metavar="SPEC",
        help="the judge: resnet56:CKPT or resnet20:CKPT (the CIFAR-10 ResNets; cifar-resnet:CKPT for any depth), "
        "run:RUN or a train RUN folder (its classes and evaluation transform), or an embedder with a text tower "
        "(tiny, open_clip:MODEL:WEIGHTS, hf:FOLDER: zero-shot, 'a photo of a {class}'). Classes are matched to OUT's "
        "by name. Never the filter's embedder: a judge that is the --embedder OUT was filtered with is refused",
    )  # fmt: skip
    parser.add_argument("-b", "--batch-size", type=int, default=64, help="images per forward pass [64]")
    parser.add_argument("--device", default="auto", help="cuda, cpu, mps, or auto [auto]")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="judge every image afresh (by default a rerun judges only the images this judge has not judged as "
        "they are now)",
    )  # fmt: skip
    add_config_options(parser, ExecutorConfig)


def _run(args: argparse.Namespace) -> int:
    from diffcoremix.judge import judge  # imports torch: only when judging

    result = judge(args.out, args.classifier, batch_size=args.batch_size, device=args.device,
                   overwrite=args.overwrite, executor=config_from_args(ExecutorConfig, args, "executor"),
                   progress=show_progress(args))  # fmt: skip
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.to_text())
    print(f"labels: {args.out / 'judge.jsonl'} (columns of read_manifest)")
    return 0


JUDGE_COMMAND = Command(
    name="judge",
    help="label every generated image with an independent classifier (never the filter's embedder) and record "
    "agreement with its prompt's class",
    add_arguments=_arguments,
    run=_run,
)

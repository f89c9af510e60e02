"""``diffcoremix compare``: every method with every seed under one recipe, then the table and the overhead plot (a
thin shell over :func:`diffcoremix.train.comparison.compare`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffcoremix.cli.commands import Command, add_overwrite, show_progress
from diffcoremix.cli.options import config_from_args
from diffcoremix.cli.train_command import add_data_arguments, add_recipe_arguments, resolve_data_arguments
from diffcoremix.data.sources import DataConfig
from diffcoremix.train.comparison import PLOT_FILE, RESULTS_CSV, RESULTS_MD, RUNS_CSV, RUNS_DIR, compare
from diffcoremix.train.config import METHODS, TrainConfig

PER_RUN = ("method", "seed")
"""Recipe options that compare sets per run (from --methods and --seeds)."""


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument(
        "--methods", required=True, metavar="M,M,...",
        help=f"methods to compare, comma-separated: {', '.join(METHODS)}; METHOD@real, @generated or @none sets a "
        "pair method's partners (else --partners). none is the baseline of the differences and the overhead",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", default="0", metavar="S,S,...",
        help="seeds, comma-separated: each method is trained once per seed; differences are paired by seed [0]",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output", type=Path, required=True, metavar="DIR",
        help=f"the compare folder: {RUNS_DIR}/<method>-seed<seed>/ (one train run each, resumable), {RESULTS_MD}, "
        f"{RESULTS_CSV}, {RUNS_CSV}, {PLOT_FILE}",
    )  # fmt: skip
    add_overwrite(parser)
    add_recipe_arguments(parser, skip=PER_RUN)


def _run(args: argparse.Namespace) -> int:
    config: TrainConfig = config_from_args(TrainConfig, args, "train", skip=PER_RUN)
    data_config: DataConfig = config_from_args(DataConfig, args, "data")
    resolve_data_arguments(args)
    result = compare(
        args.data, args.methods, args.seeds, config=config, output=args.output, val=args.val, test=args.test,
        synthetic=args.synthetic, data_config=data_config, overwrite=args.overwrite, progress=show_progress(args),
    )  # fmt: skip
    print(result.table)
    out = result.output
    print(f"table: {out / RESULTS_MD} ({out / RESULTS_CSV}); runs: {out / RUNS_CSV}, {out / RUNS_DIR}/; "
          f"overhead against accuracy: {out / PLOT_FILE}")  # fmt: skip
    return 0


COMPARE_COMMAND = Command(
    "compare",
    "train several methods with several seeds under one recipe and step budget; table (mean ± std, paired "
    "differences to none with 95% CIs, time overhead) and the overhead-accuracy plot",
    _arguments,
    _run,
    TrainConfig,
)

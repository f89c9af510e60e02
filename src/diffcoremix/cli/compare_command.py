"""``diffcoremix compare``: every method with every seed under one recipe, then the table and the overhead plot (a
thin shell over :func:`diffcoremix.train.comparison.compare`, and :func:`diffcoremix.recipes.compare_recipes` for the
peers' recipes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffcoremix.cli.commands import Command, add_overwrite, show_progress
from diffcoremix.cli.options import config_from_args
from diffcoremix.cli.train_command import add_data_arguments, add_recipe_arguments, resolve_data_arguments
from diffcoremix.data.sources import DataConfig
from diffcoremix.errors import ConfigError
from diffcoremix.recipes import RECIPES, compare_recipes
from diffcoremix.train.comparison import BASELINE, PLOT_FILE, RESULTS_CSV, RESULTS_MD, RUNS_CSV, RUNS_DIR, compare
from diffcoremix.train.config import METHODS, TrainConfig

PER_RUN = ("method", "seed")
"""Recipe options that compare sets per run (from --methods and --seeds)."""


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument(
        "--methods", metavar="M,M,...",
        help=f"methods to compare, comma-separated: {', '.join(METHODS)}; METHOD@real, @generated or @none sets a "
        "pair method's partners (else --partners). none is the baseline of the differences and the overhead "
        "[none with --recipes]",
    )  # fmt: skip
    parser.add_argument(
        "--recipes", metavar="R,R,...",
        help=f"the peers' recipes to compare, comma-separated: {', '.join(RECIPES.names())} (diffcoremix presets "
        "describes them); each trains on --synthetic SYN's SYN/<recipe> (made by `augment DATA -o SYN/<recipe> "
        "--recipe <recipe>`) with its own method and p, in the row recipe:<recipe>",
    )  # fmt: skip
    parser.add_argument(
        "--build", action="store_true",
        help="with --recipes: first make (or finish) the missing sets by augment with each recipe's settings under "
        "the --config file's generate, prompts and filter sections",
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
    if args.methods is None and args.recipes is None:
        raise ConfigError("methods", None, "a comma-separated list of methods (or --recipes R,R,...)")
    if args.recipes is None and args.build:
        raise ConfigError("build", True, "given with --recipes only (it makes the recipes' synthetic sets)")
    if args.recipes is not None and args.synthetic is None:
        raise ConfigError("synthetic", None, "the folder of the recipes' synthetic sets with --recipes (SYN: "
                          "SYN/<recipe> each)")  # fmt: skip
    resolve_data_arguments(args)
    progress = show_progress(args)
    if args.recipes is not None:
        result = compare_recipes(
            args.data, args.recipes, args.seeds, synthetic=args.synthetic, methods=args.methods or BASELINE,
            config=config, config_file=args.config, build=args.build, output=args.output, val=args.val,
            test=args.test, data_config=data_config, overwrite=args.overwrite, progress=progress,
        )  # fmt: skip
    else:
        result = compare(
            args.data, args.methods, args.seeds, config=config, output=args.output, val=args.val, test=args.test,
            synthetic=args.synthetic, data_config=data_config, overwrite=args.overwrite, progress=progress,
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

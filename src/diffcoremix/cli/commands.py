"""The subcommands: each adds its arguments to a parser and maps them onto one library call.

A command returns its exit status; errors propagate as :class:`~diffcoremix.errors.DiffCoReMixError` and are
turned into one-line messages by :mod:`diffcoremix.cli.main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffcoremix.atomic import atomic_write_text
from diffcoremix.cells import text_cell
from diffcoremix.cli.options import add_config_options, config_from_args, config_layers
from diffcoremix.cluster.config import ExecutorConfig
from diffcoremix.config import check_config_target, write_resolved_config
from diffcoremix.counterparts import STREAMED_BYTES_PER_CANDIDATE
from diffcoremix.data.checks import ScanConfig
from diffcoremix.data.sample import make_sample_dataset
from diffcoremix.data.scan import scan_dataset
from diffcoremix.data.sources import DataConfig, usable_sources
from diffcoremix.filter.config import FilterConfig
from diffcoremix.generate.config import GenerateConfig
from diffcoremix.generate.presets import GENERATOR_PRESETS
from diffcoremix.manifest.layout import check_separate
from diffcoremix.manifest.records import MANIFEST_DIR
from diffcoremix.modes import COUNTERPART_MODES
from diffcoremix.prompts.builder import PromptsConfig, build_prompts
from diffcoremix.prompts.packs import list_packs, load_pack
from diffcoremix.recipes import RECIPES, Recipe, describe

logger = logging.getLogger("diffcoremix.cli")


@dataclass(frozen=True)
class Command:
    """One subcommand."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    config_class: type | None = None
    """The stage config whose fields are options of this command (for error messages in CLI spelling)."""


def show_progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() and getattr(args, "quiet", 0) == 0


def add_config_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE|PRESET",
        help="YAML file (flat, or with one section per stage) or the name of a shipped preset",
    )


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh: delete the files of the earlier run in OUT first (never files diffcoremix did not make)",
    )


def _data_config(args: argparse.Namespace) -> DataConfig:
    return config_from_args(DataConfig, args, "data")  # type: ignore[no-any-return]


def _check_file_output(data: Path, output: Path | None) -> None:
    """A file written beside a command's report must not land inside DATA, nor replace a file of the user's (its
    resolved config goes beside it): both are refused before any work."""
    if output is not None:
        check_separate(data, output)
        check_config_target(output.with_suffix(".config.yaml"))


# --- scan -------------------------------------------------------------------------------------------------------


def _scan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="class-folder dataset (one sub-folder per class)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument(
        "-o", "--output", type=Path, help="also write the JSON report to this file (and its config beside it)"
    )
    add_config_file(parser)
    add_config_options(parser, ScanConfig)
    add_config_options(parser, DataConfig)


def _scan(args: argparse.Namespace) -> int:
    config = config_from_args(ScanConfig, args, "scan")
    _check_file_output(args.data, args.output)
    report = scan_dataset(_data_config(args).select(args.data), config, progress=show_progress(args))
    document = report.to_dict()
    if args.output:
        atomic_write_text(args.output, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        write_resolved_config(args.output.with_suffix(".config.yaml"), {"scan": config}, data=args.data)
    print(json.dumps(document, indent=2, ensure_ascii=False) if args.json else report.to_text())
    if report.problems:
        logger.warning("%d problem(s) found in %s", len(report.problems), args.data)
    return 1 if (config.strict and report.problems) else 0


# --- prompts ----------------------------------------------------------------------------------------------------


def _prompts_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="class-folder dataset")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="JSONL file to write (one record per candidate)"
    )
    add_config_file(parser)
    add_config_options(parser, PromptsConfig)
    add_config_options(parser, DataConfig)


def _prompts(args: argparse.Namespace) -> int:
    config = config_from_args(PromptsConfig, args, "prompts")
    if config.rank_by is not None:  # the resolved config names the ranking run by its weights
        config = dataclasses.replace(config, rank_by_sha256=config.rank_by_weights())
    _check_file_output(args.data, args.output)
    progress = show_progress(args)
    plan = build_prompts(usable_sources(args.data, _data_config(args), progress=progress).listing, config,
                         progress=progress)  # fmt: skip
    plan.check_fits(STREAMED_BYTES_PER_CANDIDATE)  # what generate would need to run it
    plan.write_jsonl(args.output)  # streamed: the plan is never held whole
    plan.warn_conflicts()
    config_path = write_resolved_config(
        args.output.with_suffix(".config.yaml"),
        {"prompts": config},
        data=args.data,
        pack_file=plan.pack.source,
    )
    print(f"wrote {len(plan)} prompts for {plan.sources} source images to {args.output} (config: {config_path})")
    return 0


# --- generate -------------------------------------------------------------------------------------------------


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="class-folder dataset (read only)")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="output folder (images, manifest, config; resumable)"
    )
    add_overwrite(parser)
    add_config_file(parser)
    add_config_options(parser, GenerateConfig)
    add_config_options(parser, PromptsConfig)
    add_config_options(parser, DataConfig)
    add_config_options(parser, ExecutorConfig)


def chosen_recipe(args: argparse.Namespace) -> Recipe | None:
    """The recipe of ``--recipe NAME``, else of the ``--config`` file's ``generate: {recipe: NAME}``; None if neither.

    Raises:
        UnknownNameError: no such recipe (the message lists them).
    """
    file_layer, flags = config_layers(GenerateConfig, args, "generate")
    name = flags.get("recipe", file_layer.get("recipe"))
    return RECIPES.get(name) if name is not None else None


def recipe_config(cls: type, args: argparse.Namespace, section: str, *, skip: tuple[str, ...] = ()) -> Any:
    """:func:`config_from_args` with the chosen recipe's options (if any) between the defaults and ``--config``:
    dataclass defaults < recipe < --config < flags."""
    recipe = chosen_recipe(args)
    if recipe is not None and section == "generate":
        file_layer, flags = config_layers(cls, args, section, skip=skip)
        recipe.check_masks({**file_layer, **flags})  # in the recipe's words, before GenerateConfig's own check
    defaults = recipe.layer(section) if recipe is not None else None
    return config_from_args(cls, args, section, skip=skip, defaults=defaults)


def _generate(args: argparse.Namespace) -> int:
    from diffcoremix.cluster import generate  # imports torch: only when generating

    prompts = recipe_config(PromptsConfig, args, "prompts")
    config = recipe_config(GenerateConfig, args, "generate")
    executor = config_from_args(ExecutorConfig, args, "executor")
    summary = generate(args.data, args.output, prompts, config, executor, data_config=_data_config(args),
                       overwrite=args.overwrite, progress=show_progress(args))  # fmt: skip
    where = f" on {executor.executor}" if executor.on_ray else " in this shard"
    flagged = f", {summary.flagged} flagged by the safety checker" if summary.flagged else ""
    print(
        f"{summary.generated} generated, {summary.skipped} already done, {summary.failed} failed{flagged} "
        f"({summary.shard} of {summary.planned} candidates{where}) in {summary.seconds:.1f} s -> "
        f"{summary.out} (manifest: {summary.out / MANIFEST_DIR})"
    )
    return 0


def _filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="a generate output folder")
    parser.add_argument("--data", type=Path, help="the real dataset [default: the one generate recorded]")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_config_file(parser)
    add_config_options(parser, FilterConfig)
    add_config_options(parser, DataConfig)
    add_config_options(parser, ExecutorConfig)


def _filter(args: argparse.Namespace) -> int:
    from diffcoremix.cluster import filter_run  # imports torch: only when filtering

    config = config_from_args(FilterConfig, args, "filter")
    executor = config_from_args(ExecutorConfig, args, "executor")
    subset = _data_config(args) if {"classes", "max_per_class"} & set(vars(args)) else None  # else the run's own
    report = filter_run(args.out, config, executor, data=args.data, data_config=subset, progress=show_progress(args))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    if not config.calibrate:
        print(f"accepted images: {args.out / 'train'}   rejected: {args.out / 'rejected'}")
    return 0


# --- augment ----------------------------------------------------------------------------------------------------

_FILTER_SHARED = ("batch_size", "device", "loader_workers", "calibrate", "cache_dir")
"""Filter options that augment does not expose (it shares the generation's device; calibration is its own job)."""


def _augment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="class-folder dataset (read only)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument(
        "--retries", type=int, default=0, metavar="R",
        help="regenerate a rejected candidate with a new seed up to R times, until its class's budget is met [0]",
    )  # fmt: skip
    add_overwrite(parser)
    add_config_file(parser)
    add_config_options(parser, GenerateConfig)
    add_config_options(parser, PromptsConfig)
    add_config_options(parser, FilterConfig, skip=_FILTER_SHARED)
    add_config_options(parser, DataConfig)
    add_config_options(parser, ExecutorConfig)


def _augment(args: argparse.Namespace) -> int:
    from diffcoremix.augmentation import augment  # imports torch: only when augmenting

    prompts = recipe_config(PromptsConfig, args, "prompts")
    generate_config = recipe_config(GenerateConfig, args, "generate")
    filter_config = recipe_config(FilterConfig, args, "filter", skip=_FILTER_SHARED)
    result = augment(
        args.data, args.output, prompts, generate_config, filter_config, retries=args.retries,
        data_config=_data_config(args), executor=config_from_args(ExecutorConfig, args, "executor"),
        overwrite=args.overwrite, progress=show_progress(args),
    )  # fmt: skip
    print(result.report.to_text())
    short = result.shortfall
    print(
        f"{sum(result.accepted.values())} accepted of a budget of {sum(result.budget.values())} after "
        f"{result.attempts} round(s)" + (f"; short in {len(short)} class(es)" if short else "; every budget met")
    )
    if short:  # which classes, and by how much: the user's next move is more --retries or a lower --threshold
        print("missing per class: " + ", ".join(f"{text_cell(c)} {n}" for c, n in sorted(short.items())))
    print(f"accepted images: {args.output / 'train'}   manifest: {args.output / MANIFEST_DIR}")
    return 0


def _preview_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="the real dataset")
    parser.add_argument("--synthetic", type=Path, required=True, help="a filtered generate/augment output folder")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--per-class", type=int, default=2, metavar="N", help="samples per class [2]")
    parser.add_argument("--max-classes", type=int, default=8, metavar="N", help="classes shown [8]")
    parser.add_argument("--size", type=int, default=128, metavar="PX", help="tile size [128]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the partner choice and the mixing [0]")
    add_config_options(parser, DataConfig)


def _preview(args: argparse.Namespace) -> int:
    from diffcoremix.mix.preview import mix_preview  # imports torch: only when previewing

    _check_file_output(args.data, args.output)
    path = mix_preview(_data_config(args).select(args.data), args.synthetic, args.output, per_class=args.per_class,
                       max_classes=args.max_classes, size=args.size, seed=args.seed)  # fmt: skip
    print(f"wrote {path} (columns: real, partner, pixel mix, patch mix)")
    return 0


def _presets_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _presets(args: argparse.Namespace) -> int:
    width = max(len(n) for n in GENERATOR_PRESETS.names())
    for name in GENERATOR_PRESETS.names():
        p = GENERATOR_PRESETS.get(name)
        print(f"{name:<{width}}  {p.model or '(needs --model PATH)'}\n{'':<{width}}  {p.description}")
        if p.edit_model is not None:
            print(f"{'':<{width}}  --counterpart edit: {p.edit_model}")
    print("\ncounterpart modes (--counterpart):")
    width = max(len(n) for n in COUNTERPART_MODES.names())
    for name in COUNTERPART_MODES.names():
        print(f"  {name:<{width}}  {COUNTERPART_MODES.get(name).summary}")
    print("\nrecipes (augment --recipe NAME; compare --recipes NAME,... --synthetic SYN trains each on SYN/NAME):")
    width = max(len(n) for n in RECIPES.names())
    for name in RECIPES.names():
        first, *rest = describe(RECIPES.get(name))
        print(f"  {name:<{width}}  {first}" + "".join(f"\n  {'':<{width}}  {line}" for line in rest))
    return 0


# --- packs ------------------------------------------------------------------------------------------------------


def _packs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="show this pack (a name or a YAML file) in full")


def _packs(args: argparse.Namespace) -> int:
    if args.name is None:
        packs = [load_pack(name) for name in list_packs()]
        width = max(len(p.name) for p in packs)
        for p in packs:
            print(f"{p.name:<{width}}  {p.domain:<10} {len(p.contexts):>3} contexts  {p.description}")
        return 0
    pack = load_pack(args.name)
    print(f"name: {pack.name}\nsource: {pack.source}\ndomain: {pack.domain}\ndescription: {pack.description}")
    for title, values in (
        ("templates", pack.templates),
        ("contexts", pack.contexts),
        ("negative", pack.negative),
    ):
        print(f"{title}:")
        print("\n".join(f"  - {v}" for v in values))
    return 0


# --- sample-data ------------------------------------------------------------------------------------------------


def _sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="folder to create")
    parser.add_argument("--per-class", type=int, default=8, metavar="N", help="images per class [default: 8]")
    parser.add_argument("--size", type=int, default=96, metavar="PX", help="image side [default: 96]")
    parser.add_argument("--seed", type=int, default=0, help="seed [default: 0]")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if it is an earlier sample dataset (and nothing else)",
    )


def _sample(args: argparse.Namespace) -> int:
    out = make_sample_dataset(
        args.out, per_class=args.per_class, size=args.size, seed=args.seed, overwrite=args.overwrite
    )
    print(f"wrote a sample dataset of 3 classes x {args.per_class} images to {out}")
    return 0


COMMANDS = (
    Command("scan", "check a class-folder dataset: counts, image sizes, and every bad file", _scan_arguments,
            _scan, ScanConfig),
    Command("prompts", "preview the contextual and negative prompts that generation would use",
            _prompts_arguments, _prompts, PromptsConfig),
    Command("generate", "generate counterparts with a diffusers model (resumable, shardable)",
            _generate_arguments, _generate, GenerateConfig),
    Command("filter", "keep the generated images close to their real reference in embedding space",
            _filter_arguments, _filter, FilterConfig),
    Command("augment", "the main job: generate, filter, and regenerate rejects until each class's budget is met",
            _augment_arguments, _augment, GenerateConfig),
    Command("mix-preview", "a grid of real | partner | pixel mix | patch mix", _preview_arguments, _preview),
    Command("presets", "list the generator presets, counterpart modes and the peers' recipes", _presets_arguments,
            _presets),
    Command("packs", "list the prompt packs, or show one", _packs_arguments, _packs),
    Command("sample-data", "write a small procedural class-folder dataset (for demos)", _sample_arguments,
            _sample),
)  # fmt: skip

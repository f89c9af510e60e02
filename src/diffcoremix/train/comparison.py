"""Comparing methods under one recipe (METHOD.md §8; the paper's Fig. 4: augmentation overhead against accuracy).

Every (method, seed) pair is one training run with the same recipe and the same optimizer-step budget, in its own
RUN folder; the table reads their summaries::

    OUT/run.json                     the compare record (made by diffcoremix, from which DATA, methods, seeds)
    OUT/config.yaml                  the shared recipe
    OUT/runs/<label>-seed<seed>/     one training run each (a RUN folder of its own: run.json, summary.json...)
    OUT/results.md                   the table: per method, top-1 / top-5 mean ± std over seeds, the paired
                                     difference to ``none`` with its 95% interval, the time overhead
    OUT/results.csv                  the same, one row per method, figures as fractions (0.731, not 73.1)
    OUT/runs.csv                     one row per run: its figures and timings
    OUT/overhead_accuracy.png        top-1 (%) against time per step (+% over none), a point per method
    OUT/layout.json                  the report files above (what ``--overwrite`` deletes, with the records)

``--overwrite`` deletes OUT's own files, then starts every run folder below ``OUT/runs/`` afresh by that run's
own records (as ``train --overwrite`` would): files diffcoremix did not make stay, wherever they are. Without
it, a rerun trains only the runs that are missing or unfinished, so methods and seeds can be added later.

The statistics, and why:

- Accuracy is the test set's when every run has one, else the validation set's (the table says which).
- ``±`` is the sample standard deviation over seeds (``ddof=1``).
- The difference to ``none`` is *paired by seed*: seed s of a method against seed s of ``none`` (the same model
  initialisation and data order), ``d_s = acc(method, s) - acc(none, s)``; the interval is
  ``mean(d) ± t(0.975, n-1) * std(d) / sqrt(n)`` over the n seeds both have (n/a with one seed). Pairing removes
  the seed-to-seed variation that both methods share, which an unpaired interval would count twice.
- The overhead is the mean over seeds of each seed's ratio ``step_s(method, s) / step_s(none, s) - 1``, where
  ``step_s`` is a run's median seconds per optimizer step (data + mix + compute). Runs go seed by seed (every
  method of seed 0, then of seed 1...), so the two runs of a ratio ran close in time, on the same machine load.
- Every run has the same number of optimizer steps: ``max_steps`` when set, else ``epochs`` times the steps per
  epoch of the real training set (``images // batch_size``: full batches). ``fc`` has more samples per epoch,
  so a budget in epochs would give it more updates; a budget in steps keeps the comparison fair.

Example:
    >>> from diffcoremix.train import TrainConfig
    >>> result = compare("data", ["none", "mixup", "diffcoremix@real"], [0, 1, 2],
    ...                  config=TrainConfig(max_steps=500), output="cmp", test="test")  # doctest: +SKIP
    >>> print(result.table)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

from diffcoremix.atomic import write_bytes_if_changed, write_text_if_changed
from diffcoremix.config import write_resolved_config
from diffcoremix.data.checks import ScanConfig
from diffcoremix.data.sources import DataConfig, require_classes, skips_named_once, usable_sources
from diffcoremix.errors import ConfigError, DatasetError, DiffCoReMixError, UnknownNameError
from diffcoremix.manifest.layout import CONFIG_FILE, Layout, OutputFolder, OutputFolderError, check_separate
from diffcoremix.manifest.ownership import open_output
from diffcoremix.train.config import METHODS, PAIR_METHODS, Method, TrainConfig
from diffcoremix.train.data import split_validation
from diffcoremix.train.loop import train, training_device
from diffcoremix.train.methods import method_name
from diffcoremix.train.run import TRAIN_FILES, read_summary

logger = logging.getLogger(__name__)

Partners = Literal["generated", "real", "none"]
PARTNERS: tuple[Partners, ...] = ("generated", "real", "none")
BASELINE = "none"
"""The method every other is compared with (differences and overhead)."""
RUNS_DIR = "runs"
RESULTS_MD = "results.md"
RESULTS_CSV = "results.csv"
RUNS_CSV = "runs.csv"
PLOT_FILE = "overhead_accuracy.png"
COMPARE_FILES = (RESULTS_MD, RESULTS_CSV, RUNS_CSV, PLOT_FILE)
"""The files compare writes in OUT besides its record and config (named in ``layout.json``)."""
LEVEL = 0.95
"""Confidence level of the paired differences."""


class CompareError(DiffCoReMixError):
    """The runs of a comparison cannot be tabulated (no evaluation set, a run without figures)."""


class MethodSpec(NamedTuple):
    """One row of a comparison: a training method and, for the pair methods, its partners; a spec may bring its own
    synthetic set and its own ``mix_prob`` (a recipe's, :mod:`diffcoremix.recipes`)."""

    label: str
    """As written (``diffcoremix@real``, ``recipe:diff-mix``); the table's row name."""
    method: Method
    partners: Partners
    synthetic: Path | None = None
    """This row's generated images (a filtered generation run); None: compare's ``synthetic``."""
    mix_prob: float | None = None
    """This row's ``mix_prob``; None: the shared recipe's."""

    def train_config(self, config: TrainConfig) -> TrainConfig:
        """The shared recipe ``config`` with this row's method, partners and (if it has one) ``mix_prob``."""
        mix_prob = config.mix_prob if self.mix_prob is None else self.mix_prob
        return dataclasses.replace(config, method=self.method, partners=self.partners, mix_prob=mix_prob)


def parse_methods(
    methods: str | Sequence[str] | Sequence[MethodSpec], *, partners: Partners = "generated"
) -> list[MethodSpec]:
    """Method specs from ``"none,mixup,diffcoremix@real,diffcoremix@generated"`` (or a list of such strings); a
    list of :class:`MethodSpec` rows is taken as it is (each label once).

    ``METHOD@PARTNERS`` sets the partners of a pair method (generated, real or none); a method without ``@``
    takes ``partners`` (the recipe's).

    Raises:
        UnknownNameError: an unknown method or partners name (the message lists the known ones).
        ConfigError: an empty list, ``@`` on a method without partners, or the same run (or label) named twice.
    """
    if not isinstance(methods, str) and methods and all(isinstance(m, MethodSpec) for m in methods):
        return _distinct([m for m in methods if isinstance(m, MethodSpec)])
    items = [methods] if isinstance(methods, str) else [str(m) for m in methods]
    names = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not names:
        raise ConfigError("methods", methods, f"a comma-separated list of {', '.join(METHODS)}")
    specs: list[MethodSpec] = []
    seen: dict[tuple[str, str], str] = {}
    for label in names:
        written, at, chosen = label.partition("@")
        method = method_name(written)  # an alias (synthetic-add) is its method (fc)
        if at and method not in PAIR_METHODS:
            raise ConfigError("methods", label, f"METHOD@PARTNERS only for the methods with partners "
                              f"({', '.join(PAIR_METHODS)})")  # fmt: skip
        if at and chosen not in PARTNERS:
            raise UnknownNameError("partners", chosen, list(PARTNERS))
        spec = MethodSpec(label, method, cast(Partners, chosen) if at else partners)
        key = (spec.method, spec.partners if method in PAIR_METHODS else "")
        if key in seen:
            raise ConfigError("methods", label, f"named once (it is the same run as {seen[key]!r})")
        seen[key] = label
        specs.append(spec)
    return specs


def parse_seeds(seeds: str | Sequence[int]) -> list[int]:
    """Seeds from ``"0,1,2"`` (or a list of ints).

    Raises:
        ConfigError: not integers, none, or one twice.
    """
    try:
        values = [int(s) for s in seeds.split(",") if s.strip()] if isinstance(seeds, str) else [int(s) for s in seeds]
    except ValueError:
        raise ConfigError("seeds", seeds, "a comma-separated list of integers") from None
    if not values or len(set(values)) != len(values):
        raise ConfigError("seeds", seeds, "one or more different integers")
    return values


def _distinct(specs: list[MethodSpec]) -> list[MethodSpec]:
    """Specs given as such (a recipe's rows among them), each label once."""
    labels = [s.label for s in specs]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigError("methods", ",".join(labels), f"each label once ({', '.join(twice)} twice)")
    return specs


def run_name(label: str, seed: int) -> str:
    """The run folder of a method label and seed: ``diffcoremix@real``, 0 -> ``diffcoremix-real-seed0``;
    ``recipe:diffcoremix+``, 0 -> ``recipe-diffcoremix-plus-seed0`` (a ``+`` is spelt out: the folder must differ
    from ``recipe:diffcoremix``'s)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", label.replace("+", "-plus")).strip("-.") or "method"
    return f"{safe}-seed{seed}"


# --- statistics (pure) ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Mean and sample standard deviation (``ddof=1``) of values over seeds."""

    mean: float
    std: float | None
    """None with one value."""
    n: int


@dataclass(frozen=True)
class PairedDifference:
    """Mean of the per-seed differences to the baseline, with its t confidence interval."""

    mean: float
    low: float | None
    """Interval bounds; None with one pair."""
    high: float | None
    n: int
    """Seeds both runs have."""


def estimate(values: Sequence[float]) -> Estimate:
    """Mean and sample standard deviation (``ddof=1``; None for one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Estimate(mean, std, n)


def paired_difference(
    values: Mapping[int, float], baseline: Mapping[int, float], *, level: float = LEVEL
) -> PairedDifference | None:
    """``values[s] - baseline[s]`` over the seeds s both have: mean and t interval (n-1 degrees of freedom).

    Returns:
        None when no seed is shared.
    """
    from scipy.stats import t

    diffs = [values[s] - baseline[s] for s in values if s in baseline]
    if not diffs:
        return None
    est = estimate(diffs)
    if est.std is None:
        return PairedDifference(est.mean, None, None, 1)
    half = float(t.ppf(0.5 + level / 2, est.n - 1)) * est.std / math.sqrt(est.n)
    return PairedDifference(est.mean, est.mean - half, est.mean + half, est.n)


def overhead(step_s: Mapping[int, float], baseline: Mapping[int, float]) -> Estimate | None:
    """Time per step over the baseline's, as a fraction (0.25 = 25% slower): per seed, then over seeds.

    Returns:
        None when no seed is shared.
    """
    ratios = [step_s[s] / baseline[s] - 1 for s in step_s if s in baseline and baseline[s] > 0]
    return estimate(ratios) if ratios else None


def eval_set(summaries: Sequence[Mapping[str, Any]]) -> Literal["test", "val"]:
    """``test`` when every run has test figures, else ``val`` when every run has validation figures.

    Raises:
        CompareError: some run has neither.
    """
    for name in ("test", "val"):
        if summaries and all(s.get(name) for s in summaries):
            return name
    raise CompareError("the runs have no common evaluation set: give a test set (--test) or a validation set "
                       "(--val or --val-split)")  # fmt: skip


@dataclass(frozen=True)
class MethodRow:
    """One row of the comparison table."""

    label: str
    method: str
    partners: str
    seeds: tuple[int, ...]
    top1: Estimate
    top5: Estimate
    top1_diff: PairedDifference | None
    """Paired difference to the baseline; None for the baseline itself or without it."""
    top5_diff: PairedDifference | None
    step_s: Estimate
    """Median seconds per step, over seeds."""
    overhead: Estimate | None
    """Fraction over the baseline's time per step; None without the baseline."""


def method_rows(
    summaries: Mapping[str, Mapping[int, Mapping[str, Any]]], *, baseline: str = BASELINE
) -> tuple[list[MethodRow], Literal["test", "val"]]:
    """The table: one row per method label, from its runs' summaries (label -> seed -> summary).

    Returns:
        The rows (in the mapping's order) and the evaluation set they report.
    """
    where = eval_set([s for runs in summaries.values() for s in runs.values()])

    def column(runs: Mapping[int, Mapping[str, Any]], key: str) -> dict[int, float]:
        return {seed: float(s[where][key]) for seed, s in runs.items()}

    def step_time(runs: Mapping[int, Mapping[str, Any]]) -> dict[int, float]:
        return {seed: float(s["time"]["step_s"]) for seed, s in runs.items()}

    base = summaries.get(baseline)
    rows = []
    for label, runs in summaries.items():
        first = next(iter(runs.values()))
        compared = base is not None and label != baseline
        top1, top5, times = column(runs, "top1"), column(runs, "top5"), step_time(runs)
        rows.append(MethodRow(
            label=label, method=str(first.get("method", label)), partners=str(first.get("partners") or ""),
            seeds=tuple(runs), top1=estimate(list(top1.values())), top5=estimate(list(top5.values())),
            top1_diff=paired_difference(top1, column(base, "top1")) if compared and base else None,
            top5_diff=paired_difference(top5, column(base, "top5")) if compared and base else None,
            step_s=estimate(list(times.values())),
            overhead=overhead(times, step_time(base)) if base else None,
        ))  # fmt: skip
    return rows, where


# --- the report -------------------------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _signed(value: float) -> str:
    return f"{100 * value:+.1f}"


def _mean_std(e: Estimate) -> str:
    return _pct(e.mean) + (f" ± {_pct(e.std)}" if e.std is not None else "")


def _difference(d: PairedDifference | None, is_baseline: bool) -> str:
    if d is None:
        return "baseline" if is_baseline else "n/a"
    interval = f"[{_signed(d.low)}, {_signed(d.high)}]" if d.low is not None and d.high is not None else "[n/a]"
    return f"{_signed(d.mean)} {interval}"


def caption(summaries: Sequence[Mapping[str, Any]], seeds: Sequence[int], where: str) -> str:
    """The table's caption: model, steps, batch size, seeds, evaluation set and its size."""
    first = summaries[0]
    steps = sorted({int(s["steps"]) for s in summaries})
    images = sorted({int(s[where]["n"]) for s in summaries})
    return (
        f"Model {first['model']}, {'/'.join(map(str, steps))} optimizer steps of batch size {first['batch_size']}, "
        f"seeds {', '.join(map(str, seeds))}; accuracy on the {'test' if where == 'test' else 'validation'} set "
        f"({'/'.join(map(str, images))} images), in %: mean ± std over seeds. Δ: paired by seed against "
        f"{BASELINE}, with its {LEVEL:.0%} t-interval. Overhead: time per optimizer step (median of each run, data + "
        f"mix + compute) over {BASELINE}'s, mean of the per-seed ratios."
    )


def results_markdown(rows: Sequence[MethodRow], title: str, where: str) -> str:
    """The Markdown table (figures in percent, one decimal) under its caption line."""
    on = "test" if where == "test" else "val"
    header = (f"| method | seeds | top-1 {on} (%) | top-5 {on} (%) | Δ top-1 vs {BASELINE} (95% CI) "
              f"| Δ top-5 vs {BASELINE} (95% CI) | time/step (ms) | overhead (+%) |")  # fmt: skip
    lines = [title, "", header, "|" + "---|" * 8]
    for r in rows:
        base = r.label == BASELINE
        over = _signed(r.overhead.mean) if r.overhead is not None else "n/a"
        lines.append(
            f"| {r.label} | {r.top1.n} | {_mean_std(r.top1)} | {_mean_std(r.top5)} | {_difference(r.top1_diff, base)} "
            f"| {_difference(r.top5_diff, base)} | {1000 * r.step_s.mean:.1f} | {over} |"
        )
    return "\n".join(lines) + "\n"


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return buffer.getvalue()


RESULTS_COLUMNS = (
    "label", "method", "partners", "seeds", "eval_set", "top1_mean", "top1_std", "top5_mean", "top5_std",
    "top1_diff", "top1_diff_low", "top1_diff_high", "top5_diff", "top5_diff_low", "top5_diff_high", "pairs",
    "step_s", "overhead", "overhead_std",
)  # fmt: skip
"""``results.csv``: accuracies and differences as fractions, ``overhead`` as a fraction of none's time per step;
empty where not defined (a std of one seed, the baseline's own difference)."""


def results_csv(rows: Sequence[MethodRow], where: str) -> str:
    """``results.csv`` (columns: :data:`RESULTS_COLUMNS`)."""
    table = []
    for r in rows:
        d1, d5, o = r.top1_diff, r.top5_diff, r.overhead
        table.append([
            r.label, r.method, r.partners, r.top1.n, where, r.top1.mean, r.top1.std, r.top5.mean, r.top5.std,
            d1 and d1.mean, d1 and d1.low, d1 and d1.high, d5 and d5.mean, d5 and d5.low, d5 and d5.high,
            d1 and d1.n, r.step_s.mean, o and o.mean, o and o.std,
        ])  # fmt: skip
    return _csv(RESULTS_COLUMNS, table)


RUNS_COLUMNS = (
    "label", "method", "partners", "seed", "steps", "epochs", "batch_size", "eval_set", "top1", "top5", "loss",
    "images", "step_s", "data_s", "mix_s", "compute_s", "images_per_s", "train_s", "run",
)  # fmt: skip
"""``runs.csv``: one row per run; accuracies as fractions, times in seconds, ``run`` relative to OUT."""


def runs_csv(summaries: Mapping[str, Mapping[int, Mapping[str, Any]]], where: str) -> str:
    """``runs.csv`` (columns: :data:`RUNS_COLUMNS`)."""
    table = []
    for label, runs in summaries.items():
        for seed, s in runs.items():
            ev, time = s[where], s["time"]
            table.append([
                label, s["method"], s["partners"], seed, s["steps"], s["epochs"], s["batch_size"], where,
                ev["top1"], ev["top5"], ev["loss"], ev["n"], time["step_s"], time["data_s"], time["mix_s"],
                time["compute_s"], time["images_per_s"], time["train_s"], f"{RUNS_DIR}/{run_name(label, seed)}",
            ])  # fmt: skip
    return _csv(RUNS_COLUMNS, table)


def plot_overhead_accuracy(rows: Sequence[MethodRow], title: str) -> bytes:
    """The paper's Fig. 4 as PNG bytes: top-1 (%) against time per step (+% over none), error bars = std over seeds.

    Methods without an overhead (no baseline) are left out; the upper left corner is best.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for r in rows:
        if r.overhead is None:
            continue
        x, y = 100 * r.overhead.mean, 100 * r.top1.mean
        ax.errorbar(x, y, yerr=100 * (r.top1.std or 0.0), xerr=100 * (r.overhead.std or 0.0), fmt="o",
                    capsize=3)  # fmt: skip
        ax.annotate(r.label, (x, y), xytext=(5, 5), textcoords="offset points", annotation_clip=False)
    ax.margins(x=0.25, y=0.1)  # room for the labels right of the points
    ax.set_xlabel(f"training time per step (+% over {BASELINE})")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=9, parse_math=False)
    ax.grid(True, alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def write_report(
    out: Path, summaries: Mapping[str, Mapping[int, Mapping[str, Any]]], seeds: Sequence[int]
) -> tuple[list[MethodRow], str]:
    """Write results.md, results.csv, runs.csv and the plot into ``out`` (each only if it changed).

    Returns:
        The rows and the Markdown table.
    """
    rows, where = method_rows(summaries)
    flat = [s for runs in summaries.values() for s in runs.values()]
    if len({int(s["steps"]) for s in flat}) > 1:
        logger.warning("the runs differ in their number of optimizer steps (see %s): the comparison is unfair",
                       out / RUNS_CSV)  # fmt: skip
    title = caption(flat, seeds, where)
    table = results_markdown(rows, title, where)
    write_text_if_changed(out / RESULTS_MD, table)
    write_text_if_changed(out / RESULTS_CSV, results_csv(rows, where))
    write_text_if_changed(out / RUNS_CSV, runs_csv(summaries, where))
    short = f"{flat[0]['model']}, {flat[0]['steps']} steps, batch {flat[0]['batch_size']}, {len(seeds)} seed(s)"
    write_bytes_if_changed(out / PLOT_FILE, plot_overhead_accuracy(rows, short))
    return rows, table


# --- the runs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareResult:
    """What ``compare`` ended with."""

    output: Path
    rows: tuple[MethodRow, ...]
    """One per method label, in the order given."""
    table: str
    """``results.md``: the Markdown table under its caption line."""
    steps: int
    """The optimizer-step budget of every run."""


def step_budget(config: TrainConfig, train_images: int) -> int:
    """Every method's optimizer steps: ``max_steps``, else ``epochs`` x full batches of the real training set.

    ``train`` drops the last partial batch, so an epoch of ``train_images`` real images is
    ``train_images // batch_size`` steps. Methods that add samples (``fc``) get the same number of steps,
    not the same number of epochs.

    Raises:
        DatasetError: fewer real training images than one batch.
    """
    if config.max_steps is not None:
        return config.max_steps
    per_epoch = train_images // config.batch_size
    if per_epoch == 0:
        raise DatasetError(f"{train_images} training image(s), fewer than one batch of {config.batch_size}: "
                           "lower --batch-size")  # fmt: skip
    return config.epochs * per_epoch


def _train_images(data: Path, config: TrainConfig, data_config: DataConfig, val: Path | None, progress: bool) -> int:
    """How many real images ``train`` trains on (the usable ones of the subset, less a --val-split share): what
    every run will refuse in DATA is refused here, before the first run."""
    listing = usable_sources(data, data_config, progress=progress, scan=ScanConfig(min_side=1),
                             allow_duplicates=config.allow_duplicates).listing  # fmt: skip
    require_classes(listing)
    if val is None and config.val_split:
        listing, _ = split_validation(listing, config.val_split, config.seed)  # its size does not depend on the seed
    return len(listing)


def _check_inputs(
    specs: Sequence[MethodSpec],
    config: TrainConfig,
    output: Path,
    val: Path | None,
    test: Path | None,
    synthetic: Path | None,
) -> None:
    """Everything that can be refused before the first run (and not after hours of training)."""
    training_device(config)  # the device, and a compiler for torchcompile
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CompareError("compare trains its runs one after another in one process: under torchrun, run `train` "
                           "per method and seed (the table reads their summaries)")  # fmt: skip
    if test is None and val is None and not config.val_split:
        raise CompareError("compare needs an evaluation set: --test DIR, --val DIR or --val-split R")
    for spec in specs:
        run_config = spec.train_config(config)
        if run_config.needs_synthetic and (spec.synthetic or synthetic) is None:
            real = f", or write {spec.method}@real" if spec.method in PAIR_METHODS else ""
            raise CompareError(f"{spec.label} trains on generated images: give --synthetic OUT (a filtered "
                               f"generation run){real}")  # fmt: skip
    names = [run_name(s.label, 0) for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError("methods", ",".join(s.label for s in specs), "labels with different folder names")
    for path in (val, test, synthetic, *(s.synthetic for s in specs)):
        if path is not None:
            check_separate(path, output)


def _clear_runs(runs: Path, data: Path) -> None:
    """``--overwrite``: start every earlier run below ``runs`` afresh by its own records, then drop empty folders.

    The compare folder's own clearing deletes only the files its records name; each run folder is an output of
    its own (its run.json and layout.json name its files), so each is cleared as ``train --overwrite`` would.
    """
    if not runs.is_dir():
        return
    for run in sorted(p for p in runs.iterdir() if p.is_dir() and not p.is_symlink()):
        if OutputFolder(run).is_ours():
            with open_output(run, data=data, overwrite=True, fixed=TRAIN_FILES):
                pass
    for folder in sorted((p for p in runs.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only empty ones (the emptied checkpoints/ and run folders)


@skips_named_once()  # DATA is read for every run: what it skips is named once
def compare(
    data: str | Path,
    methods: str | Sequence[str] | Sequence[MethodSpec],
    seeds: str | Sequence[int],
    *,
    config: TrainConfig | None = None,
    output: str | Path,
    val: str | Path | None = None,
    test: str | Path | None = None,
    synthetic: str | Path | None = None,
    data_config: DataConfig | None = None,
    overwrite: bool = False,
    progress: bool = False,
    prepare: Callable[[], None] | None = None,
) -> CompareResult:
    """Train every method with every seed under one recipe and step budget, then tabulate and plot them.

    Resumable: each run is a ``train`` run folder, and a finished one is not trained again, so a rerun (or one with
    more methods or seeds) trains only what is missing. Runs go seed by seed: every method of the first seed, then
    of the next.

    Args:
        data: the training set (class folders).
        methods: method specs, ``"none,mixup,diffcoremix@real"`` (see :func:`parse_methods`), or
            :class:`MethodSpec` rows (a recipe's bring their own synthetic set and ``mix_prob``); ``none`` is the
            baseline of the differences and the overhead.
        seeds: the seeds, ``[0, 1, 2]`` or ``"0,1,2"``.
        config: the recipe; its method and seed are replaced per run, partners where a spec names them.
        output: the compare folder (OUT).
        val, test: validation and test sets (class folders); or ``config.val_split``. The table reports the test
            set's figures when given, else the validation set's.
        synthetic: a filtered generation run, for the methods that use generated images.
        data_config: which classes and how many images of each to use.
        overwrite: start afresh: delete the files of the earlier compare in OUT, its runs' included (only files
            diffcoremix made).
        progress: show each run's progress bar.
        prepare: called once every input has been checked, before the first run (``compare --recipes --build``
            makes the recipes' missing synthetic sets there: bad input is refused before hours of generation).

    Raises:
        UnknownNameError, ConfigError, CompareError, DatasetError, OutputFolderError: bad input, before any run.
    """
    config = config or TrainConfig()
    data_config = data_config or DataConfig()
    data, out = Path(data), Path(output)
    val_path, test_path = (Path(val) if val is not None else None), (Path(test) if test is not None else None)
    synthetic_path = Path(synthetic) if synthetic is not None else None
    specs = parse_methods(methods, partners=config.partners)
    seed_list = parse_seeds(seeds)
    _check_inputs(specs, config, out, val_path, test_path, synthetic_path)
    steps = step_budget(config, _train_images(data, config, data_config, val_path, progress))
    for path, what in ((val_path, "--val"), (test_path, "--test")):
        if path is not None:  # named (and refused when nothing is usable, or linked) before the first run
            usable_sources(path, progress=progress, scan=ScanConfig(min_side=1), what=what,
                           allow_duplicates=config.allow_duplicates)  # fmt: skip
    if config.max_steps is None:
        logger.info(
            "step budget: %d optimizer steps for every method (%d epoch(s) of the real training set at batch size "
            "%d); fc has more samples per epoch, so the budget is in steps, not epochs",
            steps, config.epochs, config.batch_size,
        )  # fmt: skip
    recipe = dataclasses.replace(config, max_steps=steps)
    labels = [s.label for s in specs]
    with open_output(out, data=data, overwrite=overwrite, fixed=COMPARE_FILES) as folder:
        record = folder.run_record()
        if record is not None and record.get("command") != "compare":
            raise OutputFolderError(f"{out} is the output of another command ({record.get('command', 'generate')}), "
                                    "not a compare folder: choose another folder")  # fmt: skip
        folder.write_run_record(data, command="compare", methods=labels, seeds=seed_list)  # first: OUT is ours
        if overwrite:
            _clear_runs(out / RUNS_DIR, data)
        Layout(out, damaged="reset").declare(COMPARE_FILES)
        if prepare is not None:  # after OUT is checked and claimed: a wrong -o is refused before hours of augment
            prepare()
        summaries: dict[str, dict[int, dict[str, Any]]] = {s.label: {} for s in specs}
        total = len(specs) * len(seed_list)
        for i, (seed, spec) in enumerate(((seed, spec) for seed in seed_list for spec in specs), 1):
            run = out / RUNS_DIR / run_name(spec.label, seed)
            logger.info("run %d of %d: %s, seed %d -> %s", i, total, spec.label, seed, run)
            run_config = dataclasses.replace(spec.train_config(recipe), seed=seed)
            own = spec.synthetic or synthetic_path
            result = train(data, config=run_config, output=run, val=val_path, test=test_path,
                           synthetic=own if run_config.needs_synthetic else None,
                           data_config=data_config, progress=progress)  # fmt: skip
            summaries[spec.label][seed] = read_summary(result.run)
        # The recipe goes on record once its runs exist (a run refused for other settings leaves the old record).
        write_resolved_config(out / CONFIG_FILE, {"train": recipe, "data": data_config}, data=data, methods=labels,
                              seeds=seed_list)  # fmt: skip
        rows, table = write_report(out, summaries, seed_list)
    return CompareResult(out, tuple(rows), table, steps)

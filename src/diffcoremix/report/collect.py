"""What a report shows, read (never written) from the folders that the other commands made.

A generation output folder (OUT: its run record, settings, resolved config, manifest, the filter's decisions and
reports, the judge's labels), and optionally training runs, a ``compare`` folder and an ``eval`` folder. Every
file is optional but OUT's run record and manifest: a section whose files are missing says so on the page.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from diffcoremix.errors import DatasetError
from diffcoremix.manifest.layout import (
    CALIBRATION_FILE,
    CONFIG_FILE,
    FILTER_CONFIG_FILE,
    FILTER_REPORT_FILE,
    SETTINGS_FILE,
    OutputFolder,
)
from diffcoremix.manifest.records import read_manifest
from diffcoremix.train.evaluation import confusion_file_name

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

RUN_FACTS_MARK = "# run facts (not options)"
"""The line of a resolved config.yaml after which come ``# name: value`` facts (library versions among them)."""


def _json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or ``{}`` when the file is missing or not a JSON object (logged)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        logger.warning("cannot read %s (%s): left out of the report", path, err)
        return {}
    return value if isinstance(value, dict) else {}


def _yaml(path: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as err:
        logger.warning("cannot read %s (%s): left out of the report", path, err)
        return {}
    return value if isinstance(value, dict) else {}


def run_facts(config_yaml: Path) -> dict[str, str]:
    """The ``# name: value`` lines after :data:`RUN_FACTS_MARK` of a resolved config (versions, DATA...)."""
    try:
        lines = config_yaml.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    facts: dict[str, str] = {}
    if RUN_FACTS_MARK in lines:
        for line in lines[lines.index(RUN_FACTS_MARK) + 1 :]:
            name, sep, value = line.removeprefix("# ").partition(": ")
            if line.startswith("# ") and sep:
                facts[name.strip()] = value.strip()
    return facts


@dataclass
class GenerationRun:
    """An output folder of ``generate`` / ``augment`` and what the filter and the judge added to it."""

    out: Path
    data: Path | None
    """DATA as the run record names it (None when it is not recorded)."""
    record: dict[str, Any]
    settings: dict[str, Any]
    options: dict[str, Any]
    """The resolved options of config.yaml, by stage."""
    facts: dict[str, str]
    """The run facts of config.yaml: library versions and DATA."""
    filter_options: dict[str, Any]
    filter_report: dict[str, Any]
    calibration: dict[str, Any]
    table: pd.DataFrame
    """The manifest, one row per candidate, with the filter's and the judge's columns when they exist."""

    @property
    def filtered(self) -> bool:
        return "accepted" in self.table.columns

    @property
    def judged(self) -> bool:
        return "agrees" in self.table.columns

    @property
    def threshold(self) -> float | None:
        value = self.filter_report.get("threshold", self.filter_options.get("threshold"))
        return float(value) if value is not None else None

    @property
    def copy_bound(self) -> float | None:
        """The filter's ``--max-copy-similarity`` (None: no bound)."""
        value = self.filter_report.get("max_copy_similarity", self.filter_options.get("max_copy_similarity"))
        return float(value) if value is not None else None

    @property
    def copies_measured(self) -> bool:
        """Whether the filter recorded each candidate's nearest real image (filters before it did not)."""
        return "nearest_real_score" in self.table.columns and bool(self.table.nearest_real_score.notna().any())


def read_generation_run(out: str | Path) -> GenerationRun:
    """Read OUT (read only).

    Raises:
        DatasetError: OUT is not a folder that ``generate`` or ``augment`` made, or holds no manifest record.
    """
    folder = OutputFolder(out)
    if not folder.path.is_dir():
        raise DatasetError(f"{out} is not a folder (expected the output folder of `generate` or `augment`)")
    record = folder.run_record()
    if record is None or not folder.is_ours():
        raise DatasetError(f"{out} was not made by `diffcoremix generate` or `augment` (no run.json of ours)")
    table = read_manifest(folder.path)
    if table.empty:
        raise DatasetError(f"{out} has no generation manifest records: nothing to report")
    data = record.get("data")
    return GenerationRun(
        out=folder.path,
        data=Path(data) if data else None,
        record=record,
        settings=_json(folder / SETTINGS_FILE),
        options={k: v for k, v in _yaml(folder / CONFIG_FILE).items() if isinstance(v, dict)},
        facts=run_facts(folder / CONFIG_FILE),
        filter_options=_yaml(folder / FILTER_CONFIG_FILE).get("filter", {}) or {},
        filter_report=_json(folder / FILTER_REPORT_FILE),
        calibration=_json(folder / CALIBRATION_FILE),
        table=table,
    )


@dataclass
class TrainingRun:
    """A finished (or running) ``train`` RUN folder: its summary and its metrics lines."""

    path: Path
    name: str
    summary: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)


def read_training_run(path: str | Path, name: str | None = None) -> TrainingRun:
    """Read a RUN folder's summary.json and metrics.jsonl (torn or foreign lines are skipped).

    Raises:
        DatasetError: the folder has neither file.
    """
    path = Path(path)
    summary = _json(path / "summary.json")
    steps: list[dict[str, Any]] = []
    epochs: list[dict[str, Any]] = []
    try:
        lines = (path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed run
        if isinstance(entry, dict):
            (steps if entry.get("kind") == "step" else epochs if entry.get("kind") == "epoch" else []).append(entry)
    if not summary and not lines:
        raise DatasetError(f"{path} is not a training run folder (no summary.json or metrics.jsonl)")
    return TrainingRun(path, name or path.name, summary, steps, epochs)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts (empty when the file is missing)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        return []


@dataclass
class CompareFolder:
    """A ``compare`` output folder: the method table, the overhead plot, and its runs."""

    path: Path
    results: list[dict[str, str]]
    caption: str
    plot: Path | None
    runs: list[Path]


def read_compare(path: str | Path) -> CompareFolder:
    """Read a compare folder.

    Raises:
        DatasetError: it holds no results.csv and no runs.
    """
    path = Path(path)
    results = read_csv_rows(path / "results.csv")
    runs = sorted(p for p in (path / "runs").glob("*") if p.is_dir()) if (path / "runs").is_dir() else []
    if not results and not runs:
        raise DatasetError(f"{path} is not a compare folder (no results.csv and no runs/)")
    try:
        caption = next(
            (line.strip() for line in (path / "results.md").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("|")), "")  # fmt: skip
    except OSError:
        caption = ""
    plot = path / "overhead_accuracy.png"
    return CompareFolder(path, results, caption.lstrip("# "), plot if plot.is_file() else None, runs)


@dataclass
class EvalFolder:
    """An ``eval`` output folder: figures per run, confusion matrices, the Grad-CAM grid."""

    path: Path
    runs: list[dict[str, Any]]
    confusion: dict[str, Path]
    saliency: Path | None


def read_eval(path: str | Path) -> EvalFolder:
    """Read an eval folder.

    Raises:
        DatasetError: it holds no eval.json.
    """
    path = Path(path)
    document = _json(path / "eval.json")
    if not document:
        raise DatasetError(f"{path} is not an eval folder (no eval.json)")
    runs = [r for r in document.get("runs", []) if isinstance(r, dict)]
    confusion = {str(r.get("name")): path / confusion_file_name(str(r.get("name"))) for r in runs}
    saliency = path / "saliency.png"
    return EvalFolder(path, runs, {k: v for k, v in confusion.items() if v.is_file()},
                      saliency if saliency.is_file() else None)  # fmt: skip

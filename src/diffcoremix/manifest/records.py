"""The provenance manifest of a generation run: one JSON record per candidate, per shard, append-only.

Layout of an output folder::

    OUT/config.yaml                          resolved options and library versions
    OUT/images/<class folder>/<source file>.k<k>.png
    OUT/manifest/shard-00000-of-00001.jsonl  one record per candidate of that shard

Each shard appends (and fsyncs) records after their images are on disk, so a record never names a missing
image; a crash can leave at most a torn last line, which readers skip and a rerun redoes. When a shard
finishes it rewrites its file in plan order with one record per key. The files are JSON Lines, readable by
``pandas.read_json(path, lines=True)`` or ``pyarrow.dataset.dataset(OUT / "manifest", format="json")``, and
as one table through :func:`read_manifest`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from diffcoremix.atomic import atomic_write_text

logger = logging.getLogger(__name__)

MANIFEST_DIR = "manifest"
IMAGES_DIR = "images"

COLUMNS = (
    "index",
    "key",
    "status",
    "error",
    "source",
    "source_sha256",
    "class_folder",
    "class_name",
    "label",
    "k",
    "attempt",
    "seed",
    "prompt",
    "negative_prompt",
    "context",
    "context_score",
    "dropped_negatives",
    "model",
    "model_revision",
    "model_sha256",
    "pipeline",
    "scheduler",
    "num_inference_steps",
    "guidance_scale",
    "height",
    "width",
    "dtype",
    "device",
    "output",
    "output_sha256",
    "seconds",
    "rank",
)
"""The fields of a record, in order. ``output`` is relative to OUT; ``seconds`` is the image's share of its
batch's wall time; ``status`` is ``ok`` or ``error`` (then ``error`` holds the message and ``output`` is null)."""


FILTER_FILE = "filter.jsonl"
FILTER_COLUMNS = ("embedder", "reference_rule", "reference", "score", "threshold", "text_score", "accepted")
"""Columns that ``diffcoremix filter`` adds: what each candidate was compared with, its score, the decision."""


def shard_path(out: str | Path, rank: int, world_size: int) -> Path:
    """The manifest file of one shard."""
    return Path(out) / MANIFEST_DIR / f"shard-{rank:05d}-of-{world_size:05d}.jsonl"


def read_records(out: str | Path) -> list[dict[str, Any]]:
    """Every parseable record of every shard file of ``out``, in file order (torn lines skipped)."""
    records: list[dict[str, Any]] = []
    folder = Path(out) / MANIFEST_DIR
    for path in sorted(folder.glob("shard-*.jsonl")) if folder.is_dir() else []:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.info("skipping a torn record at %s:%d (redone on resume)", path, number)
                continue
            if isinstance(record, dict) and "key" in record:
                records.append(record)
    return records


def latest_by_key(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One record per key: the last successful one, else the last one."""
    chosen: dict[str, dict[str, Any]] = {}
    for record in records:
        previous = chosen.get(record["key"])
        if previous is None or record.get("status") == "ok" or previous.get("status") != "ok":
            chosen[record["key"]] = record
    return chosen


class ManifestWriter:
    """Appends records to one shard's file, durably (flush and fsync per call)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_torn_tail()

    def _repair_torn_tail(self) -> None:
        # A crash mid-write leaves a last line without its newline; appending after it would glue two records.
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb+") as handle:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    def compact(self, records: Iterable[dict[str, Any]], *, tag: str = "") -> None:
        """Replace the file with ``records`` (one per key, in plan order), atomically."""
        atomic_write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), tag=tag)


def read_manifest(out: str | Path, *, backend: str = "pandas") -> Any:
    """The manifest of a generation run as one table, one row per candidate, in plan order.

    Args:
        out: the run's output folder.
        backend: ``pandas`` (a ``DataFrame``) or ``pyarrow`` (a ``Table``).

    Example:
        >>> table = read_manifest("out")  # doctest: +SKIP
        >>> table[table.status == "ok"].output.head()  # doctest: +SKIP
    """
    rows = sorted(latest_by_key(read_records(out)).values(), key=lambda r: r["index"])
    names = list(COLUMNS)
    decisions = Path(out) / FILTER_FILE
    if decisions.is_file():  # the filter's decisions, joined by key
        by_key = {d["key"]: d for d in map(json.loads, decisions.read_text(encoding="utf-8").splitlines())}
        rows = [{**r, **{c: by_key.get(r["key"], {}).get(c) for c in FILTER_COLUMNS}} for r in rows]
        names += list(FILTER_COLUMNS)
    columns = {name: [r.get(name) for r in rows] for name in names}
    if backend == "pyarrow":
        import pyarrow as pa

        return pa.table(columns)
    if backend == "pandas":
        import pandas as pd

        return pd.DataFrame(columns, columns=names)
    raise ValueError(f"backend must be 'pandas' or 'pyarrow', got {backend!r}")

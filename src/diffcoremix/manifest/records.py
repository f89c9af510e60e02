"""The provenance manifest of a generation run: one JSON record per candidate, per shard, append-only.

Each shard appends (and fsyncs) records to ``OUT/manifest/shard-RRRRR-of-WWWWW.jsonl`` after their images are on
disk, so a record never names a missing image; a crash can leave at most a torn last line, which readers skip
and a rerun redoes. When a shard finishes it rewrites its file with one record per key (the latest), in plan
order, keeping every key it holds (the regenerations of ``augment`` included). The files are JSON Lines, readable by
``pandas.read_json(path, lines=True)`` or ``pyarrow.dataset.dataset(OUT / "manifest", format="json")``, and
as one table through :func:`read_manifest`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from diffcoremix import faults
from diffcoremix.atomic import atomic_writer, ensure_folder, naming_errors
from diffcoremix.manifest.decisions import FILTER_COLUMNS, read_decisions, read_keyed_lines
from diffcoremix.manifest.layout import (
    DECISIONS_FILE,
    IMAGES_DIR,
    JUDGE_FILE,
    MANIFEST_DIR,
    OutputFolder,
)

__all__ = [
    "COLUMNS",
    "FILTER_COLUMNS",
    "FINAL",
    "FLAGGED",
    "IMAGES_DIR",
    "JUDGE_COLUMNS",
    "MANIFEST_DIR",
    "CandidateRecord",
    "ManifestWriter",
    "iter_records",
    "latest_by_key",
    "read_judgements",
    "read_manifest",
    "read_records",
    "shard_path",
]  # fmt: skip

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateRecord:
    """One candidate's manifest record: the schema of a manifest line (its fields, in order, are :data:`COLUMNS`).

    ``output`` is relative to OUT; ``seconds`` is the image's share of its batch's wall time; ``status`` is ``ok`` or
    ``error`` (then ``error`` holds the message and ``output`` is null), ``blocked`` when the image's place holds a
    file that the user put there since diffcoremix wrote it (left in place, and named in ``error``), ``flagged`` when
    the model's safety checker flagged the image (no image is kept: ``output`` is null, ``error`` says so; see
    :mod:`diffcoremix.generate.safety`), or ``writing`` for the record a batch appends before it writes its images
    (what is about to be written where: the ``ok`` record that follows replaces it when the manifest is compacted;
    one left alone was killed among its images).

    ``counterpart`` is the mode (:mod:`diffcoremix.modes`; null in records written before modes existed:
    text); ``strength`` the candidate's (img2img, inpaint, cross-class); for cross-class, ``source_class_folder`` and
    ``target_class_folder`` are the source's class and the prompt's, ``soft_label`` is ``{A: 1 - s**g, B: s**g}`` and
    ``class_folder`` / ``label`` name its dominant class (null soft label: the hard label of ``class_folder``);
    ``mask_sha256`` is the digest of the subject mask an inpainted candidate kept
    (:func:`diffcoremix.masks.mask_sha256`); ``condition`` is what a rerun compares besides prompt, seed and
    settings (null for text).

    ``model_sha256`` is the digest of a local model's weights (a checkpoint's SHA-256, or that of a folder's weight
    files: :mod:`diffcoremix.identities`), null for a hub model (named by ``model_revision``); ``weights_sha256`` holds
    the digest of each local model, LoRA and VAE by role (``{"model": ..., "lora": ...}``, as the settings do);
    ``lora`` is the path of LoRA weights applied over the model; ``finetune`` says what ``diffcoremix finetune`` made
    the model (or the LoRA) from: base model, data hash, steps, final loss, the digests of the loss curve and the
    weights (null for a model it did not make); ``safety_checker`` is the class of the checker that judged the image
    (null when none ran: the model ships none, or ``--safety-checker off``); ``settings_sha256`` is a digest of
    everything that determines the pixels besides the record's own prompt, negative prompt, seed and condition
    (model, revision, scheduler, steps, guidance, size, dtype, device, fine-tuned weights, safety checker, counterpart
    settings): a resumed run reuses an image only when its record matches what it would make now.

    ``source_rank`` and ``source_loss`` (with ``--sources hard:F``, else null) are the source's rank in its class by
    the ``--rank-by`` run's loss (1: the hardest) and that loss.
    """

    index: int
    key: str
    status: str
    error: str | None
    source: str
    source_sha256: str | None
    class_folder: str
    class_name: str
    label: int
    k: int
    attempt: int
    source_rank: int | None
    source_loss: float | None
    seed: int
    prompt: str
    negative_prompt: str
    context: str
    context_score: float | None
    dropped_negatives: list[str]
    counterpart: str
    strength: float | None
    source_class_folder: str | None
    target_class_folder: str | None
    soft_label: dict[str, float] | None
    mask_sha256: str | None
    condition: str | None
    model: str | None
    model_revision: str | None
    model_sha256: str | None
    weights_sha256: dict[str, str] | None
    pipeline: str | None
    scheduler: str | None
    lora: str | None
    finetune: dict[str, Any] | None
    safety_checker: str | None
    num_inference_steps: int
    guidance_scale: float
    image_guidance_scale: float | None
    height: int
    width: int
    dtype: str
    device: str
    output: str | None
    output_sha256: str | None
    seconds: float
    rank: int
    settings_sha256: str

    def to_dict(self) -> dict[str, Any]:
        """The record as a manifest line's JSON object (shallow: its values are JSON values already)."""
        return {name: getattr(self, name) for name in COLUMNS}


COLUMNS = tuple(f.name for f in fields(CandidateRecord))
"""The fields of a record, in order (:class:`CandidateRecord`)."""


JUDGE_COLUMNS = ("judge", "judge_class", "judge_label", "judge_confidence", "agrees")
"""Columns that ``diffcoremix judge`` adds to the manifest table: the judge's id, the class it sees (in its own
spelling), that class's label in OUT (null when it is not a class of OUT), its softmax probability, and whether it is
the candidate's class (null when the judge does not know the candidate's class: not judged)."""


def read_judgements(out: str | Path) -> dict[str, dict[str, Any]]:
    """The judge's lines of ``OUT/judge.jsonl`` by key (empty when the run has not been judged); a damaged line is
    skipped with a warning (its image is judged again by the next ``judge``)."""
    remedy = f"the next `diffcoremix judge {out} --classifier SPEC` judges those images again"
    return read_keyed_lines(Path(out) / JUDGE_FILE, "judgement", remedy)


def shard_path(out: str | Path, rank: int, world_size: int) -> Path:
    """The manifest file of one shard."""
    return OutputFolder(out).shard_path(rank, world_size)


def read_records(out: str | Path) -> list[dict[str, Any]]:
    """Every parseable record of every shard file of ``out``, in file order (torn lines skipped)."""
    return list(iter_records(out))


def iter_records(out: str | Path) -> Iterator[dict[str, Any]]:
    """:func:`read_records`, one record at a time (a manifest of any size in the memory of one line)."""
    for path in OutputFolder(out).shard_paths():
        yield from _read_file(path)


def _read_file(path: Path) -> Iterator[dict[str, Any]]:
    for _, _, record in _read_lines(path):
        yield record


def _read_lines(path: Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """``(offset, length, record)`` of each parseable record line of ``path`` (none when it is missing)."""
    if not path.is_file():
        return
    offset = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            start, offset = offset, offset + len(line)
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                logger.info("skipping a torn record at %s:%d (redone on resume)", path, number)
                continue
            if isinstance(record, dict) and "key" in record:
                yield start, len(line), record


FLAGGED = "flagged"
"""The status of a candidate whose image the model's safety checker flagged (its image is not kept)."""

FINAL = frozenset({"ok", "blocked", FLAGGED})
"""Statuses that settle a candidate until a later one of them: its image was made (``ok``), its place holds a file
the user put there since (``blocked``: left in place), or the safety checker flagged what its seed makes
(``flagged``: the same seed and settings make the same image). A later failure undoes none of them."""


def latest_by_key(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One record per key: the last final one (:data:`FINAL`), else the last one."""
    chosen: dict[str, dict[str, Any]] = {}
    for record in records:
        previous = chosen.get(record["key"])
        if previous is None or record.get("status") in FINAL or previous.get("status") not in FINAL:
            chosen[record["key"]] = record
    return chosen


class ManifestWriter:
    """Appends records to one shard's file, durably (flush and fsync per call)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        ensure_folder(self.path.parent)
        self._repair_torn_tail()

    def _repair_torn_tail(self) -> None:
        # A crash mid-write leaves a last line without its newline; appending after it would glue two records.
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb+") as handle:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")

    def append(self, records: Iterable[dict[str, Any] | CandidateRecord]) -> None:
        text = "".join(
            json.dumps(r if isinstance(r, dict) else r.to_dict(), ensure_ascii=False) + "\n" for r in records
        )
        with naming_errors(self.path), open(self.path, "a", encoding="utf-8") as handle:
            faults.append_point(handle, text, self.path)
            handle.flush()
            os.fsync(handle.fileno())

    def compact(self, *, tag: str = "") -> None:
        """Rewrite the file with one record per key (the latest), ordered by plan index, atomically.

        Every key the file holds stays: a run over part of the plan (an ``augment`` round) never drops the
        records of another part. The file is streamed: what is held is the position of each key's latest line.
        """
        chosen: dict[str, tuple[int, bool, int, int]] = {}  # key -> (index, ok, offset, length): latest_by_key's rule
        lines = 0
        for offset, length, record in _read_lines(self.path):
            lines += 1
            key, ok = record["key"], record.get("status") in FINAL
            previous = chosen.get(key)
            if previous is None or ok or not previous[1]:
                index = record.get("index", 0)
                chosen[key] = (index if isinstance(index, int) else 0, ok, offset, length)
        order = sorted(chosen.items(), key=lambda item: (item[1][0], item[0]))
        offsets = [spot for _, (_, _, spot, _) in order]
        size = self.path.stat().st_size if self.path.is_file() else 0
        if lines == len(order) and offsets == sorted(offsets) and sum(e[3] for _, e in order) == size:
            return  # already one line per key, in order, nothing torn: left untouched
        with open(self.path, "rb") as source, atomic_writer(self.path, tag=tag) as target:
            for _, (_, _, offset, length) in order:
                source.seek(offset)
                line = source.read(length)
                target.write(line if line.endswith(b"\n") else line + b"\n")


def read_manifest(out: str | Path, *, backend: str = "pandas") -> Any:
    """The manifest of a generation run as one table, one row per candidate, in plan order.

    Args:
        out: the run's output folder.
        backend: ``pandas`` (a ``DataFrame``) or ``pyarrow`` (a ``Table``).

    Example:
        >>> table = read_manifest("out")  # doctest: +SKIP
        >>> table[table.status == "ok"].output.head()  # doctest: +SKIP
    """
    rows = sorted(latest_by_key(read_records(out)).values(), key=lambda r: (r.get("index", 0), r["key"]))
    names = list(COLUMNS)
    by_key = read_decisions(out)
    if (Path(out) / DECISIONS_FILE).is_file():  # the filter's decisions, joined by key
        rows = [{**r, **{c: by_key.get(r["key"], {}).get(c) for c in FILTER_COLUMNS}} for r in rows]
        names += list(FILTER_COLUMNS)
    judged = read_judgements(out)
    if (Path(out) / JUDGE_FILE).is_file():  # the judge's labels, joined by key
        rows = [{**r, **{c: judged.get(r["key"], {}).get(c) for c in JUDGE_COLUMNS}} for r in rows]
        names += list(JUDGE_COLUMNS)
    columns = {name: [r.get(name) for r in rows] for name in names}
    if backend == "pyarrow":
        import pyarrow as pa

        return pa.table(columns)
    if backend == "pandas":
        import pandas as pd

        return pd.DataFrame(columns, columns=names)
    raise ValueError(f"backend must be 'pandas' or 'pyarrow', got {backend!r}")

"""The layout of an output folder, who owns it, and how a run opens it.

::

    OUT/run.json                             the run record: made by diffcoremix, from which DATA (ownership mark)
    OUT/settings.json                        what determines the pixels; a rerun with other settings is refused
    OUT/config.yaml                          resolved options and library versions
    OUT/images/<class>/<source file>.k<k>.png
    OUT/manifest/shard-RRRRR-of-WWWWW.jsonl  one record per candidate (names every image above)
    OUT/filter.jsonl                         the filter's decisions, one per candidate
    OUT/judge.jsonl                          the judge's label of each generated image (``diffcoremix judge``)
    OUT/train/<class>/..., OUT/rejected/<class>/...   hard links to the images, by decision
    OUT/train/metadata.jsonl                 Hugging Face imagefolder metadata (prompt, score, source, label)
    OUT/layout.json                          every file the filter placed (train/, rejected/, plots)
    OUT/cache/                               embeddings of real and generated images, by content hash
    OUT/.diffcoremix.lock                    the lock of a running command (see :mod:`.lock`)

DATA and OUT never overlap, in either direction, symbolic links followed (:func:`check_separate`); how a command
opens OUT, and how it starts afresh, is in :mod:`diffcoremix.manifest.ownership`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from diffcoremix.atomic import write_text_if_changed
from diffcoremix.errors import DiffCoReMixError

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
SETTINGS_FILE = "settings.json"
CONFIG_FILE = "config.yaml"
IMAGES_DIR = "images"
MANIFEST_DIR = "manifest"
DECISIONS_FILE = "filter.jsonl"
TRAIN_DIR = "train"
REJECTED_DIR = "rejected"
LAYOUT_FILE = "layout.json"
CACHE_DIR = "cache"
FILTER_CONFIG_FILE = "filter.config.yaml"
FILTER_REPORT_FILE = "filter_report.json"
CALIBRATION_FILE = "calibration.json"
JUDGE_FILE = "judge.jsonl"
"""The judge's labels (``diffcoremix judge``), one line per judged candidate."""
FILTER_FILES = (FILTER_CONFIG_FILE, FILTER_REPORT_FILE, CALIBRATION_FILE, JUDGE_FILE)
"""Fixed-name files that the filter and the judge write (starting afresh deletes them by name). The judge's file is
named here, not in the layout record: a re-filtering prunes that record to the filter's own files, and a judgement
outlives a re-filtering."""
REPORT_DIR = "filter_report"
"""Where the filter's histograms go (the files are named in the layout record)."""

MADE_BY = "diffcoremix"


class OutputFolderError(DiffCoReMixError):
    """The output folder cannot be used as asked (it overlaps DATA, or holds files diffcoremix did not make)."""


def check_separate(data: str | Path, out: str | Path) -> None:
    """Refuse an output path that is DATA, inside DATA, or contains DATA (resolved, symbolic links followed).

    Raises:
        OutputFolderError: the two overlap.
    """
    data_r, out_r = Path(data).resolve(), Path(out).resolve()
    if out_r == data_r or data_r in out_r.parents:
        raise OutputFolderError(f"output {out} is inside the dataset {data}: diffcoremix never writes into DATA")
    if out_r in data_r.parents:
        raise OutputFolderError(
            f"output folder {out} contains the dataset {data}: its files could be replaced; choose a folder "
            "outside DATA"
        )


def entries(folder: Path) -> list[str]:
    """The folder's entries, less our lock files."""
    return sorted(n for n in os.listdir(folder) if not (n.startswith(".diffcoremix") and n.endswith(".lock")))


class OutputFolder:
    """The paths of one output folder, and what our records say about them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, relpath: str) -> Path:
        return self.path / relpath

    @property
    def images(self) -> Path:
        return self.path / IMAGES_DIR

    def shard_path(self, rank: int, world_size: int) -> Path:
        """The manifest part of one generation shard."""
        return self.path / MANIFEST_DIR / f"shard-{rank:05d}-of-{world_size:05d}.jsonl"

    def shard_paths(self) -> list[Path]:
        folder = self.path / MANIFEST_DIR
        return sorted(folder.glob("shard-*-of-*.jsonl")) if folder.is_dir() else []

    def run_record(self) -> dict[str, Any] | None:
        """``run.json``, or None when the folder is not (yet) a diffcoremix output."""
        path = self.path / RUN_FILE
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return record if isinstance(record, dict) and record.get("made_by") == MADE_BY else None

    def is_ours(self) -> bool:
        return self.run_record() is not None

    def is_empty(self) -> bool:
        return not self.path.exists() or not entries(self.path)

    def data_folder(self) -> Path:
        """The dataset this output was made from.

        Raises:
            OutputFolderError: the folder has no run record.
        """
        record = self.run_record()
        if record is None or "data" not in record:
            raise OutputFolderError(
                f"{self.path} is not a diffcoremix output (no {RUN_FILE}); run generate or augment first, or pass "
                "the dataset with --data"
            )
        return Path(record["data"])

    def write_run_record(self, data: Path, **facts: Any) -> None:
        """Mark the folder as ours: ``run.json`` names DATA and the facts of the run (atomic, if changed)."""
        record = {"made_by": MADE_BY, "data": str(data.resolve()), **facts}
        write_text_if_changed(self.path / RUN_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies below ``folder`` (lexically: ``..`` in a record cannot lead out)."""
    return os.path.normpath(path).startswith(os.path.normpath(folder) + os.sep)


def read_layout(out: str | Path) -> list[str]:
    """The files (relative to OUT) that the filter placed, from ``layout.json`` (empty if none)."""
    path = Path(out) / LAYOUT_FILE
    try:
        files = json.loads(path.read_text(encoding="utf-8")).get("files", [])
    except FileNotFoundError:
        return []
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise OutputFolderError(f"{path} is damaged ({err}); start afresh with --overwrite") from None
    return [f for f in files if isinstance(f, str)]


def write_layout(out: str | Path, files: set[str]) -> None:
    write_text_if_changed(Path(out) / LAYOUT_FILE, json.dumps({"files": sorted(files)}, indent=1) + "\n")

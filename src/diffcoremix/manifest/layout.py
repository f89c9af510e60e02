"""The layout of an output folder, who owns it, and how a run opens it.

::

    OUT/run.json                             the run record: made by diffcoremix, from which DATA (ownership mark)
    OUT/settings.json                        what determines the pixels; a rerun with other settings is refused
    OUT/config.yaml                          resolved options and library versions
    OUT/images/<class>/<source file>.k<k>.png
    OUT/manifest/shard-RRRRR-of-WWWWW.jsonl  one record per candidate (names every image above)
    OUT/filter.jsonl                         the filter's decisions, one per candidate
    OUT/train/<class>/..., OUT/rejected/<class>/...   hard links to the images, by decision
    OUT/train/metadata.jsonl                 Hugging Face imagefolder metadata (prompt, score, source, label)
    OUT/layout.json                          every file the filter placed (train/, rejected/, plots)
    OUT/cache/                               embeddings of real and generated images, by content hash
    OUT/.diffcoremix.lock                    the lock of a running command (see :mod:`.lock`)

The rules that keep user data safe live here: DATA and OUT never overlap (in either direction, symbolic links
followed); a non-empty folder that is not one of our outputs is refused, ``overwrite`` or not; a run that fails
before it writes its first record leaves OUT as it found it; and starting afresh deletes only the files that our
own records name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diffcoremix.atomic import TMP_SUFFIX, write_text_if_changed
from diffcoremix.errors import DiffCoReMixError
from diffcoremix.manifest.lock import FolderLock

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
FILTER_FILES = ("filter.config.yaml", "filter_report.json", "calibration.json")
"""Fixed-name files the filter writes."""

MADE_BY = "diffcoremix"
_CACHE_ENTRY = re.compile(r"^[0-9a-f]{16}/[0-9a-f]{2}/[0-9a-f]{64}\.npy$")


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


def _entries(folder: Path) -> list[str]:
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
        return not self.path.exists() or not _entries(self.path)

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

    def owned_files(self) -> list[Path]:
        """Every file that our records name: images, manifest parts, decisions, views, reports, cache entries."""
        from diffcoremix.manifest.records import read_records

        named: set[Path] = set()
        for record in read_records(self.path):
            output = record.get("output")
            if isinstance(output, str) and _inside(self.path / output, self.images):
                named.add(self.path / output)
        named.update(self.shard_paths())
        for name in (RUN_FILE, SETTINGS_FILE, CONFIG_FILE, DECISIONS_FILE, LAYOUT_FILE, *FILTER_FILES):
            named.add(self.path / name)
        for relpath in read_layout(self.path):
            if _inside(self.path / relpath, self.path):
                named.add(self.path / relpath)
        cache = self.path / CACHE_DIR
        if cache.is_dir():
            named.update(p for p in cache.rglob("*.npy") if _CACHE_ENTRY.match(p.relative_to(cache).as_posix()))
        named.update(p for p in self.path.rglob(f".*{TMP_SUFFIX}") if p.is_file())
        return sorted(p for p in named if p.is_file() or p.is_symlink())

    def clear(self) -> int:
        """Delete every file our records name (and the folders they leave empty); keep anything else.

        Returns:
            How many files were deleted.
        """
        files = self.owned_files()
        for path in files:
            path.unlink(missing_ok=True)
        for name in (IMAGES_DIR, MANIFEST_DIR, TRAIN_DIR, REJECTED_DIR, CACHE_DIR, "filter_report"):
            _remove_empty_dirs(self.path / name)
        left = _entries(self.path)
        if left:
            logger.warning(
                "%s: started afresh; %d entr%s not made by diffcoremix left in place: %s",
                self.path,
                len(left),
                "y" if len(left) == 1 else "ies",
                ", ".join(left[:5]) + (", ..." if len(left) > 5 else ""),
            )
        return len(files)


def _inside(path: Path, folder: Path) -> bool:
    return os.path.normpath(path).startswith(os.path.normpath(folder) + os.sep)


def _remove_empty_dirs(folder: Path) -> None:
    if not folder.is_dir() or folder.is_symlink():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


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


@contextlib.contextmanager
def open_output(
    out: str | Path,
    *,
    data: str | Path | None = None,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    must_exist: bool = False,
) -> Iterator[OutputFolder]:
    """Check and lock an output folder for one command; on an error before the run record exists, leave it as found.

    Args:
        out: the output folder (created if missing, unless ``must_exist``).
        data: the dataset; DATA and OUT must not overlap.
        shard: ``(rank, world_size)`` of a generation shard (shards of one run may work side by side).
        overwrite: start afresh: delete every file our records name first (never anything else).
        must_exist: the folder must already be a diffcoremix output (``filter``).

    Raises:
        OutputFolderError: overlap with DATA, a file where the folder should be, a foreign non-empty folder.
        FolderBusyError: another run holds the folder.
    """
    path = Path(out)
    if data is not None:
        check_separate(data, path)
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"output {path} is a file, not a folder")
    folder = OutputFolder(path)
    if must_exist and not folder.is_ours():
        folder.data_folder()  # raises the "not a diffcoremix output" error
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(path, None if overwrite else shard)
    try:
        lock.acquire()
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    try:
        if not folder.is_ours() and not folder.is_empty():
            raise OutputFolderError(
                f"output folder {path} is not empty and was not made by diffcoremix: choose an empty or new folder "
                "(--overwrite never deletes files diffcoremix did not make)"
            )
        if overwrite and folder.is_ours():
            removed = folder.clear()
            logger.info("%s: deleted %d file(s) of the earlier run (--overwrite)", path, removed)
        yield folder
    except BaseException:
        lock.release()
        if created and folder.is_empty():  # nothing was claimed: the corrected command starts from scratch
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    else:
        lock.release()

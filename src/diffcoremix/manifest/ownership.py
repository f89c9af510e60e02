"""Opening an output folder for one command, and starting afresh: the rules that keep user data safe.

A non-empty folder that is not one of our outputs is refused, ``overwrite`` or not; a run that fails before it
writes its run record leaves OUT as it found it; starting afresh deletes only the files that our own records name
(images named by manifest records, manifest parts, decisions, the views and plots named by the layout record, our
cache entries and temporaries), and anything else stays.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diffcoremix.atomic import TMP_SUFFIX, atomic_write_text, remove_stale_temporaries
from diffcoremix.manifest.layout import (
    CACHE_DIR,
    CONFIG_FILE,
    DECISIONS_FILE,
    FILTER_FILES,
    IMAGES_DIR,
    LAYOUT_FILE,
    MANIFEST_DIR,
    REJECTED_DIR,
    REPORT_DIR,
    RUN_FILE,
    SETTINGS_FILE,
    TRAIN_DIR,
    OutputFolder,
    OutputFolderError,
    check_separate,
    entries,
    inside,
    read_layout,
)
from diffcoremix.manifest.lock import FolderLock
from diffcoremix.manifest.records import read_records

logger = logging.getLogger(__name__)

_CACHE_ENTRY = re.compile(r"^[0-9a-f]{16}/[0-9a-f]{2}/[0-9a-f]{64}\.npy$")


def owned_files(folder: OutputFolder) -> list[Path]:
    """Every file that our records name: images, manifest parts, decisions, views, reports, cache entries."""
    out = folder.path
    named: set[Path] = set()
    for record in read_records(out):
        output = record.get("output")
        if isinstance(output, str) and inside(out / output, folder.images):
            named.add(out / output)
    named.update(folder.shard_paths())
    for name in (RUN_FILE, SETTINGS_FILE, CONFIG_FILE, DECISIONS_FILE, LAYOUT_FILE, *FILTER_FILES):
        named.add(out / name)
    for relpath in read_layout(out):
        if inside(out / relpath, out):
            named.add(out / relpath)
    cache = out / CACHE_DIR
    if cache.is_dir():
        named.update(p for p in cache.rglob("*.npy") if _CACHE_ENTRY.match(p.relative_to(cache).as_posix()))
    named.update(p for p in out.rglob(f".*{TMP_SUFFIX}") if p.is_file())
    return sorted(p for p in named if p.is_file() or p.is_symlink())


def clear(folder: OutputFolder) -> int:
    """Delete every file our records name (and the folders they leave empty); keep anything else.

    Returns:
        How many files were deleted.
    """
    # The run record goes last: a kill part-way leaves a folder that is still ours, so a rerun may clear the rest.
    files = sorted(owned_files(folder), key=lambda p: p == folder.path / RUN_FILE)
    for path in files:
        path.unlink(missing_ok=True)
    for name in (IMAGES_DIR, MANIFEST_DIR, TRAIN_DIR, REJECTED_DIR, CACHE_DIR, REPORT_DIR):
        _remove_empty_dirs(folder.path / name)
    for parent in sorted({p.parent for p in files if p.parent != folder.path}, key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):  # folders that held only our files (a train run's checkpoints/)
            parent.rmdir()
    left = entries(folder.path)
    if left:
        logger.warning(
            "%s: started afresh; %d entr%s not made by diffcoremix left in place: %s",
            folder.path,
            len(left),
            "y" if len(left) == 1 else "ies",
            ", ".join(left[:5]) + (", ..." if len(left) > 5 else ""),
        )
    return len(files)


def _remove_empty_dirs(folder: Path) -> None:
    if not folder.is_dir() or folder.is_symlink():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


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
        if not folder.is_ours():
            _remove_first_write(folder)
        if not folder.is_ours() and not folder.is_empty():
            raise OutputFolderError(
                f"output folder {path} is not empty and was not made by diffcoremix: choose an empty or new folder "
                "(--overwrite never deletes files diffcoremix did not make)"
            )
        if overwrite and folder.is_ours():
            removed = clear(folder)
            logger.info("%s: deleted %d file(s) of the earlier run (--overwrite)", path, removed)
        elif shard is None and folder.is_ours() and (stale := remove_stale_temporaries(path)):
            # The folder is ours alone now: any temporary file of our writers was left by a killed run.
            logger.info("%s: removed %d temporary file(s) left by an interrupted run", path, stale)
        yield folder
    except BaseException:
        lock.release()
        if created and folder.is_empty():  # nothing was claimed: the corrected command starts from scratch
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    else:
        lock.release()


def _remove_first_write(folder: OutputFolder) -> None:
    """A run killed inside its first write (the run record) left only that record's temporary file: remove it, so
    that the folder counts as empty again (anything else in the folder keeps it foreign)."""
    names = entries(folder.path)
    if names and all(n.startswith(f".{RUN_FILE}.") and n.endswith(TMP_SUFFIX) for n in names):
        for name in names:
            (folder.path / name).unlink(missing_ok=True)
        logger.info("%s: removed the run record that a run killed at its start left half-written", folder.path)


def check_settings(folder: OutputFolder, settings: dict[str, Any], what: str) -> None:
    """Write ``settings.json``, or check that the earlier run's equals it.

    Raises:
        OutputFolderError: the folder holds a run (``what``: "a training run") with other settings.
    """
    path = folder / SETTINGS_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old != settings:
            changed = _changed(old, settings)
            raise OutputFolderError(
                f"{folder.path} holds {what} with other settings ({changed}): choose another -o, or start "
                "afresh with --overwrite"
            )
        return
    atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _changed(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return f"{SETTINGS_FILE} is damaged"
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{key}: {str(a)[:40]!r} -> {str(b)[:40]!r}")
    return "; ".join(diffs[:3]) or "unknown difference"

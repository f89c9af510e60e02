"""Opening an output folder for one command, and starting afresh: the rules that keep user data safe.

A non-empty folder that is not one of our outputs is refused, ``overwrite`` or not; a run that fails before it
writes its run record leaves OUT as it found it; starting afresh deletes only the files that our own records name
and that still hold what we wrote there (images named by manifest records, manifest parts, decisions, the views and
plots named by the layout record, our cache entries), and anything else stays; temporary files live in the folder's
scratch folder (:mod:`diffcoremix.scratch`), never beside the user's.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from diffcoremix.atomic import atomic_write_text
from diffcoremix.manifest.decisions import adopt_views
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
    Layout,
    OutputFolder,
    OutputFolderError,
    SettingsConflictError,
    changed_message,
    check_separate,
    entries,
    holds,
    inside,
)
from diffcoremix.manifest.lock import FolderLock
from diffcoremix.manifest.records import read_records
from diffcoremix.scratch import scratch_root

logger = logging.getLogger(__name__)

_CACHE_ENTRY = re.compile(r"^[0-9a-f]{16}/[0-9a-f]{2}/[0-9a-f]{64}\.npy$")


def owned_files(folder: OutputFolder, fixed: Iterable[str] = ()) -> tuple[list[Path], list[str]]:
    """The files our records name and that still hold what we wrote, and those (relative to OUT) that were changed.

    Ours: images whose content is one a manifest record gives for them, manifest parts, the fixed bookkeeping files
    (and ``fixed``: those of the command's own kind), the files of the layout record while they hold what it records
    (a damaged record is rebuilt: views that hold a generated image's content), cache entries.
    """
    out = folder.path
    named: set[Path] = set()
    changed: list[str] = []
    images: dict[Path, set[str]] = {}
    for record in read_records(out):
        output, sha = record.get("output"), record.get("output_sha256")
        if isinstance(output, str) and inside(out / output, folder.images):
            images.setdefault(out / output, set()).update([sha] if isinstance(sha, str) else [])
    for path, digests in images.items():
        if not os.path.lexists(path):
            continue
        if holds(path, sorted(digests)):
            named.add(path)
        else:
            changed.append(path.relative_to(out).as_posix())
    named.update(folder.shard_paths())
    for name in (RUN_FILE, SETTINGS_FILE, CONFIG_FILE, DECISIONS_FILE, LAYOUT_FILE, *FILTER_FILES, *fixed):
        named.add(out / name)
    layout = Layout(out, damaged="reset")
    if layout.damaged:
        adopt_views(layout, {d for digests in images.values() for d in digests})
    for relpath in layout.names():
        if layout.ours(relpath):
            named.add(out / relpath)
        else:
            changed.append(relpath)
    cache = out / CACHE_DIR
    if cache.is_dir():
        named.update(p for p in cache.rglob("*.npy") if _CACHE_ENTRY.match(p.relative_to(cache).as_posix()))
    return sorted(p for p in named if p.is_file() or p.is_symlink()), changed


def clear(folder: OutputFolder, fixed: Iterable[str] = ()) -> int:
    """Delete every file our records name that still holds what we wrote (and the folders they leave empty); keep
    anything else, and warn once of files we wrote that were changed since.

    Returns:
        How many files were deleted.
    """
    ours, changed = owned_files(folder, fixed)
    # The run record goes last: a kill part-way leaves a folder that is still ours, so a rerun may clear the rest.
    files = sorted(ours, key=lambda p: p == folder.path / RUN_FILE)
    for path in files:
        path.unlink(missing_ok=True)
    for name in (IMAGES_DIR, MANIFEST_DIR, TRAIN_DIR, REJECTED_DIR, CACHE_DIR, REPORT_DIR):
        _remove_empty_dirs(folder.path / name)
    for parent in sorted({p.parent for p in files if p.parent != folder.path}, key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):  # folders that held only our files (a train run's checkpoints/)
            parent.rmdir()
    if changed:
        logger.warning("%s", changed_message(folder.path, changed))
    left = [name for name in entries(folder.path) if name not in {p.split("/")[0] for p in changed}]
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
    fixed: Iterable[str] = (),
) -> Iterator[OutputFolder]:
    """Check and lock an output folder for one command; on an error before the run record exists, leave it as found.

    While the block runs, the folder's temporary files live in its scratch folder (``OUT/.diffcoremix-tmp``, see
    :mod:`diffcoremix.scratch`), which is swept of a killed run's leftovers when no other process uses it.

    Args:
        out: the output folder (created if missing, unless ``must_exist``).
        data: the dataset; DATA and OUT must not overlap.
        shard: ``(rank, world_size)`` of a generation shard (shards of one run may work side by side).
        overwrite: start afresh: delete every file our records name first (never anything else).
        must_exist: the folder must already be a diffcoremix output (``filter``).
        fixed: the bookkeeping files of the command's kind of folder (``overwrite`` deletes them by name).

    Raises:
        OutputFolderError: overlap with DATA, a file where the folder should be, a foreign non-empty folder, a folder
            that cannot be written.
        FolderBusyError: another run holds the folder.
    """
    path = Path(out)
    if data is not None:
        check_separate(data, path)
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"output {path} is a file, not a folder")
    folder = OutputFolder(path)
    if must_exist:
        _check_ours(folder, repairable=False, must_exist=True)
    created = not path.exists()
    with writable(path):
        path.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(path, None if overwrite else shard)
    try:
        with writable(path):
            lock.acquire()
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    try:
        _check_ours(folder, repairable=data is not None)
        with writable(path), scratch_root(path):
            if overwrite and folder.is_ours():
                removed = clear(folder, fixed)
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


def _check_ours(folder: OutputFolder, *, repairable: bool, must_exist: bool = False) -> None:
    """Refuse a folder that is not ours, saying why; take back one whose run record alone is missing or damaged when
    the command knows its DATA (``repairable``: it writes the record again).

    Raises:
        OutputFolderError: the folder is foreign (or, ``must_exist``, not an output at all), or its run record is
            missing or damaged and this command cannot write it again.
    """
    problem = folder.run_record_problem()
    if problem is None:
        return
    if folder.has_our_records():
        if repairable:
            logger.warning("%s %s, but its other records are diffcoremix's: taken as ours (the run record is written "
                           "again)", folder.path, problem)  # fmt: skip
            return
        raise OutputFolderError(
            f"{folder.path} {problem}, but its other records are diffcoremix's: rerun the command that made it "
            f"(`diffcoremix augment DATA -o {folder.path}`, or generate), which writes the run record again"
        )
    if must_exist:
        raise OutputFolderError(
            f"{folder.path} is not a diffcoremix output ({problem}); run generate or augment first, or pass the "
            "dataset with --data"
        )
    if not folder.is_empty():
        raise OutputFolderError(
            f"output folder {folder.path} is not empty and was not made by diffcoremix ({problem}): choose an empty "
            "or new folder (--overwrite never deletes files diffcoremix did not make)"
        )


READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
"""Errors that mean "this folder cannot be written" (a read-only mount, no permission)."""


@contextlib.contextmanager
def writable(path: Path) -> Iterator[None]:
    """Turn "read-only file system" or "permission denied" while creating or locking ``path`` into one line."""
    try:
        yield
    except OSError as err:
        if err.errno not in READ_ONLY:
            raise
        raise OutputFolderError(f"cannot write to {path}: {os.strerror(err.errno or 0).lower()}") from None


def check_settings(
    folder: OutputFolder,
    settings: dict[str, Any],
    what: str,
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """Write ``settings.json``, or check that the earlier run's equals it.

    ``upgrade`` turns an earlier version's settings into today's words (a renamed value): settings equal after it are
    the same run, and ``settings.json`` is rewritten in today's words.

    Raises:
        SettingsConflictError: the folder holds a run (``what``: "a training run") with other settings.
    """
    path = folder / SETTINGS_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old != settings and isinstance(old, dict) and upgrade is not None and upgrade(old) == settings:
            atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")
            return
        if old != settings:
            changed = _changed(old, settings)
            raise SettingsConflictError(
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

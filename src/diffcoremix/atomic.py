"""Atomic file writes: a reader (or a run resumed after a crash) sees the old file or the new one, never a torn one.

The content goes to a hidden temporary file in the same folder, is flushed to disk, and is renamed over the
target. Temporary names start with ``.<target name>.`` and end with ``.tmp``, so a crashed run's leftovers are
recognisable (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from diffcoremix import faults

TMP_SUFFIX = ".tmp"


def atomic_write_bytes(path: str | Path, data: bytes, *, tag: str = "") -> None:
    """Write ``data`` to ``path`` atomically; ``tag`` goes into the temporary name (e.g. a shard's rank)."""
    with atomic_writer(path, tag=tag) as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_writer(path: str | Path, *, tag: str = "") -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through, in pieces: it replaces ``path`` (synced) only when the block ends
    without an error; otherwise ``path`` is untouched and the temporary file removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{tag}", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with naming_errors(path):  # a failed write names no file: the target
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            faults.write_point(path)
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def naming_errors(path: str | Path) -> Iterator[None]:
    """Re-raise an ``OSError`` that names no file (a failed ``write`` to an open file) with ``path`` as its file,
    so that "no space left on device" says where."""
    try:
        yield
    except OSError as err:
        if err.errno is not None and err.filename is None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def atomic_write_text(path: str | Path, text: str, *, tag: str = "") -> None:
    """Write UTF-8 text (``\\n`` line ends) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), tag=tag)


def write_bytes_if_changed(path: str | Path, data: bytes) -> bool:
    """Write ``data`` atomically unless the file already holds exactly it; True if it was written.

    A rerun that has nothing new to say leaves its files untouched (bytes and modification times).
    """
    try:
        if Path(path).read_bytes() == data:
            return False
    except OSError:
        pass
    atomic_write_bytes(path, data)
    return True


def write_text_if_changed(path: str | Path, text: str) -> bool:
    """:func:`write_bytes_if_changed` for UTF-8 text."""
    return write_bytes_if_changed(path, text.encode("utf-8"))


def remove_own_temporaries(path: str | Path) -> int:
    """Delete the temporary files that a killed atomic write of ``path`` left beside it (``.<name>.*.tmp``).

    For a single file that a command writes outside a folder of its own (a report page, a preview image): the
    folder is not ours to sweep, but these names are our writer's. Returns how many were removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return 0
    prefix = f".{path.name}."
    stale = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(TMP_SUFFIX)]
    for p in stale:
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
    return len(stale)


def remove_stale_temporaries(folder: str | Path, *, tag: str = "") -> int:
    """Delete the temporary files a killed writer left below ``folder`` (only those whose name holds ``tag``).

    Returns:
        How many were removed.
    """
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for path in folder.rglob(f".*{TMP_SUFFIX}"):
        if path.is_file() and (not tag or f".{tag}" in path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed

"""Atomic file writes: a reader (or a run resumed after a crash) sees the old file or the new one, never a torn one.

The content goes to a temporary file in a scratch folder of our own on the target's file system
(:mod:`diffcoremix.scratch`: ``OUT/.diffcoremix-tmp`` for a file of an output folder a command holds, else
``.diffcoremix-tmp`` beside the file for the time of the write), is flushed to disk, and is renamed over the target.
Nothing is ever created beside the target under a name of ours, so no sweep ever has to guess which files are ours.
A new file's mode is what the umask gives (0644 under 022), as for any file a program creates.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from diffcoremix import faults
from diffcoremix.errors import PathBlockedError
from diffcoremix.scratch import TMP_SUFFIX, scratch_for, scratch_root

__all__ = ["TMP_SUFFIX", "atomic_write_bytes", "atomic_write_text", "atomic_writer", "ensure_folder", "naming_errors",
           "write_bytes_if_changed", "write_text_if_changed"]  # fmt: skip


def atomic_write_bytes(path: str | Path, data: bytes, *, tag: str = "") -> None:
    """Write ``data`` to ``path`` atomically; ``tag`` starts the temporary name (a shard's, to sweep its own)."""
    with atomic_writer(path, tag=tag) as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_writer(path: str | Path, *, tag: str = "") -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through, in pieces: it replaces ``path`` (synced) only when the block ends
    without an error; otherwise ``path`` is untouched and the temporary file removed."""
    path = Path(path)
    ensure_folder(path.parent)
    with scratch_for(path) as scratch:  # OUT's, or (a file on its own) one beside it for this write
        fd, tmp = scratch.new_file(tag)
        try:
            with naming_errors(path):  # a failed write names no file: the target
                with os.fdopen(fd, "wb") as handle:
                    yield handle
                    handle.flush()
                    os.fsync(handle.fileno())
                faults.write_point(path)
                _replace(tmp, path, tag)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _replace(tmp: Path, path: Path, tag: str) -> None:
    """Rename ``tmp`` over ``path``; where the two lie on different file systems (a folder of OUT that links to another
    disk), through a scratch folder beside ``path`` instead."""
    try:
        os.replace(tmp, path)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        with scratch_root(path.parent) as near:
            fd, moved = near.new_file(tag)
            try:
                with open(tmp, "rb") as source, os.fdopen(fd, "wb") as target:
                    shutil.copyfileobj(source, target)
                    target.flush()
                    os.fsync(target.fileno())
                os.replace(moved, path)
            except BaseException:
                moved.unlink(missing_ok=True)
                raise
        tmp.unlink(missing_ok=True)


def ensure_folder(path: str | Path) -> None:
    """Create the folder ``path`` (and its parents) unless it exists.

    Raises:
        PathBlockedError: a file stands where it, or one of its parents, should be.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if os.path.lexists(p) and not p.is_dir()), path)
        raise PathBlockedError(blocker) from None


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

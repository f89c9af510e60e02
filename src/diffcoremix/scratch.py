"""Scratch folders: where our temporary files live, so that nothing outside them is ever swept.

An atomic write (:mod:`diffcoremix.atomic`) puts its content in a temporary file and renames it over its target. The
temporary file never lies beside the target under a name that a user's file could share: it is made in a *scratch
folder* of our own on the target's file system (so the rename stays atomic):

- a file below an output folder that a command has opened (``OUT``, ``RUN``, a dataset folder that diffcoremix
  materialises) goes through ``<folder>/.diffcoremix-tmp/``, open for as long as the command holds the folder
  (:func:`scratch_root`);
- any other file (a report page, ``scan -o``) goes through ``.diffcoremix-tmp/`` beside it, for the time of the
  write; the folder is removed again when the write ends.

A temporary file left by a killed run is removed by the next process that opens the scratch folder while no other
process uses it (each user holds a shared ``flock`` on ``.diffcoremix-tmp/.lock``; the sweep needs it exclusively, so
shards, Ray actors and two reports written into one folder never remove each other's files in flight). The sweep
looks only inside the scratch folder, and there only at names of the form our writers make
(``<tag><16 hex digits>.tmp``): no file of the user's, whatever its name, is ever removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

SCRATCH_DIR = ".diffcoremix-tmp"
"""The scratch folder's name, in the folder it serves."""
TMP_SUFFIX = ".tmp"
LOCK_NAME = ".lock"
_OURS = re.compile(r"^[A-Za-z0-9_-]*[0-9a-f]{16}\.tmp$")
"""The names our writers give their temporary files and folders (a tag, 16 random hex digits, ``.tmp``)."""


class Scratch:
    """The scratch folder of ``root`` (``root/.diffcoremix-tmp``), held open by this process.

    Args:
        root: the folder served (it must exist).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.path = self.root / SCRATCH_DIR
        self._fd: int | None = None

    def open(self) -> int:
        """Create the folder if needed and take a shared hold on it; alone, first sweep what killed runs left.

        Returns:
            How many leftovers were removed.
        """
        for _ in range(100):  # retried only when a last user removed the folder or its lock file meanwhile
            with contextlib.suppress(FileExistsError):
                self.path.mkdir(parents=True)
            if self.path.is_symlink() or not self.path.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a folder (diffcoremix keeps its temporary files here)",
                                         str(self.path))  # fmt: skip
            try:
                fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except FileNotFoundError:
                continue
            swept = 0
            alone = _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not alone:
                fcntl.flock(fd, fcntl.LOCK_SH)  # an exclusive holder only sweeps or removes: a short wait
            if not _names_file(self.path / LOCK_NAME, fd):
                os.close(fd)
                continue
            if alone:
                swept = self.sweep()
                fcntl.flock(fd, fcntl.LOCK_SH)
            self._fd = fd
            return swept
        raise OSError(errno.EBUSY, "cannot hold the scratch folder: it keeps being removed", str(self.path))

    def close(self) -> None:
        """Drop the hold; the last user removes the folder when nothing else is in it."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):  # the last user
                (self.path / LOCK_NAME).unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # not empty (a leftover, or a new user's lock file): it stays
                    self.path.rmdir()
        finally:
            os.close(fd)

    def new_file(self, tag: str = "") -> tuple[int, Path]:
        """A new temporary file (open for writing) and its path. Its mode is what the umask gives a new file."""
        while True:
            path = self.path / f"{tag}{secrets.token_hex(8)}{TMP_SUFFIX}"
            try:
                return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), path
            except FileExistsError:
                continue

    def new_folder(self, tag: str = "") -> Path:
        """A new empty temporary folder (for a set of files moved into place one by one)."""
        while True:
            path = self.path / f"{tag}{secrets.token_hex(8)}{TMP_SUFFIX}"
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue

    def sweep(self, tag: str = "") -> int:
        """Remove the temporary files and folders in the scratch folder (only those whose name starts with ``tag``).

        Call it only where no other process can be writing them: :meth:`open` does when it holds the folder alone, and
        a generation shard for its own tag, which its shard lock makes its own.
        """
        removed = 0
        if not self.path.is_dir():
            return 0
        for entry in os.scandir(self.path):
            if not (_OURS.match(entry.name) and entry.name.startswith(tag)):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            removed += 1
        return removed


def _flock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def _names_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the open file ``fd`` (a last user may have removed it before we locked it)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


_OPEN: dict[Path, list[Scratch]] = {}
"""The scratch folders this process holds, by the folder they serve (a stack each: commands may nest)."""
_GUARD = threading.Lock()


@contextlib.contextmanager
def scratch_root(root: str | Path) -> Iterator[Scratch]:
    """While the block runs, atomic writes of files below ``root`` keep their temporary files in ``root``'s scratch
    folder, which this process holds (and, when no other process holds it, first sweeps)."""
    scratch = Scratch(root)
    scratch.open()
    keys = {scratch.root, Path(os.path.realpath(scratch.root))}  # a target may be named through links or not
    with _GUARD:
        for key in keys:
            _OPEN.setdefault(key, []).append(scratch)
    try:
        yield scratch
    finally:
        with _GUARD:
            for key in keys:
                _OPEN[key].remove(scratch)
                if not _OPEN[key]:
                    del _OPEN[key]
        scratch.close()


def held_scratch(target: str | Path) -> Scratch | None:
    """The scratch folder that a write of ``target`` uses: the held one of the nearest folder above it, if any."""
    path = Path(os.path.abspath(target))
    with _GUARD:
        if not _OPEN:
            return None
        return _nearest(path) or _nearest(Path(os.path.realpath(path)))


def _nearest(path: Path) -> Scratch | None:
    for parent in path.parents:
        if parent in _OPEN:
            return _OPEN[parent][-1]
    return None


@contextlib.contextmanager
def scratch_for(target: str | Path) -> Iterator[Scratch]:
    """The scratch folder for writing ``target``: the held one of a folder above it, else one beside it for the
    block."""
    held = held_scratch(target)
    if held is not None:
        yield held
        return
    with scratch_root(Path(target).parent) as scratch:
        yield scratch

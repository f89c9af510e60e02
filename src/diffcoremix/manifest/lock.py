"""Exclusive use of an output folder: OS file locks that the kernel releases when the process dies.

A run takes ``OUT/.diffcoremix.lock`` with ``flock``: exclusively for whole-folder work (filter, augment, starting
afresh), shared for a generation shard, which also takes its own ``OUT/.diffcoremix.shard-R-of-W.lock``
exclusively, so the shards of one sharded run work side by side while a second copy of any shard, or a filter,
is refused. A killed run never leaves a stale lock: the kernel drops the lock with the process, and the next run
takes it (the file may remain; its pid is then stale and ignored).

Lock files are removed when the last holder releases them; the classic race of removing a lock file that another
process has just opened is closed by checking, after locking, that the path still names the locked file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from diffcoremix.errors import DiffCoReMixError

LOCK_FILE = ".diffcoremix.lock"
"""The folder's main lock (relative to OUT)."""


class FolderBusyError(DiffCoReMixError):
    """Another run holds the output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def holders(folder: Path) -> list[int]:
    """The pids written in the folder's lock files that belong to live processes other than this one."""
    pids = {_read_pid(p) for p in sorted(folder.glob(".diffcoremix*.lock"))}
    return sorted(p for p in pids if p is not None and p != os.getpid() and _alive(p))


class FileLock:
    """One ``flock`` on one file, taken without waiting.

    Args:
        path: the lock file (created if missing).
        shared: take a shared lock (several holders) instead of an exclusive one.
    """

    def __init__(self, path: Path, *, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False if another process holds it incompatibly."""
        for _ in range(10):  # retried only when the file was replaced between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    return False
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                if not self.shared:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                return True
            os.close(fd)
        raise FolderBusyError(f"cannot take the lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        """Drop the lock, and remove the file when no one else holds it."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # Only a holder that can take the lock exclusively is the last one: it may remove the file.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing releases the lock


class FolderLock:
    """The lock of one output folder: whole (exclusive) or one generation shard's part.

    Args:
        folder: the output folder (must exist).
        shard: ``(rank, world_size)`` for a generation shard; None for whole-folder work.

    Raises:
        FolderBusyError: from :meth:`acquire`, naming the holder's pid.
    """

    def __init__(self, folder: Path, shard: tuple[int, int] | None = None) -> None:
        self.folder = folder
        self.main = FileLock(folder / LOCK_FILE, shared=shard is not None)
        self.part = None
        if shard is not None:
            rank, world = shard
            self.part = FileLock(folder / f".diffcoremix.shard-{rank:05d}-of-{world:05d}.lock")

    def acquire(self) -> None:
        """Take the folder (and shard) lock, or raise :class:`FolderBusyError`."""
        if not self.main.acquire():
            self._busy()
        if self.part is not None and not self.part.acquire():
            self.main.release()
            self._busy()

    def _busy(self) -> None:
        pids = holders(self.folder)
        who = f"pid {', '.join(map(str, pids))}" if pids else "a process whose pid is not known yet"
        raise FolderBusyError(
            f"{self.folder} is in use by another diffcoremix run ({who}); wait for it to end, or choose another "
            "output folder"
        )

    def release(self) -> None:
        """Release the shard lock, then the folder lock."""
        if self.part is not None:
            self.part.release()
        self.main.release()

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def claim_lock(folder: Path) -> Iterator[None]:
    """A short exclusive section (waiting for it) in which one shard at a time checks and writes the run's settings.

    The file is removed on the way out; a waiter that then finds its locked file gone starts over on a new one.
    """
    path = folder / ".diffcoremix.claim.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)

"""Checking image files once: what decoding a file found, kept in a persistent index per dataset.

Every command that reads DATA must know which of its files decode (``scan``'s check: read, hash, decode fully). On a
large dataset that is minutes to hours of decoding, so what a check found is remembered in a **check index**, one per
dataset folder, under the user's cache (``$XDG_CACHE_HOME/diffcoremix/checks/``, never inside DATA). A later command
decodes only the files the index does not know as they are now.

**How a changed file is noticed.** An entry is keyed by the file's path relative to DATA and its status when it was
checked: size, modification time and status-change time (in ns) and inode, links followed. Writing a file, replacing
it (a new inode), renaming another file onto it, or restoring an old modification time with ``touch -d`` (which
changes the status-change time) all change the key, and the file is decoded again. What the index cannot see: a
change that keeps all four, which takes rewriting a file in place with the same size and setting the system clock
back. It also never takes a file for checked when the check read it while it was being written (its status must be
the same before and after the read) or when it was written less than :data:`SETTLE_SECONDS` before the check (a
second write in the same clock tick would keep its times). ``scan --recheck`` decodes every file again and rewrites
the index.

**What is kept.** The content digest, pixel size, mode and format of a file that decoded, or the decoding problem of
one that did not (``empty_file``, ``not_an_image``, ``corrupt``, ``truncated``). The limits of a check (``min_side``,
``max_pixels``) are applied afresh to what is kept, so one index serves every command's settings. Read failures
(permission, a vanished file) and files refused before decoding (``too_large``) are never kept: they are checked
again each time. The index is one SQLite database per dataset, Pillow version (whose decoders decide what decodes)
and format, written in transactions (a killed check keeps what it committed; the next run checks the rest). A file
is looked up by its status when the lookup runs, not when DATA was listed. File names that are not UTF-8 are checked
each time. When the cache folder cannot be written or lies inside DATA, or the database is damaged, the
command checks every file as without an index and says so once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import PIL
from PIL import Image
from tqdm import tqdm

from diffcoremix.config import check_types, require
from diffcoremix.data.folder import Finding, ImageItem
from diffcoremix.data.images import decode_image, over_max_pixels, read_bytes
from diffcoremix.errors import ImageReadError
from diffcoremix.identities import SETTLE_SECONDS, user_cache_dir

logger = logging.getLogger(__name__)

INDEX_FORMAT = 1
DECODE_PROBLEMS = frozenset({"empty_file", "not_an_image", "corrupt", "truncated"})
"""The problems that belong to a file's content, and so are kept in the index."""
COMMIT_EVERY = 2000
"""Results are committed in batches of this many: a killed first check keeps what it committed."""

Stamp = tuple[int, int, int, int]
"""``(size, mtime_ns, ctime_ns, inode)`` of a file (:func:`file_stamp`)."""


@dataclass(frozen=True)
class ScanConfig:
    """What counts as a usable image (the options of ``diffcoremix scan``; every command that reads DATA checks its
    images with one)."""

    min_side: int = 32
    """Images whose shorter side is below this many pixels are reported as ``too_small``."""
    max_pixels: int | None = None
    """Images with more pixels are reported as ``too_large``; null keeps PIL's decompression-bomb limit."""
    workers: int = 0
    """Processes that decode images; 0 picks one per core for large datasets and none for small ones."""
    strict: bool = False
    """Exit with status 1 when any problem is found (the report is printed either way)."""
    recheck: bool = False
    """Decode every image even where the check index knows it (and write what was found to the index)."""

    def __post_init__(self) -> None:
        check_types(self)
        require(self.min_side >= 1, "min_side", self.min_side, ">= 1")
        require(self.max_pixels is None or self.max_pixels >= 1, "max_pixels", self.max_pixels, ">= 1 or null")
        require(self.workers >= 0, "workers", self.workers, ">= 0")


@dataclass(frozen=True)
class FileResult:
    """What checking one file found."""

    relpath: str
    digest: str
    size: tuple[int, int] | None = None
    mode: str | None = None
    format: str | None = None
    problem: Finding | None = None
    stamp: Stamp | None = field(default=None, compare=False, repr=False)
    """The file's status when it was read, when the result may be remembered (None: it may not)."""


def too_small(relpath: str, size: tuple[int, int], min_side: int) -> Finding | None:
    """The ``too_small`` problem of an image of ``size``, or None."""
    if min(size) >= min_side:
        return None
    return Finding(relpath, "too_small", f"{size[0]}x{size[1]} has a side below min_side={min_side}")


def inspect_file(path: str, relpath: str, min_side: int, max_pixels: int | None) -> FileResult:
    """Read, hash and fully decode one file; never raises for a bad file."""
    before = _stamp(path)
    try:
        data = read_bytes(path)
    except ImageReadError as err:
        return FileResult(relpath, "", problem=Finding(relpath, err.kind, err.reason))
    stamp = before if before is not None and _stamp(path) == before and _settled(before) else None
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        image = decode_image(data, relpath, max_pixels=max_pixels)
    except ImageReadError as err:
        kept = stamp if err.kind in DECODE_PROBLEMS else None
        return FileResult(relpath, digest, problem=Finding(relpath, err.kind, err.reason), stamp=kept)
    size = image.size
    return FileResult(relpath, digest, size, image.mode, image.format or "?", too_small(relpath, size, min_side), stamp)


def _stamp(path: str) -> Stamp | None:
    try:
        return file_stamp(os.stat(path))
    except OSError:
        return None


def _settled(stamp: Stamp) -> bool:
    return time.time_ns() - max(stamp[1], stamp[2]) >= SETTLE_SECONDS * 1e9


def _inspect_args(args: tuple[str, str, int, int | None]) -> FileResult:
    return inspect_file(*args)


def inspect_all(items: Sequence[ImageItem], config: ScanConfig, progress: bool) -> Iterator[FileResult]:
    """Decode every item (in worker processes for large datasets), yielding one result per file in order."""
    jobs = [(str(i.path), i.relpath, config.min_side, config.max_pixels) for i in items]
    workers = config.workers or (min(os.cpu_count() or 1, 8) if len(jobs) >= 2000 else 0)
    bar = tqdm(total=len(jobs), desc="checking images", unit="img", disable=not progress, leave=False)
    try:
        if workers <= 1:
            for job in jobs:
                yield _inspect_args(job)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(_inspect_args, jobs, chunksize=64):
                    yield result
                    bar.update()
    finally:
        bar.close()


def check_files(
    root: Path, items: Sequence[ImageItem], config: ScanConfig, *, progress: bool = False
) -> Iterator[FileResult]:
    """One result per item, in order: from the dataset's check index where it knows the file as it is now (unless
    ``config.recheck``), else by decoding it (:func:`inspect_all`), which the index then remembers.

    Only items that :func:`~diffcoremix.data.folder.list_images` found under ``root`` and whose path SQLite can hold
    (valid UTF-8) are looked up and remembered."""
    indexable = {i.relpath for i in items if i.file is not None and _encodable(i.relpath)}
    with CheckIndex.opened(root) as index:
        known = {} if index is None or config.recheck else index.lookup([i for i in items if i.relpath in indexable],
                                                                          config)  # fmt: skip
        todo = [item for item in items if item.relpath not in known]
        fresh = inspect_all(todo, config, progress)
        if index is not None:
            fresh = index.remembering(fresh, indexable)
        for item in items:  # streamed: the fresh results come in the order of ``todo``, a subsequence of ``items``
            yield known[item.relpath] if item.relpath in known else next(fresh)
        # None is left: asking runs ``remembering`` on to its end, which commits its last batch.
        if next(fresh, None) is not None:
            raise RuntimeError("more checks than images")
    logger.info("%s: %d image(s) decoded, %d known to the check index", root, len(todo), len(known))


def file_stamp(st: os.stat_result) -> Stamp:
    """``(size, mtime_ns, ctime_ns, inode)``: what changes when a file is written, replaced or moved (the inode as a
    signed 64-bit number, which SQLite holds: some network file systems give inodes of 2**63 and above)."""
    inode = st.st_ino - 2**64 if st.st_ino >= 2**63 else st.st_ino
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, inode


def _encodable(relpath: str) -> bool:
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8 (held with surrogate escapes): checked each time
        return False
    return True


def index_path(root: str | Path) -> Path:
    """The check index of the dataset folder ``root``: one file per real path of ``root``, index format, Pillow version
    (whose decoders decide what decodes) and Pillow's pixel limit, so that no index is ever read by another Pillow."""
    real = os.path.realpath(root)
    name = hashlib.blake2b(real.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
    decoder = f"{INDEX_FORMAT}-{PIL.__version__}-{Image.MAX_IMAGE_PIXELS}"
    version = hashlib.blake2b(decoder.encode(), digest_size=4).hexdigest()
    return user_cache_dir() / "checks" / f"{name}-{version}.sqlite3"


_COLUMNS = "relpath, bytes, mtime_ns, ctime_ns, inode, digest, width, height, mode, format, kind, reason"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checks ({_COLUMNS.replace("relpath", "relpath TEXT PRIMARY KEY")}) WITHOUT ROWID;
"""
_FAILURES = (sqlite3.Error, ValueError, OverflowError)
"""What SQLite may raise on a value it cannot hold or a database it cannot use: the index is then left alone."""
_warned: set[str] = set()


class CheckIndex:
    """The check index of one dataset folder (see the module's docstring)."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.connection = connection
        self.path = path
        self.failed = False
        """Set at the first failure: the index is not used again in this command (no wait on a lock per batch)."""

    @classmethod
    @contextlib.contextmanager
    def opened(cls, root: Path) -> Iterator[CheckIndex | None]:
        """The index of ``root``, or None (said once per process) when it cannot be used; never one inside ``root``."""
        try:
            path = index_path(root)
            if os.path.realpath(path).startswith(os.path.realpath(root) + os.sep):
                raise OSError("the cache folder lies inside the dataset, which is never written")
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(path, timeout=60, isolation_level=None)
        except (OSError, RuntimeError, *_FAILURES) as err:  # RuntimeError: no home folder to put the cache in
            _unusable(f"for {root}", err)
            yield None
            return
        try:
            index = cls(connection, path)
            try:
                index._prepare(str(os.path.realpath(root)))
            except _FAILURES as err:
                _unusable(str(path), err)
                yield None
            else:
                yield index
        finally:
            connection.close()

    def _prepare(self, root: str) -> None:
        self.connection.executescript(_SCHEMA)
        with self._transaction():
            self.connection.execute("INSERT OR IGNORE INTO meta VALUES ('root', ?)", (root,))
            (held,) = self.connection.execute("SELECT value FROM meta WHERE key = 'root'").fetchone()
        if held != root:  # two folders whose paths hash alike: not ours to use
            raise sqlite3.DatabaseError(f"it is the index of {held}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

    def lookup(self, items: Sequence[ImageItem], config: ScanConfig) -> dict[str, FileResult]:
        """relpath -> the result, under ``config``'s limits, of each item the index knows as the file is now (its
        status is read again here: a file changed since it was listed is not taken for the one checked)."""
        found: dict[str, FileResult] = {}
        try:
            for start in range(0, len(items), 500):
                chunk = {i.relpath: i for i in items[start : start + 500]}
                marks = ",".join("?" * len(chunk))
                rows = self.connection.execute(f"SELECT {_COLUMNS} FROM checks WHERE relpath IN ({marks})", list(chunk))
                for row in rows.fetchall():
                    result = _result(row, _stamp(str(chunk[row[0]].path)), config)
                    if result is not None:
                        found[result.relpath] = result
        except _FAILURES as err:
            self._failed(err)
            return {}
        return found

    def remembering(self, results: Iterable[FileResult], indexable: Collection[str]) -> Iterator[FileResult]:
        """``results``, passed on; those of ``indexable`` paths remembered when they may be (committed every
        :data:`COMMIT_EVERY`)."""
        batch: list[tuple[object, ...]] = []
        for result in results:
            if result.stamp is not None and result.relpath in indexable:
                batch.append(_row(result, result.stamp))
            if len(batch) >= COMMIT_EVERY:
                self._write(batch)
                batch = []
            yield result
        self._write(batch)

    def _write(self, rows: list[tuple[object, ...]]) -> None:
        if not rows or self.failed:
            return
        try:
            with self._transaction():
                self.connection.executemany(f"INSERT OR REPLACE INTO checks ({_COLUMNS}) VALUES ({','.join('?' * 12)})",
                                            rows)  # fmt: skip
        except _FAILURES as err:
            self._failed(err)

    def _failed(self, err: BaseException) -> None:
        self.failed = True
        _unusable(str(self.path), err)


def _row(result: FileResult, stamp: Stamp) -> tuple[object, ...]:
    width, height = result.size if result.size is not None else (None, None)
    problem = result.problem if result.problem is not None and result.problem.kind in DECODE_PROBLEMS else None
    return (result.relpath, *stamp, result.digest, width, height, result.mode, result.format,
            problem.kind if problem else None, problem.reason if problem else None)  # fmt: skip


def _result(row: tuple[object, ...], stamp: Stamp | None, config: ScanConfig) -> FileResult | None:
    """The remembered check of ``row`` under ``config``, or None when the file is no longer the one checked."""
    relpath, size_bytes, mtime_ns, ctime_ns, inode, digest, width, height, mode, format_, kind, reason = row
    if stamp is None or stamp != (size_bytes, mtime_ns, ctime_ns, inode):
        return None
    if not isinstance(relpath, str) or not isinstance(digest, str):
        return None
    if isinstance(kind, str):
        if kind in ("corrupt", "truncated") and config.max_pixels is not None:
            return None  # decoded without the limit: under it, the file might be refused as too_large first
        return FileResult(relpath, digest, problem=Finding(relpath, kind, str(reason)), stamp=stamp)
    if not isinstance(width, int) or not isinstance(height, int):
        return None
    size = (width, height)
    over = over_max_pixels(size, config.max_pixels)
    if over is not None:
        return FileResult(relpath, digest, problem=Finding(relpath, "too_large", over), stamp=stamp)
    problem = too_small(relpath, size, config.min_side)
    return FileResult(relpath, digest, size, str(mode), str(format_), problem, stamp)


def _unusable(where: str, err: BaseException) -> None:
    if where not in _warned:
        _warned.add(where)
        logger.warning("the check index %s cannot be used (%s): images are decoded as without one (delete the file if "
                       "it is damaged)", where, err)  # fmt: skip

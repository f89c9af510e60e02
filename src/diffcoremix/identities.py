"""What names a local model: the SHA-256 of its weight files, not its path (issue 26, items 3 and 4).

A local model (a diffusers folder, a single-file checkpoint, LoRA weights, a VAE folder, a CLIP folder or file, a
CIFAR ResNet) is named by its content, so that

- a rerun after the weights changed is refused as a change of settings, never served the old images as done;
- an embedding cached for old weights is never read for new ones (the embedder's id, the cache's key, holds it);
- the same folder given by a relative path, an absolute one or through a symlink is one model (the judge that is
  the filter's embedder is refused however it is spelled).

The digest of a file is the SHA-256 of its bytes (what ``model_sha256`` always recorded for a checkpoint); that of
a folder is the SHA-256 of the list of its weight files (:data:`WEIGHT_SUFFIXES`, in any sub-folder but hidden ones
such as ``.git`` or ``.cache``), each as ``relative path NUL digest``. Configs are not part of it: only weights.

Reading 10 GB on every run would cost minutes, so each file's digest is remembered in a small JSON file,
``$XDG_CACHE_HOME/diffcoremix/weights-sha256.json`` (``~/.cache/diffcoremix`` when unset), under its real path with
its size, modification and change times (ns) and inode: a file whose status is unchanged is not read again; a
rewrite, a ``touch``, a replacement (new inode) or a ``chmod`` reads it again. A file modified less than
:data:`SETTLE_SECONDS` ago is not remembered (a write within the file system's clock tick would keep its times:
git's "racily clean" case). The cache is written atomically; a damaged or unreadable one is ignored and rebuilt,
and one that cannot be written only costs the time of reading again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diffcoremix.atomic import atomic_write_text
from diffcoremix.digests import file_sha256
from diffcoremix.errors import DiffCoReMixError, ModelLoadError

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".th")
"""The files of a folder that its digest covers (diffusers, transformers, open_clip, torch and CIFAR ResNet weights)."""
CACHE_FILE = "weights-sha256.json"
CACHE_FORMAT = 1
SETTLE_SECONDS = 2.0
"""A file modified this recently is hashed but not remembered (its times may not show a write still to come)."""


def user_cache_dir() -> Path:
    """The tool's own cache folder: ``$XDG_CACHE_HOME/diffcoremix`` (``~/.cache/diffcoremix`` when unset). Everything
    in it may be deleted at any time: it is rebuilt."""
    root = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(root):  # unset, or relative (which the XDG specification says to ignore)
        root = str(Path("~/.cache").expanduser())
    return Path(root) / "diffcoremix"


def cache_path() -> Path:
    """Where the digests are remembered: ``$XDG_CACHE_HOME/diffcoremix/weights-sha256.json``."""
    return user_cache_dir() / CACHE_FILE


def local_weights_sha256(name: str | None) -> str | None:
    """The digest of ``name``'s weights when it names a local file or folder; None for a hub id (or None).

    Raises:
        ModelLoadError: a weight file cannot be read.
    """
    if name is None or not Path(name).expanduser().exists():
        return None
    return weights_sha256(name)


def weights_sha256(path: str | Path) -> str:
    """The SHA-256 of a weights file, or of a folder's weight files (see the module's docstring).

    Raises:
        ModelLoadError: ``path`` or one of its weight files cannot be read.
    """
    path = Path(path).expanduser()
    with _DigestCache.opened() as cache:
        try:
            if path.is_file():
                return cache.digest(path)
            listing = "".join(f"{rel}\0{cache.digest(file)}\n" for rel, file in _weight_files(path))
        except OSError as err:
            raise ModelLoadError(f"cannot read the weights {err.filename or path}: {err.strerror or err}") from None
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def _weight_files(folder: Path) -> list[tuple[str, Path]]:
    """``(relative path, path)`` of the folder's weight files, sorted; symlinked folders followed once each."""
    found: list[tuple[str, Path]] = []
    seen: set[str] = set()
    for root, folders, files in os.walk(folder, followlinks=True, onerror=_raise):
        real = os.path.realpath(root)
        if real in seen:  # a symlink loop, or a folder linked twice
            folders.clear()
            continue
        seen.add(real)
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(WEIGHT_SUFFIXES):
                file = Path(root) / name
                found.append((file.relative_to(folder).as_posix(), file))
    return sorted(found)


def _raise(err: OSError) -> None:
    raise err


class _DigestCache:
    """The remembered digests, read once per :func:`weights_sha256` and written back when something was added."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, dict[str, Any]] = _read(path)
        self.changed = False

    @classmethod
    @contextlib.contextmanager
    def opened(cls) -> Iterator[_DigestCache]:
        cache = cls(cache_path())
        yield cache
        if cache.changed:
            cache.save()

    def digest(self, file: Path) -> str:
        real = os.path.realpath(file)
        before = _status(os.stat(real))
        entry = self.files.get(real)
        if entry is not None and {k: entry.get(k) for k in before} == before and isinstance(entry.get("sha256"), str):
            return str(entry["sha256"])
        logger.info("hashing the weights %s (%.1f MB; remembered for later runs)", file, before["size"] / 1e6)
        digest = file_sha256(real)
        if _status(os.stat(real)) == before and time.time() - before["mtime_ns"] / 1e9 >= SETTLE_SECONDS:
            self.files[real] = {**before, "sha256": digest}
            self.changed = True
        return digest

    def save(self) -> None:
        # Files gone since are forgotten; a concurrent run's additions may be lost (they are only re-read later).
        kept = {path: entry for path, entry in self.files.items() if os.path.exists(path)}
        text = json.dumps({"format": CACHE_FORMAT, "files": kept}, indent=1, sort_keys=True) + "\n"
        try:
            atomic_write_text(self.path, text)
        except (OSError, DiffCoReMixError) as err:
            logger.info("cannot remember weight digests in %s: %s", self.path, err)


def _status(stat: os.stat_result) -> dict[str, int]:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}


def _read(path: Path) -> dict[str, dict[str, Any]]:
    """The cache's entries; none when it is missing, damaged or of another format (it is then rebuilt)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        logger.info("ignoring the damaged weight digest cache %s: %s", path, err)
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("files"), dict):
        return {}
    return {k: v for k, v in data["files"].items() if isinstance(v, dict)}

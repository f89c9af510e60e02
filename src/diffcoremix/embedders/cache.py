"""Embeddings of image files, batched, decoded in DataLoader workers, and cached on disk.

The cache keys an embedding by the embedder's id and the file's SHA-256, so a renamed or copied image is not
embedded twice, an edited one is, and a second run over the same real images computes nothing. Each entry is one
small ``.npy`` file written atomically (a killed run leaves no torn entry), followed by a 32-byte tag: the SHA-256 of
the embedder id, the image digest and the ``.npy`` bytes. An entry whose tag does not match (altered, damaged, or
moved under another key or embedder) is not trusted: it is recomputed. ``numpy.load`` still reads an entry (it stops
at the end of the array).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from diffcoremix.atomic import atomic_write_bytes
from diffcoremix.data.images import open_image
from diffcoremix.digests import file_sha256
from diffcoremix.embedders.models import Embedder

logger = logging.getLogger(__name__)

TAG_BYTES = 32
"""The SHA-256 tag after each entry's ``.npy`` bytes."""


class EmbeddingCache:
    """``root/<embedder id hash>/<sha[:2]>/<sha>.npy``; ``hits`` and ``misses`` count lookups, ``used`` holds the
    digest of every image looked up or stored (what :func:`prune` keeps)."""

    def __init__(self, root: str | Path, embedder_id: str) -> None:
        self.folder = Path(root) / embedder_folder(embedder_id)
        self.embedder_id = embedder_id
        self.hits = 0
        self.misses = 0
        self.used: set[str] = set()

    def _path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.npy"

    def _tag(self, digest: str, payload: bytes) -> bytes:
        return hashlib.sha256(self.embedder_id.encode() + b"\0" + digest.encode() + b"\0" + payload).digest()

    def get(self, digest: str) -> np.ndarray | None:
        self.used.add(digest)
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = None
        except OSError as err:
            logger.info("recomputing unreadable cache entry %s: %s", path, err)
            data = None
        if data is not None:
            payload, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
            try:
                if len(data) <= TAG_BYTES or tag != self._tag(digest, payload):
                    raise ValueError("its tag does not match its key and content")
                value: np.ndarray = np.load(io.BytesIO(payload))
                self.hits += 1
                return value
            except (OSError, ValueError) as err:  # an altered or damaged entry is recomputed
                logger.info("recomputing cache entry %s: %s", path, err)
        self.misses += 1
        return None

    def has(self, digest: str) -> bool:
        """Whether an entry exists (not counted as a lookup; a damaged one is found out by :meth:`get`)."""
        return self._path(digest).is_file()

    def put(self, digest: str, vector: np.ndarray) -> None:
        self.used.add(digest)
        buffer = io.BytesIO()
        np.save(buffer, vector.astype(np.float32))
        payload = buffer.getvalue()
        atomic_write_bytes(self._path(digest), payload + self._tag(digest, payload))


def embedder_folder(embedder_id: str) -> str:
    """The cache's folder of one embedder's entries (16 hex digits of its id's SHA-256)."""
    return hashlib.sha256(embedder_id.encode()).hexdigest()[:16]


ENTRY = re.compile(r"^[0-9a-f]{16}/[0-9a-f]{2}/[0-9a-f]{64}\.npy$")
"""The path of a cache entry below the cache's root: embedder folder, the digest's first two digits, digest."""


def prune(root: str | Path, embedder_id: str, keep: Collection[str]) -> int:
    """Delete the entries of the cache at ``root`` that hold no embedding of ``keep`` (image digests) by the embedder
    ``embedder_id``: other embedders' entries, and the entries of images no record names any more. Only names of
    the cache's own form are touched; folders left empty go. Returns how many entries were deleted.

    For a cache that one output folder owns (``OUT/cache``), after a filtering that looked up every image its
    decisions name: a cache shared between runs is not to be pruned.
    """
    root = Path(root)
    if not root.is_dir():
        return 0
    mine, deleted = embedder_folder(embedder_id), 0
    for path in sorted(root.rglob("*.npy")):
        relpath = path.relative_to(root).as_posix()
        if ENTRY.match(relpath) and not (relpath.startswith(f"{mine}/") and path.stem in keep):
            path.unlink(missing_ok=True)
            deleted += 1
    for folder in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        if re.fullmatch(r"[0-9a-f]{16}(/[0-9a-f]{2})?", folder.relative_to(root).as_posix()):
            with contextlib.suppress(OSError):  # only empty ones
                folder.rmdir()
    return deleted


class _Files(Dataset[torch.Tensor]):
    def __init__(self, paths: Sequence[Path], embedder: Embedder) -> None:
        self.paths = paths
        self.embedder = embedder

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.embedder.preprocess(open_image(self.paths[index]))


class EmbedFiles(Protocol):
    """The signature of :func:`embed_files` (the filter takes any function of it: the Ray executor has one)."""

    def __call__(
        self,
        embedder: Embedder,
        paths: Sequence[str | Path],
        cache: EmbeddingCache | None = None,
        *,
        batch_size: int = 64,
        workers: int = 0,
        progress: bool = False,
        desc: str = "embed",
    ) -> np.ndarray: ...


def embedding_batches(paths: Sequence[str | Path], cache: EmbeddingCache, batch_size: int) -> list[list[Path]]:
    """The batches that :func:`embed_files` computes for ``paths``: the call's distinct contents (the first file of
    each, in order) cut into batches of ``batch_size``, and of those only the batches that hold an uncached content.

    A batch is computed whole, cached members included: batched float32 arithmetic rounds an image's embedding
    according to its batch, so the batches depend on the call's list alone, never on which entries an earlier
    (killed) run happened to cache; a resumed run computes each embedding in the batch an uninterrupted run would.
    """
    files = [Path(p) for p in paths]
    digests = [file_sha256(p) for p in files]
    present = [cache.has(d) for d in digests]
    return [[files[i] for i in batch] for batch in _batches(digests, present, batch_size)]


def _batches(digests: Sequence[str], present: Sequence[bool], batch_size: int) -> list[list[int]]:
    """Indices of the batches to compute (see :func:`embedding_batches`)."""
    distinct = sorted({d: i for i, d in reversed(list(enumerate(digests)))}.values())  # the first of each content
    cut = [distinct[i : i + batch_size] for i in range(0, len(distinct), batch_size)]
    return [batch for batch in cut if not all(present[i] for i in batch)]


def embed_files(
    embedder: Embedder,
    paths: Sequence[str | Path],
    cache: EmbeddingCache | None = None,
    *,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
    desc: str = "embed",
) -> np.ndarray:
    """``(N, D)`` unit-norm embeddings of image files, in order; cached ones are read, the rest computed.

    Raises:
        ImageReadError: a file cannot be decoded.
    """
    files = [Path(p) for p in paths]
    digests = [file_sha256(p) for p in files]
    vectors: list[np.ndarray | None] = [cache.get(d) if cache else None for d in digests]
    # Whole batches of the call's distinct contents (embedding_batches): only the last cut batch can be short, so the
    # loader's batches of the concatenation are these batches.
    todo = [i for batch in _batches(digests, [v is not None for v in vectors], batch_size) for i in batch]
    if todo:
        loader = DataLoader(_Files([files[i] for i in todo], embedder), batch_size=batch_size, num_workers=workers)
        computed: list[np.ndarray] = []
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            computed.extend(embedder.embed_images(batch).numpy())
        by_digest = {digests[i]: v for i, v in zip(todo, computed, strict=True) if vectors[i] is None}
        for digest, vector in by_digest.items():  # a cached member of a computed batch keeps its cached vector
            if cache:
                cache.put(digest, vector)
        vectors = [v if v is not None else by_digest[d] for v, d in zip(vectors, digests, strict=True)]
    if not files:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([np.asarray(v, dtype=np.float32) for v in vectors])

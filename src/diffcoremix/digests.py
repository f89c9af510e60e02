"""Content hashes of files: the one SHA-256 used for provenance, resume checks and the embedding cache."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file, read in chunks (checkpoints are gigabytes; images are read in one)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()

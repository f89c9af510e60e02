"""What a rerun may reuse: the resume index of an output folder, in a few bytes per candidate.

A candidate is reused when its latest successful record is what this run would make now (its output path, the
generation settings' digest, its source, seed, prompt, negative prompt and condition: counterpart mode, strength and
classes), its image is intact (the recorded
SHA-256) and its source photo is unchanged (the recorded source SHA-256). The index keeps, per key of a
successful record, a digest of those fields and the two SHA-256 values (80 bytes), not the record: a manifest of
millions of candidates is checked in the memory of its keys.

A ``flagged`` record (the safety checker flagged the image; none was kept) is reused the same way, less the image:
the same seed and settings make the same image, which the same checker flags again. Its index entry holds
:data:`NO_IMAGE` where an image's digest would be, and its identity names the path the image would have had.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from diffcoremix.digests import file_sha256
from diffcoremix.manifest.layout import IMAGES_DIR
from diffcoremix.manifest.records import FLAGGED

_IDENTITY = ("output", "settings_sha256", "source", "seed", "prompt", "negative_prompt", "condition")
"""Record fields that must equal the planned candidate's for its image to be reused."""

Verdict = Literal["done", "changed", "todo"]

NO_IMAGE = bytes(32)
"""The image digest of a settled candidate without an image (``flagged``) in the resume index."""


def output_relpath(record: Any) -> str:
    """Where a candidate's image goes, relative to OUT: ``images/<source path>.k<k>.png`` (a class-folder tree);
    a regeneration adds ``.r<attempt>``."""
    return _relpath(record.source, record.k, record.attempt)


def _relpath(source: Any, k: Any, attempt: Any) -> str:
    retry = f".r{attempt}" if attempt else ""
    return f"{IMAGES_DIR}/{source}.k{k}{retry}.png"


def _identity(values: Iterable[Any]) -> bytes:
    listed = list(values)
    if listed and listed[-1] is None:  # no condition (text): the identity an earlier version recorded
        listed.pop()
    return hashlib.sha256(json.dumps(listed, ensure_ascii=False).encode()).digest()[:16]


def _sha(value: Any) -> bytes | None:
    if not isinstance(value, str) or len(value) != 64:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def resume_index(records: Iterable[dict[str, Any]]) -> dict[str, bytes]:
    """Key -> packed (identity digest, image SHA-256, source SHA-256) of each key's latest successful record.

    A key whose latest successful record cannot be reused whatever the plan (no image digest) is left out, as is a
    key with no successful record: both are generated again.
    """
    index: dict[str, bytes] = {}
    for record in records:
        if record.get("status") == "blocked":  # its place holds a file of the user's: nothing to reuse
            index.pop(record["key"], None)
        if record.get("status") == FLAGGED:
            fields = {**record, "output": _relpath(record.get("source"), record.get("k"), record.get("attempt"))}
            source = _sha(record.get("source_sha256")) or b""
            index[record["key"]] = _identity(fields.get(f) for f in _IDENTITY) + NO_IMAGE + source
            continue
        if record.get("status") != "ok":
            continue  # the latest successful record wins over any failure (latest_by_key's rule)
        output = _sha(record.get("output_sha256"))
        if output is None:
            index.pop(record["key"], None)
            continue
        source = _sha(record.get("source_sha256")) or b""
        index[record["key"]] = _identity(record.get(f) for f in _IDENTITY) + output + source
    return index


def verdict(
    folder: Path, index: Mapping[str, bytes], planned: Any, digest: str, source_sha256: Callable[[str], str | None]
) -> Verdict:
    """Whether ``planned`` (a prompt record) is done (reuse its image), made from a source photo that has changed
    since (make it again, and say so), or to do. ``source_sha256`` is called for the source's digest now."""
    packed = index.get(planned.key)
    if packed is None:
        return "todo"
    relpath = output_relpath(planned)
    fields = (relpath, digest, planned.source, planned.seed, planned.prompt, planned.negative_prompt,
              planned.condition())  # fmt: skip
    if packed[:16] != _identity(fields):
        return "todo"
    path = folder / relpath
    if packed[16:48] != NO_IMAGE and (not path.is_file() or file_sha256(path) != packed[16:48].hex()):
        return "todo"
    now = source_sha256(planned.source)
    return "done" if (packed[48:].hex() or None) == now else "changed"

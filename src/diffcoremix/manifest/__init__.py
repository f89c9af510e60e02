"""The output folder (OUT) of a run, and the one place that reads and writes it (METHOD.md §4-6 provenance).

Every stage goes through this package for the OUT layout: generated images, manifest parts, the filter's
decisions, the ``train/`` and ``rejected/`` views, the run record, and the lock that gives OUT one owner at a
time. It imports nothing above the base modules, so every stage can use it.
"""

from __future__ import annotations

from diffcoremix.manifest.records import (
    COLUMNS,
    FILTER_COLUMNS,
    ManifestWriter,
    latest_by_key,
    read_manifest,
    read_records,
    shard_path,
)

__all__ = [
    "COLUMNS",
    "FILTER_COLUMNS",
    "ManifestWriter",
    "latest_by_key",
    "read_manifest",
    "read_records",
    "shard_path",
]

"""The output folder (OUT) of a run, and the one place that reads and writes it (METHOD.md §4-6 provenance).

Every stage goes through this package for the OUT layout (:mod:`.layout`): generated images, manifest parts
(:mod:`.records`), the filter's decisions and the ``train/``/``rejected/`` views (:mod:`.decisions`), the run
record, and the lock that gives OUT one owner at a time (:mod:`.lock`). It imports only the base modules, so
every stage can use it.
"""

from __future__ import annotations

from diffcoremix.manifest.decisions import FILTER_COLUMNS, read_decisions, relayout, view_name, write_decisions
from diffcoremix.manifest.layout import OutputFolder, OutputFolderError, SettingsConflictError, check_separate
from diffcoremix.manifest.lock import FolderBusyError, FolderLock
from diffcoremix.manifest.ownership import clear, open_output
from diffcoremix.manifest.records import (
    COLUMNS,
    ManifestWriter,
    latest_by_key,
    read_manifest,
    read_records,
    shard_path,
)

__all__ = [
    "COLUMNS",
    "FILTER_COLUMNS",
    "FolderBusyError",
    "FolderLock",
    "ManifestWriter",
    "OutputFolder",
    "OutputFolderError",
    "SettingsConflictError",
    "check_separate",
    "clear",
    "latest_by_key",
    "open_output",
    "read_decisions",
    "read_manifest",
    "read_records",
    "relayout",
    "shard_path",
    "view_name",
    "write_decisions",
]

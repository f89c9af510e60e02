"""What the benchmark scripts share: where the repository and ``../shared`` are.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on their path and ``import common`` finds this file.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``../shared`` (models and data): ``DIFFCOREMIX_SHARED_DATA``'s parent when set, else the first ``shared`` folder
    beside the repository or one of its parents."""
    if "DIFFCOREMIX_SHARED_DATA" in os.environ:
        return Path(os.environ["DIFFCOREMIX_SHARED_DATA"]).parent
    return next((p / "shared" for p in REPO.parents if (p / "shared" / "data").is_dir()), REPO.parent / "shared")


def shared_data() -> Path:
    """``../shared/data``; exits with a clear line when there is none."""
    data = shared_dir() / "data"
    if not data.is_dir():
        raise SystemExit(f"{data} not found: set DIFFCOREMIX_SHARED_DATA to the shared data folder")
    return data

"""Shared fixtures: the real photographs of ../shared/data (helpers live in tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import make_class_folders, run_cli, shared_data_dir

__all__ = ["make_class_folders", "run_cli", "shared_data_dir"]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "cub200_25").is_dir():
        # A missing data folder is a broken test environment, not a reason to pass: fail loudly.
        pytest.fail(f"shared test data not found at {path}; set DIFFCOREMIX_SHARED_DATA to its folder")
    return path

"""Shared fixtures: the real photographs of ../shared/data (helpers live in tests/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
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


@pytest.fixture(scope="session", autouse=True)
def _own_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The tool remembers weight digests under ``$XDG_CACHE_HOME`` (diffcoremix.identities): the tests, and the
    commands they start, keep theirs apart from the user's ``~/.cache``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield

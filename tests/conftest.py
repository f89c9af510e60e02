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


THREE_CLASSES = {"001.cat": 8, "002.dog": 8, "003.eel": 8}
"""The small dataset of :func:`three_classes`: 24 images at 32 px."""


@pytest.fixture(scope="session")
def three_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 images of 3 classes (read only: copy before changing)."""
    return make_class_folders(tmp_path_factory.mktemp("three") / "data", THREE_CLASSES, size=32)


@pytest.fixture(scope="session")
def three_classes_generated(three_classes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real filtered generation run of the tiny preset over :func:`three_classes` (one counterpart per image, all
    kept; made once per session, in-process; read only: copy before changing)."""
    from diffcoremix import PromptsConfig
    from diffcoremix.augmentation import augment
    from diffcoremix.filter import FilterConfig
    from diffcoremix.generate import GenerateConfig
    from diffcoremix.mix.paired import accepted_images

    out = tmp_path_factory.mktemp("three-generated") / "out"
    augment(three_classes, out, PromptsConfig(), GenerateConfig(preset="tiny", num_inference_steps=1, height=32,
            width=32), FilterConfig(embedder="tiny", threshold=-1.0))  # fmt: skip
    assert len(accepted_images(out)) == 24
    return out

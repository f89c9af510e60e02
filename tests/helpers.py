"""Helpers shared by the tests: where the real photographs are, the real CLI in a subprocess, tiny datasets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$DIFFCOREMIX_SHARED_DATA``, else the first ``shared/data`` beside the repository or one of its parents."""
    if "DIFFCOREMIX_SHARED_DATA" in os.environ:
        return Path(os.environ["DIFFCOREMIX_SHARED_DATA"])
    for parent in REPO.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return REPO.parent / "shared" / "data"


def cli_command(*args: str | os.PathLike[str], prefix: tuple[str, ...] = ()) -> list[str]:
    """The argv of ``python -m diffcoremix ARGS``."""
    return [*prefix, sys.executable, "-m", "diffcoremix", *map(str, args)]


def run_cli(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    prefix: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m diffcoremix ARGS`` as a real subprocess (optionally under a wrapper command)."""
    command = cli_command(*args, prefix=prefix)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False)


def make_class_folders(root: Path, counts: dict[str, int], size: int = 40) -> Path:
    """Write ``counts[folder]`` small distinct PNGs into each class folder of ``root``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, n in counts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"img_{i:03d}.png")
    return root

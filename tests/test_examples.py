"""The training-loop examples (examples/*.py) run as a user runs them: real subprocesses on a tiny dataset, with own
generated partners (a real `augment` output) and with real partners. Each example writes one JSON line per step
(``--log``), which is what these tests read."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .helpers import REPO, run_cli

STEPS, BATCH = 4, 4
"""3 classes x 3 images in batches of 4 (the last one dropped): 2 steps an epoch, so the runs cross an epoch."""

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
"""Tiny models on a shared 2-core machine: torch's thread pool (in the main process and each worker) costs more
than it gives."""

EXAMPLES = {"timm": ("timm_loop.py", "--steps"), "lightning": ("lightning_module.py", "--max-steps")}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("examples") / "data"
    result = run_cli("sample-data", folder, "--per-class", "3", "--size", "32", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope="module")
def synthetic(data: Path) -> Path:
    """A filtered generation output of ``data``; threshold -1 accepts all, so every image has own counterparts."""
    out = data.parent / "out"
    args = ("--preset", "tiny", "--num-inference-steps", "1", "--embedder", "tiny", "--threshold", "-1")
    result = run_cli("augment", data, "-o", out, *args, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    return out


def run_example(name: str, data: Path, log: Path, *options: str) -> tuple[list[dict[str, Any]], str]:
    """Run an example with every sample mixed (``--mix-prob 1``); its step records and stdout."""
    script, steps_flag = EXAMPLES[name]
    sizes = (steps_flag, str(STEPS), "--batch-size", str(BATCH), "--img-size", "32", "--mix-prob", "1")
    command = [
        sys.executable,
        str(REPO / "examples" / script),
        "--data",
        str(data),
        *sizes,
        "--log",
        str(log),
        *options,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **ONE_THREAD}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in log.read_text().splitlines()], result.stdout


def check_run(records: list[dict[str, Any]], stdout: str) -> None:
    """What every run must show: the steps asked for, a finite loss, the mixer applied, the epoch honoured."""
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    done = re.search(r"^done: (\d+) steps, last loss (\S+)$", stdout, re.MULTILINE)
    assert done, stdout
    assert int(done[1]) == STEPS
    assert math.isfinite(float(done[2]))
    assert float(done[2]) == pytest.approx(records[-1]["loss"], abs=1e-4)
    # The mixer ran on every sample (p = 1, every image has a partner), and the model saw its output: images that
    # differ from the real ones (a patch mix may take no cell from the partner, so not necessarily all of them).
    assert all(r["mixed"] == BATCH for r in records)
    assert all(r["changed"] > 0 for r in records)
    # A new draw every step: a generator re-seeded the same way each step would repeat the lambdas.
    assert len({tuple(r["lam"]) for r in records}) == STEPS
    # The epoch reached the dataset: epoch 1 crops each image anew. Without it, the (at least 7) images that both
    # epochs draw would repeat their digests; a chance repeat of one image's crop and flip is possible (~1%).
    assert [r["epoch"] for r in records] == [0, 0, 1, 1]
    first, second = (Counter(d for r in records if r["epoch"] == e for d in r["real"]) for e in (0, 1))
    assert sum((first & second).values()) <= 2, (first, second)


@pytest.mark.parametrize("name", EXAMPLES)
def test_own_generated_partners(name: str, data: Path, synthetic: Path, tmp_path: Path) -> None:
    # One worker: the epoch has to reach a worker process's copy of the dataset.
    records, stdout = run_example(name, data, tmp_path / "log.jsonl", "--synthetic", str(synthetic), "--workers", "1")
    check_run(records, stdout)
    assert all(r["own"] == BATCH for r in records)


@pytest.mark.parametrize("name", EXAMPLES)
def test_real_partners_without_synthetic(name: str, data: Path, tmp_path: Path) -> None:
    records, stdout = run_example(name, data, tmp_path / "log.jsonl", "--workers", "0")
    check_run(records, stdout)
    assert all(r["own"] == 0 for r in records)

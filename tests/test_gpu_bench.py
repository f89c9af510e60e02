"""benchmarks/gpu.sh's plumbing, run for real on the CPU: its dry run takes the same steps on the tiny models."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from .helpers import REPO


@pytest.mark.slow  # installs the project into a folder of its own and runs every step: about a minute here
def test_the_dry_run_installs_the_project_and_writes_every_figure_with_the_device(tmp_path: Path) -> None:
    out, site = tmp_path / "figures", tmp_path / "site"
    (tmp_path / "wheels").mkdir()  # this machine's environment has diffusers and open_clip already
    env = {**os.environ, "PYTHON": sys.executable, "GPU_SITE": str(site), "GPU_WHEELS": str(tmp_path / "wheels"),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}  # fmt: skip
    egg_info = REPO / "src" / "diffcoremix.egg-info"
    had_egg_info = egg_info.exists()
    result = subprocess.run([str(REPO / "benchmarks" / "gpu.sh"), "--dry-run", str(out)], capture_output=True,
                            text=True, env=env, timeout=400, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert egg_info.exists() == had_egg_info  # the project is built from a copy: the checkout is left as it was
    assert f"diffcoremix from {site}" in result.stdout  # the installed copy runs, not the checkout's src/
    figures = json.loads((out / "gpu.json").read_text())
    assert figures["device_name"] == "CPU"
    assert figures["dry_run"] is True
    rows = figures["rows"]
    assert [r["step"] for r in rows] == ["embed"] * 2 + ["generate"] * 2 + ["finetune"] + ["generate"] * 2
    assert all(r["status"] == "ok" for r in rows), rows
    assert all(isinstance(r["rate"], float) and r["rate"] > 0 for r in rows), rows
    assert [r["setting"].endswith("compile on") for r in rows if r["step"] == "generate"] == [False] * 2 + [True] * 2
    table = (out / "gpu.md").read_text()
    assert table.startswith("CPU, torch ")
    assert table.count("\n| ") == 2 + len(rows)  # header, rule, a line per row


@pytest.fixture
def gpu_bench(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """benchmarks/gpu.py loaded in this process (the imports it needs are loaded already: no seconds of start-up)."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # it puts benchmarks/ on the path for its sibling finetune.py
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "benchmarks" / "gpu.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_bench", module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("finetune", None)


def test_without_a_gpu_the_benchmark_refuses_in_one_line(
    gpu_bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this machine, whatever runs the test
    assert gpu_bench.main(["--out", str(tmp_path / "figures")]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: no CUDA device (use --dry-run for the plumbing on the CPU)"]
    assert not (tmp_path / "figures").exists()


def test_a_step_past_the_time_budget_is_recorded_as_skipped(gpu_bench: ModuleType, tmp_path: Path) -> None:
    assert gpu_bench.main(["--dry-run", "--budget", "0", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "gpu.json").read_text())["rows"]
    assert [(r["step"], r["status"]) for r in rows] == [
        (step, "skipped (time budget)") for step in ("embed", "generate", "finetune", "generate compiled")
    ]
    assert "| generate compiled |  |  |  | skipped (time budget) |  |" in (tmp_path / "gpu.md").read_text()


def test_a_failing_step_is_recorded_and_the_others_go_on(gpu_bench: ModuleType, tmp_path: Path) -> None:
    broken = dataclasses.replace(gpu_bench.DRY, embedder="nope", preset="no-such-preset", finetune_preset="nope")
    figures = gpu_bench.Figures(tmp_path, {"device_name": "CPU", "torch": "", "diffusers": "", "date": "",
                                           "dry_run": True}, budget=600)  # fmt: skip
    gpu_bench.run(broken, 1, figures, tmp_path)
    statuses = [(r["step"], r["status"].split(":")[0]) for r in figures.rows]
    assert statuses == [("embed", "failed"), ("generate", "failed"), ("finetune", "failed"),
                        ("generate compiled", "skipped (time budget)")]  # fmt: skip
    assert json.loads((tmp_path / "gpu.json").read_text())["rows"] == figures.rows

"""``--executor ray``: on a local Ray instance of 2 CPUs, generation, filtering, judging and ``augment`` give what the
local executor gives (manifest keys, decisions, image bytes); a killed Ray worker's work is redone and recorded once;
a run started on one executor finishes on the other; without Ray the option says how to install it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import ray
import torch

from diffcoremix import FilterConfig, GenerateConfig, PromptsConfig, augment, read_manifest
from diffcoremix.cluster import ExecutorConfig, filter_run, generate
from diffcoremix.cluster.ray_backend import RayCluster
from diffcoremix.generate.runner import generate as local_generate
from diffcoremix.judge import judge
from diffcoremix.manifest.records import read_records

from .helpers import cli_command, make_class_folders

CLASSES = {"001.cat": 4, "002.dog": 4, "003.eel": 4}
PROMPTS = PromptsConfig(per_image=2)
GENERATE = GenerateConfig(preset="tiny", batch_size=2)
FILTER = FilterConfig(embedder="tiny", threshold=0.9936)  # about half kept (scores 0.992-0.997): retries have work
ON_RAY = ExecutorConfig("ray", workers=2)


@pytest.fixture(scope="module", autouse=True)
def ray_instance() -> Any:
    """One local Ray instance of 2 CPUs for the module (each executor joins it and leaves it running), and one torch
    thread here as in each actor: the same pixels need the same device and the same number of threads (a float sum
    split over 2 threads may round otherwise)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("ray") / "data", CLASSES)


@pytest.fixture(scope="module")
def local_augment(data: Path) -> Path:
    out = data.parent / "local"
    augment(data, out, PROMPTS, GENERATE, FILTER, retries=1)
    return out


def outcome(out: Path) -> dict[str, Any]:
    """What must not depend on the executor: per candidate, its record's identity, image bytes and decision."""
    table = read_manifest(out)
    facts = {}
    for row in table.to_dict(orient="records"):
        image = out / row["output"] if isinstance(row["output"], str) else None
        facts[row["key"]] = (
            row["status"], row["seed"], row["prompt"], row["attempt"], row["output"], row["output_sha256"],
            hashlib.sha256(image.read_bytes()).hexdigest() if image else None,
            row.get("accepted"), None if pd.isna(row.get("score")) else float(row["score"]),
        )  # fmt: skip
    return facts


def views(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in (out / "train").rglob("*.png"))


def test_augment_on_ray_from_the_command_line_equals_the_local_executor(
    data: Path, local_augment: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ray"
    command = cli_command("augment", data, "-o", out, "--preset", "tiny", "--batch-size", "2", "--per-image", "2",
                          "--embedder", "tiny", "--threshold", "0.9936", "--retries", "1",
                          "--executor", "ray", "--address", "auto", "--workers", "2")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the local run's one thread (its images must be the same)
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "after 2 round(s)" in result.stdout  # the retry round ran, on Ray too
    expected = outcome(local_augment)
    assert outcome(out) == expected
    assert len(expected) > sum(CLASSES.values()) * 2  # retries are in it
    assert views(out) == views(local_augment)
    assert len({r["rank"] for r in read_records(out)}) > 1  # the work was spread over several shards


@pytest.mark.slow  # heavy: a Ray filter and a Ray judge beside local ones: make test-all
def test_filter_and_judge_on_ray_equal_the_local_executor(data: Path, tmp_path: Path) -> None:
    local, remote = tmp_path / "local", tmp_path / "ray"
    for out in (local, remote):
        local_generate(data, out, PROMPTS, GENERATE)
    local_report = filter_run(local, FILTER)
    ray_report = filter_run(remote, FILTER, ON_RAY)
    assert ray_report.to_dict()["classes"] == local_report.to_dict()["classes"]
    assert local_report.cache_misses > 0
    assert ray_report.cache_misses == 0  # the actors computed every embedding; this process only read them
    assert outcome(remote) == outcome(local)
    local_judge = judge(local, "tiny:1", batch_size=3)
    ray_judge = judge(remote, "tiny:1", batch_size=3, executor=ON_RAY)
    assert ray_judge.to_dict()["classes"] == local_judge.to_dict()["classes"]
    lines = [[json.loads(line) for line in (out / "judge.jsonl").read_text().splitlines()] for out in (local, remote)]
    assert [(d["key"], d["judge_class"], d["agrees"]) for d in lines[1]] == [
        (d["key"], d["judge_class"], d["agrees"]) for d in lines[0]
    ]
    assert ray_judge.judged == len(lines[0]) > 0


@pytest.mark.slow  # the heaviest Ray test (two executors, two partial runs): make test-all
def test_a_run_started_on_one_executor_finishes_on_the_other(data: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    local_generate(data, whole, PROMPTS, GENERATE)
    expected = outcome(whole)

    started_locally = tmp_path / "local-then-ray"  # half of the batches here (shard 0 of 2), the rest on Ray
    half = local_generate(data, started_locally, PROMPTS, GenerateConfig(preset="tiny", batch_size=2, rank=0,
                                                                         world_size=2))  # fmt: skip
    assert 0 < half.generated < len(expected)
    finished = generate(data, started_locally, PROMPTS, GENERATE, ON_RAY)
    assert finished.skipped == half.generated
    assert finished.generated == len(expected) - half.generated
    assert outcome(started_locally) == expected

    started_on_ray = tmp_path / "ray-then-local"  # all on Ray, then images lost: the local rerun redoes them
    generate(data, started_on_ray, PROMPTS, GENERATE, ON_RAY)
    lost = sorted((started_on_ray / "images").rglob("*.png"))[::3]
    for path in lost:
        path.unlink()
    again = local_generate(data, started_on_ray, PROMPTS, GENERATE)
    assert again.generated == len(lost)
    assert outcome(started_on_ray) == expected


@pytest.mark.slow  # heavy: a Ray run with a worker killed mid-run: make test-all
def test_a_killed_worker_is_redone_and_every_candidate_is_recorded_once(data: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    prompts = PromptsConfig(per_image=4)  # 48 candidates in 24 batches: time to kill a worker mid-run
    local_generate(data, whole, prompts, GENERATE)
    out = tmp_path / "killed"
    with RayCluster(ON_RAY) as cluster:
        victim = cluster.pids()[0]
        errors: list[BaseException] = []

        def run() -> None:
            try:
                local_generate(data, out, prompts, GENERATE, runner=cluster.generate)
            except BaseException as err:  # reported by the assertion below
                errors.append(err)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 300
        while not any(p.stat().st_size for p in (out / "manifest").glob("shard-*.jsonl")):
            assert thread.is_alive(), "the run ended before a worker could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        thread.join(600)
        assert not thread.is_alive()
        assert errors == []
        assert victim not in cluster.pids()  # Ray started a new process for the actor
    records = read_records(out)
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == 48  # every candidate exactly once, in the files as written
    assert outcome(out) == outcome(whole)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # no temporary file of the dead worker is left


@pytest.mark.slow  # a Ray run stopped, then rerun, beside a local one: make test-all
def test_a_ray_run_stopped_by_sigterm_says_so_in_one_line_and_its_rerun_ends_as_a_local_run(
    data: Path, tmp_path: Path
) -> None:
    """``ray.init`` replaces the driver's SIGTERM handler with ``sys.exit``; the CLI's own must win back."""
    whole = tmp_path / "whole"
    local_generate(data, whole, PROMPTS, GENERATE)
    out = tmp_path / "stopped"
    command = cli_command("-q", "generate", data, "-o", out, "--preset", "tiny", "--batch-size", "2", "--per-image",
                          "2", "--executor", "ray", "--address", "auto", "--workers", "2")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not any(p.stat().st_size for p in (out / "manifest").glob("shard-*.jsonl")):
            assert process.poll() is None, "the run ended before it could be stopped"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, stderr
    assert stderr.splitlines() == ["diffcoremix generate: error: terminated (SIGTERM)"]
    assert not list(out.glob(".diffcoremix*.lock"))
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert len(read_records(out)) < 2 * sum(CLASSES.values())  # it stopped before the end
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert outcome(out) == outcome(whole)


def test_without_ray_the_option_says_how_to_install_it(data: Path, tmp_path: Path) -> None:
    # The real package is installed here; hiding it (sys.modules["ray"] = None makes `import ray` fail) is the only
    # way to see what a user without it sees.
    code = ("import sys; sys.modules['ray'] = None; from diffcoremix.cli.main import main; "
            "sys.exit(main(sys.argv[1:]))")  # fmt: skip
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-c",
        code,
        "generate",
        str(data),
        "-o",
        str(out),
        "--preset",
        "tiny",
        "--executor",
        "ray",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["diffcoremix generate: error: --executor ray needs Ray, which is not installed: "
                     "pip install 'diffcoremix[ray]'"]  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--workers", "2"], "--workers must be unset with --executor local"),
        (["--executor", "ray", "--workers", "0"], "--workers must be >= 1 or null"),
        (["--executor", "ray", "--workers", "3", "--address", "auto"], "cannot hold 3 worker(s)"),
        (["--executor", "ray", "--device", "cpu", "--gpus-per-worker", "1", "--address", "auto"],
         "--gpus-per-worker must be 0 with --device cpu"),
    ],
)  # fmt: skip
def test_bad_executor_options_are_one_line(data: Path, tmp_path: Path, options: list[str], message: str) -> None:
    command = cli_command("generate", data, "-o", tmp_path / "out", "--preset", "tiny", *options)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


@pytest.mark.slow  # a Ray generation beside a local one: make test-all
def test_an_image_conditioned_run_on_ray_equals_the_local_executor(data: Path, tmp_path: Path) -> None:
    # cross-class: a source image, a drawn strength and class, a soft label per candidate, on Ray's shards too
    config = GenerateConfig(preset="tiny", batch_size=2, counterpart="cross-class", num_inference_steps=4)
    local_generate(data, tmp_path / "local", PROMPTS, config)
    generate(data, tmp_path / "ray", PROMPTS, config, ON_RAY)
    assert outcome(tmp_path / "ray") == outcome(tmp_path / "local")
    local, on_ray = read_manifest(tmp_path / "local"), read_manifest(tmp_path / "ray")
    assert on_ray["soft_label"].tolist() == local["soft_label"].tolist()
    assert on_ray["strength"].tolist() == local["strength"].tolist()
    assert len({r["rank"] for r in read_records(tmp_path / "ray")}) > 1

"""Ray scaling: 1 worker against 2, and Ray's overhead against the local executor at equal parallelism.

Four ways to generate the same candidates (tiny preset, ``--batch-size 4``, ``--num-inference-steps 16`` at 64 px:
a batch takes about a second on one thread), each into a fresh OUT, every process with one torch thread:

- ``local x1``: ``diffcoremix generate`` in one process;
- ``local x2``: two processes side by side, ``--rank 0`` and ``--rank 1`` of ``--world-size 2`` (the local way to
  use two cores);
- ``ray x1``, ``ray x2``: ``diffcoremix.cluster.generate`` with ``--executor ray --workers 1`` or ``2`` on a Ray
  instance of 2 CPUs started once by this script (a cluster outlives a command; its start is timed apart).

Every time is a whole command's wall time (start-up, model loading, planning, images, manifest), median over
``--repeats`` interleaved rounds. Goals (issue 13): ``ray x2`` at least 1.8x ``ray x1``; Ray's overhead under 10%.

Run: ``.venv/bin/python benchmarks/ray_scaling.py [--per-image 4] [--repeats 2]`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads: this process drives Ray and runs no model
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from diffcoremix import GenerateConfig, PromptsConfig, make_sample_dataset
from diffcoremix.cluster import ExecutorConfig, generate

SETTINGS = ["--preset", "tiny", "--batch-size", "4", "--num-inference-steps", "16", "--height", "64", "--width", "64"]


def local_command(data: Path, out: Path, per_image: int, shard: tuple[int, int] | None = None) -> list[str]:
    command = [sys.executable, "-m", "diffcoremix", "-q", "generate", str(data), "-o", str(out), *SETTINGS]
    command += ["--per-image", str(per_image)]
    if shard is not None:
        command += ["--rank", str(shard[0]), "--world-size", str(shard[1])]
    return command


def run_local(data: Path, out: Path, per_image: int, processes: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    shards = [None] if processes == 1 else [(r, processes) for r in range(processes)]
    running = [subprocess.Popen(local_command(data, out, per_image, s), env=env) for s in shards]
    codes = [p.wait() for p in running]
    seconds = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"a local run failed: exit codes {codes}")
    return seconds


def run_ray(data: Path, out: Path, per_image: int, workers: int) -> float:
    config = GenerateConfig(preset="tiny", batch_size=4, num_inference_steps=16, height=64, width=64)
    start = time.perf_counter()
    summary = generate(data, out, PromptsConfig(per_image=per_image), config, ExecutorConfig("ray", workers=workers))
    seconds = time.perf_counter() - start
    if summary.failed or summary.generated != summary.planned:
        raise SystemExit(f"the Ray run with {workers} worker(s) did not make every image: {summary}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-image", type=int, default=4, help="candidates per image of 3 x 8 [4: 96 candidates]")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_sample_dataset(work / "data", per_class=8, size=64)
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_start = time.perf_counter() - start
        runs = {
            "local x1": lambda out: run_local(data, out, args.per_image, 1),
            "ray x1": lambda out: run_ray(data, out, args.per_image, 1),
            "local x2": lambda out: run_local(data, out, args.per_image, 2),
            "ray x2": lambda out: run_ray(data, out, args.per_image, 2),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for round_ in range(args.repeats):
            for name, run in runs.items():
                seconds = run(work / f"{name.replace(' ', '-')}-{round_}")
                times[name].append(seconds)
                print(f"round {round_}: {name:<9} {seconds:6.1f} s", flush=True)
        ray.shutdown()
    median = {name: statistics.median(values) for name, values in times.items()}
    candidates = 24 * args.per_image
    print(f"\n{candidates} candidates, tiny preset, batches of 4 at 64 px, 16 steps; one torch thread per process; "
          f"median of {args.repeats} interleaved rounds")  # fmt: skip
    print(f"Ray instance start {ray_start:.1f} s (not in the times)")
    print(f"{'run':<9} {'seconds':>8} {'images/s':>9}")
    for name, seconds in median.items():
        print(f"{name:<9} {seconds:8.1f} {candidates / seconds:9.2f}")
    print(f"\nray x2 against ray x1: {median['ray x1'] / median['ray x2']:.2f}x faster (goal >= 1.8x)")
    print(f"local x2 against local x1: {median['local x1'] / median['local x2']:.2f}x faster")
    for n in ("x1", "x2"):
        overhead = median[f"ray {n}"] / median[f"local {n}"] - 1
        print(f"Ray's overhead at {n}: {overhead:+.1%} of the local executor's time (goal < 10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

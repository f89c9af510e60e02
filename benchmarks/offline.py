"""Offline failure time: how long a command that needs a hub model takes to fail when the hub cannot be reached.

``tests/test_offline.py`` shows that these commands fail in one line after a single connection (the hub probe),
with no request and so no retry or back-off; this script says how many seconds that takes. "No network" is made as
in those tests: ``HF_ENDPOINT`` at a closed local port (127.0.0.1:9), an empty hub cache, ``HF_HUB_OFFLINE``
cleared. Each command runs as a real ``python -m diffcoremix`` subprocess, interleaved over ``--repeats`` rounds:

- ``floor``: ``generate --device gpu``, refused once the command line has started and imported torch (every
  command below pays this);
- ``generate``: the default preset (SD 1.5 from the hub);
- ``finetune``: the default preset;
- ``filter``: ``--embedder open_clip:ViT-B-32:openai`` (the default CLIP, on a tiny-preset generation);
- ``prompts``: ``--context sample`` (the default context embedder).

Printed: the median seconds of each, and its ratio to the floor. Before the hub probe these commands took 30-50 s
(huggingface_hub's back-off alone sleeps 23 s).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/offline.py [--repeats 3]``.
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

from diffcoremix import GenerateConfig, PromptsConfig, make_sample_dataset
from diffcoremix.generate import generate

CLOSED_ENDPOINT = "http://127.0.0.1:9"


def offline_env(cache: Path) -> dict[str, str]:
    """This process's environment with no reachable hub and ``cache`` as the (empty) hub cache."""
    return {
        **os.environ,
        "HF_ENDPOINT": CLOSED_ENDPOINT,
        "HF_HOME": str(cache),
        "HF_HUB_CACHE": str(cache / "hub"),
        "HF_HUB_OFFLINE": "",
        "TRANSFORMERS_OFFLINE": "",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


def timed(args: list[str], env: dict[str, str]) -> float:
    """Seconds that ``python -m diffcoremix ARGS`` takes; it must fail with exit 2 (bad input), as offline."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "diffcoremix", *args], capture_output=True, text=True, env=env,
                            timeout=600, check=False)  # fmt: skip
    seconds = time.perf_counter() - start
    if result.returncode != 2:
        raise SystemExit(f"{args[0]} ended with {result.returncode}, not 2:\n{result.stderr}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = str(make_sample_dataset(work / "data", per_class=2, size=32))
        out = work / "out"
        generate(data, out, PromptsConfig(per_image=1), GenerateConfig(preset="tiny", num_inference_steps=1))
        env = offline_env(work / "hf")
        commands = {
            "floor": ["generate", data, "-o", str(work / "x"), "--device", "gpu"],
            "generate": ["generate", data, "-o", str(work / "g")],
            "finetune": ["finetune", data, "-o", str(work / "m")],
            "filter": ["filter", str(out), "--embedder", "open_clip:ViT-B-32:openai"],
            "prompts": ["prompts", data, "-o", str(work / "p.jsonl"), "--context", "sample"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for round_ in range(args.repeats):
            for name, command in commands.items():
                times[name].append(timed(command, env))
            print(f"round {round_ + 1}: " + ", ".join(f"{n} {t[-1]:.1f} s" for n, t in times.items()), flush=True)
    floor = statistics.median(times["floor"])
    print("\n| command | median s | / floor |\n| --- | ---: | ---: |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / floor:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

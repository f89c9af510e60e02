"""Check once: what the check index saves each command that reads DATA (issue 29's first table, side by side).

Builds ``--images`` byte-unique PNGs in class folders from ``../shared/data/cifar10/train`` (each copy has one pixel
changed, so no two files are the same), as a new user's dataset would be, then times, in ``--rounds`` interleaved
rounds, each command as a user runs it (a new process):

- ``scan DATA`` with an empty cache (``$XDG_CACHE_HOME`` new: every file decoded, what the tool did before the
  index) and with the index the first run wrote;
- ``prompts DATA`` the same two ways;
- ``train DATA --config cifar --method none``: seconds to its first step's metrics line (the run is then stopped), the
  same two ways.

Prints the median seconds and the ratio without / with the index. The files' settle time (2 s) is waited for
after the dataset is written, so the first run can remember them.

Run: ``.venv/bin/python benchmarks/check_index.py [--images 5000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import shared_data  # benchmarks/common.py


def build(root: Path, images: int) -> None:
    """``images`` byte-unique PNGs, spread over CIFAR-10's classes as the source folder has them."""
    source = shared_data() / "cifar10" / "train"
    files = sorted(p for p in source.rglob("*") if p.is_file())
    for n in range(images):
        path = files[n % len(files)]
        pixels = np.asarray(Image.open(path).convert("RGB")).copy()
        copy = n // len(files)
        pixels[copy // 32 % 32, copy % 32, 0] ^= 1 + (copy // 1024) % 255  # one pixel changed: unique bytes
        out = root / path.parent.name / f"{path.stem}_{copy}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(out)


def timed(command: list[str], cache: Path) -> float:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return time.perf_counter() - started


def first_step(command: list[str], cache: Path, run: Path) -> float:
    """Seconds from the start of a ``train`` process to its first step's metrics line; the run is then stopped."""
    from diffcoremix.train import read_metrics

    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not read_metrics(run, "step"):
        if process.poll() is not None:
            raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read() if process.stderr else ''}")
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    process.send_signal(signal.SIGTERM)
    process.communicate()
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    program = [sys.executable, "-m", "diffcoremix"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        started = time.perf_counter()
        build(data, args.images)
        print(f"{args.images} images written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        time.sleep(2.5)
        commands = {
            "scan": [*program, "scan", str(data)],
            "prompts": [*program, "prompts", str(data), "-o", str(tmp / "prompts.jsonl")],
            "train, to the first step": [*program, "train", str(data), "--config", "cifar", "--method", "none"],
        }  # fmt: skip
        indexed = tmp / "cache-indexed"
        timed(commands["scan"], indexed)  # the first check, which writes the index
        seconds: dict[str, dict[str, list[float]]] = {name: {"empty": [], "index": []} for name in commands}
        for round_ in range(args.rounds):
            for name, command in commands.items():
                for kind, cache in (("empty", tmp / f"cache-empty-{round_}-{len(name)}"), ("index", indexed)):
                    if name.startswith("train"):  # a new run folder each time
                        run = tmp / f"run-{round_}-{kind}"
                        seconds[name][kind].append(first_step([*command, "-o", str(run)], cache, run))
                    else:
                        seconds[name][kind].append(timed(command, cache))
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{args.images} byte-unique CIFAR-10 PNGs, {args.rounds} interleaved rounds, median seconds (a new process)")
    print("| command | empty cache (every file decoded) | with the check index | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for name, by in seconds.items():
        empty, index = statistics.median(by["empty"]), statistics.median(by["index"])
        print(f"| `{name}` | {empty:.1f} | {index:.1f} | {empty / index:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

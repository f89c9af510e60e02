"""Memory per planned candidate: does ``generate`` stream its plan, or hold it whole?

Run: ``.venv/bin/python benchmarks/plan_memory.py`` (CPU; about three minutes).

Each measurement is a fresh process (peak resident memory, ``ru_maxrss``) over the sample dataset (60 images), at two
plan sizes (``--per-image`` a and b), so that the difference divided by the difference in candidates is what one
more candidate costs, free of the process's fixed cost (Python, torch, diffusers imports):

- ``prompts``: :func:`diffcoremix.build_prompts` and ``write_jsonl`` (what ``diffcoremix prompts`` does);
- ``generate``: a whole :func:`diffcoremix.generate` run, with an instant stand-in generator, so that the run is
  the runner's bookkeeping (plan, resume index, images, manifest, compaction) and not the model;
- ``resume``: the same command again over the finished folder (every candidate is checked and skipped);
- ``augment``: generation with the same stand-in, then the filter (the tiny embedder) over every candidate: it
  holds its plan and its scores whole, and is measured at smaller plans (``--augment-per-image``).

The stand-in generator is a purpose-built image source that honours :class:`ImageGenerator` (a blank 8x8 image per
seed): this benchmark measures the runner's memory, and a real model would take hours to make the candidates.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image


class InstantGenerator:
    """A stand-in :class:`~diffcoremix.generate.backend.ImageGenerator`: one small image per seed, at once."""

    provenance: ClassVar[dict[str, Any]] = {"model": "instant", "pipeline": "InstantGenerator"}

    def generate(self, prompts: Any, negative_prompts: Any, seeds: Any) -> list[Image.Image]:
        return [Image.new("RGB", (8, 8), (seed % 256, 0, 0)) for seed in seeds]


def child(kind: str, data: str, out: str, per_image: int) -> None:
    from diffcoremix import FilterConfig, GenerateConfig, PromptsConfig, augment, build_prompts
    from diffcoremix.generate import generate

    prompts = PromptsConfig(per_image=per_image)
    if kind == "prompts":
        build_prompts(data, prompts).write_jsonl(Path(out) / "prompts.jsonl")
    elif kind == "augment":
        config = GenerateConfig(preset="tiny", batch_size=64)
        augment(data, out, prompts, config, FilterConfig(embedder="tiny", batch_size=256), generator=InstantGenerator())
    else:
        config = GenerateConfig(preset="tiny", batch_size=64)
        generate(data, out, prompts, config, generator=InstantGenerator())
    print(json.dumps({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def measure(kind: str, data: Path, out: Path, per_image: int) -> int:
    command = [sys.executable, __file__, "--child", kind, str(data), str(out), str(per_image)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return int(json.loads(done.stdout.strip().splitlines()[-1])["maxrss_kib"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-image", type=int, nargs=2, default=(100, 1000), metavar=("A", "B"))
    parser.add_argument("--augment-per-image", type=int, nargs=2, default=(10, 100), metavar=("A", "B"))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.child[2], int(args.child[3]))
        return
    from diffcoremix import make_sample_dataset

    scratch = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # fsync is cheap in memory
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        data = make_sample_dataset(Path(tmp) / "data", per_class=20, size=64)
        sources = sum(1 for _ in data.rglob("*.png"))
        peaks: dict[str, list[tuple[int, int]]] = {"prompts": [], "generate": [], "resume": [], "augment": []}
        for per_image in args.per_image:
            out = Path(tmp) / f"out{per_image}"
            out.mkdir()
            n = sources * per_image
            peaks["prompts"].append((n, measure("prompts", data, out, per_image)))
            peaks["generate"].append((n, measure("generate", data, out / "run", per_image)))
            peaks["resume"].append((n, measure("resume", data, out / "run", per_image)))
        for per_image in args.augment_per_image:  # it also embeds every candidate: smaller plans
            out = Path(tmp) / f"augment{per_image}"
            peaks["augment"].append((sources * per_image, measure("augment", data, out, per_image)))
        print(f"{sources} source images")
        print("| command | candidates a, b | peak at a (MiB) | peak at b (MiB) | bytes per candidate |")
        print("| --- | --- | ---: | ---: | ---: |")
        for kind, ((a, low), (b, high)) in peaks.items():
            per = (high - low) * 1024 / (b - a)
            print(f"| {kind} | {a:,}, {b:,} | {low / 1024:.0f} | {high / 1024:.0f} | {per:,.0f} |")


if __name__ == "__main__":
    main()

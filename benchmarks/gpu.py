"""The GPU benchmarks in one call: generation, LoRA fine-tuning and the filter's embedding on one CUDA card.

Made for a lent GPU machine that has no network and a few minutes (``benchmarks/gpu.sh`` installs what it lacks
and runs this), so every figure is written as soon as it is measured (``gpu.json`` and ``gpu.md`` in ``--out``),
the steps run cheapest first, a step (or batch size) that would start after ``--budget`` seconds is recorded as
skipped instead of run, and a step that fails is recorded as failed while the others go on. The models are the
real architectures with random weights, built in-process (a step's time does not depend on the weight values):

- ``generate``: SD 1.5 (860 M UNet, ``sd15-random``) through :class:`DiffusersGenerator`, the code ``generate``
  runs, at 512 px, 20 steps, fp16, batch 1 and 8; then again with the UNet under ``torch.compile``. Each setting
  is timed after a warm-up call (which holds the compilation, reported as ``warmup_s``), median of ``--repeats``.
- ``finetune``: LoRA steps of SD 1.5 at 512 px, batch 1, bf16 autocast, through :func:`diffcoremix.finetune`
  (``benchmarks/finetune.py``'s ``measure``: a short and a long run, their difference over the extra steps).
- ``embed``: the filter's embedder (open_clip ViT-B-32, the default's architecture) on batches of 256: the
  forward pass on the card, and the CPU preprocessing of 512 px images that feeds it, each after a warm-up.

``--dry-run`` runs the same steps on the tiny models on the CPU (64 px, 2 steps, ``torch.compile`` with the
``eager`` backend): it checks the plumbing anywhere in seconds, and its figures say nothing about speed.

Run: ``benchmarks/gpu.sh`` on the GPU machine, or ``python benchmarks/gpu.py [--dry-run] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from diffcoremix import make_sample_dataset
from diffcoremix.embedders import load_embedder
from diffcoremix.finetune import FinetuneConfig
from diffcoremix.generate import DiffusersGenerator, GenerateConfig, resolve_settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune import measure as measure_finetune  # benchmarks/finetune.py, a sibling script


@dataclasses.dataclass(frozen=True)
class Scale:
    """What the steps run on: the real models on a CUDA card, or the tiny ones on the CPU (``--dry-run``)."""

    device: str
    preset: str
    dtype: str
    size: int
    steps: int
    batches: tuple[int, ...]
    compile_backend: str
    finetune_preset: str
    finetune_resolution: int
    finetune_precision: str
    finetune_warmup: int
    finetune_steps: int
    embedder: str
    embed_batch: int
    embed_batches: int
    repeats: int


GPU = Scale(device="cuda", preset="sd15-random", dtype="float16", size=512, steps=20, batches=(1, 8),
            compile_backend="inductor", finetune_preset="sd15-random", finetune_resolution=512,
            finetune_precision="bf16", finetune_warmup=3, finetune_steps=20, embedder="open_clip:ViT-B-32",
            embed_batch=256, embed_batches=20, repeats=3)  # fmt: skip
DRY = Scale(device="cpu", preset="tiny", dtype="float32", size=64, steps=2, batches=(1, 2), compile_backend="eager",
            finetune_preset="tiny", finetune_resolution=32, finetune_precision="no", finetune_warmup=1,
            finetune_steps=2, embedder="tiny", embed_batch=8, embed_batches=2, repeats=1)  # fmt: skip


SKIPPED = "skipped (time budget)"
AUTOCAST = {"no": "fp32", "fp16": "fp16 autocast", "bf16": "bf16 autocast"}


class Figures:
    """The run's facts and rows, rewritten to ``out`` (JSON and a markdown table) after every row."""

    def __init__(self, out: Path, facts: dict[str, Any], budget: float) -> None:
        self.out = out
        self.facts = facts
        self.rows: list[dict[str, Any]] = []
        self.deadline = time.monotonic() + budget
        out.mkdir(parents=True, exist_ok=True)

    def over_budget(self) -> bool:
        return time.monotonic() > self.deadline

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self._write("gpu.json", json.dumps({**self.facts, "rows": self.rows}, indent=2) + "\n")
        self._write("gpu.md", markdown(self.facts, self.rows))

    def _write(self, name: str, text: str) -> None:
        partial = self.out / f".{name}.partial"
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, self.out / name)


def markdown(facts: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The figures as the table ``benchmarks/README.md`` takes."""
    lines = [f"{facts['device_name']}, torch {facts['torch']}, diffusers {facts['diffusers']}, "
             f"{facts['date']}{' (dry run: tiny models on the CPU, no speed figures)' if facts['dry_run'] else ''}",
             "", "| step | setting | warm-up s | measured | rate | peak GPU GiB |",
             "| --- | --- | ---: | --- | ---: | ---: |"]  # fmt: skip
    for row in rows:
        rate = f"{row['rate']:.2f} {row['unit']}" if isinstance(row.get("rate"), float) else row["status"]
        peak = f"{row['peak_gib']:.1f}" if isinstance(row.get("peak_gib"), float) else ""
        warm = f"{row['warmup_s']:.1f}" if isinstance(row.get("warmup_s"), float) else ""
        lines.append(f"| {row['step']} | {row['setting']} | {warm} | {row.get('measured', '')} | {rate} | {peak} |")
    return "\n".join(lines) + "\n"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(call: Callable[[], object], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    call()
    _sync(device)
    return time.perf_counter() - start


def _peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def embed_rows(scale: Scale, repeats: int) -> Iterator[dict[str, Any]]:
    """The filter embedder's forward pass on the device, and the CPU preprocessing that feeds it."""
    from PIL import Image

    embedder = load_embedder(scale.embedder, scale.device)
    images = [Image.new("RGB", (512, 512), (i % 256, 64, 128)) for i in range(scale.embed_batch)]
    warmup = _timed(lambda: [embedder.preprocess(image) for image in images], "cpu")
    seconds = statistics.median(_timed(lambda: [embedder.preprocess(i) for i in images], "cpu") for _ in range(repeats))
    yield {"step": "embed", "setting": f"{embedder.id} preprocess, 512 px images, 1 CPU process",
           "warmup_s": warmup, "measured": f"{len(images)} images x {repeats}", "rate": len(images) / seconds,
           "unit": "images/s", "status": "ok"}  # fmt: skip
    batch = torch.stack([embedder.preprocess(images[0])] * scale.embed_batch)
    _reset_peak(scale.device)
    warmup = _timed(lambda: embedder.embed_images(batch), scale.device)

    def batches() -> None:
        for _ in range(scale.embed_batches):
            embedder.embed_images(batch)

    seconds = statistics.median(_timed(batches, scale.device) for _ in range(repeats))
    yield {"step": "embed", "setting": f"{embedder.id} forward, batch {scale.embed_batch}, fp32",
           "warmup_s": warmup, "measured": f"{scale.embed_batches} batches x {repeats}",
           "rate": scale.embed_batch * scale.embed_batches / seconds, "unit": "images/s",
           "peak_gib": _peak_gib(scale.device), "status": "ok"}  # fmt: skip


def generate_rows(
    scale: Scale, repeats: int, compiled: bool, generator: DiffusersGenerator, over_budget: Callable[[], bool]
) -> Iterator[dict[str, Any]]:
    """Images/s of the generator at each batch size, after a warm-up call (which compiles, when compiled)."""
    for batch in scale.batches:
        setting = (f"{scale.preset}, {scale.size} px, {scale.steps} steps, {scale.dtype}, batch {batch}, "
                   f"compile {'on' if compiled else 'off'}")  # fmt: skip
        if over_budget():  # a compilation takes minutes: checked before each batch size, not only each step
            yield {"step": "generate", "setting": setting, "status": SKIPPED}
            continue
        prompts = [f"a photo of a bird, number {i}" for i in range(batch)]
        negatives = ["blurry, low quality"] * batch
        seeds = list(range(batch))
        _reset_peak(scale.device)
        warmup = _timed(lambda p=prompts, n=negatives, s=seeds: generator.generate(p, n, s), scale.device)
        seconds = statistics.median(
            _timed(lambda p=prompts, n=negatives, s=seeds: generator.generate(p, n, s), scale.device)
            for _ in range(repeats)
        )
        yield {"step": "generate", "setting": setting, "warmup_s": warmup, "measured": f"{repeats} calls",
               "rate": batch / seconds, "unit": "images/s", "peak_gib": _peak_gib(scale.device),
               "status": "ok"}  # fmt: skip


def finetune_rows(scale: Scale, work: Path) -> Iterator[dict[str, Any]]:
    """LoRA steps/s through ``finetune`` (a short and a long run; see ``benchmarks/finetune.py``)."""
    data = make_sample_dataset(work / "finetune-data", per_class=2, size=scale.finetune_resolution)
    config = FinetuneConfig(preset=scale.finetune_preset, method="lora", rank=4, batch_size=1,
                            resolution=scale.finetune_resolution, mixed_precision=scale.finetune_precision,
                            device=scale.device, seed=0)  # fmt: skip
    row = measure_finetune(data, config, scale.finetune_warmup, scale.finetune_steps, scale.device == "cuda")
    yield {"step": "finetune", "setting": f"{scale.finetune_preset} LoRA rank 4, {scale.finetune_resolution} px, "
           f"batch 1, {AUTOCAST[scale.finetune_precision]}", "warmup_s": row.get("short_seconds"),
           "measured": f"{scale.finetune_steps} steps after {scale.finetune_warmup}",
           "rate": row.get("steps_per_s"), "unit": "steps/s", "peak_gib": row.get("peak_gib"),
           "status": row["status"]}  # fmt: skip


def run(scale: Scale, repeats: int, figures: Figures, work: Path) -> None:
    """Every step in order, cheapest first; a step past the budget is recorded as skipped, a failed one as failed."""
    generator: list[DiffusersGenerator] = []

    def plain() -> Iterator[dict[str, Any]]:
        settings = resolve_settings(GenerateConfig(preset=scale.preset, device=scale.device, dtype=scale.dtype,
                                                   height=scale.size, width=scale.size,
                                                   num_inference_steps=scale.steps))  # fmt: skip
        generator.append(DiffusersGenerator.from_settings(settings))
        return generate_rows(scale, repeats, False, generator[0], figures.over_budget)

    def compiled() -> Iterator[dict[str, Any]]:
        # dynamic=False: each batch size gets its own static graph, as a user's fixed --batch-size would
        generator[0].pipe.unet = torch.compile(generator[0].pipe.unet, backend=scale.compile_backend, dynamic=False)
        return generate_rows(scale, repeats, True, generator[0], figures.over_budget)

    steps: list[tuple[str, Callable[[], Iterator[dict[str, Any]]]]] = [
        ("embed", lambda: embed_rows(scale, repeats)),
        ("generate", plain),
        ("finetune", lambda: finetune_rows(scale, work)),
        ("generate compiled", compiled),
    ]
    for name, step in steps:
        if figures.over_budget() or (name == "generate compiled" and not generator):
            figures.add({"step": name, "setting": "", "status": SKIPPED})
            continue
        print(f"{name}...", file=sys.stderr, flush=True)
        try:
            for row in step():
                figures.add(row)
        except Exception as err:  # one failed step (out of memory, a compiler error) must not cost the others
            traceback.print_exc()
            reason = " ".join(str(err).split())[:200]
            figures.add({"step": name, "setting": "", "status": f"failed: {type(err).__name__}: {reason}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the tiny models, on the CPU")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/.work/gpu"), help="where gpu.json, gpu.md go")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per setting after the warm-up (3)")
    parser.add_argument("--budget", type=float, default=360.0, help="seconds after which no step starts")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run for the plumbing on the CPU)", file=sys.stderr)
        return 2
    scale = DRY if args.dry_run else GPU
    repeats = args.repeats or scale.repeats
    facts = {
        "device_name": torch.cuda.get_device_name() if scale.device == "cuda" else "CPU",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": importlib.metadata.version("diffusers"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "dry_run": args.dry_run,
        "repeats": repeats,
        "scale": dataclasses.asdict(scale),
    }
    print(f"{facts['device_name']}, torch {facts['torch']}, diffusers {facts['diffusers']}", flush=True)
    figures = Figures(args.out, facts, args.budget)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        run(scale, repeats, figures, Path(tmp))
    print(markdown(facts, figures.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

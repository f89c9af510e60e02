"""Fine-tuning speed: LoRA steps/s of full-size SD 1.5 and SDXL, with and without gradient checkpointing.

``--gpu`` (CUDA): the ``sd15-random`` (512 px) and ``sdxl-random`` (1024 px) presets, the real models'
architectures with random weights built in-process (a step's time does not depend on the weight values), LoRA
rank 4 on the UNet's attention projections, batch ``--batch-size`` (1), autocast ``--mixed-precision`` (bf16),
each with ``gradient_checkpointing`` off and on, side by side in the one run. Without ``--gpu``: a CPU smoke run
of the ``tiny`` preset at 64 px (float32), so the script is exercised on any machine; its figures say nothing about
GPU speed.

Every setting trains twice through :func:`diffcoremix.finetune.finetune`, the code users run, from the same seed
on the same sample dataset (``make_sample_dataset`` at the setting's resolution), each run into a fresh temporary
folder: ``--warmup`` steps, then ``--warmup + --steps`` steps. ``finetune.json``'s ``seconds`` times the training
steps alone (not model building, data scanning or saving); the difference of the two runs is ``--steps`` steps
after the first ``--warmup`` (CUDA kernel selection, the allocator's growth, first captions through the text
encoder all fall in the warm-up). ``seconds`` is rounded to 0.1 s, so the measured steps should take several
seconds (a warning is printed when they take under 2 s). Reported per setting: s/step, steps/s, images/s, peak
GPU memory (``torch.cuda.max_memory_allocated`` over both runs, reset between settings; the float32 weights of the
whole pipeline included), and, for checkpointing on, its time and memory against off. A setting that runs out of
GPU memory is reported as OOM.

Run: ``.venv/bin/python benchmarks/finetune.py --gpu [--batch-size 1] [--mixed-precision bf16] [--steps 25]
[--warmup 5] [--presets sd15-random,sdxl-random] [--json PATH]`` on a CUDA machine; the CPU smoke run is
``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/finetune.py [--steps 60]`` (15-30 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from diffcoremix import make_sample_dataset
from diffcoremix.finetune import FinetuneConfig, finetune
from diffcoremix.generate.presets import GENERATOR_PRESETS

GPU_PRESETS = ("sd15-random", "sdxl-random")
CPU_PRESET, CPU_RESOLUTION = "tiny", 64
RANK = 4
SEED = 0


def is_oom(err: BaseException) -> bool:
    """CUDA out of memory, however the library below reports it."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "ALLOC_FAILED" in text)


def free_cuda() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_seconds(data: Path, config: FinetuneConfig) -> float:
    """The training steps' wall time of one fresh run."""
    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as tmp:
        result = finetune(data, Path(tmp) / "model", config)
    return float(result.info["seconds"])


def measure(data: Path, base: FinetuneConfig, warmup: int, steps: int, cuda: bool) -> dict[str, Any]:
    """Steps/s of one setting from a ``warmup``-step run and a ``warmup + steps``-step run."""
    row: dict[str, Any] = {"status": "ok"}
    free_cuda()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        seconds = []
        for n in (warmup, warmup + steps):
            # checkpointing_steps = max_steps: no resumable state is saved inside the timed steps
            config = dataclasses.replace(base, max_steps=n, checkpointing_steps=n)
            seconds.append(train_seconds(data, config))
    except Exception as err:
        if not (cuda and is_oom(err)):
            raise
        row["status"] = "OOM"
        row["error"] = str(err).splitlines()[0][:200]
    if cuda:
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    free_cuda()
    if row["status"] != "ok":
        return row
    short, long = seconds
    row.update(short_seconds=short, long_seconds=long)
    delta = long - short
    if delta <= 0:
        row["status"] = "too short"
        return row
    row["s_per_step"] = delta / steps
    row["steps_per_s"] = steps / delta
    row["images_per_s"] = steps * base.batch_size / delta
    if delta < 2:
        print(f"  warning: the {steps} measured steps took {delta:.1f} s, and seconds are rounded to 0.1 s: "
              "raise --steps", file=sys.stderr)  # fmt: skip
    return row


def cell(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, float) else "n/a"


def add_ratios(off: dict[str, Any], on: dict[str, Any]) -> None:
    """Checkpointing on against off, measured side by side: time per step and peak GPU memory."""
    if off["status"] == "ok" and on["status"] == "ok":
        on["time_vs_off"] = on["s_per_step"] / off["s_per_step"]
    if "OOM" not in (off["status"], on["status"]) and "peak_gib" in off and "peak_gib" in on:
        on["memory_vs_off"] = on["peak_gib"] / off["peak_gib"]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | px | batch | precision | grad. checkpointing | s/step | steps/s | images/s | peak GPU GiB "
        "| time vs off | memory vs off |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        on = row["gradient_checkpointing"]
        if row["status"] == "ok":
            timing = [cell(row["s_per_step"], ".3f"), cell(row["steps_per_s"], ".2f"), cell(row["images_per_s"], ".2f")]
        else:
            timing = [row["status"]] * 3
        peak = "OOM" if row["status"] == "OOM" else cell(row.get("peak_gib"), ".1f")
        time_ratio = cell(row.get("time_vs_off"), ".2f") + "x" if "time_vs_off" in row else ("n/a" if on else "")
        mem_ratio = cell(row.get("memory_vs_off"), ".2f") + "x" if "memory_vs_off" in row else ("n/a" if on else "")
        lines.append(
            f"| {row['preset']} | {row['resolution']} | {row['batch_size']} | {row['precision']} "
            f"| {'on' if on else 'off'} | {' | '.join(timing)} | {peak} | {time_ratio} | {mem_ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="full-size SD 1.5 (512 px) and SDXL (1024 px) on CUDA")
    parser.add_argument("--steps", type=int, default=25, help="measured steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=5, help="steps before the measured ones")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="bf16", help="CUDA autocast")
    parser.add_argument("--presets", default=None, help=f"comma-separated (--gpu: {','.join(GPU_PRESETS)})")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes (finetune's default: 0)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")
    if args.gpu and not torch.cuda.is_available():
        print("--gpu needs a CUDA device", file=sys.stderr)
        return 2
    device = "cuda" if args.gpu else "cpu"
    cuda = device == "cuda"
    presets = args.presets.split(",") if args.presets else list(GPU_PRESETS if args.gpu else (CPU_PRESET,))
    precision = args.mixed_precision if cuda else "no"
    where = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} torch threads)"
    print(f"torch {torch.__version__}, {where}; LoRA rank {RANK}, {args.warmup} warm-up + {args.steps} measured steps")
    if not cuda:
        print("CPU smoke run of the tiny model: these figures say nothing about GPU speed (use --gpu)")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="finetune-bench-data-") as tmp:
        for preset in presets:
            resolution = GENERATOR_PRESETS.get(preset).height if cuda else CPU_RESOLUTION
            data = make_sample_dataset(
                Path(tmp) / f"{preset}-{resolution}", per_class=max(2, -(-args.batch_size // 3)), size=resolution
            )
            for checkpointing in (False, True):
                base = FinetuneConfig(
                    preset=preset, method="lora", rank=RANK, resolution=resolution, batch_size=args.batch_size,
                    mixed_precision=precision, gradient_checkpointing=checkpointing, device=device,
                    workers=args.workers, seed=SEED,
                )  # fmt: skip
                print(f"{preset} {resolution} px, gradient checkpointing {checkpointing}...", file=sys.stderr)
                row = measure(data, base, args.warmup, args.steps, cuda)
                row.update(
                    preset=preset, resolution=resolution, batch_size=args.batch_size,
                    precision=precision if cuda else "fp32", gradient_checkpointing=checkpointing,
                )  # fmt: skip
                if checkpointing:
                    add_ratios(rows[-1], row)
                rows.append(row)
    print(table(rows))
    if args.json is not None:
        figures = {
            "torch": torch.__version__,
            "device": where,
            "method": "lora",
            "rank": RANK,
            "warmup": args.warmup,
            "steps": args.steps,
            "workers": args.workers,
            "rows": rows,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

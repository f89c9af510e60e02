"""Generation throughput: our runner against the reference code's loop, and against bare pipeline calls.

Run: ``.venv/bin/python benchmarks/generate.py`` (CPU, tiny preset at 128 px; about two minutes), or on a CUDA
machine ``.venv/bin/python benchmarks/generate.py --gpu`` (full-size SD 1.5 and SDXL architectures with random
weights at 512 px in fp16). Every comparison is measured side by side in one run, interleaved over ``--repeats``
rounds, and reported as the median, because a shared machine is noisy.

Three ways to make the same number of images from the same pipeline and prompts:

- ``reference``: a re-creation of the reference code's generation loop (khawar-islam/DiffCoRe-Mix): one image per
  pipeline call, no generator, each image saved to a temporary file and then moved into place.
- ``bare``: the pipeline called on our batches with our per-image generators, images kept in memory: the floor.
- ``runner``: :func:`diffcoremix.generate` (planning, source hashing, PNG encoding, atomic writes, fsynced manifest).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from diffcoremix import GenerateConfig, PromptsConfig, build_prompts, make_sample_dataset
from diffcoremix.generate import DiffusersGenerator, generate, resolve_settings


def reference_loop(pipe: Any, records: list[Any], settings: Any, out: Path) -> None:
    """The reference code's loop: one call per image, saved through a temporary file."""
    out.mkdir(parents=True, exist_ok=True)
    for i, record in enumerate(records):
        image = pipe(
            prompt=record.prompt,
            negative_prompt=record.negative_prompt,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            height=settings.height,
            width=settings.width,
        ).images[0]
        with tempfile.NamedTemporaryFile(suffix=".png", delete=False, dir=out) as handle:
            image.save(handle.name)
        shutil.move(handle.name, out / f"{i:05d}.png")


def bare_calls(generator: DiffusersGenerator, records: list[Any], batch_size: int) -> None:
    for i in range(0, len(records), batch_size):
        batch = records[i : i + batch_size]
        generator.generate([r.prompt for r in batch], [r.negative_prompt for r in batch], [r.seed for r in batch])


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def compare(config: GenerateConfig, images: int, repeats: int, work: Path) -> dict[str, float]:
    """Images/s of the three loops, median over interleaved rounds."""
    per_class = -(-images // 3)
    data = make_sample_dataset(work / "data", per_class=per_class, size=64, overwrite=True)
    prompts = PromptsConfig(pack="generic")
    records = build_prompts(data, prompts).records[:images]
    settings = resolve_settings(config)
    generator = DiffusersGenerator.from_settings(settings, compile=config.compile)
    bare_calls(generator, records[: config.batch_size], config.batch_size)  # warm-up (and compilation)
    times: dict[str, list[float]] = {"reference": [], "bare": [], "runner": []}
    for round_ in range(repeats):
        for name in times:
            out = work / f"{name}-{round_}"
            sync(settings.device)
            start = time.perf_counter()
            if name == "reference":
                reference_loop(generator.pipe, records, settings, out)
            elif name == "bare":
                bare_calls(generator, records, config.batch_size)
            else:
                summary = generate(data, out, prompts, config, generator=generator)
                assert summary.generated == len(records), summary
            sync(settings.device)
            times[name].append(time.perf_counter() - start)
            shutil.rmtree(out, ignore_errors=True)
    return {name: len(records) / statistics.median(values) for name, values in times.items()}


def report(title: str, rates: dict[str, float]) -> None:
    print(f"\n{title}")
    for name, rate in rates.items():
        print(f"  {name:<10} {rate:8.3f} images/s")
    print(f"  runner / reference  {rates['runner'] / rates['reference']:.2f}x throughput")
    print(f"  runner overhead over bare calls  {100 * (rates['bare'] / rates['runner'] - 1):+.1f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="full-size architectures on CUDA (fp16, 512 px)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", type=int, default=None, help="images per measurement")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads", end="")
    print(f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA device")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.gpu:
            # A batch of 4 at 128 px and 8 steps takes about 2 s on two CPU cores: the regime of the goal.
            config = GenerateConfig(
                preset="tiny", height=128, width=128, num_inference_steps=8, batch_size=4, device="cpu"
            )
            report(
                "CPU, tiny SD pipeline, 128 px, 8 steps, batch 4",
                compare(config, args.images or 24, args.repeats, work),
            )
            return 0
        if not torch.cuda.is_available():
            print("--gpu needs a CUDA device", file=sys.stderr)
            return 2
        for preset in ("sd15-random", "sdxl-random"):
            for compile_ in (False, True):
                for batch in (1, 8):
                    config = GenerateConfig(
                        preset=preset, height=512, width=512, num_inference_steps=20, batch_size=batch,
                        device="cuda", dtype="float16", compile=compile_,
                    )  # fmt: skip
                    rates = compare(config, args.images or 16, args.repeats, work)
                    report(f"{preset}, 512 px, fp16, 20 steps, batch {batch}, compile={compile_}", rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())

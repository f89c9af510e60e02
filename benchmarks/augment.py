"""``augment`` end to end against the reference code's whole loop, re-created, on the same models.

The reference loop, per candidate: one pipeline call for one image (no generator), save it to a temporary file,
read it back, decode and embed it and the class's first image (again, every time), compare with the threshold,
and move the file into the training folder if kept. Ours: :func:`diffcoremix.augment` (batched generation with
per-image seeds, PNG + manifest, batched filter with cached real embeddings, train/rejected layout, report).
Both use the tiny SD pipeline (128 px, 8 steps) and the tiny open_clip embedder, on the same sample dataset.

Run: ``.venv/bin/python benchmarks/augment.py [--images 24] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from diffcoremix import FilterConfig, GenerateConfig, PromptsConfig, augment, build_prompts, make_sample_dataset
from diffcoremix.embedders import load_embedder
from diffcoremix.generate import DiffusersGenerator, resolve_settings


def reference_loop(pipe: object, embedder: object, records: list, data: Path, out: Path, settings: object) -> int:
    kept = 0
    for i, record in enumerate(records):
        image = pipe(  # type: ignore[operator]
            prompt=record.prompt, negative_prompt=record.negative_prompt,
            num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,  # type: ignore[attr-defined]
            height=settings.height, width=settings.width,  # type: ignore[attr-defined]
        ).images[0]  # fmt: skip
        with tempfile.NamedTemporaryFile(suffix=".png", delete=False, dir=out) as handle:
            image.save(handle.name)
        candidate = Image.open(handle.name).convert("RGB")
        first = Image.open(sorted((data / record.class_folder).iterdir())[0]).convert("RGB")
        a = embedder.embed_images(embedder.preprocess(candidate)[None])  # type: ignore[attr-defined]
        b = embedder.embed_images(embedder.preprocess(first)[None])  # type: ignore[attr-defined]
        if float((a @ b.T).item()) > 0.6:
            target = out / "train" / record.class_folder / f"{i:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(handle.name, target)
            kept += 1
        else:
            Path(handle.name).unlink()
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_sample_dataset(work / "data", per_class=-(-args.images // 3), size=96)
        prompts = PromptsConfig(pack="generic")
        records = build_prompts(data, prompts).records
        config = GenerateConfig(preset="tiny", height=128, width=128, num_inference_steps=8, batch_size=4, device="cpu")
        generator = DiffusersGenerator.from_settings(resolve_settings(config))
        embedder = load_embedder("tiny")
        filter_config = FilterConfig(embedder="tiny", threshold=0.6, reference="first")
        times: dict[str, list[float]] = {"reference": [], "augment": []}
        for round_ in range(args.repeats):
            out = work / f"reference-{round_}"
            out.mkdir()
            start = time.perf_counter()
            reference_loop(generator.pipe, embedder, records, data, out, generator.settings)
            times["reference"].append(time.perf_counter() - start)
            start = time.perf_counter()
            augment(
                data, work / f"ours-{round_}", prompts, config, filter_config, generator=generator, embedder=embedder
            )
            times["augment"].append(time.perf_counter() - start)
        rate = {k: len(records) / statistics.median(v) for k, v in times.items()}
        print(f"tiny SD (128 px, 8 steps, batch 4) + tiny open_clip, {len(records)} candidates, CPU "
              f"({torch.get_num_threads()} threads), median of {args.repeats}")  # fmt: skip
        for name, value in rate.items():
            print(f"  {name:<10} {value:7.3f} images/s")
        print(f"  augment / reference   {rate['augment'] / rate['reference']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

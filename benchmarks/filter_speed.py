"""Filter speed: our batched, cached filter against the reference code's filter loop, and against bare forwards.

Embedder: the open_clip ViT-B-32 architecture with random weights (speed does not depend on weight values).
Candidates: a tiny-preset generation over the built-in sample dataset. Contenders, on the same candidates:

- ``reference``: a re-creation of the reference code's filter: one candidate at a time, saved to a temporary PNG
  and read back, the class's first image decoded and embedded again for every candidate, one cosine, a decision;
- ``ours``: :func:`diffcoremix.filter_run` with a cold cache, with the reference code's rule (``first``) and with
  our default (``source``, which must embed every source image) (decoding, batching, real-image embeddings, decisions,
  the train/rejected layout, the report);
- ``bare``: the embedder's forward pass alone, in batches, on already-decoded tensors of the same images ours
  embeds (candidates and their real references): the limit.

Run: ``.venv/bin/python benchmarks/filter_speed.py [--per-class 16] [--repeats 2]``.
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

from diffcoremix import GenerateConfig, PromptsConfig, make_sample_dataset, read_manifest
from diffcoremix.data import open_image
from diffcoremix.embedders import load_embedder
from diffcoremix.filter import FilterConfig, filter_run
from diffcoremix.generate import generate


def reference_filter(embedder: object, out: Path, data: Path, table: object, threshold: float) -> int:
    """One candidate at a time, through a temporary PNG, re-embedding the class's first image each time."""
    kept = 0
    for row in table.itertuples():  # type: ignore[attr-defined]
        generated = Image.open(out / row.output).convert("RGB")
        with tempfile.NamedTemporaryFile(suffix=".png") as handle:
            generated.save(handle.name)
            candidate = Image.open(handle.name).convert("RGB")
            first = sorted((data / row.class_folder).iterdir())[0]
            reference = Image.open(first).convert("RGB")
            pair = torch.stack([embedder.preprocess(candidate), embedder.preprocess(reference)])  # type: ignore[attr-defined]
            a = embedder.embed_images(pair[:1])  # type: ignore[attr-defined]
            b = embedder.embed_images(pair[1:])  # type: ignore[attr-defined]
            kept += int(float((a @ b.T).item()) > threshold)
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=16, help="sample images per class (3 classes)")
    parser.add_argument("--per-image", type=int, default=1, help="candidates per source image")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_sample_dataset(work / "data", per_class=args.per_class, size=96)
        out = work / "out"
        generate(
            data,
            out,
            PromptsConfig(per_image=args.per_image),
            GenerateConfig(preset="tiny", num_inference_steps=1, device="cpu"),
        )
        table = read_manifest(out)
        embedder = load_embedder("open_clip:ViT-B-32")  # random weights
        config = FilterConfig(embedder="open_clip:ViT-B-32", threshold=0.6, batch_size=64)
        n = len(table)
        needed = [out / p for p in table.output] + [data / p for p in sorted(set(table.source))]
        decoded = torch.stack([embedder.preprocess(open_image(p)) for p in needed])
        embedder.embed_images(decoded[:8])  # warm-up
        times: dict[str, list[float]] = {"reference": [], "ours-first": [], "ours-source": [], "bare": []}
        for round_ in range(args.repeats):
            start = time.perf_counter()
            reference_filter(embedder, out, data, table, 0.6)
            times["reference"].append(time.perf_counter() - start)
            for rule in ("first", "source"):
                cache = work / f"cache-{round_}-{rule}"
                options = {**config.__dict__, "cache_dir": str(cache), "reference": rule}
                start = time.perf_counter()
                filter_run(out, FilterConfig(**options), embedder=embedder)
                times[f"ours-{rule}"].append(time.perf_counter() - start)
                shutil.rmtree(cache)
            start = time.perf_counter()
            for i in range(0, len(decoded), 64):
                embedder.embed_images(decoded[i : i + 64])
            times["bare"].append(time.perf_counter() - start)
        rate = {k: n / statistics.median(v) for k, v in times.items()}
        print(f"open_clip ViT-B-32 (random weights), {n} candidates of {len(set(table.source))} sources, CPU "
              f"({torch.get_num_threads()} threads), median of {args.repeats}")  # fmt: skip
        for name, value in rate.items():
            print(f"  {name:<10} {value:8.2f} candidates/s")
        print(f"  ours (first rule, as the reference) / reference   {rate['ours-first'] / rate['reference']:.2f}x")
        print(f"  ours (source rule, our default) / reference      {rate['ours-source'] / rate['reference']:.2f}x")
        print(f"  ours (source) time / bare forward time   {rate['bare'] / rate['ours-source']:.2f}x  "
              f"(bare embeds the same {len(decoded)} images: {n} candidates + {len(decoded) - n} real)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

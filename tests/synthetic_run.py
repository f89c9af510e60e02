"""A generation output folder made cheaply, without a model: for the report's scale test and benchmark.

It has what ``generate`` + ``filter`` write and the report reads, in their real formats: ``run.json``,
``settings.json``, ``config.yaml``, one manifest shard, ``filter.jsonl``, ``filter_report.json``,
``filter.config.yaml``, the images (hard links to a small pool of distinct PNGs, so a million candidates cost a
million links, not a million encodings) and the embedding cache entries of the pool and of the real images (random
unit vectors, shifted per class). DATA holds a few real images per class. Scores are drawn per class around a class
mean, so keep rates differ between classes.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from diffcoremix.digests import file_sha256
from diffcoremix.embedders.cache import EmbeddingCache

EMBEDDER_ID = "synthetic-embedder"
POOL = 64
"""Distinct generated images; candidate ``i`` links to pool image ``i % POOL`` of its class's colour."""


def _png(color: tuple[int, int, int], size: int, mark: int) -> bytes:
    image = Image.new("RGB", (size, size), color)
    image.putpixel((mark % size, (mark // size) % size), (255 - color[0], 255 - color[1], 255 - color[2]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_synthetic_run(
    root: Path,
    *,
    candidates: int,
    classes: int,
    real_per_class: int = 4,
    threshold: float = 0.8,
    dims: int = 16,
    seed: int = 0,
    class_names: list[str] | None = None,
    judged: bool = False,
) -> tuple[Path, Path]:
    """Write DATA and OUT under ``root``; returns ``(data, out)``.

    With ``judged``, ``judge.jsonl`` labels every candidate: the judge agrees with every candidate of even classes
    and with none of odd classes (it sees class ``c + 1``).
    """
    rng = np.random.default_rng(seed)
    data, out = root / "data", root / "out"
    names = class_names or [f"class {c}" for c in range(classes)]
    folders = [f"{c:04d}.{names[c]}".replace("/", "_") for c in range(classes)]
    cache = EmbeddingCache(out / "cache", EMBEDDER_ID)
    centres = rng.normal(size=(classes, dims))
    real_hashes: dict[str, str] = {}
    for c, folder in enumerate(folders):
        (data / folder).mkdir(parents=True, exist_ok=True)
        for i in range(real_per_class):
            path = data / folder / f"real_{i}.png"
            path.write_bytes(_png((40 * c % 256, 90, 160), 32, i))
            digest = file_sha256(path)
            real_hashes[f"{folder}/real_{i}.png"] = digest
            cache.put(digest, _unit(centres[c] + 0.3 * rng.normal(size=dims)))
    pool_dir = out / "pool"
    pool_dir.mkdir(parents=True)
    pool: list[tuple[Path, str]] = []
    for p in range(POOL):
        path = pool_dir / f"{p}.png"
        path.write_bytes(_png((200, 30 * p % 256, 60), 32, p))
        pool.append((path, file_sha256(path)))
        cache.put(pool[-1][1], _unit(centres[p % classes] + 0.5 * rng.normal(size=dims)))
    means = rng.uniform(threshold - 0.08, threshold + 0.08, size=classes)
    shard = out / "manifest" / "shard-00000-of-00001.jsonl"
    shard.parent.mkdir(parents=True)
    judge_lines: list[str] = []
    with shard.open("w", encoding="utf-8") as manifest, (out / "filter.jsonl").open("w", encoding="utf-8") as decisions:
        for index in range(candidates):
            c = index % classes
            source_index = (index // classes) % real_per_class
            k = index // (classes * real_per_class)
            source = f"{folders[c]}/real_{source_index}.png"
            key = f"{source}#{k}"
            output = f"images/{folders[c]}/real_{source_index}.k{k}.png"
            target = out / output
            target.parent.mkdir(parents=True, exist_ok=True)
            pool_path, pool_hash = pool[index % POOL]
            os.link(pool_path, target)
            score = float(np.clip(rng.normal(means[c], 0.05), -1, 1))
            record = {
                "index": index, "key": key, "status": "ok", "error": None, "source": source,
                "source_sha256": real_hashes[source], "class_folder": folders[c], "class_name": names[c],
                "label": c, "k": k, "attempt": 0, "seed": int(rng.integers(2**31)),
                "prompt": f"a photo of a {names[c]}, context {k % 7}", "negative_prompt": "blurry",
                "context": f"context {k % 7}", "context_score": None, "dropped_negatives": [],
                "model": "synthetic", "model_revision": "r0", "model_sha256": None, "pipeline": "Synthetic",
                "scheduler": "none", "lora": None, "finetune": None, "num_inference_steps": 1, "guidance_scale": 1.0,
                "height": 32, "width": 32, "dtype": "float32", "device": "cpu", "output": output,
                "output_sha256": pool_hash, "seconds": 0.0, "rank": 0, "settings_sha256": "s",
            }  # fmt: skip
            manifest.write(json.dumps(record, ensure_ascii=False) + "\n")
            accepted = score >= threshold
            decisions.write(json.dumps({
                "key": key, "class_folder": folders[c], "output": output, "embedder": EMBEDDER_ID,
                "reference_rule": "source", "reference": source, "score": score, "threshold": threshold,
                "text_score": None, "text_threshold": None, "accepted": accepted,
            }, ensure_ascii=False) + "\n")  # fmt: skip
            if judged:
                seen = c if c % 2 == 0 else (c + 1) % classes
                judge_lines.append(json.dumps({
                    "key": key, "judge": "synthetic-judge", "judge_class": names[seen], "judge_label": seen,
                    "judge_confidence": 0.9, "agrees": seen == c, "output_sha256": pool_hash,
                }, ensure_ascii=False) + "\n")  # fmt: skip
    if judged:
        (out / "judge.jsonl").write_text("".join(judge_lines), encoding="utf-8")
    (out / "run.json").write_text(json.dumps({"data": str(data), "made_by": "diffcoremix", "skipped_sources": []}))
    (out / "settings.json").write_text(json.dumps({"settings": {"model": "synthetic", "preset": "synthetic"}}))
    (out / "config.yaml").write_text("prompts:\n  pack: generic\n  fraction: 1.0\n# run facts (not options)\n"
                                     "# torch: synthetic\n")  # fmt: skip
    (out / "filter.config.yaml").write_text(f"filter:\n  embedder: {EMBEDDER_ID}\n  threshold: {threshold}\n"
                                            "  reference: source\n")  # fmt: skip
    (out / "filter_report.json").write_text(json.dumps({"threshold": threshold, "reference": "source",
                                                        "embedder": EMBEDDER_ID}))  # fmt: skip
    return data, out


def _unit(vector: np.ndarray) -> np.ndarray:
    unit: np.ndarray = vector / np.linalg.norm(vector)
    return unit

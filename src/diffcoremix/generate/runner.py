"""The generation runner (METHOD.md §4-5): plan, shard, generate in batches, record, resume.

The plan (which images, which prompts, which seeds) comes from :func:`diffcoremix.prompts.build_prompts`, so it
is the same list in every process. Shard ``r`` of ``w`` takes candidates ``r, r + w, ...``; a rerun skips every
candidate whose record and image are intact, and redoes the rest (failed ones included), so a killed run
resumes where it stopped and ends with the same files and manifest as an uninterrupted one.

Example:
    >>> from diffcoremix import GenerateConfig, PromptsConfig, generate
    >>> summary = generate("data", "out", PromptsConfig(pack="birds"), GenerateConfig(preset="tiny"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from diffcoremix.atomic import atomic_write_bytes, atomic_write_text, remove_stale_temporaries
from diffcoremix.config import to_plain, write_resolved_config
from diffcoremix.data.folder import list_images
from diffcoremix.digests import file_sha256
from diffcoremix.errors import DatasetError, DiffCoReMixError
from diffcoremix.generate.backend import DiffusersGenerator, ImageGenerator
from diffcoremix.generate.config import GenerateConfig, GenerationSettings, resolve_settings, resolve_shard
from diffcoremix.manifest.records import (
    IMAGES_DIR,
    ManifestWriter,
    latest_by_key,
    read_records,
    shard_path,
)
from diffcoremix.prompts.builder import PromptRecord, PromptsConfig, build_prompts

logger = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"


class RunConflictError(DiffCoReMixError):
    """The output folder holds a run made with settings that would give different images."""


class GenerationError(DiffCoReMixError):
    """A candidate failed and the error policy is ``stop``."""


@dataclass(frozen=True)
class GenerationSummary:
    """What one call of :func:`generate` did."""

    out: Path
    planned: int
    """Candidates in the whole plan (all shards)."""
    shard: int
    """Candidates of this shard."""
    skipped: int
    """Of those, already complete from an earlier run."""
    generated: int
    failed: int
    seconds: float


def output_relpath(record: PromptRecord) -> str:
    """Where a candidate's image goes, relative to OUT: ``images/<source path>.k<k>.png`` (a class-folder tree);
    a regeneration adds ``.r<attempt>``."""
    retry = f".r{record.attempt}" if record.attempt else ""
    return f"{IMAGES_DIR}/{record.source}.k{record.k}{retry}.png"


def _check_folders(data: Path, out: Path) -> None:
    data_r, out_r = data.resolve(), out.resolve()
    if out_r == data_r or data_r in out_r.parents:
        raise DatasetError(f"output folder {out} is inside the dataset {data}: diffcoremix never writes into DATA")


def _fingerprint(prompts: PromptsConfig, settings: GenerationSettings) -> dict[str, Any]:
    # Everything that changes which candidates exist or their pixels; not batch size, shard or error policy.
    return {"prompts": to_plain(prompts), "settings": to_plain(settings)}


def _claim_folder(out: Path, fingerprint: dict[str, Any]) -> None:
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            previous = None
        if previous is not None and previous != fingerprint:
            diffs = [
                f"{section}.{key}: {previous.get(section, {}).get(key)!r} -> {value!r}"
                for section, values in fingerprint.items()
                for key, value in values.items()
                if previous.get(section, {}).get(key) != value
            ]
            raise RunConflictError(
                f"{out} holds a run made with other settings ({'; '.join(diffs)}); "
                "resume it with the same options, or choose another output folder"
            )
    atomic_write_text(path, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for package in ("diffcoremix", "torch", "diffusers", "transformers", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _is_complete(out: Path, record: dict[str, Any]) -> bool:
    if record.get("status") != "ok" or not record.get("output"):
        return False
    path = out / record["output"]
    return path.is_file() and file_sha256(path) == record.get("output_sha256")


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # PNG of the same pixels is the same bytes: no timestamps in it
    return buffer.getvalue()


class _Batcher:
    """Runs batches through a generator, halving the batch on CUDA out-of-memory and isolating failing items."""

    def __init__(self, generator: ImageGenerator, batch_size: int) -> None:
        self.generator = generator
        self.limit = batch_size
        """The largest batch that fits; lowered for good after an out-of-memory error."""

    def run(self, records: Sequence[PromptRecord]) -> list[Image.Image | BaseException]:
        import torch

        if len(records) > self.limit:
            return [x for i in range(0, len(records), self.limit) for x in self.run(records[i : i + self.limit])]
        try:
            return list(
                self.generator.generate(
                    [r.prompt for r in records], [r.negative_prompt for r in records], [r.seed for r in records]
                )
            )
        except torch.OutOfMemoryError as err:
            if len(records) == 1:
                return [err]
            self.limit = max(1, len(records) // 2)
            logger.warning("CUDA out of memory at batch %d; going on with batch %d", len(records), self.limit)
            torch.cuda.empty_cache()
            return self.run(records)
        except Exception as err:
            if len(records) == 1:
                return [err]
            logger.warning("a batch failed (%s); retrying its %d candidates one by one", err, len(records))
            return [result for r in records for result in self.run([r])]


def generate(
    data: str | Path,
    out: str | Path,
    prompts: PromptsConfig | None = None,
    config: GenerateConfig | None = None,
    *,
    generator: ImageGenerator | None = None,
    records: Sequence[PromptRecord] | None = None,
    progress: bool = False,
) -> GenerationSummary:
    """Generate the counterparts of a class-folder dataset into ``out``, resuming whatever is already there.

    Args:
        data: the real dataset (read only).
        out: the output folder (created; must not be inside ``data``).
        prompts: prompt options (which images, how many counterparts, packs, seeds).
        config: generation options (preset, model, sampling, batching, device, sharding).
        generator: an already-built :class:`ImageGenerator` to use instead of loading ``config``'s model.
        records: the candidates to make, instead of ``build_prompts(data, prompts)`` (``augment`` appends
            regenerations of rejected candidates to the plan this way).
        progress: show a progress bar (images/s and ETA) on stderr.

    Returns:
        A summary with counts; per-candidate results are in the manifest (:func:`read_manifest`).

    Raises:
        DatasetError, RunConflictError, ModelLoadError, ConfigError: bad inputs, detected before any work.
        GenerationError: a candidate failed under ``on_error="stop"`` (its record is written first).
    """
    started = time.perf_counter()
    data, out = Path(data), Path(out)
    prompts = prompts or PromptsConfig()
    config = config or GenerateConfig()
    _check_folders(data, out)
    settings = resolve_settings(config)
    rank, world_size = resolve_shard(config.rank, config.world_size)
    if records is None:
        plan = build_prompts(list_images(data), prompts)
        plan.warn_conflicts()
        records = plan.records

    out.mkdir(parents=True, exist_ok=True)
    _claim_folder(out, _fingerprint(prompts, settings))
    shared = dataclasses.replace(config, rank=None, world_size=None)  # the same file from every shard
    atomic_write_text(out / "run.json", json.dumps({"data": str(data.resolve())}, indent=2) + "\n", tag=f"r{rank}-")
    write_resolved_config(out / "config.yaml", {"prompts": prompts, "generate": shared}, data=data, **_versions())
    tag = f"r{rank}-"
    removed = remove_stale_temporaries(out, tag=tag)
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run", removed)

    # Batches are fixed chunks of the plan, and shards take whole chunks: an image is computed in the same
    # batch whichever shard runs it and however often the run was interrupted, so its bytes are the same.
    indexed = list(enumerate(records))
    chunks = [indexed[i : i + config.batch_size] for i in range(0, len(indexed), config.batch_size)]
    mine_chunks = chunks[rank::world_size]
    mine = [item for chunk in mine_chunks for item in chunk]
    previous = latest_by_key(read_records(out))
    done = {key for key, record in previous.items() if _is_complete(out, record)}
    todo = [chunk for chunk in mine_chunks if any(r.key not in done for _, r in chunk)]
    remaining = sum(r.key not in done for chunk in todo for _, r in chunk)
    logger.info(
        "shard %d/%d: %d candidates, %d already done, %d to generate",
        rank,
        world_size,
        len(mine),
        len(mine) - remaining,
        remaining,
    )

    writer = ManifestWriter(shard_path(out, rank, world_size))
    generated = failed = 0
    if todo:
        generator = generator or DiffusersGenerator.from_settings(
            settings, compile=config.compile, cpu_offload=config.cpu_offload
        )
        generated, failed = _run(
            out, data, todo, done, generator, settings, config, writer, rank, tag, progress, len(mine)
        )

    final = latest_by_key(read_records(out))
    writer.compact([final[r.key] for _, r in mine if r.key in final], tag=tag)
    return GenerationSummary(
        out=out,
        planned=len(records),
        shard=len(mine),
        skipped=len(mine) - remaining,
        generated=generated,
        failed=failed,
        seconds=time.perf_counter() - started,
    )


def _run(
    out: Path,
    data: Path,
    chunks: list[list[tuple[int, PromptRecord]]],
    done: set[str],
    generator: ImageGenerator,
    settings: GenerationSettings,
    config: GenerateConfig,
    writer: ManifestWriter,
    rank: int,
    tag: str,
    progress: bool,
    total: int,
) -> tuple[int, int]:
    source_hashes: dict[str, str | None] = {}
    batcher = _Batcher(generator, config.batch_size)
    generated = failed = 0
    missing = sum(r.key not in done for chunk in chunks for _, r in chunk)
    bar = tqdm(total=total, initial=total - missing, desc="generate", unit="img", disable=not progress)
    try:
        for chunk in chunks:
            for _, record in chunk:
                if record.source not in source_hashes:
                    try:
                        source_hashes[record.source] = file_sha256(data / record.source)
                    except OSError as err:  # vanished or unreadable since planning: recorded, not generated
                        source_hashes[record.source] = None
                        logger.warning("cannot read source image %s: %s", record.source, err)
            # The whole chunk runs, done members included, so that every image sees the same batch as before.
            runnable = [r for _, r in chunk if source_hashes[r.source] is not None]
            tick = time.perf_counter()
            produced = iter(batcher.run(runnable) if runnable else [])
            seconds = (time.perf_counter() - tick) / max(1, len(runnable))
            results: list[Image.Image | BaseException] = [
                next(produced) if source_hashes[r.source] is not None else OSError(f"cannot read source {r.source}")
                for _, r in chunk
            ]
            records = []
            for (index, record), result in zip(chunk, results, strict=True):
                if record.key in done:
                    continue
                entry = _entry(index, record, settings, generator.provenance, rank, seconds, source_hashes)
                if isinstance(result, BaseException):
                    entry.update(status="error", error=f"{type(result).__name__}: {result}")
                    failed += 1
                else:
                    relpath = output_relpath(record)
                    payload = _png_bytes(result)
                    atomic_write_bytes(out / relpath, payload, tag=tag)
                    entry.update(output=relpath, output_sha256=hashlib.sha256(payload).hexdigest())
                    generated += 1
                records.append(entry)
            writer.append(records)  # after the images are on disk: a record never names a missing file
            bar.update(len(records))
            bar.set_postfix(failed=failed, refresh=False)
            errors = [r for r in records if r["status"] == "error"]
            if errors and config.on_error == "stop":
                raise GenerationError(f"candidate {errors[0]['key']} failed: {errors[0]['error']}")
    finally:
        bar.close()
    return generated, failed


def _entry(
    index: int,
    record: PromptRecord,
    settings: GenerationSettings,
    provenance: dict[str, Any],
    rank: int,
    seconds: float,
    source_hashes: dict[str, str | None],
) -> dict[str, Any]:
    return {
        "index": index,
        "key": record.key,
        "status": "ok",
        "error": None,
        "source": record.source,
        "source_sha256": source_hashes.get(record.source),
        "class_folder": record.class_folder,
        "class_name": record.class_name,
        "label": record.label,
        "k": record.k,
        "attempt": record.attempt,
        "seed": record.seed,
        "prompt": record.prompt,
        "negative_prompt": record.negative_prompt,
        "context": record.context,
        "context_score": record.context_score,
        "dropped_negatives": list(record.dropped_negatives),
        "model": provenance.get("model"),
        "model_revision": provenance.get("model_revision"),
        "model_sha256": provenance.get("model_sha256"),
        "pipeline": provenance.get("pipeline"),
        "scheduler": provenance.get("scheduler"),
        "num_inference_steps": settings.num_inference_steps,
        "guidance_scale": settings.guidance_scale,
        "height": settings.height,
        "width": settings.width,
        "dtype": settings.dtype,
        "device": settings.device,
        "output": None,
        "output_sha256": None,
        "seconds": round(seconds, 6),
        "rank": rank,
    }

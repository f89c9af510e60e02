"""The generation runner (METHOD.md §4-5): plan, shard, generate in batches, record, resume.

The plan (which images, which prompts, which seeds) comes from :func:`diffcoremix.prompts.build_prompts` over the
usable images of DATA, so it is the same list in every process. The plan is cut into fixed batches of
``batch_size`` candidates, and shard ``r`` of ``w`` takes batches ``r, r + w, ...``. A rerun skips every candidate
whose record matches what it would make now (key, source, prompt, negative prompt, seed and the digest of the
generation settings) and whose image is intact, and redoes the rest (failed ones included), so a killed run resumes
where it stopped and ends with the same files and manifest as an uninterrupted one.

Example:
    >>> from diffcoremix import GenerateConfig, PromptsConfig
    >>> from diffcoremix.generate import generate
    >>> summary = generate("data", "out", PromptsConfig(pack="birds"), GenerateConfig(preset="tiny"))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from tqdm import tqdm

from diffcoremix.atomic import atomic_write_bytes, write_text_if_changed
from diffcoremix.config import to_plain, write_resolved_config
from diffcoremix.counterparts import STREAMED_BYTES_PER_CANDIDATE
from diffcoremix.data.folder import Finding
from diffcoremix.data.sources import DataConfig, usable_sources
from diffcoremix.digests import file_sha256
from diffcoremix.errors import DiffCoReMixError
from diffcoremix.generate.backend import DiffusersGenerator, ImageGenerator
from diffcoremix.generate.batcher import Batcher
from diffcoremix.generate.config import GenerateConfig, GenerationSettings, resolve_settings, resolve_shard
from diffcoremix.generate.resume import output_relpath, resume_index, verdict
from diffcoremix.generate.safety import FLAGGED, Flagged
from diffcoremix.generate.sources import SourceConditions
from diffcoremix.manifest.layout import (
    CONFIG_FILE,
    GENERATION_FILES,
    RUN_FILE,
    SETTINGS_FILE,
    OutputFolder,
    SettingsConflictError,
    changed_message,
)
from diffcoremix.manifest.lock import claim_lock
from diffcoremix.manifest.ownership import open_output
from diffcoremix.manifest.records import CandidateRecord, ManifestWriter, iter_records
from diffcoremix.modes import Conditioning
from diffcoremix.prompts.builder import PromptPlan, PromptRecord, PromptsConfig, build_prompts
from diffcoremix.scratch import held_scratch

logger = logging.getLogger(__name__)


class RunConflictError(SettingsConflictError):
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
    skipped_sources: tuple[Finding, ...] = ()
    """Images of DATA left out of the plan because they cannot be used (with the reason)."""
    flagged: int = 0
    """Of the candidates made, those the model's safety checker flagged (status ``flagged``: no image kept; not
    counted in ``generated`` or ``failed``)."""


@dataclass
class _Job:
    """This shard's fixed batches (by number) that hold work, and its counts; the records are read from the plan
    when a batch runs, so a job of any size holds no record."""

    batch_size: int
    size: int
    """Candidates of this shard."""
    todo: list[int] = field(default_factory=list)
    """The numbers of this shard's batches with a candidate to make."""
    done: dict[int, set[str]] = field(default_factory=dict)
    """Of those batches, the keys already complete."""

    planned: int = 0
    """Candidates of the whole plan."""

    @property
    def remaining(self) -> int:
        return sum(min(self.batch_size, self.planned - n * self.batch_size) - len(self.done[n]) for n in self.todo)

    def chunk(self, records: Sequence[PromptRecord], number: int) -> list[tuple[int, PromptRecord]]:
        """Batch ``number`` of the plan: ``(plan index, record)`` pairs."""
        first = number * self.batch_size
        return list(enumerate(records[first : first + self.batch_size], start=first))


@dataclass
class ModelSlot:
    """The generator of a job, loaded on first need and kept for later rounds (``augment``)."""

    generator: ImageGenerator | None = None

    def get(self, settings: GenerationSettings, config: GenerateConfig) -> ImageGenerator:
        if self.generator is None:
            self.generator = DiffusersGenerator.from_settings(
                settings, compile=config.compile, cpu_offload=config.cpu_offload
            )
        return self.generator


class GenerationRunner(Protocol):
    """Generates planned records into an opened output folder (:func:`run_generation`'s signature, less the
    model slot); the Ray executor has one."""

    def __call__(
        self,
        folder: OutputFolder,
        data: Path,
        records: Sequence[PromptRecord],
        prompts: PromptsConfig,
        config: GenerateConfig,
        *,
        data_config: DataConfig | None = None,
        skipped: tuple[Finding, ...] = (),
        progress: bool = False,
    ) -> GenerationSummary: ...


def generate(
    data: str | Path,
    out: str | Path,
    prompts: PromptsConfig | None = None,
    config: GenerateConfig | None = None,
    *,
    generator: ImageGenerator | None = None,
    records: Sequence[PromptRecord] | None = None,
    data_config: DataConfig | None = None,
    overwrite: bool = False,
    runner: GenerationRunner | None = None,
    progress: bool = False,
) -> GenerationSummary:
    """Generate the counterparts of a class-folder dataset into ``out``, resuming whatever is already there.

    Args:
        data: the real dataset (read only).
        out: the output folder (created; must not overlap ``data``, and must be new, empty or ours).
        prompts: prompt options (which images, how many counterparts, packs, seeds).
        config: generation options (preset, model, sampling, batching, device, sharding).
        generator: an already-built :class:`ImageGenerator` to use instead of loading ``config``'s model.
        records: the candidates to make, instead of the plan of ``data`` (no source check then).
        data_config: which classes and how many images per class of ``data`` to plan from.
        overwrite: start afresh: first delete every file of an earlier run in ``out`` (and nothing else).
        runner: what generates the planned records into the opened folder: :func:`run_generation` in this process
            by default; the Ray executor passes its own.
        progress: show a progress bar (images/s and ETA) on stderr.

    Returns:
        A summary with counts; per-candidate results are in the manifest (:func:`read_manifest`).

    Raises:
        DatasetError, OutputFolderError, FolderBusyError, RunConflictError, ModelLoadError, ConfigError: bad
            inputs, detected before any image is made (OUT is then left as it was).
        GenerationError: a candidate failed under ``on_error="stop"`` (its record is written first).
    """
    data, out = Path(data), Path(out)
    config = config or GenerateConfig()
    settings = resolve_settings(config)
    prompts = (prompts or PromptsConfig()).for_generator(settings.model, settings.mode)
    shard = resolve_shard(config.rank, config.world_size)
    with open_output(out, data=data, shard=shard, overwrite=overwrite, fixed=GENERATION_FILES) as folder:
        skipped: tuple[Finding, ...] = ()
        if records is None:  # every source is checked before any model loads
            sources = usable_sources(data, data_config, progress=progress)
            # built batch by batch as it is read (a bar only while --sources hard:F ranks the sources)
            plan = build_prompts(sources.listing, prompts, counterpart=settings.counterpart, progress=progress)
            plan.check_fits(STREAMED_BYTES_PER_CANDIDATE)  # here or on Ray: the resume index is what it holds
            records, skipped = plan, sources.skipped
        if runner is None:
            return run_generation(folder, data, records, prompts, config, data_config=data_config,
                                  slot=ModelSlot(generator), skipped=skipped, settings=settings,
                                  progress=progress)  # fmt: skip
        return runner(folder, data, records, prompts, config, data_config=data_config, skipped=skipped,
                      progress=progress)  # fmt: skip


def run_generation(
    folder: OutputFolder,
    data: Path,
    records: Sequence[PromptRecord],
    prompts: PromptsConfig,
    config: GenerateConfig,
    *,
    data_config: DataConfig | None = None,
    slot: ModelSlot | None = None,
    skipped: tuple[Finding, ...] = (),
    settings: GenerationSettings | None = None,
    previous: Mapping[str, bytes] | None = None,
    batches: range | None = None,
    progress: bool = False,
) -> GenerationSummary:
    """Generate ``records`` into an output folder that the caller has opened (and locked) with ``open_output``.

    The model is taken from ``slot`` (loaded into it on first need, before OUT is claimed). ``previous`` is the
    resume index (:func:`~diffcoremix.generate.resume.resume_index`) of (at least) this shard's keys, when the caller
    has read the manifest already (the Ray executor reads it once for all shards); by default it is read here.
    ``records`` may be a :class:`PromptPlan`: each batch's records are then built when the batch is checked and
    when it runs, never the whole plan at once. ``settings`` are the command's resolved settings (resolved here when
    None: a Ray worker resolves its own, on its own device). ``batches`` are the numbers of the plan's fixed batches
    to run, instead of this shard's ``rank, rank + world_size, ...`` (the Ray executor gives each shard a contiguous
    run)."""
    slot = slot or ModelSlot()
    started = time.perf_counter()
    settings = settings or resolve_settings(config)  # resolved once by the command; a Ray worker resolves its own
    rank, world_size = resolve_shard(config.rank, config.world_size)
    fingerprint = _fingerprint(prompts, settings, data_config)
    _check_settings(folder, fingerprint)  # a conflicting earlier run is refused before any model loads
    hashes = _SourceHashes(data)
    if batches is None:
        batches = range(rank, -(-len(records) // config.batch_size), world_size)
    job = _plan_job(folder, records, config.batch_size, batches, settings_digest(settings), previous, hashes)
    if isinstance(records, PromptPlan):
        records.warn_conflicts()  # each of this shard's prompts has been built once by now
    logger.info("shard %d/%d: %d candidates, %d already done, %d to generate", rank, world_size, job.size,
                job.size - job.remaining, job.remaining)  # fmt: skip
    generator = slot.get(settings, config) if job.todo else None  # may fail (offline): nothing is claimed yet
    _claim(folder, data, fingerprint, prompts, config, skipped)
    tag = f"r{rank}-"
    scratch = held_scratch(folder / RUN_FILE)  # OUT's: its shard lock makes this tag's leftovers ours alone
    if scratch is not None and (removed := scratch.sweep(tag)):
        logger.info("removed %d temporary file(s) left by an interrupted run", removed)
    writer = ManifestWriter(folder.shard_path(rank, world_size))
    counts = _Counts()
    if generator is not None:
        counts = _run(folder, data, records, job, generator, settings, config, writer, rank, hashes, progress)
    writer.compact(tag=tag)
    return GenerationSummary(
        out=folder.path,
        planned=len(records),
        shard=job.size,
        skipped=job.size - job.remaining,
        generated=counts.generated,
        failed=counts.failed,
        seconds=time.perf_counter() - started,
        skipped_sources=skipped,
        flagged=counts.flagged,
    )


def settings_digest(settings: GenerationSettings) -> str:
    """SHA-256 of everything in ``settings`` that determines the pixels (recorded with every image). A text run has
    no counterpart settings, and its digest leaves them out: the digest an earlier version recorded."""
    plain = to_plain(settings)
    if plain.get("counterpart") is None:
        plain.pop("counterpart", None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()


def _fingerprint(prompts: PromptsConfig, settings: GenerationSettings, data: DataConfig | None) -> dict[str, Any]:
    # Everything that changes which candidates exist or their pixels; not batch size, shard or error policy.
    return {"data": to_plain(data or DataConfig()), "prompts": to_plain(prompts), "settings": to_plain(settings)}


_NEW_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": to_plain(DataConfig()),
    "prompts": to_plain(PromptsConfig()),
    "settings": {"counterpart": None},
}
"""The value of each setting that means "as before it existed" (an OUT of an earlier version lacks it): the config
defaults, and no counterpart settings (text)."""


def _check_settings(folder: OutputFolder, fingerprint: dict[str, Any]) -> None:
    try:
        previous = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return  # none (or damaged): each record is still checked against what this run would make
    if previous == fingerprint:
        return
    missing = object()  # a setting that an earlier version did not record (safety_checker, say) is named too
    recorded = {(section, key): previous.get(section, {}).get(key, missing) for section, values in fingerprint.items()
                for key in values}  # fmt: skip
    diffs = [
        f"{section}.{key}: {'(not recorded)' if was is missing else repr(was)} -> {value!r}"
        for section, values in fingerprint.items()
        for key, value in values.items()
        if (was := recorded[section, key]) != value
        and not (was is missing and value == _NEW_DEFAULTS[section].get(key))
    ]  # a setting an earlier version did not have, left at its default now, is what that version did
    if not diffs:
        return
    raise RunConflictError(
        f"{folder.path} holds a run made with other settings ({'; '.join(diffs)}); resume it with the same options, "
        "start afresh with --overwrite, or choose another output folder"
    )


def _claim(
    folder: OutputFolder,
    data: Path,
    fingerprint: dict[str, Any],
    prompts: PromptsConfig,
    config: GenerateConfig,
    skipped: tuple[Finding, ...],
) -> None:
    """Mark OUT as this run's: the run record, the settings and the resolved config (unchanged files untouched)."""
    with claim_lock(folder.path):  # shards of one run claim one after the other
        _check_settings(folder, fingerprint)
        folder.write_run_record(data, skipped_sources=[vars(f) for f in skipped])
        write_text_if_changed(folder / SETTINGS_FILE, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
        shared = GenerateConfig(**{**vars(config), "rank": None, "world_size": None})  # the same file from all shards
        write_resolved_config(folder / CONFIG_FILE, {"prompts": prompts, "generate": shared}, data=data, **_versions())


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for package in ("diffcoremix", "torch", "diffusers", "transformers", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _plan_job(
    folder: OutputFolder,
    records: Sequence[PromptRecord],
    batch_size: int,
    batches: range,
    digest: str,
    previous: Mapping[str, bytes] | None,
    hashes: _SourceHashes,
) -> _Job:
    # Batches are fixed chunks of the plan, and shards take whole chunks: an image is computed in the same
    # batch whichever shard runs it and however often the run was interrupted, so its bytes are the same.
    if previous is None:
        previous = resume_index(iter_records(folder.path))
    job = _Job(batch_size, 0, planned=len(records))
    changed = 0
    for number in batches:
        chunk = job.chunk(records, number)
        verdicts = [(r.key, verdict(folder.path, previous, r, digest, hashes.__getitem__)) for _, r in chunk]
        changed += sum(v == "changed" for _, v in verdicts)
        job.size += len(chunk)
        done = {key for key, v in verdicts if v == "done"}
        if len(done) < len(chunk):
            job.todo.append(number)
            job.done[number] = done
    if changed:  # a source photo replaced in DATA since its candidates were made: they are made again
        logger.warning("%d candidate(s) made from a source image that has changed since (its SHA-256 differs "
                       "from the recorded one): generated again", changed)  # fmt: skip
    return job


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # PNG of the same pixels is the same bytes: no timestamps in it
    return buffer.getvalue()


class _SourceHashes(dict[str, str | None]):
    """SHA-256 of each source image, read once; None for a file that vanished or became unreadable."""

    def __init__(self, data: Path) -> None:
        super().__init__()
        self.data = data

    def __missing__(self, source: str) -> str | None:
        try:
            digest: str | None = file_sha256(self.data / source)
        except OSError as err:  # vanished or unreadable since planning: recorded, not generated
            logger.warning("cannot read source image %s: %s", source, err)
            digest = None
        self[source] = digest
        return digest


@dataclass
class _Counts:
    """The candidates one run made, by outcome."""

    generated: int = 0
    failed: int = 0
    flagged: int = 0

    def add(self, entries: Sequence[CandidateRecord]) -> None:
        for entry in entries:
            if entry.status == "ok":
                self.generated += 1
            elif entry.status == FLAGGED:
                self.flagged += 1
            else:
                self.failed += 1

    def warn(self) -> None:
        if self.flagged:
            logger.warning("%d candidate(s) flagged by the model's safety checker: recorded as flagged, no image kept "
                           "(augment --retries regenerates them with new seeds; --safety-checker off skips the check)",
                           self.flagged)  # fmt: skip


def _run(
    folder: OutputFolder,
    data: Path,
    records: Sequence[PromptRecord],
    job: _Job,
    generator: ImageGenerator,
    settings: GenerationSettings,
    config: GenerateConfig,
    writer: ManifestWriter,
    rank: int,
    hashes: _SourceHashes,
    progress: bool,
) -> _Counts:
    batcher = Batcher(generator, config.batch_size)
    context = {"settings": settings, "provenance": generator.provenance, "rank": rank, "hashes": hashes,
               "digest": settings_digest(settings)}  # fmt: skip
    sources = SourceConditions(data, settings, config)
    counts = _Counts()
    owned = _RecordedImages(folder)
    bar = tqdm(total=job.size, initial=job.size - job.remaining, desc="generate", unit="img", disable=not progress)
    try:
        for number in job.todo:
            chunk, done = job.chunk(records, number), job.done[number]
            tick = time.perf_counter()
            results, masks = _generate_chunk(batcher, chunk, hashes, sources)
            seconds = (time.perf_counter() - tick) / len(chunk)
            made = [
                _made(index, record, result, seconds, context, mask)
                for (index, record), result, mask in zip(chunk, results, masks, strict=True)
                if record.key not in done
            ]
            entries = _write_images(folder, made, writer, f"r{rank}-", owned)
            writer.append(entries)  # after the images are on disk: a record never names a missing file
            counts.add(entries)
            bar.update(len(entries))
            bar.set_postfix(failed=counts.failed, refresh=False)
            errors = [e for e in entries if e.status == "error"]
            if errors and config.on_error == "stop":
                raise GenerationError(f"candidate {errors[0].key} failed: {errors[0].error}")
    finally:
        bar.close()
        owned.warn()
        counts.warn()
    return counts


def _generate_chunk(
    batcher: Batcher, chunk: list[tuple[int, PromptRecord]], hashes: _SourceHashes, sources: SourceConditions
) -> tuple[list[Image.Image | Flagged | BaseException], list[str | None]]:
    """Each candidate's image (or why there is none), and the digest of the subject mask it kept (inpaint)."""
    # The whole chunk runs, done members included, so that every image sees the same batch as before.
    prepared: list[Conditioning | BaseException] = [
        sources.prepare(r) if hashes[r.source] is not None else OSError(f"cannot read source {r.source}")
        for _, r in chunk
    ]
    runnable = [(r, c) for (_, r), c in zip(chunk, prepared, strict=True) if isinstance(c, Conditioning)]
    produced = iter(batcher.run([r for r, _ in runnable], [c for _, c in runnable]) if runnable else [])
    results = [next(produced) if isinstance(c, Conditioning) else c for c in prepared]
    return results, [sources.mask_digest(r.source) for _, r in chunk]


def _made(
    index: int,
    record: PromptRecord,
    result: Image.Image | Flagged | BaseException,
    seconds: float,
    context: dict[str, Any],
    mask_sha256: str | None = None,
) -> tuple[CandidateRecord, bytes | None]:
    """One candidate's manifest record, and its image's PNG bytes (None when it failed or was flagged: the black
    image the pipeline returns for a flagged one is not kept)."""
    entry = _entry(index, record, seconds, mask_sha256=mask_sha256, **context)
    if isinstance(result, BaseException):
        return replace(entry, status="error", error=f"{type(result).__name__}: {result}"), None
    if isinstance(result, Flagged):
        return replace(entry, status=FLAGGED, error=result.message), None
    payload = _png_bytes(result)
    return replace(entry, output=output_relpath(record), output_sha256=hashlib.sha256(payload).hexdigest()), payload


WRITING = "writing"
"""The status of the record a batch appends before it writes its images: what is about to be written where. A run
killed among the images leaves every image it wrote named, by content, in a record (the final ``ok`` record replaces
it when the manifest is compacted); so the rerun may replace them, and a file the user put there is told apart."""


def _write_images(
    folder: OutputFolder,
    made: list[tuple[CandidateRecord, bytes | None]],
    writer: ManifestWriter,
    tag: str,
    owned: _RecordedImages,
) -> list[CandidateRecord]:
    """Write a batch's images (atomically), each only where the file in its place is one we wrote (or none), and return
    the batch's records: a candidate whose place holds a file replaced since is recorded as failed, the file kept."""
    writes = [(entry, payload) for entry, payload in made if payload is not None]
    if writes:
        writer.append([replace(entry, status=WRITING) for entry, _ in writes])
    entries = []
    for entry, payload in made:
        if payload is not None and entry.output is not None and entry.output_sha256 is not None:
            path = folder / entry.output
            if not owned.may_replace(path, entry.output, entry.output_sha256):
                entry = replace(entry, status="blocked", error=f"{path} was replaced since diffcoremix wrote it: left "
                                "in place", output=None, output_sha256=None)  # fmt: skip
            else:
                atomic_write_bytes(path, payload, tag=tag)
        entries.append(entry)
    return entries


class _RecordedImages:
    """Which contents our records give each image path (read from the manifest on the first image found in the
    way), and the paths left in place because they hold something else."""

    def __init__(self, folder: OutputFolder) -> None:
        self.folder = folder
        self.recorded: dict[str, set[str]] | None = None
        self.kept: list[str] = []

    def may_replace(self, path: Path, relpath: str, new: str) -> bool:
        if not os.path.lexists(path):
            return True
        if path.is_file() and not path.is_symlink() and (now := file_sha256(path)) == new:
            return True  # the same bytes: writing them again changes nothing
        if self.recorded is None:
            self.recorded = {}
            for record in iter_records(self.folder.path):
                if isinstance(record.get("output"), str) and isinstance(record.get("output_sha256"), str):
                    self.recorded.setdefault(record["output"], set()).add(record["output_sha256"])
        if path.is_file() and not path.is_symlink() and now in self.recorded.get(relpath, set()):
            return True
        self.kept.append(relpath)
        return False

    def warn(self) -> None:
        if self.kept:
            logger.warning("%s", changed_message(self.folder.path, self.kept))


_FROM_PLAN = ("key", "source", "class_folder", "class_name", "label", "k", "attempt", "source_rank", "source_loss",
              "seed", "prompt", "negative_prompt", "context", "context_score", "counterpart", "strength",
              "source_class_folder", "target_class_folder", "soft_label")  # fmt: skip
"""The record's fields that are the planned candidate's own (:class:`PromptRecord`), copied as they are."""

_FROM_MODEL = ("model", "model_revision", "model_sha256", "weights_sha256", "pipeline", "scheduler", "lora",
               "finetune", "safety_checker")  # fmt: skip
"""The record's fields that the loaded model's provenance gives."""

_FROM_SETTINGS = ("num_inference_steps", "guidance_scale", "image_guidance_scale", "height", "width", "dtype",
                  "device")  # fmt: skip
"""The record's fields that the resolved settings give."""


def _entry(
    index: int,
    record: PromptRecord,
    seconds: float,
    *,
    settings: GenerationSettings,
    provenance: dict[str, Any],
    rank: int,
    hashes: _SourceHashes,
    digest: str,
    mask_sha256: str | None = None,
) -> CandidateRecord:
    """A candidate's record before its outcome: ``ok``, with no image yet."""
    copied: dict[str, Any] = {name: getattr(record, name) for name in _FROM_PLAN}
    copied |= {name: provenance.get(name) for name in _FROM_MODEL}
    copied |= {name: getattr(settings, name) for name in _FROM_SETTINGS}
    return CandidateRecord(
        index=index,
        status="ok",
        error=None,
        source_sha256=hashes[record.source],
        dropped_negatives=list(record.dropped_negatives),
        mask_sha256=mask_sha256,
        condition=record.condition(),
        output=None,
        output_sha256=None,
        seconds=round(seconds, 6),
        rank=rank,
        settings_sha256=digest,
        **copied,
    )

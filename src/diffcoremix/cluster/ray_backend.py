"""The Ray executor: the same stages, keys, seeds, batches and files as the local one, run by Ray actors.

Why actors (``ray.remote`` classes, handed work by ``ray.util.ActorPool``) and not a Ray Data ``map_batches``
pipeline: an image's bytes depend on the batch it is computed in, and the local runner cuts the plan into fixed
batches (:func:`diffcoremix.generate.runner.run_generation`); a Ray Data pipeline re-blocks rows as it pleases, and
its retried tasks re-emit rows, so the same candidate could be made in another batch, or recorded twice. Here the
unit of work is a *shard* of the local runner (``rank`` of ``world_size``: whole fixed batches), run by the very
function the local executor runs, inside an actor that holds the model between shards. Each shard writes its images
and its own manifest part (``manifest/shard-R-of-W.jsonl``) to OUT on storage every node sees, exactly as a
``torchrun`` shard does, so the local tools read the result unchanged and a rerun, local or on Ray, resumes it. The
driver only plans, hands out shards and sums the counts.

Faults: an actor whose process dies is restarted by Ray (``max_restarts=-1``) and its unfinished call retried
(``max_task_retries=-1``); the retried shard resumes from its own manifest part (a torn last line is repaired, a
temporary file of the dead process removed), so no candidate is recorded twice, and every image is the same as an
uninterrupted run's. Should the driver die, the next run (local or Ray) resumes in the same way.

Filtering and judging: the driver reads the manifest and decides, as locally; only the models' work goes to the
actors. For the filter, the driver lists the images whose embeddings are not cached, cuts that list into the very
batches the local filter would embed, and the actors write those embeddings into the cache; the local scoring code
then reads them. For the judge, each actor classifies a slice of the images and returns the lines of
``judge.jsonl``, which the driver writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffcoremix.cluster.config import RAY_INSTALL_HINT, ExecutorConfig
from diffcoremix.data.folder import Finding
from diffcoremix.data.sources import DataConfig
from diffcoremix.embedders.cache import EmbeddingCache, embed_files, embedding_batches
from diffcoremix.embedders.models import Embedder, load_embedder
from diffcoremix.errors import ConfigError, DiffCoReMixError
from diffcoremix.generate.config import GenerateConfig
from diffcoremix.generate.runner import GenerationSummary, ModelSlot, run_generation
from diffcoremix.manifest.layout import OutputFolder
from diffcoremix.prompts.builder import PromptPlan, PromptRecord, PromptsConfig
from diffcoremix.scratch import scratch_root
from diffcoremix.sequences import LazySequence

logger = logging.getLogger(__name__)

SHARDS_PER_WORKER = 4
"""Shards per actor: enough for a fast actor to take over a slow one's share, few enough that each shard's reading
of its manifest part stays small."""


class ExecutorError(DiffCoReMixError):
    """The executor cannot run: Ray missing, a cluster that cannot be joined, or too small for one worker."""


class WorkerError(DiffCoReMixError):
    """A stage failed inside a Ray worker; the message is the worker's (its error type first)."""


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error that says how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ExecutorError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from err
    return ray


class _Worker:
    """One Ray actor: a model (generator, embedder or classifier) loaded on first need and kept for later calls."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.slot = ModelSlot()
        self.models: dict[tuple[Any, ...], Any] = {}

    def pid(self) -> int:
        return os.getpid()

    def generate(
        self,
        out: str,
        data: str,
        records: Sequence[PromptRecord],
        prompts: PromptsConfig,
        config: GenerateConfig,
        data_config: DataConfig | None,
        skipped: tuple[Finding, ...],
        previous: Mapping[str, bytes],
        batches: range,
    ) -> GenerationSummary:
        with _Reported(), scratch_root(out):  # beside the driver, which holds OUT's lock
            return run_generation(OutputFolder(out), Path(data), records, prompts, config, data_config=data_config,
                                  slot=self.slot, skipped=skipped, previous=previous, batches=batches)  # fmt: skip

    def embed(self, spec: str, device: str, paths: Sequence[str], cache_root: str, batch_size: int) -> int:
        """Embed ``paths`` (in batches of ``batch_size``, as the local filter would) into the cache; how many."""
        with _Reported(), scratch_root(cache_root):
            embedder = self._embedder(spec, device)
            embed_files(embedder, paths, EmbeddingCache(cache_root, embedder.id), batch_size=batch_size)
            return len(paths)

    def run(self, task: Callable[[_Worker], Any]) -> Any:
        """Run ``task(self)``: work of a stage above this package (the judge), which keeps its model here with
        :meth:`model`."""
        with _Reported():
            return task(self)

    def model(self, key: tuple[Any, ...], load: Callable[[], Any]) -> Any:
        """The model stored under ``key``, loaded by ``load()`` on first need."""
        if key not in self.models:
            self.models[key] = load()
        return self.models[key]

    def _embedder(self, spec: str, device: str) -> Embedder:
        embedder: Embedder = self.model(("embedder", spec, device), lambda: load_embedder(spec, device))
        return embedder


class PlanWindow(LazySequence[PromptRecord]):
    """Records ``first .. first + len(records)`` of a plan of ``total``: what one Ray shard is sent. It has the plan's
    length and indices; reading outside the window raises ``IndexError``."""

    def __init__(self, records: list[PromptRecord], first: int, total: int) -> None:
        self.records, self.first, self.total = records, first, total

    def __len__(self) -> int:
        return self.total

    def _slice(self, start: int, stop: int) -> list[PromptRecord]:
        end = self.first + len(self.records)
        if start < stop and not (self.first <= start and stop <= end):
            raise IndexError(f"records {start}:{stop} are outside this shard's {self.first}:{end}")
        return self.records[start - self.first : stop - self.first]


class _Reported:
    """Turn our errors into :class:`WorkerError` (our error classes take several arguments and do not unpickle)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if isinstance(error, DiffCoReMixError) and not isinstance(error, WorkerError):
            raise WorkerError(str(error)) from None


@contextlib.contextmanager
def _callers_sigterm_handler() -> Iterator[None]:
    """Keep the caller's own SIGTERM handler across ``ray.init``, which replaces it with ``sys.exit`` (so that its
    atexit hook shuts Ray down).

    A caller that installed a handler (the CLI: SIGTERM unwinds the command, through :meth:`RayCluster.__exit__`, which
    shuts Ray down) keeps it; one that left SIGTERM at its default gets Ray's, which is the gentler of the two.
    """
    earlier = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    finally:
        if earlier is not None and earlier != signal.SIG_DFL:
            signal.signal(signal.SIGTERM, earlier)


class RayCluster:
    """Actors on a Ray cluster for one command; a context manager (joins or starts Ray, and ends what it started).

    Args:
        config: the executor options.
        device: the stage's device option (``auto``, ``cpu``, ``cuda``...): decides whether actors reserve GPUs.
    """

    def __init__(self, config: ExecutorConfig, device: str = "auto") -> None:
        self.config = config
        self.device = device
        self.ray = import_ray()
        self._started = False
        self._actors: list[Any] = []
        self.workers = 0
        self.gpus = 0.0

    def __enter__(self) -> RayCluster:
        ray = self.ray
        if not ray.is_initialized():
            with _callers_sigterm_handler():
                try:
                    ray.init(address=self.config.address, include_dashboard=False, log_to_driver=False,
                             logging_level=logging.ERROR, configure_logging=False)  # fmt: skip
                except (ConnectionError, RuntimeError, ValueError) as err:
                    where = self.config.address or "a new local instance"
                    raise ExecutorError(f"cannot start or join the Ray cluster at {where}: {err}") from err
            self._started = True
        self._size()
        return self

    def __exit__(self, *exc: object) -> None:
        for actor in self._actors:
            self.ray.kill(actor)
        self._actors = []
        if self._started:
            self.ray.shutdown()

    def _size(self) -> None:
        resources = self.ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        wanted = self.config.gpus_per_worker
        if wanted is None:
            wanted = 1.0 if gpus >= 1 and not self.device.startswith(("cpu", "mps")) else 0.0
        if wanted > 0 and self.device.startswith(("cpu", "mps")):
            raise ConfigError("gpus_per_worker", wanted, f"0 with --device {self.device}")
        fit = int(cpus // self.config.cpus_per_worker)
        if wanted > 0:
            fit = min(fit, int(gpus // wanted))
        workers = self.config.workers or fit
        if fit < 1 or workers > fit:
            raise ExecutorError(
                f"the Ray cluster ({cpus:g} CPUs, {gpus:g} GPUs) cannot hold {workers or 1} worker(s) of "
                f"{self.config.cpus_per_worker:g} CPU(s) and {wanted:g} GPU(s): lower --workers, --cpus-per-worker "
                "or --gpus-per-worker, or add nodes"
            )
        self.workers, self.gpus = workers, wanted

    @property
    def worker_device(self) -> str:
        """The device the actors run on: CUDA when they hold GPUs (``auto`` resolved here, so that every actor and
        the recorded settings agree), else the option as given."""
        if self.device == "auto":
            return "cuda" if self.gpus > 0 else "cpu"
        return self.device

    def actors(self) -> list[Any]:
        """The actors (started on first need; Ray restarts one whose process dies and retries its call)."""
        if not self._actors:
            remote = self.ray.remote(_Worker).options(
                num_cpus=self.config.cpus_per_worker, num_gpus=self.gpus, max_restarts=-1, max_task_retries=-1
            )
            threads = max(1, math.floor(self.config.cpus_per_worker))
            self._actors = [remote.remote(threads) for _ in range(self.workers)]
        return self._actors

    def pids(self) -> list[int]:
        """The process id of each actor (for tests that kill one)."""
        return [int(pid) for pid in self.ray.get([a.pid.remote() for a in self.actors()])]

    def map(self, call: Callable[[Any, Any], Any], items: Sequence[Any], *, desc: str, progress: bool) -> Iterator[Any]:
        """``call(actor, item)`` for each item over the actors (whichever is free takes the next), results as they
        come; a worker's error is raised here."""
        from ray.util import ActorPool
        from tqdm import tqdm

        pool = ActorPool(self.actors())
        bar = tqdm(total=len(items), desc=desc, unit="task", disable=not progress)
        try:
            for result in pool.map_unordered(call, list(items)):
                bar.update(1)
                yield result
        except self.ray.exceptions.RayTaskError as err:
            cause = err.cause if getattr(err, "cause", None) is not None else err
            if isinstance(cause, DiffCoReMixError):
                raise WorkerError(str(cause)) from None
            raise WorkerError(f"a Ray worker failed: {type(cause).__name__}: {cause}") from None
        finally:
            bar.close()

    # --- generation ---------------------------------------------------------------------------------------------

    def generate(
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
    ) -> GenerationSummary:
        """The Ray twin of :func:`run_generation` over a folder the caller opened (and locked)."""
        from diffcoremix.generate.resume import resume_index
        from diffcoremix.manifest.records import iter_records

        started = time.perf_counter()
        if config.rank is not None or config.world_size is not None:
            raise ConfigError("rank", config.rank, "unset with --executor ray (Ray hands out the shards)")
        config = dataclasses.replace(config, device=self.worker_device)
        chunks = max(1, math.ceil(len(records) / config.batch_size))
        shards = min(chunks, self.workers * SHARDS_PER_WORKER)
        previous = resume_index(iter_records(folder.path))  # read once here, not once per shard
        size, total = config.batch_size, len(records)

        def call(actor: Any, rank: int) -> Any:  # called as an actor comes free: few shards' records at a time
            # Shard `rank` takes a contiguous run of the plan's fixed batches (each batch's images do not depend on
            # which shard makes them), so the plan is read once, in order, a shard at a time, never held whole.
            numbers = range(rank * chunks // shards, (rank + 1) * chunks // shards)
            first, last = numbers.start * size, min(total, numbers.stop * size)
            window = PlanWindow(list(records[first:last]), first, total)
            mine = {r.key: previous[r.key] for r in window.records if r.key in previous}
            shard = dataclasses.replace(config, rank=rank, world_size=shards)
            return actor.generate.remote(str(folder.path), str(data), window, prompts, shard, data_config, skipped,
                                         mine, numbers)  # fmt: skip

        summaries = list(self.map(call, range(shards), desc="generate (shards)", progress=progress))
        if isinstance(records, PromptPlan):
            records.warn_conflicts()
        return GenerationSummary(
            out=folder.path,
            planned=len(records),
            shard=sum(s.shard for s in summaries),
            skipped=sum(s.skipped for s in summaries),
            generated=sum(s.generated for s in summaries),
            failed=sum(s.failed for s in summaries),
            seconds=time.perf_counter() - started,
            skipped_sources=skipped,
            flagged=sum(s.flagged for s in summaries),
        )

    # --- embedding (the filter) -----------------------------------------------------------------------------------

    def embedding(self, spec: str, device: str) -> Callable[..., np.ndarray]:
        """An :func:`embed_files` whose uncached images are embedded by the actors (``spec`` names the embedder)."""
        actor_device = self.worker_device if device == "auto" else device

        def embed(
            embedder: Embedder,
            paths: Sequence[str | Path],
            cache: EmbeddingCache | None = None,
            *,
            batch_size: int = 64,
            workers: int = 0,
            progress: bool = False,
            desc: str = "embed",
        ) -> np.ndarray:
            if cache is None:
                raise ConfigError("cache_dir", None, "a cache folder with --executor ray")
            batches = [[str(p) for p in batch] for batch in embedding_batches(paths, cache, batch_size)]
            root = str(cache.folder.parent)

            def call(actor: Any, batch: list[str]) -> Any:
                return actor.embed.remote(spec, actor_device, batch, root, batch_size)

            for _ in self.map(call, batches, desc=desc, progress=progress):
                pass
            return embed_files(embedder, paths, cache, batch_size=batch_size, workers=workers, desc=desc)

        return embed

"""Training a classifier with a method and a recipe, resumably, on one process or many (``torchrun``).

Every random choice is a function of (seed, step) or (seed, epoch, image): the data order (``seed + epoch``), the
transforms and partners (per image and epoch), the mixing (per step and rank), and the forward pass's own draws
(dropout, drop-path), from torch's global generators seeded before each step from (seed, step, rank). So a run
killed and resumed from its last checkpoint, mid-epoch or not, ends with the same weights and the same metrics as an
uninterrupted one (on the CPU; CUDA kernels may not be deterministic), and a call leaves the caller's random state
as it found it.

It reads top to bottom: :func:`train` resolves its inputs once (``_RunInputs``) and every process runs
``_train_in``: ``_plan`` (the data, the dataset, the step counts; refusals leave RUN unclaimed), ``_claim``,
``_start`` (``_learner``, ``_resume``, then DDP, the mixer, the data and the logs), ``_loop`` (``_train_step``,
``_end_epoch``, ``_checkpoint``), ``_finish``.

Example::

    from diffcoremix.train import TrainConfig, train
    result = train("data/train", config=TrainConfig(method="diffcoremix", max_steps=2000), output="runs/dcm",
                   synthetic="out", test="data/test")
    print(result.summary["test"]["top1"])
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils.data import DataLoader

from diffcoremix import faults
from diffcoremix.atomic import (
    atomic_write_bytes,
    atomic_write_text,
    ensure_folder,
    naming_errors,
    write_text_if_changed,
)
from diffcoremix.checkpoints import load_torch_file
from diffcoremix.config import to_plain, write_resolved_config
from diffcoremix.data.checks import ScanConfig
from diffcoremix.data.folder import DatasetListing
from diffcoremix.data.sources import DataConfig, require_classes, usable_sources
from diffcoremix.devices import check_compiler, resolve_device
from diffcoremix.errors import ConfigError, DatasetError
from diffcoremix.manifest.layout import CONFIG_FILE, SETTINGS_FILE, Layout, OutputFolder, check_separate
from diffcoremix.manifest.ownership import check_settings, open_output
from diffcoremix.mix import MixOutput, collate_pairs, make_mixer
from diffcoremix.mix.mixers import Mixer
from diffcoremix.mix.paired import PairedDataset
from diffcoremix.seeds import derive_seed, generator_for, global_generators, kept_state, seeded_init
from diffcoremix.train.config import PAIR_METHODS, TrainConfig
from diffcoremix.train.data import (
    EpochDistributedSampler,
    EvalDataset,
    check_synthetic_classes,
    paired_dataset,
    sample_keys,
    split_validation,
)
from diffcoremix.train.methods import ALIASES
from diffcoremix.train.models import check_model_name, create_model
from diffcoremix.train.run import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SAMPLES_FILE,
    SUMMARY_FILE,
    TRAIN_FILES,
    read_summary,
)
from diffcoremix.train.transforms import eval_transform, train_transform

logger = logging.getLogger(__name__)

SETTINGS_VERSION = 1
NOT_WEIGHTS = ("device", "workers", "checkpoint_every", "log_every", "allow_duplicates")
"""Options that do not change the weights: left out of ``settings.json``, so a resume may change them
(``allow_duplicates`` decides whether a run starts; the images it reads are in the settings' data digest)."""


@dataclass(frozen=True)
class TrainResult:
    """A finished run."""

    run: Path
    summary: dict[str, Any]
    """``RUN/summary.json`` (see :mod:`diffcoremix.train.run`)."""


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str) -> _Dist:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1): nccl on CUDA, gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _barrier(d: _Dist) -> None:
    if d.world > 1:
        dist.barrier()


def _broadcast(value: Any, d: _Dist) -> Any:
    """Rank 0's ``value`` on every rank (an error raised on rank 0 travels as a value, re-raised everywhere)."""
    if d.world <= 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _listing_digest(listing: DatasetListing) -> str:
    lines = [f"{item.relpath}\t{item.label}" for item in listing.items]
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def _settings(config: TrainConfig, facts: dict[str, Any]) -> dict[str, Any]:
    options = {k: v for k, v in to_plain(config).items() if k not in NOT_WEIGHTS}
    return {"version": SETTINGS_VERSION, "train": options, **facts}


def _upgrade_settings(old: dict[str, Any]) -> dict[str, Any]:
    """An earlier version's ``settings.json`` in today's words: methods renamed since (``synthetic-add`` is ``fc``)
    are the same runs, so such a run resumes."""
    options = old.get("train")
    if not isinstance(options, dict) or options.get("method") not in ALIASES:
        return old
    return {**old, "train": {**options, "method": ALIASES[options["method"]]}}


def _lr_lambda(total: int, warmup: int) -> Any:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.opt == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0
    )


def _loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets, label_smoothing=smoothing)
    soft = targets * (1 - smoothing) + smoothing / targets.shape[1]
    return torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: DataLoader[Any], device: str, num_classes: int) -> dict[str, Any]:
    """Top-1, top-5 (top-k with k = min(5, classes)) and mean loss of ``model`` over ``loader``."""
    model.eval()
    k = min(5, num_classes)
    correct1 = correct5 = n = 0
    loss = 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images).float()
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        top = logits.topk(k, dim=1).indices
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(dim=1).sum())
        n += len(labels)
    model.train()
    if n == 0:
        return {"top1": None, "top5": None, "loss": None, "n": 0}
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss / n, "n": n}


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _truncate_lines(path: Path, step: int) -> None:
    """Keep only the lines of a JSONL log written up to ``step`` (a resumed run redoes the rest)."""
    if not path.exists():
        return
    kept = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue  # a torn last line
        if isinstance(line, dict) and int(line.get("step", 0)) <= step:
            kept.append(text)
    atomic_write_text(path, "".join(t + "\n" for t in kept))


class _Appender:
    """Appends JSON lines, flushed after each (rank 0 only; the others hold a closed one)."""

    def __init__(self, path: Path | None) -> None:
        self.handle = path.open("a", encoding="utf-8") if path is not None else None

    def write(self, line: dict[str, Any]) -> None:
        if self.handle is not None:
            with naming_errors(self.handle.name):
                faults.append_point(self.handle, json.dumps(line, ensure_ascii=False) + "\n", Path(self.handle.name))
                self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", disable=not enabled, dynamic_ncols=True)


@dataclass
class _Prepared:
    listing: DatasetListing
    val: DatasetListing | None
    test: DatasetListing | None
    synthetic: Path | None
    synthetic_count: int
    skipped: int


def _prepare(
    data: Path,
    config: TrainConfig,
    data_config: DataConfig,
    val: Path | None,
    test: Path | None,
    synthetic: Path | None,
    progress: bool,
) -> _Prepared:
    if not data.is_dir():
        raise DatasetError(f"dataset {data} does not exist or is not a folder")
    # Every image that decodes is trained on (usable_sources names the others in one warning line); generation's
    # minimum size does not apply: training resizes. A file that links make an image of two classes is refused
    # unless allow_duplicates: it would be read under two labels.
    read = functools.partial(usable_sources, progress=progress, scan=ScanConfig(min_side=1),
                             allow_duplicates=config.allow_duplicates)  # fmt: skip
    sources = read(data, data_config)
    listing = sources.listing
    require_classes(listing)
    if val is not None and config.val_split:
        raise ConfigError("val_split", config.val_split, "0 when --val is given (one validation set at a time)")
    val_listing = None
    if val is not None:
        val_listing = read(val, what="--val").listing
    elif config.val_split:
        listing, val_listing = split_validation(listing, config.val_split, config.seed)
    test_listing = None
    if test is not None:
        test_listing = read(test, what="--test").listing
    if config.needs_synthetic and synthetic is None:
        real = ", or --partners real" if config.method in PAIR_METHODS else ""
        raise ConfigError("method", config.method, f"--synthetic OUT (a filtered generation run){real}")
    count = 0
    if synthetic is not None and config.needs_synthetic:
        count = check_synthetic_classes(listing, synthetic)
        if count == 0:
            logger.warning("%s holds no accepted generated image: %s trains without partners", synthetic, config.method)
    elif synthetic is not None:
        logger.warning("--synthetic is not used by method %s (partners: %s)", config.method, config.partners)
        synthetic = None
    return _Prepared(listing, val_listing, test_listing, synthetic, count, len(sources.skipped))


def training_device(config: TrainConfig) -> str:
    """The device that ``config`` trains on (``auto`` resolved), checked before any work: a device this machine
    lacks, or ``torchcompile`` where torch.compile cannot build its kernels, is refused here rather than with an
    inductor traceback at the first step (``train`` and, before its first run, ``compare``).

    Raises:
        DeviceError: the device is not on this machine.
        ToolchainError: ``torchcompile`` without a compiler.
    """
    device = resolve_device(config.device)
    if config.torchcompile:
        check_compiler(device, "torchcompile")
    return device


def train(
    data: str | Path,
    *,
    config: TrainConfig | None = None,
    output: str | Path,
    val: str | Path | None = None,
    test: str | Path | None = None,
    synthetic: str | Path | None = None,
    data_config: DataConfig | None = None,
    overwrite: bool = False,
    progress: bool = False,
    log_samples: bool = False,
) -> TrainResult:
    """Train a classifier on DATA with ``config``'s method and recipe into the run folder ``output``.

    Resumable: a rerun with the same settings continues from the last checkpoint (or returns at once when the run
    has finished) to the weights of an uninterrupted run. Under ``torchrun`` every process calls this; rank 0
    alone writes. torch's global generators, which the run seeds, are left as the caller had them.

    Args:
        data: the training set (class folders).
        config: model, method and recipe (default: :class:`TrainConfig`'s defaults).
        output: the run folder (see :mod:`diffcoremix.train.run` for its files).
        val: a validation set (class folders) evaluated after every epoch; or ``config.val_split``.
        test: a test set evaluated once at the end.
        synthetic: a filtered generation run (the partners, extra samples or samples of the methods that use it).
        data_config: which classes and how many images of each to use.
        overwrite: delete the earlier run's files in ``output`` first.
        progress: show a progress bar.
        log_samples: write ``samples.jsonl``: the images each process trained on, per step.

    Raises:
        DatasetError, ConfigError, OutputFolderError, UnknownNameError, ModelLoadError: bad input (one line).
    """
    config = config or TrainConfig()
    data_config = data_config or DataConfig()
    data, out = Path(data), Path(output)
    device = training_device(config)
    d = _init_distributed(device)
    if d.world > 1 and device.startswith("cuda"):
        device = f"cuda:{d.local_rank}"
        torch.cuda.set_device(d.local_rank)
    if config.batch_size % d.world:
        raise ConfigError("batch_size", config.batch_size, f"a multiple of the {d.world} processes")
    # The run seeds torch's global generators (each step's forward pass draws from them): the caller's are kept.
    with kept_state(global_generators(device)), _run_folder(out, data, overwrite, d, (val, test)) as folder:
        run = _RunInputs(folder=folder, data=data, config=config, data_config=data_config, val=_optional_path(val),
                         test=_optional_path(test), synthetic=_optional_path(synthetic), device=device, dist=d,
                         progress=progress and d.main, log_samples=log_samples)  # fmt: skip
        return _train_in(run)


@dataclass(frozen=True)
class _RunInputs:
    """What ``train`` was asked for, resolved once: the paths, the device, this process's place, the options."""

    folder: OutputFolder
    data: Path
    config: TrainConfig
    data_config: DataConfig
    val: Path | None
    test: Path | None
    synthetic: Path | None
    device: str
    dist: _Dist
    progress: bool
    """A progress bar (rank 0 only)."""
    log_samples: bool


@dataclass(frozen=True)
class _Plan:
    """The data and the step counts: everything checked before RUN is claimed."""

    prepared: _Prepared
    classes: list[str]
    dataset: PairedDataset
    eval_tf: Any
    local_batch: int
    """This process's share of a batch."""
    steps_per_epoch: int
    total: int
    real_epoch: int
    """The steps of an epoch of the real images (fc's epochs are longer, fr's may be shorter): warm-up is counted in
    these."""
    settings: dict[str, Any]


@dataclass(frozen=True)
class _Learner:
    """The model and what updates it: what a checkpoint holds, with the run's position."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype


@dataclass
class _Position:
    """Where the run is: the steps done, and the epoch so far (for its epoch line; saved in each checkpoint)."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    correct: int = 0
    seen: int = 0

    def running(self) -> dict[str, Any]:
        """The epoch so far, as a checkpoint stores it."""
        return {"losses": self.losses, "correct": self.correct, "seen": self.seen}


@dataclass(frozen=True)
class _Step:
    """What one step did (its loss averaged, its counts summed over the processes) and how long its parts took."""

    loss: float
    correct: int
    seen: int
    lr: float
    timing: dict[str, float]
    """``data_s``, ``mix_s``, ``compute_s``."""
    step_s: float


@dataclass
class _RunState:
    """What the loop trains with and carries from step to step (built once, after the resume)."""

    learner: _Learner
    net: nn.Module
    """The model as the step calls it: wrapped in DDP over several processes, compiled with ``torchcompile``."""
    mixer: Mixer
    sampler: EpochDistributedSampler
    val_loader: DataLoader[Any] | None
    metrics: _Appender
    samples: _Appender
    forward_rng: list[torch.Generator]
    position: _Position
    step_times: dict[str, list[float]] = field(
        default_factory=lambda: {"step_s": [], "data_s": [], "mix_s": [], "compute_s": []}
    )

    def count(self, done: _Step) -> None:
        """Add a step to the position, the epoch so far and the timings."""
        self.position.losses.append(done.loss)
        self.position.correct += done.correct
        self.position.seen += done.seen
        self.position.step += 1
        for key, value in done.timing.items():
            self.step_times[key].append(value)
        self.step_times["step_s"].append(done.step_s)


def _optional_path(path: str | Path | None) -> Path | None:
    return Path(path) if path is not None else None


@contextlib.contextmanager
def _run_folder(
    out: Path, data: Path, overwrite: bool, d: _Dist, others: tuple[str | Path | None, ...]
) -> Iterator[OutputFolder]:
    """RUN, opened and locked by rank 0, which alone writes (the other processes only name it); ``others`` (--val,
    --test) must not overlap it."""
    if not d.main:
        yield OutputFolder(out)
        return
    with open_output(out, data=data, overwrite=overwrite, fixed=TRAIN_FILES) as folder:
        for path in others:
            if path is not None:
                check_separate(path, out)
        yield folder


def _train_in(run: _RunInputs) -> TrainResult:
    """Plan, claim RUN, resume, train, finish: what every process runs inside its (locked, on rank 0) RUN."""
    config, d, out = run.config, run.dist, run.folder.path
    plan = _plan(run)
    # The model first: weights that cannot be had (offline --pretrained, a wrong --init) leave RUN unclaimed.
    with seeded_init(config.seed):
        model = create_model(config.model, len(plan.classes), pretrained=config.pretrained, init=config.init)
    _claim(run, plan.settings)
    if (out / SUMMARY_FILE).exists() and (out / MODEL_FILE).exists():
        logger.info("%s has finished already", out)
        return TrainResult(out, read_summary(out))
    state = _start(run, plan, model)
    started = time.perf_counter()
    _loop(run, plan, state)
    train_s = time.perf_counter() - started
    summary = _finish(run, plan, state, train_s) if d.main else None
    _barrier(d)
    if d.world > 1:
        summary = read_summary(out)
    assert summary is not None
    return TrainResult(out, summary)


def _plan(run: _RunInputs) -> _Plan:
    """The data read and checked, the dataset, the step counts and the settings: a refusal here leaves RUN unclaimed.

    Raises:
        DatasetError: fewer images than one batch; see also :func:`_prepare`.
        ConfigError: ``max_steps`` shorter than one epoch.
        UnknownNameError: no such model.
    """
    config, d = run.config, run.dist
    check_model_name(config.model)
    prepared = _prepare(run.data, config, run.data_config, run.val, run.test, run.synthetic, run.progress)
    listing = prepared.listing
    classes = list(listing.classes)
    transform = train_transform(config.transform, config.img_size, config.mean, config.std)
    exclude = {item.relpath for item in prepared.val.items} if prepared.val is not None and run.val is None else set()
    dataset = paired_dataset(listing, config, prepared.synthetic, transform, exclude)
    local_batch = config.batch_size // d.world
    steps_per_epoch = (len(dataset) // d.world) // local_batch
    if steps_per_epoch == 0:
        raise DatasetError(
            f"{run.data} has {len(dataset)} training image(s), fewer than one batch of {config.batch_size}: "
            "lower --batch-size"
        )
    total = config.max_steps or config.epochs * steps_per_epoch
    real_epoch = (len(listing.items) // d.world) // local_batch  # the warm-up's unit; fc's epochs are longer
    epoch = min(real_epoch, steps_per_epoch)  # fr's epoch is its generated images', which may be fewer
    if total < epoch:
        raise ConfigError("max_steps", total, f">= one epoch ({epoch} steps of {config.batch_size} images) or null")
    facts = {
        "data": _listing_digest(listing),
        "val": _listing_digest(prepared.val) if prepared.val is not None else None,
        "synthetic": str(prepared.synthetic.resolve()) if prepared.synthetic else None,
        "synthetic_accepted": prepared.synthetic_count,
        "world_size": d.world,
        "steps": total,
    }
    settings = _settings(config, facts)
    eval_tf = eval_transform(config.transform, config.img_size, config.mean, config.std)
    for listing_, what in ((prepared.val, "--val"), (prepared.test, "--test")):
        if listing_ is not None:  # a class the training data lacks is refused now, not after training
            EvalDataset(listing_, classes, eval_tf, what)
    return _Plan(prepared=prepared, classes=classes, dataset=dataset, eval_tf=eval_tf, local_batch=local_batch,
                 steps_per_epoch=steps_per_epoch, total=total, real_epoch=real_epoch, settings=settings)  # fmt: skip


def _claim(run: _RunInputs, settings: dict[str, Any]) -> None:
    """Rank 0 records the run in RUN and refuses one of other settings; every process waits for it."""
    folder, data, out = run.folder, run.data, run.folder.path
    if run.dist.main:
        folder.write_run_record(data, command="train")
        check_settings(folder, settings, "a training run", upgrade=_upgrade_settings)
        write_resolved_config(out / CONFIG_FILE, {"train": run.config, "data": run.data_config}, data=data)
        Layout(out, damaged="reset").declare({*TRAIN_FILES, SETTINGS_FILE, CONFIG_FILE})
    _barrier(run.dist)


def _start(run: _RunInputs, plan: _Plan, model: nn.Module) -> _RunState:
    """The run's state, in the order that matters: the optimizer, the checkpoint loaded into it (a resume), then
    DDP over the resumed weights (rank 0's are broadcast), the mixer, the data, and the logs, opened after the resume
    cut them to its step."""
    config, device, d, out = run.config, run.device, run.dist, run.folder.path
    classes, dataset = plan.classes, plan.dataset
    learner = _learner(run, plan, model)
    position = _resume(run, plan, learner)
    net: nn.Module = learner.model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(
            learner.model, device_ids=[d.local_rank] if device.startswith("cuda") else None
        )
    if config.torchcompile:
        net = torch.compile(net)  # type: ignore[assignment]

    mixer = _mixer(config, len(classes), soft=dataset.has_soft_labels)
    if dataset.has_soft_labels:
        logger.info("%d generated image(s) of %s have a soft label: %s trains on (B, %d) targets",
                    len(dataset.soft), plan.prepared.synthetic, config.method, len(classes))  # fmt: skip
    sampler = EpochDistributedSampler(len(dataset), d.world, d.rank, config.seed)
    val = plan.prepared.val
    val_loader = _eval_loader(val, classes, plan.eval_tf, config, "--val") if val is not None else None
    metrics = _Appender(out / METRICS_FILE if d.main else None)
    samples = _Appender(out / SAMPLES_FILE if (d.main and run.log_samples) else None)
    return _RunState(learner=learner, net=net, mixer=mixer, sampler=sampler, val_loader=val_loader, metrics=metrics,
                     samples=samples, forward_rng=global_generators(device), position=position)  # fmt: skip


def _learner(run: _RunInputs, plan: _Plan, model: nn.Module) -> _Learner:
    """The model on the device, its optimizer, the warm-up and cosine schedule, and the mixed precision."""
    config, device = run.config, run.device
    model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model, config)
    warmup = round(config.warmup_epochs * plan.real_epoch)  # in steps of the real set's epoch, equal for every method
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(plan.total, warmup))
    use_amp = config.amp and device.startswith("cuda")
    if config.amp and not use_amp:
        logger.warning("--amp works on CUDA only: training in float32 on %s", device)
    amp_dtype = torch.bfloat16 if config.amp_dtype == "bfloat16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    return _Learner(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, use_amp=use_amp,
                    amp_dtype=amp_dtype)  # fmt: skip


def _resume(run: _RunInputs, plan: _Plan, learner: _Learner) -> _Position:
    """The position of RUN's checkpoint, its state loaded into ``learner`` (every process reads it), or step 0; the
    logs' lines after it are dropped (the resumed run writes them again)."""
    out = run.folder.path
    position = _Position()
    checkpoint_path = out / CHECKPOINT_FILE
    if checkpoint_path.exists():
        state = load_torch_file(checkpoint_path, "training checkpoint")
        learner.model.load_state_dict(state["model"])
        learner.optimizer.load_state_dict(state["optimizer"])
        learner.scheduler.load_state_dict(state["scheduler"])
        learner.scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        running = state["epoch_running"]
        position = _Position(step, list(running["losses"]), int(running["correct"]), int(running["seen"]))
        logger.info("%s: resuming at step %d of %d", out, position.step, plan.total)
    if run.dist.main:
        _truncate_lines(out / METRICS_FILE, position.step)
        _truncate_lines(out / SAMPLES_FILE, position.step)
    _barrier(run.dist)
    return position


def _loop(run: _RunInputs, plan: _Plan, state: _RunState) -> None:
    """Train to ``plan.total`` steps: each takes the next batch and trains on it, then logs it; an epoch's last
    logs the epoch (and validates); a checkpoint follows every ``checkpoint_every`` steps (or epoch) and the last."""
    config, d, position = run.config, run.dist, state.position
    bar = _progress_bar(plan.total, position.step, run.progress)
    batches: Iterator[Any] | None = None
    chunks: Iterator[list[int]] = iter(())
    try:
        state.learner.model.train()
        while position.step < plan.total:
            epoch, at = divmod(position.step, plan.steps_per_epoch)
            if batches is None or at == 0:
                batches, chunks = _epoch_batches(run, plan, state.sampler, epoch, at)
            done = _train_step(run, state, batches)
            state.count(done)
            step = position.step
            if run.log_samples:
                keys = _gather(sample_keys(plan.dataset, next(chunks)), d)
                state.samples.write({"step": step, "epoch": epoch, "ranks": keys})
            if step % config.log_every == 0 or step == plan.total:
                state.metrics.write({
                    "kind": "step", "step": step, "epoch": epoch, "loss": done.loss, "acc": done.correct / done.seen,
                    "lr": done.lr, "images_per_s": config.batch_size / max(done.step_s, 1e-9), **done.timing,
                })  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{done.loss:.3f}", epoch=epoch)
            end_of_epoch = step % plan.steps_per_epoch == 0
            if end_of_epoch or step == plan.total:
                _end_epoch(run, plan, state, epoch)
            every = config.checkpoint_every
            if (every and step % every == 0) or (not every and end_of_epoch) or step == plan.total:
                _checkpoint(run.folder.path / CHECKPOINT_FILE, state.learner, position, d)
    finally:
        bar.close()
        state.metrics.close()
        state.samples.close()


def _epoch_batches(
    run: _RunInputs, plan: _Plan, sampler: EpochDistributedSampler, epoch: int, at: int
) -> tuple[Iterator[Any], Iterator[list[int]]]:
    """This process's batches of ``epoch`` from its step ``at`` on, and (``log_samples``) the dataset indices of each.

    The loader has its own generator: an iterator's worker base seed is then a function of (seed, epoch, rank), and
    starting one (every epoch, and mid-epoch on a resume) draws nothing from the global generator.
    """
    config, rank, size = run.config, run.dist.rank, plan.local_batch
    sampler.set_position(epoch, at * size)
    loader = DataLoader(plan.dataset, batch_size=size, sampler=sampler, num_workers=config.workers,
                        collate_fn=collate_pairs, drop_last=True,
                        generator=generator_for(config.seed, "loader", epoch, rank))  # fmt: skip
    batches = iter(loader)
    order = [i for _, i in list(sampler)] if run.log_samples else []
    return batches, (order[i : i + size] for i in range(0, len(order), size))


def _train_step(run: _RunInputs, state: _RunState, batches: Iterator[Any]) -> _Step:
    """One optimizer step on the next batch: to the device, mixed, a forward pass with seeded dropout, backward, the
    optimizer, schedule and scaler stepped; timed (on CUDA, synchronised between the parts)."""
    config, device, d, learner, step = run.config, run.device, run.dist, state.learner, state.position.step
    t0 = time.perf_counter()
    batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
    if config.channels_last:
        for key in ("x", "partner"):
            batch[key] = batch[key].contiguous(memory_format=torch.channels_last)
    t1 = _sync(device)
    mixed: MixOutput = state.mixer(**batch, generator=generator_for(config.seed, "mix", step, d.rank))
    images, targets = mixed.images, mixed.targets.to(device)
    t2 = _sync(device)
    # Dropout and drop-path draw from torch's global generators: seeded from the step, their draws do not depend on
    # what drew from them before (a loader's start, an evaluation, a resume's own start-up).
    for generator in state.forward_rng:
        generator.manual_seed(derive_seed(config.seed, "forward", step, d.rank))
    with torch.autocast(device.split(":")[0], dtype=learner.amp_dtype, enabled=learner.use_amp):
        logits = state.net(images)
        loss = _loss(logits.float(), targets, config.smoothing)
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
    learner.scaler.step(learner.optimizer)
    learner.scaler.update()
    learner.scheduler.step()
    t3 = _sync(device)
    lr = learner.optimizer.param_groups[0]["lr"]
    hard = targets if targets.ndim == 1 else targets.argmax(dim=1)
    correct = int((logits.argmax(dim=1) == hard).sum())
    loss_value, correct, seen = _reduce(float(loss.detach()), correct, len(hard), d)
    timing = {"data_s": t1 - t0, "mix_s": t2 - t1, "compute_s": t3 - t2}
    return _Step(loss=loss_value, correct=correct, seen=seen, lr=lr, timing=timing, step_s=t3 - t0)


def _end_epoch(run: _RunInputs, plan: _Plan, state: _RunState, epoch: int) -> None:
    """The epoch's line (its mean loss and accuracy; rank 0 validates), and a fresh epoch so far."""
    position = state.position
    line = {"kind": "epoch", "step": position.step, "epoch": epoch, "train_loss": statistics.fmean(position.losses),
            "train_acc": position.correct / max(position.seen, 1)}  # fmt: skip
    if state.val_loader is not None and run.dist.main:
        figures = evaluate_loader(state.learner.model, state.val_loader, run.device, len(plan.classes))
        line.update({f"val_{k}": v for k, v in figures.items()})
    state.metrics.write(line)
    position.losses, position.correct, position.seen = [], 0, 0


def _sync(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def _reduce(loss: float, correct: int, seen: int, d: _Dist) -> tuple[float, int, int]:
    """The loss averaged and the counts summed over processes (for the logs)."""
    if d.world <= 1:
        return loss, correct, seen
    values = torch.tensor([loss, float(correct), float(seen)], dtype=torch.float64)
    dist.all_reduce(values)
    return float(values[0]) / d.world, int(values[1]), int(values[2])


def _gather(keys: list[str], d: _Dist) -> list[list[str]]:
    if d.world <= 1:
        return [keys]
    gathered: list[Any] = [None] * d.world
    dist.all_gather_object(gathered, keys)
    return gathered


def _mixer(config: TrainConfig, num_classes: int, *, soft: bool = False) -> Mixer:
    """The method's mixer, as its table entry says: its :data:`~diffcoremix.mix.MIXERS` name and the recipe options
    it takes (no mixer: a pass-through).

    With ``soft`` (the samples carry ``(K,)`` targets: some generated image has a soft label, or the method swaps
    labels), the pair mixers weigh the targets by the realised real share, ``lam * onehot(y) + (1 - lam) *
    partner_y``, so a partner's soft label is what it contributes, and a replaced sample takes its partner's; without,
    the targets are the real labels, as the paper trains.
    """
    method = config.entry
    if method.mixer is None:
        return make_mixer("substitute", p=0.0)  # never substitutes: the batch (its targets too) passes through
    kwargs: dict[str, Any] = {arg: getattr(config, name) for arg, name in method.mixer_options.items()}
    if method.label == "batch":
        kwargs["num_classes"] = num_classes
    elif soft and method.label in ("real", "partner"):
        kwargs.update(soft_targets=True, num_classes=num_classes)
    return make_mixer(method.mixer, **kwargs)


def _eval_loader(
    listing: DatasetListing, classes: list[str], transform: Any, config: TrainConfig, what: str
) -> DataLoader[Any]:
    dataset = EvalDataset(listing, classes, transform, what)
    return DataLoader(dataset, batch_size=max(config.batch_size, 256), num_workers=config.workers)


def _checkpoint(path: Path, learner: _Learner, position: _Position, d: _Dist) -> None:
    if d.main:
        ensure_folder(path.parent)
        state = {
            "model": learner.model.state_dict(),
            "optimizer": learner.optimizer.state_dict(),
            "scheduler": learner.scheduler.state_dict(),
            "scaler": learner.scaler.state_dict(),
            "step": position.step,
            "epoch_running": position.running(),
        }
        _atomic_torch_save(state, path)
    _barrier(d)


def _median(values: list[float], skip: int = 1) -> float | None:
    """The median after the first ``skip`` values (start-up: first batch, allocator warm-up)."""
    tail = values[skip:] or values
    return statistics.median(tail) if tail else None


def _info(config: TrainConfig, classes: list[str]) -> dict[str, Any]:
    """What ``model.pt`` says about its model (and ``summary.json`` repeats): enough to load it and feed it."""
    return {
        "model": config.model,
        "classes": classes,
        "img_size": config.img_size,
        "mean": list(config.mean),
        "std": list(config.std),
        "transform": config.transform,
        "method": config.method,
        "usage": config.entry.usage,
        "partners": _partners(config),
        "seed": config.seed,
    }


def _partners(config: TrainConfig) -> str | None:
    """Where the run's partners came from: --partners for the own-counterpart methods, else the table's source."""
    if not config.uses_partners:
        return None
    return config.partners if config.entry.partners == "own" else config.entry.partners


def _finish(run: _RunInputs, plan: _Plan, state: _RunState, train_s: float) -> dict[str, Any]:
    """Rank 0's last part: the final evaluations, ``model.pt`` and ``summary.json``."""
    out, model, config, device = run.folder.path, state.learner.model, run.config, run.device
    prepared, classes, eval_tf, step_times = plan.prepared, plan.classes, plan.eval_tf, state.step_times
    info = _info(config, classes)
    results: dict[str, Any] = {}
    for name, listing, what in (("val", prepared.val, "--val"), ("test", prepared.test, "--test")):
        if listing is None:
            results[name] = None
            continue
        loader = _eval_loader(listing, classes, eval_tf, config, what)
        results[name] = evaluate_loader(model, loader, device, len(classes))
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic_torch_save({"info": info, "state_dict": weights}, out / MODEL_FILE)
    step_s = _median(step_times["step_s"])
    summary = {
        **info,
        "steps": plan.total,
        "epochs": plan.total / plan.steps_per_epoch,
        "steps_per_epoch": plan.steps_per_epoch,
        "batch_size": config.batch_size,
        "train_samples": len(plan.dataset),
        "synthetic_accepted": prepared.synthetic_count,
        "skipped_images": prepared.skipped,
        "val": results["val"],
        "test": results["test"],
        "time": {
            "step_s": step_s,
            **{key: _median(step_times[key]) for key in ("data_s", "mix_s", "compute_s")},
            "images_per_s": config.batch_size / step_s if step_s else None,
            "train_s": train_s,
            "steps_timed": len(step_times["step_s"]),
        },
        "config": asdict(replace(config)),
    }
    plain: dict[str, Any] = to_plain(summary)
    write_text_if_changed(out / SUMMARY_FILE, json.dumps(plain, indent=2, ensure_ascii=False) + "\n")
    return plain

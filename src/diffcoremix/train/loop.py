"""Training a classifier with a method and a recipe, resumably, on one process or many (``torchrun``).

Every random choice is a function of (seed, step) or (seed, epoch, image): the data order (``seed + epoch``), the
transforms and partners (per image and epoch), the mixing (per step and rank), and the forward pass's own draws
(dropout, drop-path), from torch's global generators seeded before each step from (seed, step, rank). So a run
killed and resumed from its last checkpoint, mid-epoch or not, ends with the same weights and the same metrics as an
uninterrupted one (on the CPU; CUDA kernels may not be deterministic), and a call leaves the caller's random state
as it found it.

Example::

    from diffcoremix.train import TrainConfig, train
    result = train("data/train", config=TrainConfig(method="diffcoremix", max_steps=2000), output="runs/dcm",
                   synthetic="out", test="data/test")
    print(result.summary["test"]["top1"])
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
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
from diffcoremix.data.folder import DatasetListing
from diffcoremix.data.scan import ScanConfig
from diffcoremix.data.sources import DataConfig, require_classes, usable_sources
from diffcoremix.devices import check_compiler, resolve_device
from diffcoremix.errors import ConfigError, DatasetError
from diffcoremix.manifest.layout import CONFIG_FILE, SETTINGS_FILE, Layout, OutputFolder
from diffcoremix.manifest.ownership import check_settings, open_output
from diffcoremix.mix import MixOutput, collate_pairs, make_mixer
from diffcoremix.mix.mixers import Mixer
from diffcoremix.seeds import derive_seed, generator_for, global_generators, kept_state, seeded_init
from diffcoremix.train.config import TrainConfig
from diffcoremix.train.data import (
    EpochDistributedSampler,
    EvalDataset,
    check_synthetic_classes,
    paired_dataset,
    sample_keys,
    split_validation,
)
from diffcoremix.train.methods import ALIASES
from diffcoremix.train.models import create_model
from diffcoremix.train.run import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SAMPLES_FILE,
    SUMMARY_FILE,
    TRAIN_FILES,
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
        raise ConfigError("method", config.method, "--synthetic OUT (a filtered generation run), or --partners real")
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
        synthetic: a filtered generation run (the partners of the pair methods, the extras of synthetic-add).
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
    with kept_state(global_generators(device)):
        if d.main:
            with open_output(out, data=data, overwrite=overwrite, fixed=TRAIN_FILES) as folder:
                for path in (val, test):
                    if path is not None:
                        from diffcoremix.manifest.layout import check_separate

                        check_separate(path, out)
                return _train_in(folder, data, config, data_config, val, test, synthetic, device, d, progress,
                                 log_samples)  # fmt: skip
        return _train_in(OutputFolder(out), data, config, data_config, val, test, synthetic, device, d, False,
                         log_samples)  # fmt: skip


def _train_in(
    folder: OutputFolder,
    data: Path,
    config: TrainConfig,
    data_config: DataConfig,
    val: str | Path | None,
    test: str | Path | None,
    synthetic: str | Path | None,
    device: str,
    d: _Dist,
    progress: bool,
    log_samples: bool,
) -> TrainResult:
    from diffcoremix.train.models import check_model_name

    check_model_name(config.model)
    out = folder.path
    prepared = _prepare(
        data,
        config,
        data_config,
        Path(val) if val is not None else None,
        Path(test) if test is not None else None,
        Path(synthetic) if synthetic is not None else None,
        progress and d.main,
    )
    listing = prepared.listing
    classes = list(listing.classes)
    transform = train_transform(config.transform, config.img_size, config.mean, config.std)
    exclude = {item.relpath for item in prepared.val.items} if prepared.val is not None and val is None else set()
    dataset = paired_dataset(listing, config, prepared.synthetic, transform, exclude)
    local_batch = config.batch_size // d.world
    steps_per_epoch = (len(dataset) // d.world) // local_batch
    if steps_per_epoch == 0:
        raise DatasetError(
            f"{data} has {len(dataset)} training image(s), fewer than one batch of {config.batch_size}: "
            "lower --batch-size"
        )
    total = config.max_steps or config.epochs * steps_per_epoch
    real_epoch = (len(listing.items) // d.world) // local_batch  # synthetic-add's epochs are longer
    if total < real_epoch:
        raise ConfigError(
            "max_steps", total, f">= one epoch ({real_epoch} steps of {config.batch_size} images) or null"
        )
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
    # The model first: weights that cannot be had (offline --pretrained, a wrong --init) leave RUN unclaimed.
    with seeded_init(config.seed):
        model = create_model(config.model, len(classes), pretrained=config.pretrained, init=config.init)
    if d.main:
        folder.write_run_record(data, command="train")
        check_settings(folder, settings, "a training run", upgrade=_upgrade_settings)
        write_resolved_config(out / CONFIG_FILE, {"train": config, "data": data_config}, data=data)
        Layout(out, damaged="reset").declare({*TRAIN_FILES, SETTINGS_FILE, CONFIG_FILE})
    _barrier(d)
    if (out / SUMMARY_FILE).exists() and (out / MODEL_FILE).exists():
        from diffcoremix.train.run import read_summary

        logger.info("%s has finished already", out)
        return TrainResult(out, read_summary(out))

    model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model, config)
    warmup = round(config.warmup_epochs * real_epoch)  # in steps of the real set's epoch, equal for every method
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, warmup))
    use_amp = config.amp and device.startswith("cuda")
    if config.amp and not use_amp:
        logger.warning("--amp works on CUDA only: training in float32 on %s", device)
    amp_dtype = torch.bfloat16 if config.amp_dtype == "bfloat16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    start = 0
    running: dict[str, Any] = {"losses": [], "correct": 0, "seen": 0}  # the epoch so far (for its epoch line)
    checkpoint_path = out / CHECKPOINT_FILE
    if checkpoint_path.exists():
        state = load_torch_file(checkpoint_path, "training checkpoint")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
        running = state["epoch_running"]
        logger.info("%s: resuming at step %d of %d", out, start, total)
    if d.main:
        _truncate_lines(out / METRICS_FILE, start)
        _truncate_lines(out / SAMPLES_FILE, start)
    _barrier(d)

    net: nn.Module = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if device.startswith("cuda") else None
        )
    if config.torchcompile:
        net = torch.compile(net)  # type: ignore[assignment]

    mixer = _mixer(config, len(classes), soft=dataset.has_soft_labels)
    if dataset.has_soft_labels:
        logger.info("%d generated image(s) of %s have a soft label: %s trains on (B, %d) targets",
                    len(dataset.soft), prepared.synthetic, config.method, len(classes))  # fmt: skip
    sampler = EpochDistributedSampler(len(dataset), d.world, d.rank, config.seed)
    val_loader = _eval_loader(prepared.val, classes, eval_tf, config, "--val") if prepared.val is not None else None
    metrics = _Appender(out / METRICS_FILE if d.main else None)
    samples = _Appender(out / SAMPLES_FILE if (d.main and log_samples) else None)
    info = {
        "model": config.model,
        "classes": classes,
        "img_size": config.img_size,
        "mean": list(config.mean),
        "std": list(config.std),
        "transform": config.transform,
        "method": config.method,
        "partners": config.partners if config.uses_partners else None,
        "seed": config.seed,
    }
    step_times: dict[str, list[float]] = {"step_s": [], "data_s": [], "mix_s": [], "compute_s": []}
    epoch_loss: list[float] = list(running["losses"])
    epoch_correct, epoch_seen = int(running["correct"]), int(running["seen"])
    bar = _progress_bar(total, start, progress and d.main)
    started = time.perf_counter()
    batches: Iterator[Any] | None = None
    forward_rng = global_generators(device)
    step = start
    try:
        model.train()
        while step < total:
            epoch, position = divmod(step, steps_per_epoch)
            if batches is None or position == 0:
                sampler.set_position(epoch, position * local_batch)
                # its own generator: an iterator's worker base seed is then a function of (seed, epoch, rank), and
                # starting one (every epoch, and mid-epoch on a resume) draws nothing from the global generator
                loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, num_workers=config.workers,
                                    collate_fn=collate_pairs, drop_last=True,
                                    generator=generator_for(config.seed, "loader", epoch, d.rank))  # fmt: skip
                batches = iter(loader)
                order = [i for _, i in list(sampler)] if log_samples else []
                order_offset = position * local_batch
            t0 = time.perf_counter()
            batch = next(batches)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if config.channels_last:
                for key in ("x", "partner"):
                    batch[key] = batch[key].contiguous(memory_format=torch.channels_last)
            t1 = _sync(device)
            mixed: MixOutput = mixer(**batch, generator=generator_for(config.seed, "mix", step, d.rank))
            images, targets = mixed.images, mixed.targets.to(device)
            t2 = _sync(device)
            # Dropout and drop-path draw from torch's global generators: seeded from the step, their draws do not
            # depend on what drew from them before (a loader's start, an evaluation, a resume's own start-up).
            for generator in forward_rng:
                generator.manual_seed(derive_seed(config.seed, "forward", step, d.rank))
            with torch.autocast(device.split(":")[0], dtype=amp_dtype, enabled=use_amp):
                logits = net(images)
                loss = _loss(logits.float(), targets, config.smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            t3 = _sync(device)
            lr = optimizer.param_groups[0]["lr"]
            hard = targets if targets.ndim == 1 else targets.argmax(dim=1)
            correct = int((logits.argmax(dim=1) == hard).sum())
            loss_value, correct, seen = _reduce(float(loss.detach()), correct, len(hard), d)
            epoch_loss.append(loss_value)
            epoch_correct += correct
            epoch_seen += seen
            step += 1
            timing = {"data_s": t1 - t0, "mix_s": t2 - t1, "compute_s": t3 - t2}
            for key, value in timing.items():
                step_times[key].append(value)
            step_times["step_s"].append(t3 - t0)
            if log_samples:
                mine = order[position * local_batch - order_offset + 0 : (position + 1) * local_batch - order_offset]
                keys = _gather(sample_keys(dataset, mine), d)
                samples.write({"step": step, "epoch": epoch, "ranks": keys})
            if step % config.log_every == 0 or step == total:
                metrics.write({
                    "kind": "step", "step": step, "epoch": epoch, "loss": loss_value, "acc": correct / seen,
                    "lr": lr, "images_per_s": config.batch_size / max(t3 - t0, 1e-9), **timing,
                })  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", epoch=epoch)
            end_of_epoch = step % steps_per_epoch == 0
            if end_of_epoch or step == total:
                line = {"kind": "epoch", "step": step, "epoch": epoch, "train_loss": statistics.fmean(epoch_loss),
                        "train_acc": epoch_correct / max(epoch_seen, 1)}  # fmt: skip
                if val_loader is not None and d.main:
                    figures = evaluate_loader(model, val_loader, device, len(classes))
                    line.update({f"val_{k}": v for k, v in figures.items()})
                metrics.write(line)
                epoch_loss, epoch_correct, epoch_seen = [], 0, 0
            every = config.checkpoint_every
            if (every and step % every == 0) or (not every and end_of_epoch) or step == total:
                running = {"losses": epoch_loss, "correct": epoch_correct, "seen": epoch_seen}
                _checkpoint(checkpoint_path, model, optimizer, scheduler, scaler, step, running, d)
    finally:
        bar.close()
        metrics.close()
        samples.close()
    train_s = time.perf_counter() - started
    summary = None
    if d.main:
        summary = _finish(out, model, info, config, prepared, classes, eval_tf, device, step_times, total,
                          steps_per_epoch, train_s, len(dataset))  # fmt: skip
    _barrier(d)
    if d.world > 1:
        from diffcoremix.train.run import read_summary

        summary = read_summary(out)
    assert summary is not None
    return TrainResult(out, summary)


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


def _checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    step: int,
    running: dict[str, Any],
    d: _Dist,
) -> None:
    if d.main:
        ensure_folder(path.parent)
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "epoch_running": running,
        }
        _atomic_torch_save(state, path)
    _barrier(d)


def _median(values: list[float], skip: int = 1) -> float | None:
    """The median after the first ``skip`` values (start-up: first batch, allocator warm-up)."""
    tail = values[skip:] or values
    return statistics.median(tail) if tail else None


def _finish(
    out: Path,
    model: nn.Module,
    info: dict[str, Any],
    config: TrainConfig,
    prepared: _Prepared,
    classes: list[str],
    eval_tf: Any,
    device: str,
    step_times: dict[str, list[float]],
    total: int,
    steps_per_epoch: int,
    train_s: float,
    train_samples: int,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, listing, what in (("val", prepared.val, "--val"), ("test", prepared.test, "--test")):
        if listing is None:
            results[name] = None
            continue
        loader = _eval_loader(listing, classes, eval_tf, config, what)
        results[name] = evaluate_loader(model, loader, device, len(classes))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic_torch_save({"info": info, "state_dict": state}, out / MODEL_FILE)
    step_s = _median(step_times["step_s"])
    summary = {
        **info,
        "steps": total,
        "epochs": total / steps_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": config.batch_size,
        "train_samples": train_samples,
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

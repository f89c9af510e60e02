"""The data of a training run: the training listing (with a seeded validation split), the paired dataset of the
method, the evaluation sets with labels mapped by class name, and a sampler for one or many processes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler

from diffcoremix.data.folder import DatasetListing, ImageItem, list_images
from diffcoremix.data.images import open_image
from diffcoremix.errors import DatasetError
from diffcoremix.manifest.layout import augment_problem
from diffcoremix.mix import PairedDataset
from diffcoremix.mix.paired import accepted_images, soft_label_targets
from diffcoremix.seeds import derive_seed
from diffcoremix.train.config import TrainConfig

logger = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "synthetic/"
"""Relpath prefix of generated images that are samples (``fc``, ``fr``, ``diffusemix``)."""


def split_validation(listing: DatasetListing, share: float, seed: int) -> tuple[DatasetListing, DatasetListing]:
    """A stratified, seeded split: about ``share`` of each class's images (at least one, when the class has two or
    more) go to validation, chosen by a hash of (seed, image) so the split does not depend on listing order."""
    train_items: list[ImageItem] = []
    val_items: list[ImageItem] = []
    for items in listing.by_class().values():
        ranked = sorted(items, key=lambda item: derive_seed(seed, "val-split", item.relpath))
        n_val = min(len(items) - 1, max(1, round(share * len(items)))) if len(items) >= 2 else 0
        held = {item.relpath for item in ranked[:n_val]}
        for item in items:
            (val_items if item.relpath in held else train_items).append(item)
    return (
        dataclasses.replace(listing, items=tuple(train_items)),
        dataclasses.replace(listing, items=tuple(val_items)),
    )


def with_synthetic_items(
    listing: DatasetListing, synthetic: Path, exclude: set[str], *, real: bool = True
) -> tuple[DatasetListing, dict[Path, torch.Tensor], dict[Path, Path]]:
    """The listing followed by every accepted generated image as an extra sample of its class (``fc``), or those
    alone (``real=False``: ``fr``); the ``(K,)`` soft targets of those that have a soft label (by file; empty when
    none has); and each generated file's real source file (where its source is in the listing).

    Raises:
        DatasetError: a generated class (or a class of a soft label) is not a class of DATA.
    """
    index = {cls: label for label, cls in enumerate(listing.classes)}
    by_relpath = {item.relpath: item.path for item in listing.items}
    extra = []
    sources: dict[Path, Path] = {}
    rows = [row for row in accepted_images(synthetic) if row["source"] not in exclude]
    for row in rows:
        label = index.get(row["class_folder"])
        if label is None:
            raise DatasetError(f"class {row['class_folder']!r} of --synthetic {synthetic} is not a class of DATA")
        path = synthetic / row["output"]
        extra.append(ImageItem(path, SYNTHETIC_PREFIX + row["output"], label, row["class_folder"]))
        if row["source"] in by_relpath:
            sources[path] = by_relpath[row["source"]]
    soft = soft_label_targets(rows, listing.classes, synthetic)
    items = (listing.items if real else ()) + tuple(extra)
    return dataclasses.replace(listing, items=items), soft, sources


def check_synthetic_classes(listing: DatasetListing, synthetic: Path) -> int:
    """How many accepted generated images ``synthetic`` holds, after checking that their classes are DATA's.

    Raises:
        DatasetError: a class of ``synthetic`` is not a class of DATA, the run has not been filtered, or a soft label
            is malformed or names a class DATA lacks.
    """
    rows = accepted_images(synthetic)
    foreign = sorted({r["class_folder"] for r in rows} - set(listing.classes))
    if foreign:
        raise DatasetError(
            f"--synthetic {synthetic} holds classes that DATA does not have: {', '.join(map(repr, foreign[:5]))} "
            "(was it generated from another dataset?)"
        )
    soft_label_targets(rows, listing.classes, synthetic)  # checked now, before the run claims its folder
    problem = augment_problem(synthetic)
    if problem is not None:
        logger.warning("--synthetic %s: %s; training uses the %d images accepted there", synthetic, problem, len(rows))
    return len(rows)


def paired_dataset(
    listing: DatasetListing,
    config: TrainConfig,
    synthetic: Path | None,
    transform: Callable[[Any], Any],
    exclude: set[str],
) -> PairedDataset:
    """The method's training data, as its table entry says (:mod:`diffcoremix.train.methods`): which images are
    the samples (real, real and generated, generated alone) and where each one's partner comes from.

    Generated images with a soft label in the manifest train on it: an extra sample's target is its soft label, a
    partner's is mixed by the realised share (``dataset.has_soft_labels``: build the mixer with soft targets)."""
    method = config.entry
    kwargs: dict[str, Any] = {"transform": transform, "seed": config.seed}
    if method.samples != "real":
        assert synthetic is not None
        items, soft, sources = with_synthetic_items(listing, synthetic, exclude, real=method.samples != "synthetic")
        if not items.items:
            raise DatasetError(f"--synthetic {synthetic} holds no accepted generated image: {config.method} trains "
                               "on them alone")  # fmt: skip
        if method.partners == "source":
            unpaired = len(items.items) - len(listing.items) - len(sources)
            if unpaired:  # its source is not among the images trained on (skipped, or outside --max-per-class)
                logger.warning("%d generated image(s) of %s have no source among DATA's training images: %s adds them "
                               "as they are", unpaired, synthetic, config.method)  # fmt: skip
            return PairedDataset(items, mode="source", soft_targets=soft, sources=sources, **kwargs)
        return PairedDataset(items, mode="none", soft_targets=soft, **kwargs)
    if not config.uses_partners:
        return PairedDataset(listing, mode="none", **kwargs)
    if method.partners == "any":
        return PairedDataset(listing, synthetic, mode="global", exclude_sources=exclude, **kwargs)
    if config.partners == "real":
        return PairedDataset(listing, mode="real", **kwargs)
    return PairedDataset(listing, synthetic, mode="counterpart", exclude_sources=exclude, **kwargs)


class EvalDataset(Dataset[tuple[Any, int]]):
    """An evaluation set whose labels are the training run's, matched by class folder name.

    Raises:
        DatasetError: DATA has a class that the run was not trained on.
    """

    def __init__(
        self, data: str | Path | DatasetListing, classes: Sequence[str], transform: Callable[[Any], Any], what: str
    ) -> None:
        listing = data if isinstance(data, DatasetListing) else list_images(data)
        index = {cls: label for label, cls in enumerate(classes)}
        unknown = [cls for cls in listing.classes if cls not in index and listing.by_class().get(cls)]
        if unknown:
            shown = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise DatasetError(f"{what} {listing.root} has class(es) the training data does not have: {shown}")
        self.items = [(item.path, index[item.class_folder]) for item in listing.items]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.items[i]
        return self.transform(open_image(path)), label


class EpochDistributedSampler(DistributedSampler[Any]):
    """``DistributedSampler`` (drop_last) that yields ``(epoch, index)`` pairs, so the epoch reaches the paired
    data in every worker, and that can start part-way into an epoch (a resumed run skips what it has seen).

    With ``num_replicas=1`` it is a seeded shuffle (``randperm`` seeded by ``seed + epoch``); process ``rank``
    takes every ``num_replicas``-th index of the same permutation, so the union of the ranks' batches of a step
    is the batch a single process would take.
    """

    def __init__(self, length: int, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(
            range(length),  # type: ignore[arg-type]  # only its length is used
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """The epoch to yield, skipping its first ``start`` indices of this process."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start :]
        return iter([(self.epoch, int(i)) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


def sample_keys(dataset: PairedDataset, indices: torch.Tensor | Sequence[int]) -> list[str]:
    """The relpaths of dataset samples (what ``--log-samples`` records)."""
    return [dataset.items[int(i)].relpath for i in indices]

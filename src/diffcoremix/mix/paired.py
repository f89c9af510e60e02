"""Paired data (METHOD.md §7): each real training image with a partner to mix it with.

The partner of a real image is one of its own accepted counterparts; else an accepted generated image of its
class; else none (the sample is then never mixed). Which rule applied is reported per sample. The ``real`` mode
pairs each image with another real image of its class instead: what perfect generations would give, for
ablations.

Every random choice comes from a hash of (seed, epoch, image), never from a worker's random state: the partner,
and the random transforms of the real image and of its partner (two separate streams). The epoch reaches every
DataLoader worker, persistent ones included, although each holds its own copy of the dataset: ``set_epoch``
writes it to shared memory, which every copy reads (timm's loop calls ``dataset.set_epoch``). An index may also
carry its epoch: :class:`EpochSampler` yields ``(epoch, index)`` pairs, in a seeded order of that epoch. The
batches are therefore the same with any number of workers.

A generated image may carry a soft label in the manifest (``soft_label``: ``{class_folder: weight}``, e.g. a
cross-class image's ``(1 - s^g) A + s^g B``). When any image that a dataset can yield has one, its labels are
``(K,)`` float targets (one-hot for hard labels) and each sample also carries its partner's target (``partner_y``
after :func:`collate_pairs`): the partner's soft label, else the real image's one-hot. Build the mixer with
``soft_targets=True, num_classes=len(pairs.classes)`` so that it weighs them (see
:attr:`PairedDataset.has_soft_labels`). Without soft labels, labels stay ints, as ever.

Example (``mixer`` from :func:`diffcoremix.mix.make_mixer`)::

    pairs = PairedDataset("data", "out", transform=v2.Compose([v2.RandomResizedCrop(224), v2.PILToTensor()]))
    loader = DataLoader(pairs, batch_size=64, shuffle=True, num_workers=4, persistent_workers=True,
                        collate_fn=collate_pairs)
    for epoch in range(epochs):
        pairs.set_epoch(epoch)  # or sampler.set_epoch(epoch) with sampler=EpochSampler(pairs, shuffle=True)
        for batch in loader:
            images, targets = mixer(**batch, generator=generator)
"""

from __future__ import annotations

import math
import operator
import warnings
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, Literal, TypedDict

import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Sampler

from diffcoremix.data.folder import DatasetListing, list_images
from diffcoremix.data.images import open_image
from diffcoremix.errors import ConfigError, DatasetError
from diffcoremix.manifest import read_manifest
from diffcoremix.manifest.layout import MANIFEST_DIR, OutputFolder
from diffcoremix.modes import fit
from diffcoremix.seeds import derive_seed, generator_for, stable_choice

PARTNER_NONE, PARTNER_OWN, PARTNER_CLASS, PARTNER_REAL, PARTNER_ANY, PARTNER_SOURCE = 0, 1, 2, 3, 4, 5
"""Codes of the partner rule that applied: none, own counterpart, same-class generated image, same-class real, any
generated image (of any class), a generated sample's own real source."""

Sample = tuple[Any, int, Any, bool, int] | tuple[Any, torch.Tensor, Any, bool, int, torch.Tensor]
"""``(image, label, partner, has_partner, partner_rule)``; with soft labels in the set,
``(image, target, partner, has_partner, partner_rule, partner_target)`` with ``(K,)`` float targets."""

SOFT_LABEL_TOLERANCE = 1e-6
"""How far from 1 the weights of a soft label may sum."""


def _soft_label_problem(value: Any) -> str | None:
    """Why ``value`` is not a soft label (``{class_folder: weight}``, weights > 0 summing to 1), or None."""
    if not isinstance(value, dict) or not value:
        return "not a non-empty object of class folder: weight"
    if not all(isinstance(cls, str) for cls in value):
        return "a class folder that is not a string"
    weights = list(value.values())
    if not all(isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
        return "a weight that is not a number"
    if not all(w > 0 for w in weights):
        return "a weight that is not > 0"
    if abs(math.fsum(weights) - 1.0) > SOFT_LABEL_TOLERANCE:
        return f"weights that sum to {math.fsum(weights)!r}, not 1"
    return None


def _soft_label(row: dict[str, Any], out: str | Path) -> dict[str, float] | None:
    """A record's soft label, checked (None when the record has none: its ``class_folder`` is its label).

    Raises:
        DatasetError: the soft label is malformed (the message names the record's key).
    """
    value = row.get("soft_label")
    if value is None or (isinstance(value, float) and math.isnan(value)):  # absent, or pandas' missing value
        return None
    problem = _soft_label_problem(value)
    if problem is not None:
        raise DatasetError(f"--synthetic {out}: the soft_label of record {row.get('key')!r} has {problem}: "
                           f"{value!r} (expected {{class_folder: weight}}, weights > 0 summing to 1)")  # fmt: skip
    return {cls: float(w) for cls, w in value.items()}


def accepted_images(out: str | Path) -> list[dict[str, Any]]:
    """The accepted candidates of a filtered generation run (``key``, ``source``, ``class_folder``, ``output`` and
    ``soft_label``: None, or the checked ``{class_folder: weight}`` label of the image).

    Raises:
        DatasetError: ``out`` is missing, not a folder or not a generation run, the run has not been filtered, or
            an accepted record's soft label is malformed (not an object, weights not > 0 or not summing to 1).
    """
    if not Path(out).is_dir():
        missing = "does not exist" if not Path(out).exists() else "is not a folder"
        raise DatasetError(f"--synthetic {out} {missing}: give a filtered generate or augment output folder")
    if not OutputFolder(out).shard_paths():
        raise DatasetError(f"--synthetic {out} is not a generation run (no {MANIFEST_DIR}/ in it): give a filtered "
                           "generate or augment output folder")  # fmt: skip
    table = read_manifest(out)
    if "accepted" not in table.columns:
        raise DatasetError(f"{out} has not been filtered: run `diffcoremix filter {out}` (or augment) first")
    kept = table[table.accepted == True]  # noqa: E712 (None means not filtered)
    rows: list[dict[str, Any]] = kept[["key", "source", "class_folder", "output", "soft_label"]].to_dict("records")
    for row in rows:
        row["soft_label"] = _soft_label(row, out)
    return rows


def soft_label_targets(
    rows: Iterable[dict[str, Any]], classes: Sequence[str], out: str | Path
) -> dict[Path, torch.Tensor]:
    """The ``(K,)`` float targets of the rows of :func:`accepted_images` that carry a soft label, by image file
    (``out / output``); ``K = len(classes)``, and a class folder is mapped to its index in ``classes`` by name.

    Raises:
        DatasetError: a soft label names a class that ``classes`` (DATA's) lacks.
    """
    index = {cls: label for label, cls in enumerate(classes)}
    targets: dict[Path, torch.Tensor] = {}
    for row in rows:
        label = row["soft_label"]
        if label is None:
            continue
        unknown = [cls for cls in label if cls not in index]
        if unknown:
            raise DatasetError(f"--synthetic {out}: the soft_label of record {row['key']!r} names class "
                               f"{unknown[0]!r}, which DATA does not have")  # fmt: skip
        target = torch.zeros(len(classes))
        for cls, weight in label.items():
            target[index[cls]] = weight
        targets[Path(out) / row["output"]] = target
    return targets


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` pairs in an order of that epoch: one ``set_epoch`` call sets order and pairing.

    The order is a function of (seed, epoch) alone, so a run resumed at epoch ``e`` takes the order an
    uninterrupted one took, and the epoch travels inside each index to whichever worker takes it. The dataset's
    own :meth:`PairedDataset.set_epoch` reaches the workers too (shared memory): the sampler is a choice of
    order, not needed for the epoch. Call :meth:`set_epoch` before each epoch, as with ``DistributedSampler``.

    Args:
        data_source: the dataset (only its length is used), or the length itself.
        shuffle: a new order every epoch, a permutation drawn from ``derive_seed(seed, "shuffle", epoch)``;
            otherwise ``0, 1, ..., n - 1``.
        seed: seeds the shuffling.
    """

    def __init__(self, data_source: Sized | int, *, shuffle: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.length = data_source if isinstance(data_source, int) else len(data_source)
        if self.length < 0:
            raise ConfigError("data_source", data_source, "a dataset or a length >= 0")
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch that the next iteration yields (and shuffles by)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = torch.randperm(self.length, generator=generator_for(self.seed, "shuffle", self.epoch)).tolist()
        else:
            order = list(range(self.length))
        return iter([(self.epoch, index) for index in order])

    def __len__(self) -> int:
        return self.length


class PairedDataset(Dataset[Sample]):
    """Yields ``(image, label, partner, has_partner, partner_rule)`` for each real image; with soft labels
    (:attr:`has_soft_labels`), ``(image, target, partner, has_partner, partner_rule, partner_target)``.

    Index it with a plain ``index``, which uses the epoch of :meth:`set_epoch` (in every DataLoader worker), or
    with ``(epoch, index)`` (what :class:`EpochSampler` yields).

    Args:
        data: the real dataset (folder or listing).
        synthetic: a filtered generation output folder (``None`` with ``mode="real"``).
        mode: ``counterpart`` (own, then class, then none), ``real`` (another real image of the class), ``global``
            (any accepted generated image, of any class: its label becomes the partner target, so samples always
            carry ``(K,)`` targets), ``source`` (a sample listed in ``sources``, a generated image, is paired with its
            real source image, transformed with the sample's own random draws so that the two stay aligned) or
            ``none`` (no partners: every sample is ``(image, label, image, False, PARTNER_NONE)``, and only one image
            is read, so the baselines pay no partner cost).
        transform: applied to both images (PIL in, anything out). Its random draws must come from torch's global
            generator (torchvision's v2 transforms do): it runs seeded from (seed, epoch, image), with separate
            streams for the real image and its partner, and the caller's random state is left as it was.
        seed: partner choices and transforms derive from it.
        exclude_sources: generated images of these sources (relpaths in DATA, e.g. a validation split) are never
            partners.
        soft_targets: ``(K,)`` float targets of image files of ``data`` that have a soft label (generated images
            added as samples: see :func:`soft_label_targets`). The partners' soft labels (``counterpart`` and
            ``global`` modes) are read from the manifest of ``synthetic``.
        sources: ``source`` mode: the real source file of each generated sample file.

    Attributes:
        classes: the class folder names, sorted; a label indexes it (as torchvision's ``ImageFolder``).
        class_to_idx: class folder name to label.

    Without a partner, ``partner`` is the (transformed) real image itself and ``has_partner`` is False.

    When any image the dataset can yield (a sample or a partner) has a soft label, every label is a ``(K,)`` float
    target: the image's soft label, else the one-hot of its class; the sixth element, ``partner_target``, is the
    partner's soft label, else the one-hot of the real image's class (a counterpart without one is of its source's
    class), or the sample's own target when there is no partner. Otherwise samples are exactly as without soft labels.

    Raises:
        DatasetError: as :func:`accepted_images`, or a partner's soft label names a class DATA lacks.
    """

    def __init__(
        self,
        data: str | Path | DatasetListing,
        synthetic: str | Path | None = None,
        *,
        mode: Literal["counterpart", "real", "global", "source", "none"] = "counterpart",
        transform: Callable[[Any], Any] | None = None,
        seed: int = 0,
        exclude_sources: Collection[str] = (),
        soft_targets: Mapping[Path, torch.Tensor] | None = None,
        sources: Mapping[Path, Path] | None = None,
    ) -> None:
        self.listing = data if isinstance(data, DatasetListing) else list_images(data)
        self.items = list(self.listing.items)
        self.classes = list(self.listing.classes)
        self.class_to_idx = {cls: label for label, cls in enumerate(self.classes)}
        self.transform = transform
        self.seed = seed
        # One int64 in shared memory: a DataLoader worker's copy of the dataset (forked or pickled to a spawned
        # process, persistent or not) reads the same memory, so set_epoch in the main process reaches it.
        self._epoch: torch.Tensor = torch.zeros((), dtype=torch.int64).share_memory_()  # type: ignore[no-untyped-call]
        self._warned = False
        self.mode = mode
        self.own: dict[str, list[Path]] = defaultdict(list)
        self.by_class: dict[str, list[Path]] = defaultdict(list)
        self.soft: dict[Path, torch.Tensor] = dict(soft_targets or {})
        """``(K,)`` float targets of the image files (samples or partners) that have a soft label."""
        self.pool_label: dict[Path, int] = {}
        """``global`` mode: every accepted generated image, and its class's label."""
        self.sources: dict[Path, Path] = dict(sources or {})
        """``source`` mode: a generated sample's real source file."""
        if mode in ("counterpart", "global"):
            if synthetic is None:
                raise DatasetError(f"mode={mode!r} needs the synthetic (generation output) folder")
            excluded = set(exclude_sources)
            rows = [row for row in accepted_images(synthetic) if row["source"] not in excluded]
            for row in rows:
                path = Path(synthetic) / row["output"]
                self.own[row["source"]].append(path)
                self.by_class[row["class_folder"]].append(path)
                if mode == "global" and row["class_folder"] in self.class_to_idx:
                    self.pool_label[path] = self.class_to_idx[row["class_folder"]]
            self.soft.update(soft_label_targets(rows, self.classes, synthetic))
        elif mode == "real":
            for item in self.items:
                self.by_class[item.class_folder].append(item.path)
        elif mode not in ("source", "none"):
            raise ConfigError("mode", mode, "'counterpart', 'real', 'global', 'source' or 'none'")
        self.pool: list[Path] = list(self.pool_label)
        """``global`` mode: the images a partner is drawn from, in manifest order."""

    @property
    def has_soft_labels(self) -> bool:
        """Whether samples carry ``(K,)`` float targets and a partner target: some image has a soft label, or the
        partner's label is not the sample's (``global``)."""
        return bool(self.soft) or self.mode == "global"

    def target_of(self, path: Path, label: int) -> torch.Tensor:
        """The ``(K,)`` float target of image ``path``: its soft label, else the one-hot of ``label``."""
        soft = self.soft.get(path)
        if soft is not None:
            return soft
        return torch.nn.functional.one_hot(torch.tensor(label), len(self.classes)).float()

    @property
    def epoch(self) -> int:
        """The epoch of plain integer indices, as :meth:`set_epoch` last set it (0 at first)."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """The epoch used by plain integer indices (an ``(epoch, index)`` pair carries its own).

        Call it before each epoch (timm's ``train.py`` does). It reaches the DataLoader workers' copies of the
        dataset, persistent ones included: they share this memory. A copy made otherwise (``copy.deepcopy``,
        ``pickle``, Ray) starts at this epoch and has its own from then on.
        """
        self._epoch.fill_(operator.index(epoch))

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A pickle or a deep copy brings the epoch's value in memory of its own: share that, so that the copy's
        # set_epoch reaches its own workers. (A spawned worker's copy arrives already shared: a no-op then.)
        self.__dict__.update(state)
        self._epoch.share_memory_()  # type: ignore[no-untyped-call]

    def __len__(self) -> int:
        return len(self.items)

    def partner_of(self, index: int, epoch: int | None = None) -> tuple[Path | None, int]:
        """The partner file of real image ``index`` in ``epoch`` (default: :attr:`epoch`) and the rule that chose it."""
        item = self.items[index]
        epoch = self.epoch if epoch is None else epoch
        if self.mode == "none":
            return None, PARTNER_NONE
        if self.mode == "real":
            others = [p for p in self.by_class[item.class_folder] if p != item.path]
            if not others:
                return None, PARTNER_NONE
            return others[stable_choice(len(others), self.seed, epoch, "real", item.relpath)], PARTNER_REAL
        if self.mode == "global":
            if not self.pool:
                return None, PARTNER_NONE
            return self.pool[stable_choice(len(self.pool), self.seed, epoch, "any", item.relpath)], PARTNER_ANY
        if self.mode == "source":
            source = self.sources.get(item.path)
            return (source, PARTNER_SOURCE) if source is not None else (None, PARTNER_NONE)
        for pool, rule in (
            (self.own.get(item.relpath, []), PARTNER_OWN),
            (self.by_class[item.class_folder], PARTNER_CLASS),
        ):
            if pool:
                return pool[stable_choice(len(pool), self.seed, epoch, "partner", item.relpath)], rule
        return None, PARTNER_NONE

    @staticmethod
    def _partner_image(path: Path, rule: int, sample: Image.Image) -> tuple[Image.Image, str]:
        """The partner's image and its stream of random draws. A generated sample's source (``PARTNER_SOURCE``) is
        fitted to the sample's size (centre crop and resize, as generation fitted it) and takes the sample's own
        draws (the same crop and flip), so that the two stay aligned."""
        if rule == PARTNER_SOURCE:
            return fit(open_image(path), *sample.size), "real"
        return open_image(path), "partner"

    def _transformed(self, image: Any, epoch: int, relpath: str, stream: str) -> Any:
        """``transform(image)`` with torch's global generator seeded from (seed, epoch, image, stream)."""
        if self.transform is None:
            return image
        # The CPU generator alone, saved and restored by hand: torch.manual_seed and fork_rng also visit every
        # accelerator backend (recording a stack trace each time), which cost more than the transform itself.
        state = torch.get_rng_state()
        try:
            torch.default_generator.manual_seed(derive_seed(self.seed, "transform", epoch, relpath, stream))
            return self.transform(image)
        finally:
            torch.set_rng_state(state)

    def __getitem__(self, index: int | tuple[int, int]) -> Sample:
        if isinstance(index, tuple) and self.epoch not in (0, index[0]) and not self._warned:
            # Two epochs given, one lost: timm's train.py calls dataset.set_epoch(epoch) and, unless distributed,
            # never the sampler's, so with an EpochSampler every epoch would pair as epoch 0.
            self._warned = True
            warnings.warn(
                f"PairedDataset.set_epoch({self.epoch}) was called, but the sampler yields epoch {index[0]}: the "
                "sampler's epoch wins; call EpochSampler.set_epoch(epoch) too, or use a plain sampler",
                stacklevel=2,
            )
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        item = self.items[index]
        image_file = open_image(item.path)
        image = self._transformed(image_file, epoch, item.relpath, "real")
        partner_path, rule = self.partner_of(index, epoch)
        partner = image
        if partner_path is not None:
            partner_file, stream = self._partner_image(partner_path, rule, image_file)
            partner = self._transformed(partner_file, epoch, item.relpath, stream)
        if not self.has_soft_labels:
            return image, item.label, partner, partner_path is not None, rule
        target = self.target_of(item.path, item.label)
        # a counterpart without a soft label is of its source's class: the real image's (own or same-class pool);
        # any generated image (global) is of its own class
        partner_label = self.pool_label.get(partner_path, item.label) if partner_path is not None else item.label
        partner_target = target if partner_path is None else self.target_of(partner_path, partner_label)
        return image, target, partner, partner_path is not None, rule, partner_target


class _PairBatchKeys(TypedDict):
    """The keys of every :class:`PairBatch`."""

    x: torch.Tensor
    """``(B, C, H, W)`` real images."""
    y: torch.Tensor
    """``(B,)`` int64 labels (``(B, K)`` float targets with soft labels in the set)."""
    partner: torch.Tensor
    """``(B, C, H, W)`` partners (the real image itself where there is none)."""
    has_partner: torch.Tensor
    """``(B,)`` bool."""
    partner_rule: torch.Tensor
    """``(B,)`` int64 ``PARTNER_*`` codes."""


class PairBatch(_PairBatchKeys, total=False):
    """A collated batch of :class:`PairedDataset` samples: the mixers' keyword arguments."""

    partner_y: torch.Tensor
    """``(B, K)`` float partner targets; only with soft labels in the set (``y`` is then ``(B, K)`` float too)."""


def collate_pairs(batch: list[Sample]) -> PairBatch:
    """Stack a list of :class:`PairedDataset` samples (tensors) into the mixers' keyword arguments.

    Samples with soft labels (six elements) give ``(B, K)`` float ``y`` and ``partner_y``; the others ``(B,)``
    int64 ``y`` and no ``partner_y``.

    Example::

        images, targets = mixer(**collate_pairs(samples), generator=generator)
    """
    images, labels, partners, has, rules, *partner_targets = zip(*batch, strict=True)
    pairs: PairBatch = PairBatch(
        x=torch.stack(images),
        y=torch.stack(labels) if partner_targets else torch.tensor(labels),
        partner=torch.stack(partners),
        has_partner=torch.tensor(has),
        partner_rule=torch.tensor(rules),
    )
    if partner_targets:
        pairs["partner_y"] = torch.stack(partner_targets[0])
    return pairs


Label = int | torch.Tensor
"""A sample's label: a class index, or a ``(K,)`` float target."""


class _Synthetic(Dataset[tuple[Any, Label]]):
    def __init__(self, files: list[tuple[Path, Label]], transform: Callable[[Any], Any] | None) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, Label]:
        path, label = self.files[index]
        image: Any = open_image(path)
        return (self.transform(image) if self.transform else image), label


class _OneHot(Dataset[tuple[Any, torch.Tensor]]):
    """A dataset of ``(image, class index)`` whose labels become ``(K,)`` one-hot float targets."""

    def __init__(self, dataset: Dataset[tuple[Any, int]], num_classes: int) -> None:
        self.dataset, self.num_classes = dataset, num_classes

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        image, label = self.dataset[index]
        return image, torch.nn.functional.one_hot(torch.tensor(label), self.num_classes).float()


def with_synthetic_samples(
    data: str | Path, synthetic: str | Path, transform: Callable[[Any], Any] | None = None
) -> ConcatDataset[tuple[Any, Label]]:
    """The real images followed by the accepted generated ones as extra samples (the reference code's use).

    Labels are class indices; when a generated image has a soft label, every label is a ``(K,)`` float target
    instead (that soft label, else the one-hot of the class), so that a batch of either kind stacks.
    """
    from diffcoremix.data.dataset import ClassFolderDataset

    real = ClassFolderDataset(data, transform)
    index = real.class_to_idx
    rows = accepted_images(synthetic)
    soft = soft_label_targets(rows, real.classes, synthetic)
    files: list[tuple[Path, Label]] = [(Path(synthetic) / r["output"], index[r["class_folder"]]) for r in rows]
    if not soft:
        return ConcatDataset([real, _Synthetic(files, transform)])
    eye = torch.eye(len(real.classes))
    files = [(path, soft[path] if path in soft else eye[label].clone()) for path, label in files]
    return ConcatDataset([_OneHot(real, len(real.classes)), _Synthetic(files, transform)])

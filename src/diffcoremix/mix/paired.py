"""Paired data (METHOD.md §7): each real training image with a partner to mix it with.

The partner of a real image is one of its own accepted counterparts; else an accepted generated image of its
class; else none (the sample is then never mixed). Which rule applied is reported per sample. The ``real`` mode
pairs each image with another real image of its class instead: what perfect generations would give, for
ablations. Choices come from a hash of (seed, epoch, image), never from a worker's random state, so they are the
same with any number of DataLoader workers; call :meth:`PairedDataset.set_epoch` to draw new partners per epoch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import ConcatDataset, Dataset

from diffcoremix.data.folder import DatasetListing, list_images
from diffcoremix.data.images import open_image
from diffcoremix.errors import DatasetError
from diffcoremix.manifest import read_manifest
from diffcoremix.seeds import stable_choice

PARTNER_NONE, PARTNER_OWN, PARTNER_CLASS, PARTNER_REAL = 0, 1, 2, 3
"""Codes of the partner rule that applied: none, own counterpart, same-class generated image, same-class real."""


def accepted_images(out: str | Path) -> list[dict[str, Any]]:
    """The accepted candidates of a filtered generation run (``source``, ``class_folder``, ``output``).

    Raises:
        DatasetError: the run has not been filtered.
    """
    table = read_manifest(out)
    if "accepted" not in table.columns:
        raise DatasetError(f"{out} has not been filtered: run `diffcoremix filter {out}` (or augment) first")
    kept = table[table.accepted == True]  # noqa: E712 (None means not filtered)
    return kept[["source", "class_folder", "output"]].to_dict(orient="records")  # type: ignore[no-any-return]


class PairedDataset(Dataset[tuple[Any, int, Any, bool, int]]):
    """Yields ``(image, label, partner, has_partner, partner_rule)`` for each real image.

    Args:
        data: the real dataset (folder or listing).
        synthetic: a filtered generation output folder (``None`` with ``mode="real"``).
        mode: ``counterpart`` (own, then class, then none) or ``real`` (another real image of the class).
        transform: applied to both images (PIL in, anything out).
        seed: partner choices derive from it.

    Without a partner, ``partner`` is the real image itself and ``has_partner`` is False.
    """

    def __init__(
        self,
        data: str | Path | DatasetListing,
        synthetic: str | Path | None = None,
        *,
        mode: Literal["counterpart", "real"] = "counterpart",
        transform: Callable[[Any], Any] | None = None,
        seed: int = 0,
    ) -> None:
        self.listing = data if isinstance(data, DatasetListing) else list_images(data)
        self.items = list(self.listing.items)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.mode = mode
        self.own: dict[str, list[Path]] = defaultdict(list)
        self.by_class: dict[str, list[Path]] = defaultdict(list)
        if mode == "counterpart":
            if synthetic is None:
                raise DatasetError("mode='counterpart' needs the synthetic (generation output) folder")
            for row in accepted_images(synthetic):
                path = Path(synthetic) / row["output"]
                self.own[row["source"]].append(path)
                self.by_class[row["class_folder"]].append(path)
        elif mode == "real":
            for item in self.items:
                self.by_class[item.class_folder].append(item.path)
        else:
            raise ValueError(f"mode must be 'counterpart' or 'real', got {mode!r}")

    def set_epoch(self, epoch: int) -> None:
        """Draw partners anew for this epoch (deterministically)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def partner_of(self, index: int) -> tuple[Path | None, int]:
        """The partner file of real image ``index`` and the rule that chose it."""
        item = self.items[index]
        if self.mode == "real":
            others = [p for p in self.by_class[item.class_folder] if p != item.path]
            if not others:
                return None, PARTNER_NONE
            return others[stable_choice(len(others), self.seed, self.epoch, "real", item.relpath)], PARTNER_REAL
        for pool, rule in (
            (self.own.get(item.relpath, []), PARTNER_OWN),
            (self.by_class[item.class_folder], PARTNER_CLASS),
        ):
            if pool:
                return pool[stable_choice(len(pool), self.seed, self.epoch, "partner", item.relpath)], rule
        return None, PARTNER_NONE

    def __getitem__(self, index: int) -> tuple[Any, int, Any, bool, int]:
        item = self.items[index]
        image: Any = open_image(item.path)
        partner_path, rule = self.partner_of(index)
        partner: Any = open_image(partner_path) if partner_path is not None else image
        if self.transform is not None:
            image, partner = self.transform(image), self.transform(partner)
        return image, item.label, partner, partner_path is not None, rule


def collate_pairs(batch: list[tuple[Any, int, Any, bool, int]]) -> dict[str, torch.Tensor]:
    """Stack a list of :class:`PairedDataset` samples (tensors) into the mixers' keyword arguments."""
    images, labels, partners, has, rules = zip(*batch, strict=True)
    return {
        "x": torch.stack(images),
        "y": torch.tensor(labels),
        "partner": torch.stack(partners),
        "has_partner": torch.tensor(has),
        "partner_rule": torch.tensor(rules),
    }


class _Synthetic(Dataset[tuple[Any, int]]):
    def __init__(self, files: list[tuple[Path, int]], transform: Callable[[Any], Any] | None) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.files[index]
        image: Any = open_image(path)
        return (self.transform(image) if self.transform else image), label


def with_synthetic_samples(
    data: str | Path, synthetic: str | Path, transform: Callable[[Any], Any] | None = None
) -> ConcatDataset[tuple[Any, int]]:
    """The real images followed by the accepted generated ones as extra samples (the reference code's use)."""
    from diffcoremix.data.dataset import ClassFolderDataset

    real = ClassFolderDataset(data, transform)
    index = real.class_to_idx
    files = [(Path(synthetic) / r["output"], index[r["class_folder"]]) for r in accepted_images(synthetic)]
    return ConcatDataset([real, _Synthetic(files, transform)])

"""Class-folder datasets as a torch ``Dataset``: the same listing, images opened robustly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from diffcoremix.data.folder import DatasetListing, list_images
from diffcoremix.data.images import open_image


class ClassFolderDataset(Dataset[tuple[Any, int]]):
    """A class-folder dataset yielding ``(image, label)``; a drop-in for torchvision's ``ImageFolder``.

    Args:
        root: the dataset folder, or an existing :class:`DatasetListing` of it.
        transform: applied to the RGB ``PIL.Image``; without one the PIL image itself is returned.
        max_pixels: refuse images larger than this (see :func:`diffcoremix.data.images.decode_image`).

    Attributes:
        classes, class_to_idx, samples, targets: as in torchvision's ``ImageFolder``.

    Raises:
        ImageReadError: on ``__getitem__`` of a file that cannot be decoded (run ``diffcoremix scan`` first to
            find such files).
    """

    def __init__(
        self,
        root: str | Path | DatasetListing,
        transform: Callable[[Any], Any] | None = None,
        *,
        max_pixels: int | None = None,
    ) -> None:
        self.listing = root if isinstance(root, DatasetListing) else list_images(root)
        self.root = self.listing.root
        self.transform = transform
        self.max_pixels = max_pixels
        self.classes = list(self.listing.classes)
        self.class_to_idx = {cls: i for i, cls in enumerate(self.classes)}
        self.samples = [(str(item.path), item.label) for item in self.listing.items]
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image: Any = open_image(path, max_pixels=self.max_pixels)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

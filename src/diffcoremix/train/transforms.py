"""The image transforms of training and evaluation (torchvision v2), from the recipe.

Training transforms draw from torch's global generator, which :class:`diffcoremix.mix.PairedDataset` seeds per
(seed, epoch, image), so the same run sees the same crops whatever the number of DataLoader workers. The
evaluation transform lives in :mod:`diffcoremix.data.transforms` (the embedders use it too) and is named here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torchvision.transforms import v2

from diffcoremix.data.transforms import eval_transform, for_run, normalised

__all__ = ["eval_transform", "for_run", "train_transform"]


def train_transform(kind: str, img_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable[[Any], Any]:
    """``cifar``: pad 4, random crop, flip; ``imagenet``: random resized crop, flip; ``none``: resize only."""
    if kind == "cifar":
        geometry: list[Any] = [v2.Resize((img_size, img_size)), v2.RandomCrop(img_size, padding=4),
                               v2.RandomHorizontalFlip()]  # fmt: skip
    elif kind == "imagenet":
        geometry = [v2.RandomResizedCrop(img_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize((img_size, img_size))]
    composed: Callable[[Any], Any] = v2.Compose([*geometry, *normalised(mean, std)])
    return composed

"""The image transforms of training and evaluation (torchvision v2), from the recipe.

Training transforms draw from torch's global generator, which :class:`diffcoremix.mix.PairedDataset` seeds per
(seed, epoch, image), so the same run sees the same crops whatever the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision.transforms import v2


def _to_float(mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    """To float in [0, 1] and normalised; images are RGB (``open_image`` converts grayscale), so one value of
    ``mean`` / ``std`` applies to all three channels."""
    mean, std = (list(mean) * 3, list(std) * 3) if len(mean) == 1 else (list(mean), list(std))
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def train_transform(kind: str, img_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable[[Any], Any]:
    """``cifar``: pad 4, random crop, flip; ``imagenet``: random resized crop, flip; ``none``: resize only."""
    if kind == "cifar":
        geometry: list[Any] = [v2.Resize((img_size, img_size)), v2.RandomCrop(img_size, padding=4),
                               v2.RandomHorizontalFlip()]  # fmt: skip
    elif kind == "imagenet":
        geometry = [v2.RandomResizedCrop(img_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize((img_size, img_size))]
    composed: Callable[[Any], Any] = v2.Compose([*geometry, *_to_float(mean, std)])
    return composed


def eval_transform(kind: str, img_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable[[Any], Any]:
    """``imagenet``: resize the short side to 1.14x and centre-crop; otherwise resize to the square size."""
    if kind == "imagenet":
        geometry: list[Any] = [v2.Resize(round(img_size / 0.875), antialias=True), v2.CenterCrop(img_size)]
    else:
        geometry = [v2.Resize((img_size, img_size), antialias=True)]
    composed: Callable[[Any], Any] = v2.Compose([*geometry, *_to_float(mean, std)])
    return composed


def for_run(info: dict[str, Any]) -> Callable[[Any], Any]:
    """The evaluation transform of a trained run (from ``TrainedModel.info``)."""
    return eval_transform(info["transform"], info["img_size"], info["mean"], info["std"])

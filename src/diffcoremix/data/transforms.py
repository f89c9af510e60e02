"""What a trained classifier reads: the evaluation transform of a training recipe (torchvision v2).

Below both ``train``, which trains and evaluates with it, and ``embedders``, which embeds with the network of a
finished run (``resnet20:RUN/model.pt``) and must show it the images as the run's evaluation did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision.transforms import v2


def normalised(mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    """To float in [0, 1] and normalised; images are RGB (``open_image`` converts grayscale), so one value of
    ``mean`` / ``std`` applies to all three channels."""
    mean, std = (list(mean) * 3, list(std) * 3) if len(mean) == 1 else (list(mean), list(std))
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def eval_transform(kind: str, img_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable[[Any], Any]:
    """``imagenet``: resize the short side to 1.14x and centre-crop; otherwise resize to the square size."""
    if kind == "imagenet":
        geometry: list[Any] = [v2.Resize(round(img_size / 0.875), antialias=True), v2.CenterCrop(img_size)]
    else:
        geometry = [v2.Resize((img_size, img_size), antialias=True)]
    composed: Callable[[Any], Any] = v2.Compose([*geometry, *normalised(mean, std)])
    return composed


def for_run(info: dict[str, Any]) -> Callable[[Any], Any]:
    """The evaluation transform of a trained run (``model.pt``'s ``info``: ``transform``, ``img_size``, ``mean``,
    ``std``)."""
    return eval_transform(info["transform"], info["img_size"], info["mean"], info["std"])

"""The images and captions of fine-tuning, in an order fixed by the seed and the step.

Every random choice of a step (which images, where to crop, whether to flip) is a function of ``(seed, stage,
position)``, so a resumed run draws exactly what an uninterrupted one does, with any number of loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from diffcoremix.data.images import open_image
from diffcoremix.seeds import derive_seed, generator_for

Spec = tuple[int, bool, float, float]
"""One drawn image: (index, flip, crop x position in [0, 1], crop y position in [0, 1])."""


@dataclass(frozen=True)
class Caption:
    """The caption of one training image, and what replaces it when dropped (classifier-free guidance)."""

    prompt: str
    negative_prompt: str


class SquareImages(Dataset[tuple[torch.Tensor, int]]):
    """Images resized (shorter side) and cropped to ``resolution`` squares, in [-1, 1], indexed by a :data:`Spec`."""

    def __init__(self, paths: Sequence[Path], resolution: int, center_crop: bool) -> None:
        self.paths = list(paths)
        self.resolution = resolution
        self.center_crop = center_crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, spec: Spec) -> tuple[torch.Tensor, int]:
        index, flip, px, py = spec
        image = open_image(self.paths[index])
        side = self.resolution
        scale = side / min(image.size)
        size = (max(side, round(image.width * scale)), max(side, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        if self.center_crop:
            px = py = 0.5
        left, top = round((size[0] - side) * px), round((size[1] - side) * py)
        image = image.crop((left, top, left + side, top + side))
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(side, side, 3)
        return array.permute(2, 0, 1).float().div(127.5).sub(1.0), index


class StepBatches(Sampler[list[Spec]]):
    """The batches of steps ``start, start + 1, ...`` of one stage: shuffled epochs laid end to end.

    Args:
        n: dataset size.
        batch_size: images per step.
        seed: the run's seed.
        stage: ``vae`` or ``unet`` (each stage has its own order).
        start: the first step.
        steps: the stage's last step (exclusive).
        random_flip: flip half the images.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, stage: str, start: int, steps: int, random_flip: bool
    ) -> None:
        self.n, self.batch_size, self.seed, self.stage = n, batch_size, seed, stage
        self.start, self.steps, self.random_flip = start, steps, random_flip
        self._orders: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            self._orders = {
                epoch: torch.randperm(self.n, generator=generator_for(self.seed, self.stage, "order", epoch)).tolist()
            }
        return self._orders[epoch]

    def batch(self, step: int) -> list[Spec]:
        """The images of ``step``."""
        specs: list[Spec] = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = divmod(position, self.n)
            draws = torch.rand(3, generator=generator_for(self.seed, self.stage, "augment", position)).tolist()
            flip = self.random_flip and draws[0] < 0.5
            specs.append((self._order(epoch)[offset], flip, draws[1], draws[2]))
        return specs

    def __iter__(self) -> Iterator[list[Spec]]:
        for step in range(self.start, self.steps):
            yield self.batch(step)


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The CPU generator of one step's noise, timesteps and caption drop-outs."""
    return torch.Generator().manual_seed(derive_seed(seed, stage, "step", step))

"""Out-of-memory during generation: the batch is halved until it fits and the images are those of an unhalved run; a
single candidate that cannot fit is recorded as a failure and the run goes on."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from diffcoremix.generate.backend import DiffusersGenerator
from diffcoremix.generate.batcher import Batcher
from diffcoremix.generate.config import GenerateConfig, resolve_settings
from diffcoremix.prompts.builder import PromptRecord


class _LimitedMemory:
    """The real tiny generator on a device that holds at most ``fits`` images at once.

    A stand-in for a CUDA GPU's memory, which this machine does not have: a batch over ``fits`` raises the real
    ``torch.OutOfMemoryError`` before any work, as the CUDA allocator does; anything else is the real pipeline's.
    """

    def __init__(self, real: DiffusersGenerator, fits: int) -> None:
        self.real = real
        self.fits = fits
        self.provenance: dict[str, Any] = real.provenance
        self.calls: list[int] = []

    def generate(
        self, prompts: Sequence[str], negative_prompts: Sequence[str], seeds: Sequence[int]
    ) -> list[Image.Image]:
        self.calls.append(len(prompts))
        if len(prompts) > self.fits:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(prompts)} images")
        return self.real.generate(prompts, negative_prompts, seeds)


@pytest.fixture(scope="module")
def real() -> DiffusersGenerator:
    return DiffusersGenerator.from_settings(resolve_settings(GenerateConfig(preset="tiny", num_inference_steps=1)))


def _records(n: int) -> list[PromptRecord]:
    return [
        PromptRecord(
            key=f"s{i}#0",
            source=f"a/{i}.png",
            class_folder="a",
            class_name="cat",
            label=0,
            k=0,
            seed=100 + i,
            prompt=f"a photo of a cat, scene {i}",
            negative_prompt="blurry",
            context=f"scene {i}",
            context_score=None,
            template="t",
            dropped_negatives=(),
        )
        for i in range(n)
    ]


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_out_of_memory_halves_the_batch_for_good_and_changes_no_image(real: DiffusersGenerator) -> None:
    limited = _LimitedMemory(real, fits=2)
    batcher = Batcher(limited, batch_size=8)
    said = _Messages()
    logger = logging.getLogger("diffcoremix.generate.batcher")
    logger.addHandler(said)  # on the module's own logger: another test may have set the CLI's handlers
    level = logger.level
    logger.setLevel(logging.WARNING)  # and an in-process CLI test (-q) may have raised the package's level
    try:
        images = batcher.run(_records(8))
    finally:
        logger.removeHandler(said)
        logger.setLevel(level)
    assert batcher.limit == 2
    assert limited.calls == [8, 4, 2, 2, 2, 2]  # halved twice, then batches of 2 for the rest of the run
    assert said.messages == [
        "CUDA out of memory at batch 8; going on with batch 4",
        "CUDA out of memory at batch 4; going on with batch 2",
    ]
    assert all(isinstance(image, Image.Image) for image in images)
    # what a device that holds 2 images makes when asked for batches of 2 (batched float32 convolutions may round
    # differently at other batch sizes, so the halved run is compared with the batches it ended up running)
    records = _records(8)
    pairs = [records[i : i + 2] for i in range(0, 8, 2)]
    direct = [
        x
        for p in pairs
        for x in real.generate([r.prompt for r in p], [r.negative_prompt for r in p], [r.seed for r in p])
    ]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, direct, strict=True))
    batcher.run(_records(3))
    assert limited.calls[6:] == [2, 1]  # the lowered limit holds


def test_a_candidate_that_never_fits_is_returned_as_its_error_not_raised(real: DiffusersGenerator) -> None:
    images = Batcher(_LimitedMemory(real, fits=0), batch_size=4).run(_records(4))
    assert len(images) == 4
    assert all(isinstance(image, torch.OutOfMemoryError) for image in images)

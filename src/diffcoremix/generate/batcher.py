"""Running candidates through a generator in batches: out-of-memory halving and per-item failure isolation."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from PIL import Image

from diffcoremix.generate.backend import ImageGenerator
from diffcoremix.generate.safety import Flagged
from diffcoremix.modes import NO_CONDITION, Conditioning
from diffcoremix.prompts.builder import PromptRecord

logger = logging.getLogger(__name__)


class Batcher:
    """Runs batches through a generator, halving the batch on CUDA out-of-memory and isolating failing items."""

    def __init__(self, generator: ImageGenerator, batch_size: int) -> None:
        self.generator = generator
        self.limit = batch_size
        """The largest batch that fits; lowered for good after an out-of-memory error."""

    def run(
        self, records: Sequence[PromptRecord], conditions: Sequence[Conditioning] | None = None
    ) -> list[Image.Image | Flagged | BaseException]:
        """One result per record (``conditions``, when given, are the records' source images, masks and strengths)."""
        import torch

        conditions = list(conditions) if conditions is not None else [NO_CONDITION] * len(records)
        if len(records) > self.limit:
            # The chunks are cut once: the limit may drop while they run (a later chunk cut at the lowered limit
            # would start past candidates that no chunk holds).
            size = self.limit
            return [x for i in range(0, len(records), size)
                    for x in self.run(records[i : i + size], conditions[i : i + size])]  # fmt: skip
        try:
            triples = ([r.prompt for r in records], [r.negative_prompt for r in records], [r.seed for r in records])
            if all(c == NO_CONDITION for c in conditions):  # text-to-image: the protocol's three-argument form
                return list(self.generator.generate(*triples))
            return list(self.generator.generate(*triples, conditions))
        except torch.OutOfMemoryError as err:
            if len(records) == 1:
                return [err]
            self.limit = max(1, len(records) // 2)
            logger.warning("CUDA out of memory at batch %d; going on with batch %d", len(records), self.limit)
            torch.cuda.empty_cache()
            return self.run(records, conditions)
        except Exception as err:
            if len(records) == 1:
                return [err]
            logger.warning("a batch failed (%s); retrying its %d candidates one by one", err, len(records))
            return [result for r, c in zip(records, conditions, strict=True) for result in self.run([r], [c])]

"""What an image-conditioned counterpart reads of its source: the photo (and its subject mask), fitted to the
generation size, and its strength (:class:`~diffcoremix.modes.Conditioning`).

The photo is centre-cropped to the generation size's aspect and resized (bicubic); the mask the same way (nearest, so
it stays binary). A source that cannot be read, or whose mask is bad, is that candidate's recorded failure, not the
run's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from diffcoremix.data.images import open_image
from diffcoremix.generate.config import GenerateConfig, GenerationSettings
from diffcoremix.masks import MaskError, MaskSource, mask_sha256, open_masks
from diffcoremix.modes import COUNTERPART_MODES, NO_CONDITION, Conditioning, fit

if TYPE_CHECKING:
    from diffcoremix.prompts.builder import PromptRecord


class SourceConditions:
    """Prepares each candidate's conditioning for the settings' counterpart mode (nothing for text).

    Args:
        data: the real dataset.
        settings: the resolved generation settings (mode, size).
        config: the generation options (where the subject masks come from).
    """

    def __init__(self, data: Path, settings: GenerationSettings, config: GenerateConfig) -> None:
        self.data, self.settings, self.config = data, settings, config
        self.mode = COUNTERPART_MODES.get(settings.mode)
        self._masks: MaskSource | None = None
        self._digests: dict[str, str] = {}

    def masks(self) -> MaskSource:
        """The subject masks (loaded on first use: a Grad-CAM source loads its classifier once)."""
        if self._masks is None:
            config = self.config
            self._masks = open_masks(self.data, folder=config.masks, run=config.mask_from,
                                     threshold=config.mask_threshold)  # fmt: skip
        return self._masks

    def prepare(self, record: PromptRecord) -> Conditioning | BaseException:
        """The record's conditioning, or the error that stops its candidate (recorded, the run goes on)."""
        if not self.mode.uses_source:
            return NO_CONDITION
        width, height = self.settings.width, self.settings.height
        try:
            photo = open_image(self.data / record.source)
        except (OSError, ValueError) as err:  # ImageReadError is an OSError
            return err
        mask = self._mask(record.source, photo.size) if self.mode.uses_mask else None
        if isinstance(mask, BaseException):
            return mask
        return Conditioning(image=fit(photo, width, height), mask=mask, strength=record.strength)

    def _mask(self, source: str, size: tuple[int, int]) -> Image.Image | BaseException:
        """The subject mask of ``source`` (decoded at ``size``), fitted as the photo is; its digest is kept."""
        try:
            subject = self.masks().subject_mask(source, size)
        except MaskError as err:
            return err
        self._digests[source] = mask_sha256(subject)
        return fit(subject.convert("L"), self.settings.width, self.settings.height, Image.Resampling.NEAREST)

    def mask_digest(self, source: str) -> str | None:
        """The digest of the subject mask read for ``source`` (None when none was)."""
        return self._digests.get(source)

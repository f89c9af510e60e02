"""Subject masks of the ``inpaint`` counterpart mode: which pixels of a real source image are its subject (kept) and
which are background (redrawn by the inpainting pipeline, OntoAug's idea).

A mask is a PIL image of mode ``L`` and of the source's size as decoded (EXIF orientation applied, as
:func:`diffcoremix.data.images.open_image` reads it): 255 where the subject is, 0 where the background is. Two
sources make them:

- :func:`folder_masks` (``--masks DIR``): a mask file per image, at the image's relative path in DATA, or at that
  path with its extension replaced by ``.png`` (photos are JPEG, masks PNG): ``DATA/cat/001.jpg`` ->
  ``DIR/cat/001.jpg`` or ``DIR/cat/001.png``. A mask file may be of any mode PIL reads (``1``, ``L``, ``P``,
  ``RGB``, 16-bit...); converted to ``L`` it must hold only 0 and 255, or only 0 and 1 (a label map, as many
  segmentation tools write it, read as 0 and 255). Anything else (anti-aliased edges, a JPEG's compression noise)
  is refused, not thresholded here: where the edge lies is the user's decision. DIR is only read.
- :func:`diffcoremix.train.cam_masks.gradcam_masks` (``--mask-from RUN``): a trained classifier's Grad-CAM of the
  image's own class, thresholded. It lives in the ``train`` package, beside the Grad-CAM of ``eval`` and the
  loading of runs, so that this module stays below ``generate``, which reads masks (the import contract of
  pyproject.toml).

A bad mask of one image (missing, of another size, not binary, unreadable) raises :class:`MaskError`: the failure of
that candidate alone, which the generation records. What makes every mask unusable (DIR missing, or inside DATA)
raises :class:`~diffcoremix.errors.ConfigError` before any work. Each candidate's manifest records
:func:`mask_sha256` of its mask, and the run's settings the source's :attr:`MaskSource.identity`.

Example:
    >>> masks = folder_masks("data/masks", "data/train")  # doctest: +SKIP
    >>> mask = masks.subject_mask("cat/001.jpg", (640, 480))  # doctest: +SKIP
    >>> mask.mode, mask.size, mask_sha256(mask)[:8]  # doctest: +SKIP
    ('L', (640, 480), '3f1c0b9a')
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageOps

from diffcoremix.data.images import decode_image, read_bytes
from diffcoremix.errors import ConfigError, DiffCoReMixError, ImageReadError

SUBJECT, BACKGROUND = 255, 0
"""The values of a mask: the subject (kept) and the background (redrawn)."""
MASK_SUFFIX = ".png"
"""The extension a mask file may have in place of its image's."""
SHOWN_VALUES = 8
"""A non-binary mask's error names up to this many of its values."""


class MaskError(DiffCoReMixError):
    """The subject mask of one source image cannot be had (missing, of another size, not binary, unreadable): a
    failure of that candidate alone."""


class MaskSource(Protocol):
    """Where the subject masks of a generation come from."""

    identity: str
    """What names this source in the run's settings: ``masks:<resolved DIR>`` or
    ``gradcam:<resolved RUN>@<sha256 of its model.pt>:<threshold>``."""

    def subject_mask(self, source: str, size: tuple[int, int]) -> Image.Image:
        """The mask of DATA's image ``source`` (its relative path), of ``size`` = (width, height) of the image as
        decoded: mode ``L``, 255 = subject, 0 = background.

        Raises:
            MaskError: with the reason, naming the files.
        """
        ...


def mask_sha256(mask: Image.Image) -> str:
    """The SHA-256 of a mask's mode, size and pixels (not of its file: the same mask saved twice, or as a ``1``-mode
    PNG and an ``L``-mode one converted, is one mask once read)."""
    digest = hashlib.sha256(f"{mask.mode} {mask.width}x{mask.height}\n".encode())
    digest.update(mask.tobytes())
    return digest.hexdigest()


def binary_mask(image: Image.Image, name: str) -> Image.Image:
    """``image`` as a mode-``L`` mask of 0 and 255 (0/1 values read as 0/255).

    Raises:
        MaskError: it holds other values; the message names those found.
    """
    gray = image if image.mode == "L" else image.convert("L")
    pixels = np.asarray(gray)
    values = np.unique(pixels)
    if set(values.tolist()) <= {BACKGROUND, SUBJECT}:
        return gray
    if set(values.tolist()) <= {0, 1}:
        return Image.fromarray((pixels * SUBJECT).astype(np.uint8), mode="L")
    shown = ", ".join(str(v) for v in values[:SHOWN_VALUES]) + (", ..." if len(values) > SHOWN_VALUES else "")
    hint = (
        " (JPEG compression blurs edges: save masks as PNG)" if Path(name).suffix.lower() in (".jpg", ".jpeg") else ""
    )
    raise MaskError(
        f"mask {name} is not binary: it holds {len(values)} values ({shown}) where a mask holds only 0 and 255 "
        f"(or 0 and 1){hint}"
    )


class FolderMasks:
    """The masks of ``--masks DIR``: see the module's docstring."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.identity = f"masks:{folder.resolve()}"

    def candidates(self, source: str) -> list[Path]:
        """Where the mask of ``source`` may be, in the order looked at."""
        relpath = PurePosixPath(source)
        exact = self.folder.joinpath(*relpath.parts)
        swapped = exact.with_suffix(MASK_SUFFIX)
        return [exact] if swapped == exact else [exact, swapped]

    def subject_mask(self, source: str, size: tuple[int, int]) -> Image.Image:
        """See :meth:`MaskSource.subject_mask`."""
        places = self.candidates(source)
        path = next((p for p in places if p.is_file()), None)
        if path is None:
            looked = " and ".join(str(p) for p in places)
            raise MaskError(f"no mask for {source} in {self.folder} (looked for {looked})")
        try:
            image = decode_image(read_bytes(path), path)
        except ImageReadError as err:
            raise MaskError(f"the mask of {source} cannot be read: {err}") from None
        image = _oriented(image)
        if image.size != tuple(size):
            raise MaskError(
                f"mask {path} is {image.width}x{image.height} but its image {source} is {size[0]}x{size[1]}: a mask "
                "has its image's size"
            )
        return binary_mask(image, str(path))


def _oriented(image: Image.Image) -> Image.Image:
    """The mask turned by its EXIF orientation, as its image is read; unreadable EXIF is ignored, as it is there."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # malformed EXIF must not cost the mask (diffcoremix.data.images.to_rgb does the same)
        return image


def folder_masks(folder: str | Path, data: str | Path) -> FolderMasks:
    """The masks of ``--masks DIR``, for the images of DATA (see the module's docstring).

    Args:
        folder: DIR, which holds a mask file per image at the image's relative path in DATA.
        data: DATA.

    Raises:
        ConfigError: DIR is not a folder, or it is DATA or inside DATA (its masks would be read as a class of
            images, or as the images themselves).
    """
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError("masks", str(folder), "an existing folder of subject masks")
    root, resolved = Path(data).resolve(), path.resolve()
    if resolved == root or root in resolved.parents:
        raise ConfigError(
            "masks", str(folder), f"a folder outside DATA {data} (inside it, the masks would be read as images)"
        )
    return FolderMasks(path)


GRADCAM_PROVIDER = "diffcoremix.train.cam_masks"
"""The module of Grad-CAM masks (:func:`diffcoremix.train.cam_masks.gradcam_masks`): it needs a trained classifier, a
stage above generation, so generation finds it by name at run time rather than importing it."""


def open_masks(
    data: str | Path, *, folder: str | Path | None = None, run: str | Path | None = None, threshold: float = 0.5
) -> MaskSource:
    """The subject masks of ``inpaint``: a folder of masks (``--masks``), or a train run's Grad-CAM (``--mask-from``,
    thresholded at ``threshold`` of each map's maximum).

    Raises:
        ConfigError: neither or both given, a missing folder, a bad threshold; RunError: not a finished run.
    """
    if (folder is None) == (run is None):
        raise ConfigError("masks", folder, "a folder of subject masks, or --mask-from RUN instead: one of the two")
    if folder is not None:
        return folder_masks(folder, data)
    import importlib

    provider: Any = importlib.import_module(GRADCAM_PROVIDER)
    return provider.gradcam_masks(run, data, threshold)  # type: ignore[no-any-return]

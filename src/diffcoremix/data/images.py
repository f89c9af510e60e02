"""Opening images robustly: the one place where bytes become RGB pictures.

Every image the tool reads (real training images, later generated ones) goes through :func:`decode_image` and
:func:`to_rgb`: EXIF orientation applied; grayscale, palette, RGBA, CMYK and 16-bit converted to 8-bit RGB;
PIL's decompression-bomb guard kept (its warning level is treated as an error too). Failures raise
:class:`~diffcoremix.errors.ImageReadError` with a problem code that ``scan`` reports.
"""

from __future__ import annotations

import errno
import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from diffcoremix.errors import ImageReadError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
"""File extensions read as images, matched case-insensitively."""

BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited onto this colour (white), not left as whatever RGB they hold."""


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` has an image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def decode_image(data: bytes, path: str | Path = "<bytes>", *, max_pixels: int | None = None) -> Image.Image:
    """Decode an image fully, raising a typed error on any problem.

    Args:
        data: the file's bytes.
        path: the file's name, for error messages.
        max_pixels: refuse images with more pixels than this (before decoding). ``None`` keeps PIL's own
            limit (``PIL.Image.MAX_IMAGE_PIXELS``), whose warning level is also refused here.

    Returns:
        The decoded image, in its own mode (see :func:`to_rgb`).

    Raises:
        ImageReadError: with kind ``empty_file``, ``not_an_image``, ``too_large``, ``truncated`` or ``corrupt``.
    """
    if not data:
        raise ImageReadError(path, "empty_file", "zero-byte file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageReadError(path, "too_large", f"too large to decode safely: {err}") from None
        except UnidentifiedImageError:
            raise ImageReadError(path, "not_an_image", "not an image PIL can identify") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise ImageReadError(path, "corrupt", f"cannot read image header: {err}") from None
    over = over_max_pixels(image.size, max_pixels)
    if over is not None:
        raise ImageReadError(path, "too_large", over)
    try:
        image.load()
    except OSError as err:
        kind = "truncated" if "truncated" in str(err).lower() else "corrupt"
        raise ImageReadError(path, kind, f"{kind} image data: {err}") from None
    except (SyntaxError, ValueError, EOFError, IndexError, TypeError) as err:
        raise ImageReadError(path, "corrupt", f"corrupt image data: {err}") from None
    return image


def over_max_pixels(size: tuple[int, int], max_pixels: int | None) -> str | None:
    """Why an image of ``size`` is refused under ``max_pixels`` (None when it is not)."""
    width, height = size
    if max_pixels is None or width * height <= max_pixels:
        return None
    return f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}"


def _gray_from_array(array: np.ndarray, scale: float, transparent: object = None) -> Image.Image:
    """8-bit gray from a wide-range array; pixels equal to ``transparent`` (a tRNS value) become transparent."""
    scaled = np.clip(np.rint(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    gray = Image.fromarray(scaled, mode="L")
    if isinstance(transparent, int) and not isinstance(transparent, bool):
        alpha = np.where(array == transparent, 0, 255).astype(np.uint8)
        gray = Image.merge("LA", (gray, Image.fromarray(alpha, mode="L")))
    return gray


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode to 8-bit RGB.

    16-bit grayscale is scaled down (not clipped), transparency is composited onto white, CMYK and palette
    images go through PIL's conversions.
    """
    try:
        transposed = ImageOps.exif_transpose(image)
        if transposed is not None:
            image = transposed
    except Exception as err:  # malformed EXIF must not cost the image
        logger.debug("ignoring unreadable EXIF orientation: %s", err)
    mode = image.mode
    transparent = image.info.get("transparency")
    if mode.startswith("I;16"):
        image = _gray_from_array(np.asarray(image), 255.0 / 65535.0, transparent)
    elif mode == "I":
        array = np.asarray(image)
        image = _gray_from_array(array, 255.0 / 65535.0 if array.max(initial=0) > 255 else 1.0, transparent)
    elif mode == "F":
        array = np.asarray(image)
        image = _gray_from_array(array, 255.0 if array.max(initial=0.0) <= 1.0 else 1.0)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def open_image(path: str | Path, *, max_pixels: int | None = None) -> Image.Image:
    """Read, decode and convert one image file to RGB.

    Args:
        path: the image file.
        max_pixels: see :func:`decode_image`.

    Returns:
        An RGB ``PIL.Image.Image``, EXIF orientation applied.

    Raises:
        ImageReadError: the file cannot be read (``unreadable``, ``symlink_loop``, ``missing``) or decoded.

    Example:
        >>> image = open_image("data/001.Black_footed_Albatross/0001.jpg")  # doctest: +SKIP
        >>> image.mode
        'RGB'
    """
    return to_rgb(decode_image(read_bytes(path), path, max_pixels=max_pixels))


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes, with OS failures turned into :class:`ImageReadError` codes."""
    try:
        return Path(path).read_bytes()
    except PermissionError as err:
        raise ImageReadError(path, "unreadable", f"permission denied: {err.strerror}") from None
    except FileNotFoundError:
        raise ImageReadError(path, "missing", "file not found (or a broken symlink)") from None
    except IsADirectoryError:
        raise ImageReadError(path, "not_an_image", "a directory, not an image file") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ImageReadError(path, "symlink_loop", "symbolic link loop") from None
        raise ImageReadError(path, "unreadable", f"cannot read file: {err}") from None

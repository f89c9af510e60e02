"""Images inlined into the page as ``data:`` URIs, bounded in size.

A thumbnail is at most :data:`THUMB_SIDE` pixels on its longer side: small images (a 32 px CIFAR generation) are
kept at their size as PNG and scaled up by the page (``image-rendering: pixelated``), larger ones are shrunk and
stored as JPEG. So a card costs a few kilobytes whatever the images, and the page's size is bounded by its number
of cards.
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

from PIL import Image

from diffcoremix.data.images import open_image
from diffcoremix.errors import ImageReadError

logger = logging.getLogger(__name__)

THUMB_SIDE = 128
"""Longest side of a grid thumbnail, in pixels."""
FIGURE_WIDTH = 1400
"""Widest figure inlined as it is (wider PNGs of other commands, a large Grad-CAM grid, are shrunk to this)."""
JPEG_QUALITY = 82


def image_uri(image: Image.Image, *, max_side: int = THUMB_SIDE) -> str:
    """A ``data:`` URI of ``image`` shrunk to fit ``max_side`` (PNG up to 64 px, else JPEG)."""
    image = image.convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if max(image.size) <= 64:
        image.save(buffer, format="PNG", optimize=True)
        kind = "png"
    else:
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        kind = "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_thumbnail(path: Path, *, max_side: int = THUMB_SIDE) -> str | None:
    """The thumbnail URI of an image file, or None when it cannot be read (the card then says so)."""
    try:
        return image_uri(open_image(path), max_side=max_side)
    except (ImageReadError, OSError, ValueError) as err:
        logger.info("no thumbnail for %s: %s", path, err)
        return None


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_uri(path: Path, *, max_width: int = FIGURE_WIDTH) -> str | None:
    """A PNG figure of another command, inlined as it is, or shrunk to ``max_width`` (None when unreadable)."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            if image.width <= max_width and image.format == "PNG":
                return png_uri(data)
            image.load()
            scaled = image.convert("RGB")
    except (OSError, ValueError) as err:
        logger.warning("cannot read the figure %s (%s): left out of the report", path, err)
        return None
    scaled.thumbnail((max_width, max_width * scaled.height // max(scaled.width, 1) + 1), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    scaled.save(buffer, format="PNG", optimize=True)
    return png_uri(buffer.getvalue())

"""``diffcoremix sample-data``: a small class-folder dataset drawn procedurally, for demos and offline runs.

Three classes of simple shapes on textured backgrounds, drawn from a seeded generator, so the same seed gives
the same files on every machine. Real photographs for tests live outside the repository (``../shared/data``);
this set exists so that ``make demo`` needs nothing but the project itself.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diffcoremix.atomic import atomic_write_bytes
from diffcoremix.errors import DatasetError
from diffcoremix.seeds import derive_seed

MARKER = ".diffcoremix-sample.yaml"
"""A hidden file that marks a folder as made by :func:`make_sample_dataset` (and so safe to overwrite)."""

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle")


def _draw(shape: str, rng: np.random.Generator, size: int) -> Image.Image:
    # A smooth two-colour gradient background with noise, then one filled shape of random size and place.
    top, bottom = rng.integers(0, 256, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    background = top[None, None, :] * (1 - ramp) + bottom[None, None, :] * ramp
    background = background + rng.normal(0.0, 12.0, size=(size, size, 3))
    image = Image.fromarray(np.clip(np.broadcast_to(background, (size, size, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    extent = int(rng.integers(size // 3, size * 3 // 4))
    x0, y0 = (int(v) for v in rng.integers(0, size - extent, size=2))
    box = (x0, y0, x0 + extent, y0 + extent)
    fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x0 + extent // 2, y0), (x0, y0 + extent), (x0 + extent, y0 + extent)], fill=fill)
    return image


def _remove_own_files(out: Path) -> None:
    """Delete the images an earlier :func:`make_sample_dataset` wrote that still hold what it drew (its marker
    records the seed, count and size they are drawn from); keep anything else, a photo put there under one of its
    names included."""
    made = _marker(out / MARKER)
    for index, shape in enumerate(SHAPES, start=1):
        folder = out / f"{index:03d}.{shape}"
        for i in range(made.get("per_class", 0)):
            path = folder / f"{shape}_{i:04d}.png"
            rng = np.random.default_rng(derive_seed(made["seed"], "sample-data", shape, i))
            if path.is_file() and _pixels(path) == _draw(shape, rng, made["size"]).tobytes():
                path.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when nothing else is in it
    (out / MARKER).unlink()
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    if left:
        logger.warning("%s: %d file(s) not made by sample-data are kept: %s", out, len(left), ", ".join(left[:3]))


def _marker(path: Path) -> dict[str, int]:
    """The counts of a sample dataset's marker (empty where it is damaged: then no image is taken for ours)."""
    made: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition(": ")
        if key in ("per_class", "size", "seed") and value.strip().isdigit():
            made[key] = int(value)
    return made if len(made) == 3 else {}


def _pixels(path: Path) -> bytes | None:
    try:
        with Image.open(path) as image:
            pixels: bytes = image.convert("RGB").tobytes()
            return pixels
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def make_sample_dataset(
    out: str | Path, *, per_class: int = 8, size: int = 96, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write the sample dataset: ``out/001.circle/``, ``out/002.square/``, ``out/003.triangle/``.

    Args:
        out: the folder to create.
        per_class: images per class.
        size: side of each (square) image in pixels.
        seed: the seed every image is drawn from.
        overwrite: replace the files of an earlier sample dataset in ``out`` (never any other folder, and never a
            file that sample-data did not write).

    Returns:
        The dataset folder.

    Raises:
        DatasetError: ``out`` exists and is not an empty folder or (with ``overwrite``) an earlier sample set.
    """
    out = Path(out)
    if per_class < 1 or size < 16:
        raise DatasetError(f"sample dataset needs per_class >= 1 and size >= 16, got {per_class} and {size}")
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            pass
        elif overwrite and (out / MARKER).is_file():
            _remove_own_files(out)
        else:
            hint = "" if overwrite else "; pass --overwrite to replace an earlier sample dataset"
            raise DatasetError(f"{out} exists and is not a sample dataset made by diffcoremix{hint}")
    out.mkdir(parents=True, exist_ok=True)
    kept = []
    for index, shape in enumerate(SHAPES, start=1):
        folder = out / f"{index:03d}.{shape}"
        folder.mkdir(exist_ok=True)
        for i in range(per_class):
            path = folder / f"{shape}_{i:04d}.png"
            if path.exists():  # a file of the user's under this name (ours were removed above): it stays
                kept.append(path.relative_to(out).as_posix())
                continue
            rng = np.random.default_rng(derive_seed(seed, "sample-data", shape, i))
            buffer = io.BytesIO()
            _draw(shape, rng, size).save(buffer, format="PNG")
            atomic_write_bytes(path, buffer.getvalue())
    if kept:
        logger.warning("%s: %d file(s) that sample-data did not write stand under its names and are kept: %s", out,
                       len(kept), ", ".join(kept[:3]))  # fmt: skip
    (out / MARKER).write_text(
        f"made_by: diffcoremix sample-data\nper_class: {per_class}\nsize: {size}\nseed: {seed}\n",
        encoding="utf-8",
    )
    return out

"""``diffcoremix mix-preview``: real | partner | pixel mix | patch mix, one row per sample (METHOD.md §7).

The paper's training-batch figure, made readable: column headers, the class name on each row, each mix's lambda
(the share of the real image) on its tile, and a "no partner" tile where a sample has none (its mixes are the
real image unchanged). Drawn with matplotlib's Agg backend, without pyplot's global state.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from diffcoremix.atomic import atomic_write_bytes
from diffcoremix.counterparts import available_memory
from diffcoremix.data.checks import ScanConfig
from diffcoremix.data.folder import DatasetListing, list_images
from diffcoremix.data.sources import usable_sources
from diffcoremix.errors import ConfigError, DatasetError
from diffcoremix.mix.mixers import make_mixer
from diffcoremix.mix.paired import PARTNER_NONE, PARTNER_OWN, PairedDataset, collate_pairs

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLUMNS = ("real", "partner", "pixel mix", "patch mix")
"""The column headers, left to right."""

_RULE_NAMES = {PARTNER_OWN: "own counterpart"}
_MIN_TILE_PX = 120  # tiles are drawn at least this large, so that their labels stay legible


@dataclass(frozen=True)
class PreviewRows:
    """What the preview shows, one row per sample."""

    class_names: list[str]
    """The class name of each row (the prompt word, from the class folder)."""
    images: torch.Tensor
    """``(N, 4, C, H, W)`` uint8: real, partner, pixel mix, patch mix."""
    lam: torch.Tensor
    """``(N, 2)`` the share of the real image in the pixel mix and in the patch mix."""
    partner_rule: torch.Tensor
    """``(N,)`` ``PARTNER_*`` codes; ``PARTNER_NONE`` where the sample has no partner."""


MAX_CANVAS_PX = 32_768
"""The longest side of a preview PNG (matplotlib's renderer refuses 65,536 px; a preview needs far less)."""


def _check_counts(*, per_class: int, max_classes: int, size: int) -> None:
    """Counts of at least 1, and a grid that fits the renderer and half of the memory available now."""
    for name, value in {"per_class": per_class, "max_classes": max_classes, "size": size}.items():
        if value < 1:
            raise ConfigError(name, value, ">= 1")
    rows, tile = per_class * max_classes, max(size, _MIN_TILE_PX)
    width, height = 4 * tile, rows * tile  # at most: the dataset may have fewer classes or images
    available = available_memory()
    memory = width * height * 4 * 3  # the RGBA canvas, and the tiles and the encoder's copies
    if max(width, height) > MAX_CANVAS_PX or (available is not None and memory > available // 2):
        most = min(MAX_CANVAS_PX // 4, MAX_CANVAS_PX // rows)
        if most < _MIN_TILE_PX:  # too many rows at any size
            most_rows = MAX_CANVAS_PX // _MIN_TILE_PX
            raise ConfigError("per_class", per_class, f"such that per class x classes is at most {most_rows} rows "
                              f"({per_class} x {max_classes} = {rows:,})")  # fmt: skip
        raise ConfigError(
            "size", size, f"at most {most:,} px for up to {rows:,} rows ({per_class} per class x {max_classes} "
            f"classes): the grid would be {width:,} x {height:,} px (a preview is at most {MAX_CANVAS_PX:,} px a side)"
        )  # fmt: skip


def preview_rows(
    data: str | Path | DatasetListing,
    synthetic: str | Path,
    *,
    per_class: int = 2,
    max_classes: int = 8,
    size: int = 128,
    seed: int = 0,
) -> PreviewRows:
    """Pair, resize to ``size x size`` and mix up to ``per_class`` images of each of the first ``max_classes`` classes.

    Images with a partner are preferred; a class without any shows its first images, unmixed.

    Raises:
        ConfigError: ``per_class``, ``max_classes`` or ``size`` below 1.
        DatasetError: DATA or the synthetic folder cannot be used, or there is no image to show.
    """
    from torchvision.transforms import v2

    _check_counts(per_class=per_class, max_classes=max_classes, size=size)
    transform = v2.Compose([v2.Resize((size, size), antialias=True), v2.PILToTensor()])
    listing = data if isinstance(data, DatasetListing) else list_images(data)
    shown = [c for c in listing.classes if c in listing.by_class()][:max_classes]
    # Only the classes shown are decoded; what of them cannot be read is named in one warning line, and so are the
    # images below generation's minimum side (scan's): shown all the same, resized as training resizes them.
    listing = usable_sources(listing.subset(shown), scan=ScanConfig(), keep=("too_small",)).listing
    dataset = PairedDataset(listing, synthetic, transform=transform, seed=seed)
    chosen: list[int] = []
    in_use = dataset.listing.by_class()  # the classes of a --classes subset, else all
    for cls in [c for c in dataset.classes if c in in_use][:max_classes]:
        indices = [i for i, item in enumerate(dataset.items) if item.class_folder == cls]
        with_partner = [i for i in indices if dataset.partner_of(i)[0] is not None]
        chosen += (with_partner or indices)[:per_class]
    if not chosen:
        raise DatasetError(f"no images to preview in {data}")
    batch = collate_pairs([dataset[i] for i in chosen])
    generator = torch.Generator().manual_seed(seed)
    pixel = make_mixer("pixel")(**batch, generator=generator)
    patch = make_mixer("patch")(**batch, generator=generator)
    names = dataset.listing.class_names()
    return PreviewRows(
        class_names=[names[dataset.items[i].class_folder] for i in chosen],
        images=torch.stack([batch["x"], batch["partner"], pixel.images, patch.images], dim=1),
        lam=torch.stack([pixel.lam, patch.lam], dim=1),
        partner_rule=batch["partner_rule"],
    )


def _label(axes: Axes, text: str) -> None:
    """Write ``text`` in a dark box at the bottom left of a tile."""
    box = {"facecolor": "black", "alpha": 0.65, "pad": 1.5, "edgecolor": "none"}
    axes.text(0.03, 0.03, text, transform=axes.transAxes, fontsize=8, color="white", bbox=box)


def _no_partner(axes: Axes) -> None:
    """A grey tile that says so."""
    axes.set_facecolor("0.9")
    axes.text(0.5, 0.5, "no partner", transform=axes.transAxes, fontsize=9, ha="center", va="center")


def preview_figure(rows: PreviewRows) -> Figure:
    """Draw the rows on a matplotlib figure (Agg canvas): headers, class names, lambdas, "no partner" tiles."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count, size = rows.images.shape[0], rows.images.shape[-1]
    tile = max(size, _MIN_TILE_PX) / 100  # inches at 100 dpi
    figure = Figure(figsize=(4 * tile + 1.6, count * tile + 0.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(count, 4, squeeze=False)
    figure.suptitle("λ = share of the real image in the mix", fontsize=9)
    for row in range(count):
        has_partner = int(rows.partner_rule[row]) != PARTNER_NONE
        for column in range(4):
            axes = grid[row, column]
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(COLUMNS[column], fontsize=10)
            if column == 1 and not has_partner:
                _no_partner(axes)
                continue
            axes.imshow(rows.images[row, column].permute(1, 2, 0).numpy(), interpolation="nearest")
            if column == 1:
                _label(axes, _RULE_NAMES.get(int(rows.partner_rule[row]), "same-class image"))
            elif column >= 2:
                lam = float(rows.lam[row, column - 2])
                _label(axes, f"λ = {lam:.2f}" if has_partner else "λ = 1 (not mixed)")
        grid[row, 0].set_ylabel(rows.class_names[row], fontsize=9, rotation=0, ha="right", va="center")
    return figure


def mix_preview(
    data: str | Path | DatasetListing,
    synthetic: str | Path,
    out: str | Path,
    *,
    per_class: int = 2,
    max_classes: int = 8,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write a PNG, one row per sample: real, partner, pixel mix, patch mix (see :func:`preview_rows`).

    Args:
        data: the real dataset (or a listing of part of it).
        synthetic: a filtered generate/augment output folder.
        out: the PNG file to write (its folder is created).
        per_class: samples per class.
        max_classes: classes shown (the first ones, sorted).
        size: the side of the square tiles the images are resized to, in pixels.
        seed: seeds the partner choice and the mixing.

    Returns:
        The PNG file.

    Raises:
        ConfigError: ``per_class``, ``max_classes`` or ``size`` below 1.
        DatasetError: DATA or the synthetic folder cannot be used, or there is no image to show.
    """
    _check_counts(per_class=per_class, max_classes=max_classes, size=size)  # before any work
    rows = preview_rows(data, synthetic, per_class=per_class, max_classes=max_classes, size=size, seed=seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    preview_figure(rows).savefig(buffer, format="png")
    atomic_write_bytes(out, buffer.getvalue())
    return out

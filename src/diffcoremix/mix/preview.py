"""``diffcoremix mix-preview``: a grid of real | partner | pixel mix | patch mix (the paper's training-batch figure)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from diffcoremix.mix.mixers import PairMix
from diffcoremix.mix.paired import PairedDataset


def mix_preview(
    data: str | Path,
    synthetic: str | Path,
    out: str | Path,
    *,
    per_class: int = 2,
    max_classes: int = 8,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write a PNG grid, one row per sample: real, partner, pixel mix, patch mix (a partner-less row repeats).

    Returns:
        The PNG file.
    """
    from torchvision.transforms import v2
    from torchvision.utils import make_grid

    transform = v2.Compose([v2.Resize((size, size), antialias=True), v2.PILToTensor()])
    dataset = PairedDataset(data, synthetic, transform=transform, seed=seed)
    chosen: list[int] = []
    for cls in dataset.listing.classes[:max_classes]:
        indices = [i for i, item in enumerate(dataset.items) if item.class_folder == cls]
        with_partner = [i for i in indices if dataset.partner_of(i)[0] is not None]
        chosen += (with_partner or indices)[:per_class]
    if not chosen:
        raise ValueError("no images to preview")
    samples = [dataset[i] for i in chosen]
    x = torch.stack([s[0] for s in samples])
    partner = torch.stack([s[2] for s in samples])
    y = torch.tensor([s[1] for s in samples])
    has = torch.tensor([s[3] for s in samples])
    generator = torch.Generator().manual_seed(seed)
    pixel = PairMix(mode="pixel", p=1.0)(x, y, partner=partner, has_partner=has, generator=generator).images
    patch = PairMix(mode="patch", p=1.0)(x, y, partner=partner, has_partner=has, generator=generator).images
    rows = torch.stack([x, partner, pixel, patch], dim=1).flatten(0, 1)  # real, partner, pixel, patch per sample
    grid = make_grid(rows, nrow=4, padding=2, pad_value=255)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(out)
    return out

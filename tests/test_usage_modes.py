"""How synthetic images enter training (DiffDA-Eval's usage modes, issue 28): each mode's batch is what the mode
describes, built by the code ``train`` runs (``paired_dataset`` and the method's mixer from its table entry).

- ``fc``: the real images and every accepted generated one are the samples;
- ``fr``: the accepted generated images alone, each with its class's label;
- ``lrr``: a sample becomes one of its own counterparts with probability p, its label kept;
- ``grr``: a sample becomes any generated image, of any class, and takes that image's label, with probability p (the
  rate over many batches is p within a binomial bound);
- ``diffusemix``: a generated sample's partner is its own real source, transformed with the sample's own draws.

The generation run is real (the tiny preset, filtered, made once per module, in-process).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import binom

from diffcoremix import PromptsConfig
from diffcoremix.augmentation import augment
from diffcoremix.data.folder import ImageItem, list_images
from diffcoremix.filter import FilterConfig
from diffcoremix.generate import GenerateConfig
from diffcoremix.mix import PARTNER_ANY, PARTNER_NONE, PARTNER_OWN, PARTNER_SOURCE, PairedDataset, collate_pairs
from diffcoremix.mix.mixers import KIND_NONE, KIND_SUBSTITUTE
from diffcoremix.mix.paired import accepted_images
from diffcoremix.modes import fit
from diffcoremix.train import TrainConfig, train
from diffcoremix.train.data import SYNTHETIC_PREFIX, paired_dataset
from diffcoremix.train.loop import _mixer
from diffcoremix.train.methods import METHODS, TRAIN_METHODS
from diffcoremix.train.transforms import train_transform

CLASSES = {"001.cat": 8, "002.dog": 8, "003.eel": 8}


@pytest.fixture(scope="module")
def data(three_classes: Path) -> Path:
    return three_classes


@pytest.fixture(scope="module")
def generated(three_classes_generated: Path) -> Path:
    """A real filtered generation run of the tiny preset (one counterpart per image, all kept)."""
    return three_classes_generated


def _dataset(data: Path, synthetic: Path, method: str, **options: Any) -> PairedDataset:
    config = TrainConfig(method=method, **options)
    transform = train_transform(config.transform, config.img_size, config.mean, config.std)
    return paired_dataset(list_images(data), config, synthetic, transform, set())


def _outputs(generated: Path) -> dict[Path, dict[str, Any]]:
    return {generated / row["output"]: row for row in accepted_images(generated)}


def test_fc_adds_every_accepted_image_and_fr_trains_on_them_alone(data: Path, generated: Path) -> None:
    real = {item.path for item in list_images(data).items}
    rows = _outputs(generated)
    fc = _dataset(data, generated, "fc")
    assert {item.path for item in fc.items} == real | set(rows)
    fr = _dataset(data, generated, "fr")
    assert {item.path for item in fr.items} == set(rows)
    for item in fr.items:
        assert item.relpath.startswith(SYNTHETIC_PREFIX)
        assert fr.classes[item.label] == rows[item.path]["class_folder"] == item.class_folder
    assert all(fr.partner_of(i) == (None, PARTNER_NONE) for i in range(len(fr)))


def test_lrr_replaces_a_sample_by_its_own_counterpart_and_keeps_its_label(data: Path, generated: Path) -> None:
    dataset = _dataset(data, generated, "lrr", mix_prob=1.0)
    own = {row["source"]: path for path, row in _outputs(generated).items()}
    for i, item in enumerate(dataset.items):
        assert dataset.partner_of(i) == (own[item.relpath], PARTNER_OWN)
    batch = collate_pairs([dataset[i] for i in range(len(dataset))])
    mixed = _mixer(TrainConfig(method="lrr", mix_prob=1.0), 3, soft=dataset.has_soft_labels)(
        **batch, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(mixed.images, batch["partner"])  # every sample is now its counterpart
    assert torch.equal(mixed.targets, batch["y"])  # with its own label


def test_grr_swaps_at_rate_p_for_any_generated_image_and_takes_its_label(data: Path, generated: Path) -> None:
    p = 0.1
    dataset = _dataset(data, generated, "grr", mix_prob=p)
    rows = _outputs(generated)
    assert dataset.has_soft_labels  # the label may change: targets are (K,) vectors
    mixer = _mixer(TrainConfig(method="grr", mix_prob=p), 3, soft=dataset.has_soft_labels)
    swaps = draws = 0
    pairs: set[tuple[int, int]] = set()
    for epoch in range(40):
        batch = collate_pairs([dataset[(epoch, i)] for i in range(len(dataset))])
        assert torch.equal(batch["partner_rule"], torch.full((24,), PARTNER_ANY))
        for i in range(24):  # the partner's target is its own class's one-hot (these images have no soft label)
            path, _ = dataset.partner_of(i, epoch)
            assert path is not None
            klass = dataset.class_to_idx[rows[path]["class_folder"]]
            assert torch.equal(batch["partner_y"][i], torch.eye(3)[klass])
            pairs.add((dataset.items[i].label, klass))
        mixed = mixer(**batch, generator=torch.Generator().manual_seed(epoch))
        swapped = mixed.kind == KIND_SUBSTITUTE
        assert torch.equal(mixed.images[swapped], batch["partner"][swapped])
        assert torch.equal(mixed.targets[swapped], batch["partner_y"][swapped])  # the image's label comes along
        assert torch.equal(mixed.targets[~swapped], batch["y"][~swapped])
        assert torch.equal(mixed.kind[~swapped], torch.full((int((~swapped).sum()),), KIND_NONE, dtype=torch.int8))
        assert torch.allclose(mixed.targets.sum(dim=1), torch.ones(24))  # every target sums to 1
        swaps, draws = swaps + int(swapped.sum()), draws + 24
    low, high = binom.interval(0.9999, draws, p)
    assert low <= swaps <= high, (swaps, draws)
    assert pairs == {(a, b) for a in range(3) for b in range(3)}  # any image: every class's samples meet every class


def test_diffusemix_pairs_each_generated_sample_with_its_own_source_aligned(
    data: Path, generated: Path, tmp_path: Path
) -> None:
    dataset = _dataset(data, generated, "diffusemix")
    rows = _outputs(generated)
    real = {item.relpath: item.path for item in list_images(data).items}
    generated_samples = 0
    for i, item in enumerate(dataset.items):
        path, rule = dataset.partner_of(i)
        if item.path in rows:
            assert (path, rule) == (real[rows[item.path]["source"]], PARTNER_SOURCE)
            generated_samples += 1
        else:
            assert (path, rule) == (None, PARTNER_NONE)  # real samples pass through
    assert generated_samples == 24
    # the source is fitted to its sample's size and takes the sample's own draws (the same crop and flip): a sample
    # that is its source fitted, as generation fits it, comes out equal to its partner, with every transform
    # (imagenet's crop is drawn within each image's own size)
    rng = np.random.default_rng(0)
    for transform in ("imagenet", "cifar"):
        config = TrainConfig(method="diffusemix", transform=transform, img_size=24)
        sources = {}
        for i, (width, height) in enumerate(((64, 48), (40, 72), (32, 32))):
            source = tmp_path / f"source{i}.png"
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(source)
            sample = tmp_path / f"sample{i}.png"
            fit(Image.open(source).convert("RGB"), 32, 32).save(sample)
            sources[sample] = source
        listing = dataclasses.replace(list_images(data), items=tuple(
            ImageItem(path, f"s/{path.name}", 0, "001.cat") for path in sources))  # fmt: skip
        pairs = PairedDataset(listing, mode="source", sources=sources,
                              transform=train_transform(config.transform, 24, config.mean, config.std))  # fmt: skip
        for epoch in range(4):
            for i in range(len(pairs)):
                image, _label, partner, has_partner, rule = pairs[(epoch, i)]
                assert has_partner
                assert rule == PARTNER_SOURCE
                assert torch.allclose(image, partner, atol=1e-5), (transform, epoch, i)


@pytest.mark.parametrize("method", [m for m in METHODS if TRAIN_METHODS.get(m).usage != "none"])
def test_held_out_sources_never_reach_training_through_their_generations(
    method: str, data: Path, generated: Path
) -> None:
    """A validation split's images are held out: their generated images are neither samples nor partners."""
    listing = list_images(data)
    held = {item.relpath for item in listing.items[::3]}
    train_listing = dataclasses.replace(listing, items=tuple(i for i in listing.items if i.relpath not in held))
    config = TrainConfig(method=method)
    dataset = paired_dataset(train_listing, config, generated, None, held)
    leaked = {path for path, row in _outputs(generated).items() if row["source"] in held}
    assert leaked  # there is something to hold out
    seen = {item.path for item in dataset.items}
    for epoch in range(3):
        seen |= {dataset.partner_of(i, epoch)[0] for i in range(len(dataset))}
    assert not seen & leaked


def test_fr_counts_its_epochs_in_its_own_images(data: Path, tmp_path: Path) -> None:
    """fr trains on fewer images than DATA holds: --epochs is in epochs of those (a budget under one epoch of the real
    images is not refused)."""
    half = tmp_path / "half"
    augment(data, half, PromptsConfig(fraction=0.5), GenerateConfig(preset="tiny", num_inference_steps=1, height=32,
            width=32), FilterConfig(embedder="tiny", threshold=-1.0))  # fmt: skip
    assert len(accepted_images(half)) == 12
    config = TrainConfig(method="fr", epochs=2, batch_size=8)
    summary = train(data, config=config, output=tmp_path / "run", synthetic=half).summary
    assert (summary["steps"], summary["steps_per_epoch"], summary["train_samples"]) == (2, 1, 12)

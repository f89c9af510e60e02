"""Paired data: the partner rule (own counterpart, then class, then none) on a hand-built manifest; workers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from diffcoremix.errors import DatasetError
from diffcoremix.manifest import shard_path
from diffcoremix.mix.paired import (
    PARTNER_CLASS,
    PARTNER_NONE,
    PARTNER_OWN,
    PARTNER_REAL,
    PairedDataset,
    collate_pairs,
    with_synthetic_samples,
)

from .helpers import make_class_folders


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    """Real: a/{0,1,2}, b/{0,1}, c/{0}. Generated and accepted: two of a/img_000 (values 10, 11), one of b/img_001
    (value 20); rejected: one of a/img_001 and one of c/img_000."""
    data = make_class_folders(tmp_path / "data", {"a": 3, "b": 2, "c": 1}, size=8)
    out = tmp_path / "out"
    rows = [
        ("a/img_000.png", 0, "a", 10, True),
        ("a/img_000.png", 1, "a", 11, True),
        ("a/img_001.png", 0, "a", 12, False),
        ("b/img_001.png", 0, "b", 20, True),
        ("c/img_000.png", 0, "c", 30, False),
    ]
    records, decisions = [], []
    for index, (source, k, cls, value, accepted) in enumerate(rows):
        output = f"images/{source}.k{k}.png"
        _png(out / output, value)
        key = f"{source}#{k}"
        records.append({"index": index, "key": key, "status": "ok", "source": source, "class_folder": cls,
                        "output": output})  # fmt: skip
        decisions.append({"key": key, "accepted": accepted, "score": 0.9 if accepted else 0.1})
    shard_path(out, 0, 1).parent.mkdir(parents=True)
    shard_path(out, 0, 1).write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "filter.jsonl").write_text("".join(json.dumps(d) + "\n" for d in decisions))
    return data, out


def test_partner_rule_own_then_class_then_none(world: tuple[Path, Path]) -> None:
    data, out = world
    dataset = PairedDataset(data, out)
    relpaths = [item.relpath for item in dataset.items]
    rules = {relpaths[i]: dataset.partner_of(i) for i in range(len(dataset))}
    own = {out / "images/a/img_000.png.k0.png", out / "images/a/img_000.png.k1.png"}
    assert rules["a/img_000.png"][1] == PARTNER_OWN
    assert rules["a/img_000.png"][0] in own
    # a/img_001's only counterpart was rejected: it takes an accepted image of class a
    assert rules["a/img_001.png"][1] == PARTNER_CLASS
    assert rules["a/img_001.png"][0] in own
    assert rules["b/img_001.png"] == (out / "images/b/img_001.png.k0.png", PARTNER_OWN)
    assert rules["b/img_000.png"] == (out / "images/b/img_001.png.k0.png", PARTNER_CLASS)
    assert rules["c/img_000.png"] == (None, PARTNER_NONE)  # its class has nothing accepted


def test_samples_carry_the_partner_and_say_which_rule(world: tuple[Path, Path]) -> None:
    data, out = world
    dataset = PairedDataset(data, out, transform=v2.Compose([v2.PILToTensor()]))
    image, label, partner, has, rule = dataset[len(dataset) - 1]  # c/img_000: no partner
    assert (label, has, rule) == (2, False, PARTNER_NONE)
    assert torch.equal(partner, image)
    image, label, partner, has, rule = dataset[3]  # b/img_000 -> b's accepted image, value 20
    assert (label, has, rule) == (1, True, PARTNER_CLASS)
    assert int(partner.float().mean()) == 20


def test_choices_are_deterministic_per_seed_and_epoch(world: tuple[Path, Path]) -> None:
    data, out = world
    dataset = PairedDataset(data, out, seed=3)
    picks = {}
    for epoch in range(8):
        dataset.set_epoch(epoch)
        picks[epoch] = dataset.partner_of(0)[0]
    assert PairedDataset(data, out, seed=3).partner_of(0)[0] == picks[0]
    assert len(set(picks.values())) == 2  # both of a/img_000's counterparts get used over epochs


def test_the_same_batches_with_several_workers(world: tuple[Path, Path]) -> None:
    data, out = world
    dataset = PairedDataset(data, out, transform=v2.PILToTensor())
    batches = []
    for workers in (0, 2):
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=collate_pairs)
        batches.append([b for b in loader])
    for a, b in zip(*batches, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert batches[0][0]["partner_rule"].tolist() == [PARTNER_OWN, PARTNER_CLASS, PARTNER_CLASS, PARTNER_CLASS]


def test_real_mode_pairs_with_another_real_image_of_the_class(world: tuple[Path, Path]) -> None:
    data, _ = world
    dataset = PairedDataset(data, mode="real")
    for i, item in enumerate(dataset.items):
        partner, rule = dataset.partner_of(i)
        if item.class_folder == "c":
            assert (partner, rule) == (None, PARTNER_NONE)
        else:
            assert rule == PARTNER_REAL
            assert partner != item.path
            assert partner is not None
            assert partner.parent.name == item.class_folder


def test_extra_samples_mode_appends_accepted_images(world: tuple[Path, Path]) -> None:
    data, out = world
    dataset = with_synthetic_samples(data, out)
    assert len(dataset) == 6 + 3
    assert [dataset[i][1] for i in range(6, 9)] == [0, 0, 1]


def test_an_unfiltered_run_is_refused(world: tuple[Path, Path]) -> None:
    data, out = world
    (out / "filter.jsonl").unlink()
    with pytest.raises(DatasetError, match="has not been filtered"):
        PairedDataset(data, out)


def test_mix_preview_grid(world: tuple[Path, Path], tmp_path: Path) -> None:
    from .helpers import run_cli

    data, out = world
    grid = tmp_path / "grid.png"
    result = run_cli("mix-preview", data, "--synthetic", out, "-o", grid, "--per-class", "2", "--size", "16")
    assert result.returncode == 0, result.stderr
    # rows: 2 of a, 2 of b, 1 of c (it has one image); 4 columns of 16 px tiles with 2 px padding
    assert Image.open(grid).size == (2 + 4 * 18, 2 + 5 * 18)
    bad = run_cli("mix-preview", data, "--synthetic", out, "-o", grid, "--size", "0")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "diffcoremix mix-preview: error: --size must be >= 1, got 0"

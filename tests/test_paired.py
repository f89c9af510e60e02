"""Paired data: the partner rule (own counterpart, then class, then none) on a hand-built manifest; workers."""

from __future__ import annotations

import copy
import itertools
import json
import pickle
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from diffcoremix.errors import ConfigError, DatasetError
from diffcoremix.manifest import shard_path
from diffcoremix.mix import (
    PARTNER_CLASS,
    PARTNER_NONE,
    PARTNER_OWN,
    PARTNER_REAL,
    EpochSampler,
    PairBatch,
    PairedDataset,
    collate_pairs,
    with_synthetic_samples,
)
from diffcoremix.mix.preview import COLUMNS, mix_preview, preview_figure, preview_rows
from diffcoremix.seeds import generator_for

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


def test_the_epoch_sampler_yields_epoch_and_index_in_a_seeded_order() -> None:
    sampler = EpochSampler(5)
    assert list(sampler) == [(0, i) for i in range(5)]
    sampler.set_epoch(3)
    assert list(sampler) == [(3, i) for i in range(5)]
    shuffled = EpochSampler(range(50), shuffle=True, seed=7)
    orders = []
    for epoch in range(3):
        shuffled.set_epoch(epoch)
        epochs, order = zip(*shuffled, strict=True)
        assert set(epochs) == {epoch}
        assert order == tuple(torch.randperm(50, generator=generator_for(7, "shuffle", epoch)).tolist())
        orders.append(order)
    assert sorted(orders[0]) == list(range(50))
    assert len(set(orders)) == 3  # a new order every epoch
    assert len(shuffled) == 50


@pytest.mark.filterwarnings("ignore:PairedDataset.set_epoch")  # set on purpose against the pairs' epoch
def test_an_epoch_index_pair_carries_its_epoch_and_a_plain_index_uses_set_epoch(world: tuple[Path, Path]) -> None:
    data, out = world
    dataset = PairedDataset(data, out, transform=CROP_AND_FLIP)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        by_int = collate_pairs([dataset[i] for i in range(len(dataset))])
        dataset.set_epoch(99)
        by_pair = collate_pairs([dataset[(epoch, i)] for i in range(len(dataset))])
        assert all(torch.equal(by_int[k], by_pair[k]) for k in by_int)  # type: ignore[literal-required]


def test_transforms_draw_from_per_image_streams_and_leave_the_callers_state_alone(world: tuple[Path, Path]) -> None:
    data, out = world
    draw = PairedDataset(data, out, transform=lambda image: float(torch.rand(())))  # ignores the image: the stream
    before = torch.random.get_rng_state()
    real, _, partner, _, _ = draw[(1, 0)]
    assert torch.equal(torch.random.get_rng_state(), before)
    assert real != partner  # the real image and its partner have streams of their own
    assert draw[(1, 0)][0:3:2] == (real, partner)  # the same (seed, epoch, image): the same draws
    assert draw[(2, 0)][0] != real  # a new epoch: new draws
    assert PairedDataset(data, out, seed=1, transform=draw.transform)[(1, 0)][0] != real  # a new seed: new draws
    assert draw[(1, 1)][0] != real  # another image: another stream


CROP_AND_FLIP = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(8, antialias=True), v2.RandomHorizontalFlip()])


def _three_epochs(dataset: PairedDataset, workers: int, persistent: bool) -> list[list[PairBatch]]:
    """Each epoch's batches, in the recommended loop: only the sampler is told the epoch."""
    sampler = EpochSampler(dataset, shuffle=True, seed=1)
    loader = DataLoader(
        dataset, batch_size=4, sampler=sampler, num_workers=workers, persistent_workers=persistent,
        collate_fn=collate_pairs,
    )  # fmt: skip
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append(list(loader))
    return epochs


def test_the_same_batches_every_epoch_with_no_workers_two_workers_and_two_persistent_workers(
    world: tuple[Path, Path],
) -> None:
    data, out = world
    dataset = PairedDataset(data, out, transform=CROP_AND_FLIP, seed=2)
    runs = {config: _three_epochs(dataset, *config) for config in [(0, False), (2, False), (2, True)]}
    reference = runs[(0, False)]
    for config, epochs in runs.items():
        for epoch, (batches, expected) in enumerate(zip(epochs, reference, strict=True)):
            for a, b in zip(batches, expected, strict=True):
                assert all(torch.equal(a[k], b[k]) for k in a), (config, epoch)  # type: ignore[literal-required]
    # ...and they are the batches of that epoch: the crops and the partners change from one epoch to the next
    sampler = EpochSampler(dataset, shuffle=True, seed=1)
    per_index = []
    for epoch, batches in enumerate(reference):
        sampler.set_epoch(epoch)
        order = [index for _, index in sampler]
        keys = ("x", "partner", "y", "has_partner")
        stacked = {k: torch.cat([b[k] for b in batches]) for k in keys}  # type: ignore[literal-required]
        at = torch.tensor(order).argsort()
        per_index.append({k: v[at] for k, v in stacked.items()})
        expected = collate_pairs([dataset[(epoch, i)] for i in order])
        assert torch.equal(stacked["x"], expected["x"])
    for before, after in itertools.pairwise(per_index):
        assert torch.equal(before["y"], after["y"])
        assert all(not torch.equal(b, a) for b, a in zip(before["x"], after["x"], strict=True))  # every crop
        has = before["has_partner"]  # (the others' partner is their own crop)
        partner_values = [p[has].float().mean(dim=(1, 2, 3)).round() for p in (before["partner"], after["partner"])]
        assert not torch.equal(*partner_values)  # some partner changes (class a's are uniform images of 10 or 11)


def test_classes_and_class_to_idx_are_those_of_image_folder(world: tuple[Path, Path]) -> None:
    from torchvision.datasets import ImageFolder

    data, out = world
    dataset, folder = PairedDataset(data, out), ImageFolder(str(data))
    assert dataset.classes == folder.classes
    assert dataset.class_to_idx == folder.class_to_idx
    assert [label for *_, label in folder.samples] == [dataset[i][1] for i in range(len(dataset))]


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


def test_mix_preview_rows_pair_mix_and_say_when_there_is_no_partner(world: tuple[Path, Path]) -> None:
    data, out = world
    rows = preview_rows(data, out, per_class=2, size=16)
    # 2 of a, 2 of b, 1 of c (it has one image, and nothing accepted)
    assert rows.class_names == ["a", "a", "b", "b", "c"]
    assert rows.images.shape == (5, 4, 3, 16, 16)
    assert rows.partner_rule.tolist() == [PARTNER_OWN, PARTNER_CLASS, PARTNER_CLASS, PARTNER_OWN, PARTNER_NONE]
    assert rows.lam[-1].tolist() == [1.0, 1.0]  # not mixed: the mixes are the real image
    assert torch.equal(rows.images[-1, 2], rows.images[-1, 0])
    assert ((rows.lam >= 0) & (rows.lam <= 1)).all()


def test_mix_preview_figure_has_headers_class_names_lambdas_and_a_no_partner_tile(world: tuple[Path, Path]) -> None:
    data, out = world
    rows = preview_rows(data, out, per_class=2, size=16)
    grid = preview_figure(rows).axes
    assert [axes.get_title() for axes in grid[:4]] == list(COLUMNS) == ["real", "partner", "pixel mix", "patch mix"]
    assert [grid[4 * r].get_ylabel() for r in range(5)] == rows.class_names
    texts = [[t.get_text() for t in axes.texts] for axes in grid]
    assert texts[4 * 4 + 1] == ["no partner"]
    assert sum(t == ["no partner"] for t in texts) == 1
    for r in range(4):
        assert texts[4 * r + 2:4 * r + 4] == [[f"λ = {lam:.2f}"] for lam in rows.lam[r].tolist()]  # fmt: skip
    assert texts[4 * 4 + 2] == ["λ = 1 (not mixed)"]


def test_mix_preview_writes_a_png_and_checks_its_arguments(world: tuple[Path, Path], tmp_path: Path) -> None:
    data, out = world
    path = mix_preview(data, out, tmp_path / "sub" / "grid.png", per_class=1, max_classes=2, size=16)
    assert path == tmp_path / "sub" / "grid.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > 4 * 120 > 0
    assert height > 2 * 120
    for name in ("per_class", "max_classes", "size"):
        with pytest.raises(ConfigError, match=f"^{name} must be >= 1, got 0$"):
            mix_preview(data, out, tmp_path / "bad.png", **{name: 0})  # type: ignore[arg-type]
    assert not (tmp_path / "bad.png").exists()


def test_mix_preview_command(world: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from .helpers import run_in_process

    def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return run_in_process(capsys, *args)

    data, out = world
    grid = tmp_path / "grid.png"
    result = run_cli("mix-preview", data, "--synthetic", out, "-o", grid, "--per-class", "2", "--size", "16")
    assert result.returncode == 0, result.stderr
    assert Image.open(grid).format == "PNG"
    bad = run_cli("mix-preview", data, "--synthetic", out, "-o", grid, "--size", "0")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "diffcoremix mix-preview: error: --size must be >= 1, got 0"
    # Sizes and counts no machine can draw are refused at once, in one line, before any image is read.
    huge = tmp_path / "huge.png"
    for options, message in [
        (["--size", "100000"], "--size must be at most 2,048 px for up to 16 rows (2 per class x 8 classes)"),
        (["--size", "5000"], "the grid would be 20,000 x 80,000 px"),
        (["--per-class", "1000", "--max-classes", "1000"], "--per-class must be such that per class x classes is at "
                                                            "most 273 rows (1000 x 1000 = 1,000,000)"),
    ]:  # fmt: skip
        refused = run_cli("mix-preview", data, "--synthetic", out, "-o", huge, *options)
        assert refused.returncode == 2, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert message in refused.stderr
    assert not huge.exists()


@pytest.mark.parametrize("side", [1, 8])
def test_mix_preview_of_tiny_photos_shows_them_and_names_them_in_one_warning_line(
    side: int, world: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Photos below scan's minimum side (generation leaves them out) are shown as training reads them, resized; the
    one summary line names them, as every command that reads DATA names what it finds wrong."""
    from .helpers import run_in_process

    _, out = world
    data = make_class_folders(tmp_path / f"tiny{side}", {"a": 3, "b": 2, "c": 1}, size=side)
    result = run_in_process(
        capsys, "mix-preview", data, "--synthetic", out, "-o", tmp_path / "grid.png", "--size", "16"
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert line == (f"diffcoremix: WARNING: DATA {data}: read 6 image(s) despite a problem (too_small 6; first: "
                    f"a/img_000.png: {side}x{side} has a side below min_side=32); run `diffcoremix scan {data}` for "
                    "the list")  # fmt: skip
    assert preview_rows(data, out, size=16).class_names == ["a", "a", "b", "b", "c"]  # every one of them shown


def test_an_epoch_set_on_the_dataset_that_the_sampler_does_not_carry_is_warned_about(tmp_path: Path) -> None:
    """timm's train.py calls dataset.set_epoch and not the sampler's: the sampler's epoch wins, with a warning."""
    data = make_class_folders(tmp_path / "data", {"a": 2, "b": 2}, size=8)
    pairs = PairedDataset(data, mode="real", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairs[(0, 0)]  # nothing set: no warning
        pairs.set_epoch(3)
        pairs[(3, 0)]  # the sampler carries the same epoch: no warning
    with pytest.warns(UserWarning, match=r"set_epoch\(3\) was called, but the sampler yields epoch 0"):
        pairs[(0, 1)]


def _natural_loop(dataset: PairedDataset, workers: int, context: str | None = None) -> list[PairBatch]:
    """Three epochs of timm's loop: a plain sampler, and only ``dataset.set_epoch`` told the epoch; all batches."""
    loader = DataLoader(
        dataset, batch_size=3, num_workers=workers, persistent_workers=workers > 0, multiprocessing_context=context,
        collate_fn=collate_pairs,
    )  # fmt: skip
    epochs = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        epochs.append(collate_pairs([s for b in loader for s in zip(*b.values(), strict=True)]))  # type: ignore[misc]
    return epochs


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])  # spawn: 7-19 s here
def test_dataset_set_epoch_reaches_persistent_workers(world: tuple[Path, Path], context: str) -> None:
    # The epoch lives in shared memory: two persistent workers (started once, at the first epoch) read each new
    # epoch that the main process sets, so they pair and crop as the main process does alone, epoch by epoch.
    data, out = world
    dataset = PairedDataset(data, out, transform=CROP_AND_FLIP, seed=2)
    alone, workers = _natural_loop(dataset, 0), _natural_loop(dataset, 2, context)
    for epoch, (a, w) in enumerate(zip(alone, workers, strict=True)):
        assert all(torch.equal(a[k], w[k]) for k in a), epoch  # type: ignore[literal-required]
    for before, after in itertools.pairwise(workers):
        assert not torch.equal(before["x"], after["x"])  # new crops...
        assert not torch.equal(before["partner"], after["partner"])  # ...and partners (or their crops) each epoch


def test_a_copy_starts_at_the_epoch_then_keeps_its_own_which_reaches_its_workers(world: tuple[Path, Path]) -> None:
    # A deep copy or a pickle (what Ray does) carries the epoch's value, not the memory: the copy shares memory of
    # its own, so the original's set_epoch leaves it alone and its own reaches its persistent workers.
    data, out = world
    dataset = PairedDataset(data, out, transform=CROP_AND_FLIP, seed=2)
    dataset.set_epoch(4)
    for clone in (copy.deepcopy(dataset), pickle.loads(pickle.dumps(dataset))):
        assert clone.epoch == 4
        clone.set_epoch(5)
        dataset.set_epoch(6)
        assert (clone.epoch, dataset.epoch) == (5, 6)
        for a, w in zip(_natural_loop(clone, 0), _natural_loop(clone, 2, "fork"), strict=True):
            assert all(torch.equal(a[k], w[k]) for k in a)  # type: ignore[literal-required]

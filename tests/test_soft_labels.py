"""Soft labels from the manifest (issue 27, cross-class counterparts): a generated image whose record carries
``soft_label`` trains on it, as an extra sample (``synthetic-add``) and as a partner (``diffcoremix``,
``synthetic-sub``: ``lam * onehot(y) + (1 - lam) * soft``); a malformed one is one line with exit 2; a set without
soft labels trains as before (int targets).

The generation run is real (the tiny preset, filtered, made once per module, in-process). Its soft labels are
written into its manifest lines by the tests: a purpose-built stand-in for the records that cross-class generation
writes (``{A: 1 - s**g, B: s**g}``, ``class_folder`` the class of the largest weight), until that lands on main.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn.functional import one_hot

from diffcoremix.data.folder import list_images
from diffcoremix.errors import DatasetError
from diffcoremix.manifest.layout import OutputFolder
from diffcoremix.mix import PairedDataset, collate_pairs, with_synthetic_samples
from diffcoremix.mix.paired import accepted_images
from diffcoremix.train import TrainConfig, read_metrics, train
from diffcoremix.train.data import paired_dataset
from diffcoremix.train.loop import _mixer
from diffcoremix.train.transforms import train_transform

from .helpers import run_in_process

CLASSES = {"001.cat": 8, "002.dog": 8, "003.eel": 8}
FAST = ("--model", "resnet20", "-b", "8", "--img-size", "32")
CAT_TO_DOG = {"001.cat": 0.7, "002.dog": 0.3}
"""Stand-in cross-class label of cat sources img_000, 002, 004, 006: ``s**g = 0.3`` towards dog (cat dominant)."""
CAT_TO_MOSTLY_DOG = {"001.cat": 0.2, "002.dog": 0.8}
"""Of cat sources img_001, 003, 005, 007: ``s**g = 0.8`` (dog dominant: the record's class_folder is dog)."""
VECTORS = {"001.cat": [1.0, 0.0, 0.0], "002.dog": [0.0, 1.0, 0.0], "003.eel": [0.0, 0.0, 1.0]}


@pytest.fixture(scope="module")
def data(three_classes: Path) -> Path:
    return three_classes


@pytest.fixture(scope="module")
def generated(three_classes_generated: Path) -> Path:
    """A real filtered generation run of the tiny preset (one counterpart per image, all kept)."""
    return three_classes_generated


def _rewritten(out: Path, dest: Path, changes: dict[str, dict[str, Any]]) -> Path:
    """A copy of the run ``out`` at ``dest`` whose manifest records of the keys in ``changes`` are updated."""
    shutil.copytree(out, dest)
    for shard in OutputFolder(dest).shard_paths():
        records = [json.loads(line) for line in shard.read_text(encoding="utf-8").splitlines()]
        for record in records:
            record.update(changes.get(record["key"], {}))
        shard.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return dest


def _cross(source: str, target: str, weights: dict[str, float]) -> dict[str, Any]:
    """The fields of a cross-class record (stand-in): both classes, the soft label, the dominant class."""
    return {"soft_label": weights, "class_folder": max(weights, key=weights.__getitem__),
            "source_class_folder": source, "target_class_folder": target, "strength": 0.5}  # fmt: skip


CROSS = {
    f"001.cat/img_{i:03d}.png#0": _cross("001.cat", "002.dog", CAT_TO_DOG if i % 2 == 0 else CAT_TO_MOSTLY_DOG)
    for i in range(8)
}


@pytest.fixture(scope="module")
def soft(generated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run with every counterpart of a cat image made a stand-in cross-class image towards dog."""
    return _rewritten(generated, tmp_path_factory.mktemp("soft") / "out", CROSS)


def _expected_soft(key: str) -> torch.Tensor:
    weights = CROSS[key]["soft_label"]
    return torch.tensor([weights.get(cls, 0.0) for cls in CLASSES])


def _dataset(data: Path, synthetic: Path, method: str, **options: Any) -> PairedDataset:
    """The training data that `train` builds for ``method`` (every real image of DATA, no validation split)."""
    config = TrainConfig(method=method, **options)  # type: ignore[arg-type]
    transform = train_transform(config.transform, config.img_size, config.mean, config.std)
    return paired_dataset(list_images(data), config, synthetic, transform, set())


def _key_of(synthetic: Path, path: Path) -> str:
    by_output = {synthetic / row["output"]: row["key"] for row in accepted_images(synthetic)}
    return by_output[path]


def test_accepted_images_keep_the_soft_label_and_a_partner_s_target_is_it(data: Path, soft: Path) -> None:
    rows = {row["key"]: row for row in accepted_images(soft)}
    assert {k: r["soft_label"] for k, r in rows.items() if r["soft_label"]} == {k: c["soft_label"] for k, c in
                                                                                CROSS.items()}  # fmt: skip
    assert rows["001.cat/img_001.png#0"]["class_folder"] == "002.dog"  # the dominant class
    dataset = _dataset(data, soft, "diffcoremix")
    assert dataset.has_soft_labels
    batch = collate_pairs([dataset[i] for i in range(len(dataset))])
    labels = torch.tensor([item.label for item in dataset.items])
    assert batch["y"].dtype == torch.float32
    assert torch.equal(batch["y"], one_hot(labels, 3).float())  # real images: one-hot
    soft_partners = 0
    for i, item in enumerate(dataset.items):
        partner, _rule = dataset.partner_of(i)
        assert partner is not None
        key = _key_of(soft, partner)
        expected = _expected_soft(key) if key in CROSS else torch.tensor(VECTORS[item.class_folder])
        soft_partners += key in CROSS
        assert torch.equal(batch["partner_y"][i], expected), (item.relpath, key)
    assert soft_partners == 8  # each cat image's own counterpart
    assert torch.allclose(batch["partner_y"].sum(dim=1), torch.ones(24), atol=1e-6)


def test_synthetic_add_collates_every_target_as_a_k_vector_the_soft_ones_as_recorded(data: Path, soft: Path) -> None:
    dataset = _dataset(data, soft, "synthetic-add")
    batch = collate_pairs([dataset[i] for i in range(len(dataset))])
    assert batch["y"].shape == (48, 3)
    for i, item in enumerate(dataset.items):
        key = _key_of(soft, item.path) if i >= 24 else None
        expected = _expected_soft(key) if key in CROSS else torch.tensor(VECTORS[item.class_folder])
        assert torch.equal(batch["y"][i], expected), item.relpath
    assert sum(_key_of(soft, item.path) in CROSS for item in dataset.items[24:]) == 8
    assert torch.allclose(batch["y"].sum(dim=1), torch.ones(48), atol=1e-6)
    mixed = _mixer(TrainConfig(method="synthetic-add"), 3, soft=dataset.has_soft_labels)(**batch)
    assert torch.equal(mixed.targets, batch["y"])  # what the loss gets
    # the library's extra-samples dataset reads them too
    extras = with_synthetic_samples(data, soft)
    assert torch.equal(torch.stack([extras[i][1] for i in range(48)]), batch["y"])


def test_the_mixers_weigh_the_partner_s_soft_label_by_the_realised_share(data: Path, soft: Path) -> None:
    dataset = _dataset(data, soft, "diffcoremix", mix_prob=1.0)
    batch = collate_pairs([dataset[i] for i in range(len(dataset))])
    mixer = _mixer(TrainConfig(method="diffcoremix", mix_prob=1.0), 3, soft=dataset.has_soft_labels)
    mixed = mixer(**batch, generator=torch.Generator().manual_seed(0))
    lam = mixed.lam.reshape(-1, 1)
    hard = batch["y"].argmax(dim=1)
    expected = lam * one_hot(hard, 3).float() + (1 - lam) * batch["partner_y"]
    assert torch.allclose(mixed.targets, expected, atol=1e-6)
    assert torch.allclose(mixed.targets.sum(dim=1), torch.ones(24), atol=1e-6)
    cats = hard == 0
    really = cats & (mixed.lam > 0.05) & (mixed.lam < 0.95)
    assert really.any()  # some cats really mixed with a soft partner
    # a cat mixed at real share lam with a counterpart of 0.7 cat + 0.3 dog: (lam + 0.7 (1 - lam), 0.3 (1 - lam), 0)
    first = int(torch.nonzero(really)[0])
    share, weights = float(mixed.lam[first]), batch["partner_y"][first].tolist()
    assert weights == pytest.approx([0.7, 0.3, 0]) or weights == pytest.approx([0.2, 0.8, 0])
    assert mixed.targets[first].tolist() == pytest.approx(
        [share + weights[0] * (1 - share), weights[1] * (1 - share), 0]
    )
    # synthetic-sub: a substituted sample takes its counterpart's soft label
    sub = _mixer(TrainConfig(method="synthetic-sub", mix_prob=1.0), 3, soft=True)(**batch)
    assert torch.equal(sub.lam, torch.zeros(24))
    assert torch.equal(sub.targets, batch["partner_y"])


@pytest.mark.parametrize("method", ["diffcoremix", "synthetic-sub", "synthetic-add"])
def test_train_uses_the_soft_labels(data: Path, generated: Path, soft: Path, tmp_path: Path, method: str) -> None:
    """The same pixels, seeds and steps: the loss moves with the labels alone; soft labels equal to the hard ones
    give today's loss (to rounding)."""
    as_hard = _rewritten(generated, tmp_path / "as-hard", {k: {"soft_label": {"001.cat": 1.0}} for k in CROSS})
    config = TrainConfig(method=method, mix_prob=1.0, batch_size=8, max_steps=3)  # type: ignore[arg-type]

    def losses(synthetic: Path, name: str) -> list[float]:
        train(data, config=config, output=tmp_path / name, synthetic=synthetic)
        return [line["loss"] for line in read_metrics(tmp_path / name) if line["kind"] == "step"]

    today, with_soft, one_hot_soft = losses(generated, "hard"), losses(soft, "soft"), losses(as_hard, "one-hot")
    assert len(today) == len(with_soft) == 3
    assert with_soft != pytest.approx(today, rel=1e-3)
    assert one_hot_soft == pytest.approx(today, rel=1e-4)


MALFORMED = {
    "not an object": (0.5, "not a non-empty object"),
    "an empty object": ({}, "not a non-empty object"),
    "a class DATA lacks": ({"001.cat": 0.5, "009.yak": 0.5}, "names class '009.yak'"),
    "a weight <= 0": ({"001.cat": 1.2, "002.dog": -0.2}, "not > 0"),
    "a weight that is no number": ({"001.cat": "1"}, "not a number"),
    "a sum of 0.9": ({"001.cat": 0.5, "002.dog": 0.4}, "sum to 0.9"),
    "a sum off by 5e-6": ({"001.cat": 0.5, "002.dog": 0.500005}, "sum to 1.000005"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_soft_label_is_one_line_with_exit_2_naming_the_key(
    data: Path, generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    value, words = MALFORMED[case]
    key = "002.dog/img_003.png#0"
    bad = _rewritten(generated, tmp_path / "bad", {key: {"soft_label": value}})
    run = tmp_path / "run"
    result = run_in_process(capsys, "train", data, *FAST, "-o", run, "--method", "diffcoremix", "--synthetic", bad)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("diffcoremix train: error: ")
    assert f"soft_label of record {key!r}" in result.stderr
    assert words in result.stderr
    assert not run.exists()


def test_a_sum_within_the_tolerance_is_accepted(generated: Path, tmp_path: Path) -> None:
    key = "002.dog/img_003.png#0"
    near = _rewritten(generated, tmp_path / "near", {key: {"soft_label": {"002.dog": 0.5, "003.eel": 0.5000005}}})
    assert {r["key"]: r["soft_label"] for r in accepted_images(near)}[key] == {"002.dog": 0.5, "003.eel": 0.5000005}
    with pytest.raises(DatasetError, match="soft_label"):
        accepted_images(
            _rewritten(generated, tmp_path / "far", {key: {"soft_label": {"002.dog": 0.5, "003.eel": 0.6}}})
        )


@pytest.mark.parametrize("method", ["diffcoremix", "synthetic-sub", "synthetic-add"])
def test_without_soft_labels_the_targets_are_today_s_int_labels(data: Path, generated: Path, method: str) -> None:
    dataset = _dataset(data, generated, method)
    assert not dataset.has_soft_labels
    assert all(len(dataset[i]) == 5 and isinstance(dataset[i][1], int) for i in (0, len(dataset) - 1))
    batch = collate_pairs([dataset[i] for i in range(len(dataset))])
    assert "partner_y" not in batch
    assert batch["y"].dtype == torch.int64
    assert batch["y"].tolist() == [item.label for item in dataset.items]
    mixer = _mixer(TrainConfig(method=method, mix_prob=1.0), 3, soft=dataset.has_soft_labels)
    assert not getattr(mixer, "soft_targets", False)
    mixed = mixer(**batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mixed.targets, batch["y"])

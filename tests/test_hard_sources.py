"""`--sources hard:F --rank-by RUN`: the share F of each class on which a trained run's loss is the highest gets
counterparts, each record holds its source's rank and loss, and the plan is named by the run's weights.

The expected losses are computed here with plain torch on the run's ``model.pt`` (image by image, the
normalisation written out), not through the library's loss function.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
import yaml
from PIL import Image

from diffcoremix import PromptsConfig, build_prompts, list_images
from diffcoremix.counterparts import select_hardest
from diffcoremix.embedders.resnet20 import ResNet20
from diffcoremix.errors import ConfigError, DatasetError
from diffcoremix.generate import GenerateConfig, RunConflictError, generate, read_manifest
from diffcoremix.train import TrainConfig, train

from .helpers import make_class_folders, run_cli, run_in_process

CLASSES = {"a": 6, "b": 5, "c": 4}
SHARE = 0.5
"""hard:0.5 takes round(0.5 n) half up: 3 of a's 6, 3 of b's 5, 2 of c's 4."""


def _train(data: Path, run: Path, seed: int = 0) -> Path:
    config = TrainConfig(model="resnet20", method="none", max_steps=3, batch_size=8, img_size=32, seed=seed)
    train(data, config=config, output=run, overwrite=True)
    return run


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("hard") / "data", CLASSES, size=32)


@pytest.fixture(scope="module")
def run(data: Path) -> Path:
    return _train(data, data.parent / "run")


def _expected_losses(run: Path, data: Path) -> dict[str, float]:
    """Each image's cross-entropy under the run's model, one image at a time."""
    saved = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    info = saved["info"]
    model = ResNet20(len(info["classes"]))
    model.load_state_dict(saved["state_dict"])
    model.eval()
    mean, std = (torch.tensor(info[k], dtype=torch.float32).view(3, 1, 1) for k in ("mean", "std"))
    losses = {}
    for path in sorted(data.glob("*/*.png")):
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255  # already 32 x 32
        image = (torch.from_numpy(pixels).permute(2, 0, 1) - mean) / std
        target = torch.tensor([info["classes"].index(path.parent.name)])
        with torch.no_grad():
            losses[f"{path.parent.name}/{path.name}"] = float(F.cross_entropy(model(image[None]), target))
    return losses


def _expected_ranks(losses: dict[str, float]) -> dict[str, int]:
    """The rank in its class of each image that hard:0.5 takes (1: the highest loss)."""
    ranks = {}
    for folder, n in CLASSES.items():
        ranked = sorted((p for p in losses if p.startswith(f"{folder}/")), key=lambda p: -losses[p])
        taken = int((Decimal(n) * Decimal(str(SHARE))).to_integral_value(rounding=ROUND_HALF_UP))
        ranks.update({p: rank for rank, p in enumerate(ranked[:taken], start=1)})
    return ranks


def _hard(run: Path) -> PromptsConfig:
    return PromptsConfig(sources=f"hard:{SHARE}", rank_by=str(run))


def test_hard_takes_per_class_the_images_with_the_highest_loss_and_records_rank_and_loss(data: Path, run: Path) -> None:
    losses = _expected_losses(run, data)
    assert len(set(losses.values())) == len(losses)  # no ties here: the order alone decides
    records = build_prompts(data, _hard(run)).records
    assert {r.source: r.source_rank for r in records} == _expected_ranks(losses)
    for record in records:
        assert record.source_loss == pytest.approx(losses[record.source], rel=1e-4, abs=1e-5)
    assert [r.source for r in records] == sorted(r.source for r in records)  # listing order, as for `all`
    # the default takes every image and records no rank
    assert {(r.source_rank, r.source_loss) for r in build_prompts(data, PromptsConfig()).records} == {(None, None)}


def test_a_dataset_of_some_of_the_runs_classes_is_matched_to_them_by_folder_name(
    data: Path, run: Path, tmp_path: Path
) -> None:
    # a dataset of b and c labels them 0 and 1; the run knows them as 1 and 2
    subset = tmp_path / "bc"
    for folder in ("b", "c"):
        shutil.copytree(data / folder, subset / folder)
    assert list_images(subset).classes == ("b", "c")
    losses = _expected_losses(run, data)
    records = build_prompts(subset, _hard(run)).records
    assert {r.class_folder for r in records} == {"b", "c"}
    assert {r.source: r.source_rank for r in records} == {
        p: rank for p, rank in _expected_ranks(losses).items() if not p.startswith("a/")
    }
    for record in records:
        assert record.source_loss == pytest.approx(losses[record.source], rel=1e-4, abs=1e-5)


def test_equal_losses_rank_by_relative_path_and_each_class_takes_its_own_share(tmp_path: Path) -> None:
    listing = list_images(make_class_folders(tmp_path / "d", {"x": 4, "y": 3}, size=8))
    losses = {"x/img_000.png": 1.0, "x/img_001.png": 2.0, "x/img_002.png": 2.0, "x/img_003.png": 0.5,
              "y/img_000.png": 0.1, "y/img_001.png": 0.1, "y/img_002.png": 0.3}  # fmt: skip
    chosen, ranks = select_hardest(listing, 0.5, losses)
    assert {p: (r.rank, r.loss) for p, r in ranks.items()} == {
        "x/img_001.png": (1, 2.0), "x/img_002.png": (2, 2.0),  # a tie: the smaller relative path first
        "y/img_002.png": (1, 0.3), "y/img_000.png": (2, 0.1),  # 1.5 rounds half up to 2; the tie again by path
    }  # fmt: skip
    assert [item.relpath for item in chosen] == ["x/img_001.png", "x/img_002.png", "y/img_000.png", "y/img_002.png"]
    with pytest.raises(DatasetError, match=r"y/img_001\.png"):
        select_hardest(listing, 0.5, {**losses, "y/img_001.png": float("nan")})


def test_the_plan_is_the_same_when_built_twice_and_in_another_process(data: Path, run: Path, tmp_path: Path) -> None:
    first = build_prompts(data, _hard(run)).write_jsonl(tmp_path / "1.jsonl").read_bytes()
    assert build_prompts(data, _hard(run)).write_jsonl(tmp_path / "2.jsonl").read_bytes() == first
    assert {json.loads(line)["source_rank"] for line in first.splitlines()} == {1, 2, 3}
    # as a torchrun shard builds it: a new process, with another number of torch threads than this one
    threads = "3" if torch.get_num_threads() != 3 else "2"
    result = run_cli("prompts", data, "-o", tmp_path / "3.jsonl", "--sources", "hard:0.5", "--rank-by", run,
                     env={"OMP_NUM_THREADS": threads})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "3.jsonl").read_bytes() == first


def test_generate_records_rank_and_loss_and_a_run_retrained_in_place_is_another_plan(
    data: Path, tmp_path: Path
) -> None:
    run, out = _train(data, tmp_path / "run"), tmp_path / "out"
    config = GenerateConfig(preset="tiny", num_inference_steps=1, height=32, width=32)
    generate(data, out, _hard(run), config)
    planned = {r.key: (r.source_rank, r.source_loss) for r in build_prompts(data, _hard(run)).records}
    table = read_manifest(out)
    assert len(table) == 8
    assert set(table.status) == {"ok"}
    assert {row.key: (row.source_rank, row.source_loss) for row in table.itertuples()} == planned
    settings = json.loads((out / "settings.json").read_text())["prompts"]
    digest = hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()
    assert (settings["sources"], settings["rank_by"], settings["rank_by_sha256"]) == ("hard:0.5", str(run), digest)
    assert generate(data, out, _hard(run), config).generated == 0  # a rerun resumes: nothing to make
    _train(data, run, seed=1)  # the same folder, other weights: another ranking
    with pytest.raises(RunConflictError, match=r"prompts\.rank_by_sha256"):
        generate(data, out, _hard(run), config)


def test_a_run_retrained_in_place_is_refused_by_its_digest(data: Path, tmp_path: Path) -> None:
    run = _train(data, tmp_path / "run")
    resolved = _hard(run).for_generator(None)
    _train(data, run, seed=1)  # the same folder, other weights
    with pytest.raises(ConfigError, match="trained again"):
        resolved.for_generator(None)
    with pytest.raises(ConfigError, match="trained again"):
        build_prompts(data, resolved)


def test_bad_sources_options_are_one_line_with_exit_2(
    data: Path, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.jsonl"
    cases = [
        (("--sources", "hard:0.5"), "--rank-by must be a finished `train` run folder"),
        (("--rank-by", run), "--rank-by must be null unless sources=hard:F"),
        (("--sources", "hard:0.5", "--rank-by", run, "--fraction", "0.3"), "--fraction must be 1 with"),
        (("--sources", "hard:1.5", "--rank-by", run), "--sources must be 'all' or hard:F"),
        (("--sources", "easy", "--rank-by", run), "--sources must be 'all' or hard:F"),
        (("--sources", "hard:0.5", "--rank-by", tmp_path / "nothing"), "is not a finished training run"),
    ]
    for command in ("prompts", "generate"):
        for flags, message in cases:
            target = ("-o", out) if command == "prompts" else ("-o", tmp_path / "gen", "--preset", "tiny")
            result = run_in_process(capsys, command, data, *target, *flags)
            assert result.returncode == 2, (command, flags, result.stderr)
            assert message in result.stderr, (command, flags, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1
            assert "Traceback" not in result.stderr
    assert not out.exists()
    assert not (tmp_path / "gen").exists()


def test_a_run_that_does_not_know_a_class_of_data_is_a_clear_error(
    data: Path, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_class_folders(tmp_path / "other", {"a": 2, "zebra": 2}, size=32)
    with pytest.raises(DatasetError, match=r"'zebra' .* is not a class of the run"):
        build_prompts(other, _hard(run))
    result = run_in_process(capsys, "augment", other, "-o", tmp_path / "aug", "--preset", "tiny", "--embedder",
                            "tiny", "--sources", "hard:0.5", "--rank-by", run)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "'zebra'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_prompts_command_writes_rank_and_loss(
    data: Path, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.jsonl"
    result = run_in_process(capsys, "prompts", data, "-o", out, "--sources", "hard:0.5", "--rank-by", run)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    expected = {r.key: (r.source_rank, r.source_loss) for r in build_prompts(data, _hard(run)).records}
    assert {line["key"]: (line["source_rank"], line["source_loss"]) for line in lines} == expected
    resolved = yaml.safe_load(out.with_suffix(".config.yaml").read_text())["prompts"]
    assert resolved["rank_by_sha256"] == hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()

"""`augment`, the main job: generate + filter + regeneration of rejects, resumable, every attempt recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffcoremix import PromptsConfig
from diffcoremix.augment import augment
from diffcoremix.filter import FilterConfig
from diffcoremix.generate import GenerateConfig, read_manifest

from .helpers import make_class_folders, run_cli

FAST = GenerateConfig(preset="tiny", num_inference_steps=1)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "data", {"001.cat": 3, "002.dog": 2})


def test_cli_augment_keeps_everything_at_threshold_minus_one(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ("augment", data, "-o", out, "--preset", "tiny", "--num-inference-steps", "1", "--embedder", "tiny")
    result = run_cli(*args, "--threshold", "-1", "--retries", "3")
    assert result.returncode == 0, result.stderr
    assert "5 accepted of a budget of 5 after 1 round(s); every budget met" in result.stdout
    assert len(list((out / "train").rglob("*.png"))) == 5
    assert set(read_manifest(out).attempt) == {0}


def test_rejected_candidates_are_regenerated_with_new_seeds_and_every_attempt_is_recorded(
    data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    # The tiny models' scores sit near 0.9-1.0; a threshold in the middle rejects some of each round.
    first = augment(data, out, PromptsConfig(per_image=2), FAST, FilterConfig(embedder="tiny", threshold=1.0),
                    retries=2)  # fmt: skip
    table = read_manifest(out)
    assert first.budget == {"001.cat": 6, "002.dog": 4}
    assert first.attempts == 3  # nothing reaches a cosine of exactly 1.0: every round regenerates everything
    assert sorted(table.attempt.unique()) == [0, 1, 2]
    assert len(table) == 30
    retried = table[table.attempt == 1].set_index("key")
    base = table[table.attempt == 0].set_index("key")
    for key, row in retried.iterrows():
        original = base.loc[str(key).split("@")[0]]
        assert row.prompt == original.prompt
        assert row.seed != original.seed
        assert row.output.endswith(".r1.png")
    assert table.accepted.notna().all()
    assert not table.accepted.any()
    assert first.accepted == {}
    # A rerun resumes: same manifest, nothing new.
    again = augment(data, out, PromptsConfig(per_image=2), FAST, FilterConfig(embedder="tiny", threshold=1.0),
                    retries=2)  # fmt: skip
    assert again.attempts == 3
    assert read_manifest(out).drop(columns=["seconds"]).equals(table.drop(columns=["seconds"]))


def test_retries_stop_when_the_budget_is_met(data: Path, tmp_path: Path) -> None:
    result = augment(data, tmp_path / "out", PromptsConfig(), FAST, FilterConfig(embedder="tiny", threshold=-1.0),
                     retries=5)  # fmt: skip
    assert result.attempts == 1
    assert result.accepted == result.budget == {"001.cat": 3, "002.dog": 2}


def test_negative_retries_is_an_option_error(data: Path, tmp_path: Path) -> None:
    result = run_cli("augment", data, "-o", tmp_path / "out", "--preset", "tiny", "--retries", "-1")
    assert result.returncode == 2
    assert result.stderr.strip() == "diffcoremix augment: error: --retries must be >= 0, got -1"

"""`augment`, the main job: generate + filter + regeneration of rejects; resumable round by round, every attempt
recorded, a rerun of a finished job changes nothing (a killed run: tests/test_faults_generation.py)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffcoremix import PromptsConfig
from diffcoremix.augmentation import AugmentResult, augment
from diffcoremix.filter import FilterConfig, filter_run
from diffcoremix.generate import GenerateConfig, generate, read_manifest
from diffcoremix.manifest import read_decisions

from .helpers import cli_command, make_class_folders, run_cli, run_in_process, save_tiny_hf_clip

FAST = GenerateConfig(preset="tiny", num_inference_steps=1)
PROMPTS = PromptsConfig(per_image=2)
VOLATILE = ["seconds"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("augment") / "data", {"001.cat": 3, "002.dog": 2, "003.eel": 3})


@pytest.fixture(scope="module")
def threshold(data: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    """The median score of the first round's candidates: about half of each round is rejected."""
    out = tmp_path_factory.mktemp("probe") / "out"
    generate(data, out, PROMPTS, FAST)
    report = filter_run(out, FilterConfig(embedder="tiny", threshold=-1.0))
    return float(np.median([s for c in report.classes.values() for s in c.scores]))


def _filter(threshold: float) -> FilterConfig:
    return FilterConfig(embedder="tiny", threshold=threshold)


def _files(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file below ``folder`` (lock files aside): content hash and modification time."""
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".diffcoremix")
    }


def _contents(folder: Path) -> dict[str, str]:
    """Content hashes of the files that must be byte-equal between equal runs (the manifest holds wall times:
    compared with :func:`_stable`; the cache holds what was embedded, which a resumed run may embed again)."""
    return {k: v[0] for k, v in _files(folder).items() if not k.startswith(("cache/", "manifest/"))}


def _stable(out: Path) -> pd.DataFrame:
    return read_manifest(out).drop(columns=VOLATILE)


def test_cli_augment_keeps_everything_at_threshold_minus_one(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ("augment", data, "-o", out, "--preset", "tiny", "--num-inference-steps", "1", "--embedder", "tiny")
    result = run_cli(*args, "--threshold", "-1", "--retries", "3")
    assert result.returncode == 0, result.stderr
    assert "8 accepted of a budget of 8 after 1 round(s); every budget met" in result.stdout
    assert len(list((out / "train").rglob("*.png"))) == 8
    assert set(read_manifest(out).attempt) == {0}


def test_rejects_are_regenerated_with_new_seeds_until_the_budget_or_the_retries_end(
    data: Path, threshold: float, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = augment(data, out, PROMPTS, FAST, _filter(threshold), retries=2)
    table = read_manifest(out)
    assert result.budget == {"001.cat": 6, "002.dog": 4, "003.eel": 6}
    # Each round regenerates, per class, as many of the latest rejected attempts as the budget lacks.
    decided = table.set_index("key")
    for attempt in (1, 2):
        earlier = table[table.attempt < attempt]
        accepted = earlier[earlier.accepted == True].groupby("class_folder").size()  # noqa: E712
        retried = table[table.attempt == attempt]
        for cls, wanted in result.budget.items():
            missing = max(0, wanted - int(accepted.get(cls, 0)))
            assert (retried.class_folder == cls).sum() <= missing
            if missing and attempt < result.attempts:
                assert (retried.class_folder == cls).sum() > 0
        for key, row in retried.set_index("key").iterrows():
            base = str(key).split("@")[0]
            previous = base if attempt == 1 else f"{base}@r{attempt - 1}"
            assert decided.loc[previous, "accepted"] == False  # noqa: E712 (only rejected attempts are redone)
            assert row.prompt == decided.loc[base, "prompt"]
            assert row.seed != decided.loc[base, "seed"]
            assert row.output.endswith(f".r{attempt}.png")
    # The mid threshold accepts some and rejects some of every round, and the decisions follow it exactly.
    assert 0 < table.accepted.sum() < len(table)
    assert (table.accepted == (table.score >= threshold)).all()
    assert result.accepted == table[table.accepted == True].groupby("class_folder").size().to_dict()  # noqa: E712
    assert sorted(p.name for p in (out / "train").rglob("*.png")) == sorted(
        Path(o).name
        for o in table[table.accepted == True].output  # noqa: E712
    )


def test_the_state_after_each_round_and_a_finished_rerun_that_changes_nothing(
    data: Path, threshold: float, tmp_path: Path
) -> None:
    # The state after round r of a job equals the end of the same job run with r retries: run them one after the
    # other in one folder, and each in its own.
    shared = tmp_path / "shared"
    for retries in (0, 1, 2):
        result = augment(data, shared, PROMPTS, FAST, _filter(threshold), retries=retries)
        alone = tmp_path / f"alone{retries}"
        augment(data, alone, PROMPTS, FAST, _filter(threshold), retries=retries)
        assert _stable(shared).equals(_stable(alone)), f"after round {retries}"
        assert _contents(shared) == _contents(alone)
        assert read_decisions(shared) == read_decisions(alone)
    assert result.attempts == 3
    # A rerun of the finished job generates nothing and changes no file (bytes and modification times).
    before = _files(shared)
    again = augment(data, shared, PROMPTS, FAST, _filter(threshold), retries=2)
    assert again.generated == 0
    assert again.attempts == 3
    assert again.accepted == result.accepted
    assert _files(shared) == before


def _augment_command(data: Path, out: Path, threshold: float) -> list[str]:
    return cli_command("augment", data, "-o", out, "--preset", "tiny", "--num-inference-steps", "1",
                       "--per-image", "2", "--embedder", "tiny", "--threshold", repr(threshold), "--retries", "2",
                       "--batch-size", "2")  # fmt: skip


def test_retries_stop_when_the_budget_is_met(data: Path, tmp_path: Path) -> None:
    result = augment(data, tmp_path / "out", PromptsConfig(), FAST, _filter(-1.0), retries=5)
    assert isinstance(result, AugmentResult)
    assert result.attempts == 1
    assert result.accepted == result.budget == {"001.cat": 3, "002.dog": 2, "003.eel": 3}
    assert result.shortfall == {}


def test_negative_retries_is_an_option_error(data: Path, tmp_path: Path) -> None:
    result = run_cli("augment", data, "-o", tmp_path / "out", "--preset", "tiny", "--retries", "-1")
    assert result.returncode == 2
    assert result.stderr.strip() == "diffcoremix augment: error: --retries must be >= 0, got -1"


# tiny_open_clip's architecture as an open_clip model config: a name that `open_clip:NAME:FILE` can give
TINY_OPEN_CLIP = {"embed_dim": 32, "vision_cfg": {"layers": 2, "width": 64, "head_width": 16, "patch_size": 8,
                  "image_size": 64}, "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4,
                  "layers": 2}}  # fmt: skip


@pytest.mark.parametrize("kind", ["hf", "open_clip"])
def test_augment_with_an_embedder_from_local_files(
    kind: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny versions of tests/test_fullsize.py's augment runs: a transformers CLIP folder, an open_clip file."""
    if kind == "hf":
        spec = f"hf:{save_tiny_hf_clip(tmp_path / 'clip')}"
    else:
        import open_clip.factory
        from safetensors.torch import save_file

        from diffcoremix.embedders.models import tiny_open_clip

        monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "diffcoremix-tiny", TINY_OPEN_CLIP)
        save_file(tiny_open_clip(1).module.state_dict(), tmp_path / "tiny.safetensors")  # not seed 0: see below
        spec = f"open_clip:diffcoremix-tiny:{tmp_path / 'tiny.safetensors'}"
    out = tmp_path / "out"
    result = run_in_process(capsys, "augment", data, "-o", out, "--preset", "tiny", "--num-inference-steps", "1",
                            "--max-per-class", "1", "--embedder", spec, "--threshold", "-1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(list((out / "train").rglob("*.png"))) == 3
    decisions = read_decisions(out)
    if kind == "open_clip":  # the file holds the weights of `tiny:1`: the same scores, so it was read (random
        # weights from seed 0, which open_clip is given without a file, are those of `tiny:0`)
        assert run_in_process(capsys, "filter", out, "--embedder", "tiny:1", "--threshold", "-1").returncode == 0
        tiny = read_decisions(out)
        assert {k: d["score"] for k, d in tiny.items()} == {k: d["score"] for k, d in decisions.items()}


def test_a_run_killed_between_two_rounds_is_recorded_unfinished_until_a_rerun_finishes_it(
    data: Path,
    threshold: float,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Killed at the first image of round 2 (the first regeneration's PNG, before it is renamed into place): round 1 is
    # written and every generated image is decided, which alone would look like a finished set.
    from diffcoremix.data.folder import list_images
    from diffcoremix.manifest.layout import read_augment_record
    from diffcoremix.recipes import RECIPES, augment_command, build_sets, set_problem
    from diffcoremix.train.data import check_synthetic_classes

    out = tmp_path / "diffcoremix"  # the recipe's set in SYN = tmp_path
    command = ("augment", data, "-o", out, "--recipe", "diffcoremix", "--preset", "tiny", "--num-inference-steps",
               "1", "--per-image", "2", "--embedder", "tiny", "--threshold", repr(threshold),
               "--retries", "2")  # fmt: skip
    killed = run_cli(*command, env={"DIFFCOREMIX_FAULT": "*.r1.png@1"})
    assert killed.returncode == -9, killed.stderr
    made = read_manifest(out).query("status == 'ok'")  # round 2's records are still being written
    assert set(made.attempt) == {0}
    assert made.accepted.notna().all()
    assert not made.accepted.all()
    record = read_augment_record(out)
    assert record is not None
    assert not record.finished
    assert record.retries == 2
    recipe = RECIPES.get("diffcoremix")
    assert set_problem(out, recipe) == (
        "is unfinished: augment stopped before it finished its rounds (rerun the augment command to finish it)"
    )
    with caplog.at_level(logging.WARNING, logger="diffcoremix.train.data"):
        assert check_synthetic_classes(list_images(data), out) == made.accepted.sum()
    assert "augment stopped before it finished its rounds" in caplog.text
    caplog.clear()
    # compare --recipes names (and --build runs) the augment that finishes it, with the retries it was started with
    assert augment_command(recipe, data, tmp_path).endswith(" --retries 2")
    shared = tmp_path / "shared.yaml"
    shared.write_text(f"generate: {{preset: tiny, num_inference_steps: 1}}\nprompts: {{per_image: 2}}\n"
                      f"filter: {{embedder: tiny, threshold: {threshold!r}}}\n")  # fmt: skip
    build_sets([recipe], data, tmp_path, config=shared)
    record = read_augment_record(out)
    assert record is not None
    assert record.finished
    assert record.rounds is not None
    assert record.rounds > 1
    assert record.accepted == read_manifest(out).query("accepted == True").groupby("class_folder").size().to_dict()
    assert set_problem(out, recipe) is None
    check_synthetic_classes(list_images(data), out)
    assert "augment stopped" not in caplog.text
    # A rerun refused for other settings (and other retries) changes no file, augment.json included.
    before = _files(out)
    refused = run_in_process(capsys, *command[:-1], "3", "--num-inference-steps", "2")
    assert refused.returncode == 2, refused.stderr
    assert _files(out) == before
    # A rerun with a stricter threshold (the same retries) redoes rounds: killed at its first decisions write, the set
    # is unfinished (its decisions are a round's that is not the last, or the new images are undecided) until it ends.
    stricter = [*command]
    stricter[stricter.index("--threshold") + 1] = repr(
        float(read_manifest(out).query("accepted == True").score.median())
    )
    killed = run_cli(*stricter, env={"DIFFCOREMIX_FAULT": "*/filter.jsonl@1"})
    assert killed.returncode == -9, killed.stderr
    assert set_problem(out, recipe) is not None
    assert run_in_process(capsys, *stricter).returncode == 0
    assert set_problem(out, recipe) is None

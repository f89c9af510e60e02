"""`train` through the real CLI on a tiny dataset: every method trains and writes its files (a killed run:
tests/test_faults_training.py), the same seed gives the same metrics, a call from Python keeps the caller's random
state, two torchrun processes split the batches as documented, and bad input is one line with exit 2."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffcoremix.manifest.layout import SettingsConflictError
from diffcoremix.train import METHODS, TrainConfig, read_metrics, read_summary, train
from diffcoremix.train.methods import ALIASES, TRAIN_METHODS, get_method
from diffcoremix.train.run import CHECKPOINT_FILE, MODEL_FILE, SAMPLES_FILE, TIMING_KEYS

from .helpers import make_class_folders, run_cli

CLASSES = {"001.cat": 8, "002.dog": 8, "003.eel": 8}
FAST = ("--model", "resnet20", "-b", "8", "--img-size", "32")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("train") / "data", CLASSES, size=32)


@pytest.fixture(scope="module")
def synthetic(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real filtered generation run of the tiny preset (one counterpart per image, all kept)."""
    out = tmp_path_factory.mktemp("synthetic") / "out"
    result = run_cli("augment", data, "-o", out, "--preset", "tiny", "--num-inference-steps", "1", "--height", "32",
                     "--width", "32", "--embedder", "tiny", "--threshold", "-1", "--seed", "0")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def _train(data: Path, run: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli("train", data, *FAST, "-o", run, *args)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / MODEL_FILE, map_location="cpu", weights_only=True)["state_dict"]  # type: ignore[no-any-return]


def _untimed(run: Path) -> list[dict[str, object]]:
    return [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in read_metrics(run)]


@pytest.fixture(scope="module")
def none_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("none") / "run"
    train(data, config=TrainConfig(model="resnet20", max_steps=4, batch_size=8), output=run, test=data)
    return run


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_writes_its_files_and_changes_the_training(
    method: str, data: Path, synthetic: Path, none_run: Path, tmp_path: Path
) -> None:
    # In-process (the Python API the CLI wraps), to keep the table's runs fast; the CLI is exercised below.
    entry = TRAIN_METHODS.get(method)
    run = tmp_path / method
    config = TrainConfig(model="resnet20", method=method, max_steps=4, batch_size=8, mix_prob=1.0)
    result = train(data, config=config, output=run, synthetic=synthetic, test=data)
    for name in ("run.json", "settings.json", "config.yaml", "metrics.jsonl", CHECKPOINT_FILE, MODEL_FILE,
                 "summary.json", "layout.json"):  # fmt: skip
        assert (run / name).is_file(), name
    summary = read_summary(run)
    assert summary == result.summary
    assert summary["method"] == method
    assert summary["steps"] == 4
    assert summary["test"]["n"] == sum(CLASSES.values())
    steps = read_metrics(run, "step")
    assert [line["step"] for line in steps] == [1, 2, 3, 4]
    for line in steps:
        assert {"loss", "acc", "lr", "images_per_s", "data_s", "mix_s", "compute_s"} <= set(line)
    # The entry's samples: the 24 real images, plus (fc, diffusemix) or instead of (fr) every accepted generation.
    accepted = summary["synthetic_accepted"]
    expected = {"real": 24, "real+synthetic": 24 + accepted, "synthetic": accepted}[entry.samples]
    assert summary["train_samples"] == expected
    assert (accepted == 24) == (entry.usage != "none"), accepted  # every generation-reading method read the set
    # Same seed, same model initialisation and data order: only the method differs, so must the first loss.
    if method != "none":
        assert steps[0]["loss"] != read_metrics(none_run, "step")[0]["loss"]


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_an_alias_trains_as_its_method_and_is_recorded_by_the_methods_name(alias: str) -> None:
    assert TrainConfig(method=alias).method == ALIASES[alias]
    assert get_method(alias) is TRAIN_METHODS.get(ALIASES[alias])


def test_the_same_seed_gives_the_same_metrics_and_another_seed_does_not(data: Path, tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        config = TrainConfig(method="diffcoremix", partners="real", max_steps=4, val_split=0.25, batch_size=8,
                             seed=seed)  # fmt: skip
        train(data, config=config, output=tmp_path / name)
    assert _untimed(tmp_path / "a") == _untimed(tmp_path / "b")
    assert _untimed(tmp_path / "a") != _untimed(tmp_path / "c")
    assert all(torch.equal(v, _weights(tmp_path / "b")[k]) for k, v in _weights(tmp_path / "a").items())


def test_train_from_python_leaves_the_callers_random_state_as_it_found_it(data: Path, tmp_path: Path) -> None:
    # train seeds torch's global generator (module initialisation, every step's forward pass); the caller's own
    # streams go on as if train had not run (with a validation split and a test set: every loader of the run)
    def draws() -> tuple[list[float], float, float]:
        return torch.rand(3).tolist(), random.random(), float(np.random.rand())

    def seed() -> None:
        torch.manual_seed(7)
        random.seed(7)
        np.random.seed(7)

    seed()
    untouched = draws()
    seed()
    train(data, config=TrainConfig(max_steps=3, batch_size=8, val_split=0.25), output=tmp_path / "run", test=data)
    assert draws() == untouched


# 24 images in batches of 8: 3 steps per epoch; checkpoints at steps 2, 4, 6, 8: mid-epoch, so a resume must
# restore the data position, the optimizer and the RNG, not only the epoch.
def test_a_finished_run_is_not_retrained_and_other_settings_are_refused(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(data, run, "--max-steps", "3").returncode == 0
    stamp = (run / MODEL_FILE).stat().st_mtime_ns
    again = _train(data, run, "--max-steps", "3")
    assert again.returncode == 0
    assert (run / MODEL_FILE).stat().st_mtime_ns == stamp
    other = _train(data, run, "--max-steps", "3", "--lr", "0.01")
    assert other.returncode == 2
    assert "other settings (lr: 0.1 -> 0.01)" in other.stderr
    fresh = _train(data, run, "--max-steps", "3", "--lr", "0.01", "--overwrite")
    assert fresh.returncode == 0
    assert read_summary(run)["config"]["lr"] == 0.01


def test_bad_input_is_one_line_with_exit_2(
    data: Path, synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real entry point, in-process (nine refusals; a subprocess each would cost seconds of imports)."""
    from diffcoremix.cli.main import main

    run = tmp_path / "run"

    def refused(*args: str | Path, words: tuple[str, ...]) -> None:
        assert main(["train", *map(str, args)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err.startswith("diffcoremix train: error: ")
        for word in words:
            assert word in err

    refused(data, "--model", "resnet_18", "-o", run, words=("unknown model 'resnet_18'", "resnet18"))
    refused(data, *FAST, "-o", run, "--max-steps", "1", words=("--max-steps", "one epoch (3 steps of 8 images)"))
    refused(data, *FAST, "-o", run, "-b", "64", words=("fewer than one batch of 64",))
    refused(data, *FAST, "-o", run, "--method", "diffcoremix", words=("--synthetic",))
    other = make_class_folders(tmp_path / "other", {"001.cat": 2, "009.yak": 2}, size=32)
    refused(data, *FAST, "-o", run, "--val", other, words=("'009.yak'",))
    refused(other, *FAST, "-o", run, "--method", "synthetic-add", "--synthetic", synthetic, "-b", "2",
            words=("--synthetic", "classes that DATA does not have"))  # fmt: skip
    refused(data, *FAST, "-o", run, "--test", other, words=("--test", "'009.yak'"))
    refused(data, *FAST, "-o", run, "--init", tmp_path / "missing.pt", words=("missing.pt",))
    assert not run.exists()  # every refusal came before the run claimed its folder
    refused(data, *FAST, "-o", data / "001.cat", "--max-steps", "3", words=("inside",))
    assert not (data / "001.cat" / "run.json").exists()


def test_init_loads_the_shared_resnet20_and_drops_a_classifier_of_other_shape(
    data: Path, tmp_path: Path, shared_data: Path
) -> None:
    checkpoint = shared_data.parent / "models" / "resnet20_cifar10.th"
    run = tmp_path / "run"
    result = _train(data, run, "--init", checkpoint, "--max-steps", "3", "--lr", "1e-9")
    assert result.returncode == 0, result.stderr
    from diffcoremix.train.models import read_state_dict

    trained, original = _weights(run), read_state_dict(checkpoint)
    # A learning rate of 1e-9 leaves the convolutions as loaded; the 3-class classifier is new.
    assert torch.allclose(trained["conv1.weight"], original["conv1.weight"], atol=1e-6)
    assert trained["linear.weight"].shape == (3, 64)
    assert original["linear.weight"].shape == (10, 64)


def test_torchrun_with_two_processes_splits_each_batch_between_them(data: Path, tmp_path: Path) -> None:
    args = ("--method", "diffcoremix", "--partners", "real", "--max-steps", "4", "--log-samples")
    single = tmp_path / "single"
    assert _train(data, single, *args).returncode == 0
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    run = tmp_path / "ddp"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    command = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "diffcoremix", "train", str(data), *FAST,
               "-o", str(run), *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    alone = [json.loads(t) for t in (single / SAMPLES_FILE).read_text().splitlines()]
    split = [json.loads(t) for t in (run / SAMPLES_FILE).read_text().splitlines()]
    assert [line["step"] for line in split] == [1, 2, 3, 4]
    for one, two in zip(alone, split, strict=True):
        (batch,) = one["ranks"]
        rank0, rank1 = two["ranks"]
        # DistributedSampler's split of the same permutation: rank r takes every 2nd image, from the r-th.
        assert rank0 == batch[0::2], (batch, rank0)
        assert rank1 == batch[1::2], (batch, rank1)
    assert read_summary(run)["steps"] == 4
    assert len(read_metrics(run, "step")) == 4  # rank 0 alone writes


def test_the_validation_split_is_stratified_seeded_and_never_partners(data: Path, synthetic: Path) -> None:
    from diffcoremix.data.folder import list_images
    from diffcoremix.mix import PairedDataset
    from diffcoremix.train.data import split_validation

    listing = list_images(data)
    train_part, val_part = split_validation(listing, 0.25, seed=0)
    assert [len(v) for v in val_part.by_class().values()] == [2, 2, 2]  # a quarter of each class's 8
    assert {i.relpath for i in train_part.items}.isdisjoint(i.relpath for i in val_part.items)
    assert len(train_part.items) + len(val_part.items) == len(listing.items)
    again = split_validation(listing, 0.25, seed=0)[1]
    other = split_validation(listing, 0.25, seed=1)[1]
    assert again.items == val_part.items
    assert other.items != val_part.items
    held = {i.relpath for i in val_part.items}
    pairs = PairedDataset(train_part, synthetic, exclude_sources=held)
    # The class pools (partners of images without their own counterpart) hold the train part's generations only.
    assert [len(pool) for pool in pairs.by_class.values()] == [6, 6, 6]
    pooled = {str(p) for pool in pairs.by_class.values() for p in pool}
    assert not {p for p in pooled for h in held if h.rsplit(".", 1)[0] + "." in p}


def test_a_run_made_under_an_old_method_name_resumes_and_another_method_is_refused(
    data: Path, synthetic: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    config = TrainConfig(model="resnet20", method="fc", max_steps=4, batch_size=8)
    first = train(data, config=config, output=run, synthetic=synthetic)
    settings = json.loads((run / "settings.json").read_text())
    assert settings["train"]["method"] == "fc"
    settings["train"]["method"] = "synthetic-add"  # what the version before the method table wrote
    (run / "settings.json").write_text(json.dumps(settings))
    again = train(data, config=config, output=run, synthetic=synthetic)  # the finished run, not a conflict
    assert again.summary == first.summary
    assert json.loads((run / "settings.json").read_text())["train"]["method"] == "fc"  # rewritten in today's words
    settings["train"]["method"] = "synthetic-sub"  # an old name of another method is another run
    (run / "settings.json").write_text(json.dumps(settings))
    with pytest.raises(SettingsConflictError, match="method: 'synthetic-sub' -> 'fc'"):
        train(data, config=config, output=run, synthetic=synthetic)

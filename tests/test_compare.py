"""compare: the statistics on hand-built summaries (expected figures worked out by hand), the method specs, the
report files, and the real CLI end to end on a tiny dataset (same step budget everywhere, a rerun trains nothing)."""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from diffcoremix.errors import ConfigError, UnknownNameError
from diffcoremix.train import TrainConfig
from diffcoremix.train.comparison import (
    PLOT_FILE,
    RESULTS_CSV,
    RESULTS_MD,
    RUNS_CSV,
    CompareError,
    MethodSpec,
    compare,
    estimate,
    method_rows,
    overhead,
    paired_difference,
    parse_methods,
    parse_seeds,
    run_name,
    write_report,
)
from diffcoremix.train.config import METHODS

from .helpers import cli_command, make_class_folders

T_975_2 = 4.302652729911275
"""t(0.975) with 2 degrees of freedom (any t table: 4.303)."""


def summary(method: str, seed: int, top1: float, top5: float = 0.9, step_s: float = 0.1, *,
            partners: str | None = None, where: str = "test", steps: int = 50) -> dict[str, Any]:  # fmt: skip
    """A run's summary.json as ``train`` writes it (the keys compare reads)."""
    figures = {"top1": top1, "top5": top5, "loss": 1.0, "n": 40}
    return {
        "model": "resnet20", "method": method, "partners": partners, "seed": seed, "steps": steps,
        "epochs": 2.0, "batch_size": 16, "classes": ["a", "b"],
        "val": figures if where == "val" else None, "test": figures if where == "test" else None,
        "time": {"step_s": step_s, "data_s": 0.01, "mix_s": 0.0, "compute_s": step_s - 0.01,
                 "images_per_s": 16 / step_s, "train_s": steps * step_s},
    }  # fmt: skip


# --- statistics -------------------------------------------------------------------------------------------------


def test_mean_and_sample_std_over_seeds() -> None:
    # 0.70, 0.72, 0.74: squared deviations 0.0004 + 0 + 0.0004 over n-1 = 2 -> std 0.02 (ddof=0 would be 0.0163)
    e = estimate([0.70, 0.72, 0.74])
    assert e.mean == pytest.approx(0.72)
    assert e.std == pytest.approx(0.02)
    assert e.n == 3
    assert estimate([0.5]).std is None


def test_paired_difference_t_interval() -> None:
    # differences 0.01, 0.02, 0.03: mean 0.02, std 0.01, half-width t(0.975, 2) * 0.01 / sqrt(3)
    base = {0: 0.50, 1: 0.60, 2: 0.70}
    d = paired_difference({0: 0.51, 1: 0.62, 2: 0.73}, base)
    assert d is not None
    assert d.n == 3
    half = T_975_2 * 0.01 / math.sqrt(3)  # 0.02484
    assert d.mean == pytest.approx(0.02)
    assert (d.low, d.high) == (pytest.approx(0.02 - half), pytest.approx(0.02 + half))


def test_pairs_by_seed_not_by_position() -> None:
    # The baseline varies a lot between seeds (0.50 ... 0.70), the method beats it by 2-3 points at every seed.
    # Paired: differences 0.02, 0.03, 0.025 -> mean 0.025, std 0.005 -> the interval excludes 0. Listed in another
    # order, zipped by position, or compared as two unpaired samples, the spread of the seeds swamps it.
    base = {0: 0.50, 1: 0.60, 2: 0.70}
    method = {2: 0.725, 0: 0.52, 1: 0.63}
    d = paired_difference(method, base)
    assert d is not None
    assert d.low is not None
    assert d.high is not None
    half = T_975_2 * 0.005 / math.sqrt(3)
    assert d.mean == pytest.approx(0.025)
    assert (d.low, d.high) == (pytest.approx(0.025 - half), pytest.approx(0.025 + half))
    assert d.low > 0
    # only the seeds both have count: seeds 1 and 2 -> differences 0.03, 0.025
    shared = paired_difference({1: 0.63, 2: 0.725, 3: 0.9}, {0: 0.5, 1: 0.60, 2: 0.70})
    assert shared is not None
    assert shared.n == 2
    assert shared.mean == pytest.approx(0.0275)


def test_one_seed_has_no_interval() -> None:
    d = paired_difference({0: 0.55}, {0: 0.50})
    assert d is not None
    assert d.mean == pytest.approx(0.05)
    assert d.low is None
    assert d.high is None
    assert d.n == 1
    assert paired_difference({1: 0.55}, {0: 0.50}) is None


def test_overhead_is_mean_of_per_seed_ratios_and_positive_when_slower() -> None:
    # seed 0: 0.15 / 0.10 = 1.5, seed 1: 0.22 / 0.20 = 1.1 -> +30% (the ratio of means would be +23.3%)
    o = overhead({0: 0.15, 1: 0.22}, {0: 0.10, 1: 0.20})
    assert o is not None
    assert o.mean == pytest.approx(0.30)
    assert o.n == 2
    assert o.std == pytest.approx(math.sqrt(2 * 0.2**2))  # deviations +-0.2, n-1 = 1
    faster = overhead({0: 0.08}, {0: 0.10})
    assert faster is not None
    assert faster.mean == pytest.approx(-0.2)


def _table() -> dict[str, dict[int, dict[str, Any]]]:
    return {
        "none": {s: summary("none", s, top1, 0.90, t) for s, top1, t in ((0, 0.50, 0.10), (1, 0.60, 0.20),
                                                                         (2, 0.70, 0.10))},
        "diffcoremix@real": {s: summary("diffcoremix", s, top1, 0.95, t, partners="real")
                             for s, top1, t in ((2, 0.73, 0.12), (0, 0.51, 0.12), (1, 0.62, 0.24))},
    }  # fmt: skip


def test_method_rows() -> None:
    rows, where = method_rows(_table())
    assert where == "test"
    none, dcm = rows
    assert (none.label, none.top1_diff, none.overhead and none.overhead.mean) == ("none", None, 0.0)
    assert (dcm.method, dcm.partners, dcm.seeds) == ("diffcoremix", "real", (2, 0, 1))
    assert dcm.top1.mean == pytest.approx(0.62)
    assert dcm.top1.std == pytest.approx(0.11)
    assert dcm.top1_diff is not None
    assert dcm.top1_diff.mean == pytest.approx(0.02)
    assert dcm.top1_diff.high == pytest.approx(0.02 + T_975_2 * 0.01 / math.sqrt(3))
    assert dcm.top5_diff is not None
    assert dcm.top5_diff.mean == pytest.approx(0.05)
    assert dcm.top5_diff.low == pytest.approx(0.05)  # the same difference at every seed: a zero-width interval
    assert dcm.overhead is not None
    assert dcm.overhead.mean == pytest.approx(0.20)


def test_eval_set_is_test_else_val_else_an_error() -> None:
    with_both = summary("none", 0, 0.5)
    with_both["val"] = {**with_both["test"], "top1": 0.9}
    rows, where = method_rows({"none": {0: with_both}})
    assert where == "test"
    assert rows[0].top1.mean == pytest.approx(0.5)  # the test set's figure, not the validation set's
    val_only = {"none": {0: summary("none", 0, 0.5, where="val")}}
    assert method_rows(val_only)[1] == "val"
    both = summary("none", 1, 0.5)
    both["val"] = both["test"]
    mixed = {"none": {0: summary("none", 0, 0.5, where="val"), 1: both}}
    assert method_rows(mixed)[1] == "val"  # the test set only when every run has one
    with pytest.raises(CompareError, match="evaluation set"):
        method_rows({"none": {0: summary("none", 0, 0.5, where="neither")}})


def test_report_files(tmp_path: Path) -> None:
    summaries = _table()
    summaries["mixup"] = {0: summary("mixup", 0, 0.55, 0.90, 0.10)}  # one seed: no std, no interval
    _rows, table = write_report(tmp_path, summaries, [0, 1, 2])
    lines = table.splitlines()
    assert lines[0].startswith("Model resnet20, 50 optimizer steps of batch size 16, seeds 0, 1, 2; accuracy on the "
                               "test set (40 images)")  # fmt: skip
    assert "top-1 test (%)" in lines[2]
    body = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in lines[4:]}
    assert list(body) == ["none", "diffcoremix@real", "mixup"]
    half = 100 * T_975_2 * 0.01 / math.sqrt(3)
    assert body["diffcoremix@real"][2:5] == ["62.0 ± 11.0", "95.0 ± 0.0", f"+2.0 [{2 - half:+.1f}, {2 + half:+.1f}]"]
    assert body["diffcoremix@real"][7].rstrip(" |") == "+20.0"
    assert body["none"][4] == "baseline"
    assert body["none"][7].rstrip(" |") == "+0.0"
    assert body["mixup"][2] == "55.0"
    assert body["mixup"][4] == "+5.0 [n/a]"
    assert (tmp_path / RESULTS_MD).read_text() == table

    results = list(csv.DictReader((tmp_path / RESULTS_CSV).open()))
    assert [r["label"] for r in results] == ["none", "diffcoremix@real", "mixup"]
    dcm = results[1]
    assert float(dcm["top1_diff"]) == pytest.approx(0.02)
    assert float(dcm["overhead"]) == pytest.approx(0.2)
    assert dcm["pairs"] == "3"
    assert results[0]["top1_diff"] == ""
    assert results[2]["top1_std"] == ""
    runs = list(csv.DictReader((tmp_path / RUNS_CSV).open()))
    assert len(runs) == 7
    assert {r["steps"] for r in runs} == {"50"}
    assert runs[3]["run"] == "runs/diffcoremix-real-seed2"
    assert runs[3]["partners"] == "real"
    assert (tmp_path / PLOT_FILE).read_bytes().startswith(b"\x89PNG")

    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    write_report(tmp_path, summaries, [0, 1, 2])  # the same figures: no file is rewritten
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


# --- method specs -----------------------------------------------------------------------------------------------


def test_parse_methods() -> None:
    specs = parse_methods("none, mixup,diffcoremix@real,diffcoremix@generated,diffcoremix-patch", partners="real")
    assert specs == [
        MethodSpec("none", "none", "real"),
        MethodSpec("mixup", "mixup", "real"),
        MethodSpec("diffcoremix@real", "diffcoremix", "real"),
        MethodSpec("diffcoremix@generated", "diffcoremix", "generated"),
        MethodSpec("diffcoremix-patch", "diffcoremix-patch", "real"),
    ]
    assert parse_methods(["none,mixup", "cutmix"]) == parse_methods("none,mixup,cutmix")
    assert run_name("diffcoremix@real", 3) == "diffcoremix-real-seed3"


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("none,mixupp", UnknownNameError, "unknown method 'mixupp'; known: " + ", ".join(METHODS)),
        ("diffcoremix@fake", UnknownNameError, "unknown partners 'fake'; known: generated, real, none"),
        ("mixup@real", ConfigError, "only for the methods with partners"),
        ("none,mixup,none", ConfigError, "same run as 'none'"),
        ("diffcoremix,diffcoremix@generated", ConfigError, "same run as 'diffcoremix'"),
        (" , ", ConfigError, "comma-separated list"),
    ],
)
def test_parse_methods_refuses(text: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        parse_methods(text)
    assert message in str(caught.value)


def test_parse_seeds() -> None:
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    assert parse_seeds([3]) == [3]
    for bad in ("0,x", "1,1", ""):
        with pytest.raises(ConfigError, match="seeds"):
            parse_seeds(bad)


# --- end to end -------------------------------------------------------------------------------------------------

_UNREGISTERED = """import sys
from diffcoremix.cli import main
from diffcoremix.cli.compare_command import COMPARE_COMMAND
main.ALL_COMMANDS = (*main.ALL_COMMANDS, COMPARE_COMMAND)
sys.exit(main.main(sys.argv[1:]))
"""


def _compare_cli(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """``python -m diffcoremix compare ARGS`` (through the same ``main`` until main.py registers the command)."""
    from diffcoremix.cli.main import build_parser

    registered = re.search(r"^\s+compare\s", build_parser().format_help(), re.MULTILINE) is not None
    command = cli_command("compare", *args) if registered else [sys.executable, "-c", _UNREGISTERED, "compare",
                                                                *map(str, args)]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    data = make_class_folders(root / "data", {"a": 8, "b": 8, "c": 8})
    test = make_class_folders(root / "test", {"a": 3, "b": 3, "c": 3})
    return data, test


def test_cli_end_to_end_and_rerun(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, test = tiny
    out = tmp_path / "cmp"
    args = (data, "--methods", "none,mixup,diffcoremix@real", "--seeds", "0,1", "--model", "resnet20",
            "--max-steps", "3", "-b", "8", "--img-size", "32", "--test", test, "-o", out)  # fmt: skip
    done = _compare_cli(*args)
    assert done.returncode == 0, done.stderr
    for name in (RESULTS_MD, RESULTS_CSV, RUNS_CSV, PLOT_FILE, "run.json", "config.yaml", "layout.json"):
        assert (out / name).is_file(), name
    table = (out / RESULTS_MD).read_text()
    assert table in done.stdout + "\n"
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split(" | ")[0][2:] for r in rows] == ["none", "mixup", "diffcoremix@real"]
    runs = list(csv.DictReader((out / RUNS_CSV).open()))
    assert len(runs) == 6
    assert {r["steps"] for r in runs} == {"3"}
    assert {(r["label"], r["seed"]) for r in runs} == {(m, s) for m in ("none", "mixup", "diffcoremix@real")
                                                       for s in ("0", "1")}  # fmt: skip
    models = sorted((out / "runs").glob("*/model.pt"))
    assert len(models) == 6
    before = {p: p.stat().st_mtime_ns for p in models}
    report = {name: (out / name).stat().st_mtime_ns for name in (RESULTS_MD, RESULTS_CSV, RUNS_CSV, PLOT_FILE)}

    again = _compare_cli(*args)
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in models} == before  # nothing retrained
    assert {name: (out / name).stat().st_mtime_ns for name in report} == report  # nor rewritten


def test_epoch_budget_is_the_same_for_every_method_and_overwrite(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    # 24 images, 1/4 held out for validation -> 18 training images -> 2 full batches of 8 per epoch -> 2 epochs = 4
    data, _ = tiny
    out = tmp_path / "cmp"
    config = TrainConfig(epochs=2, batch_size=8, img_size=32, val_split=0.25)
    result = compare(data, "none,mixup", [0], config=config, output=out)
    assert result.steps == 4
    assert all(s["steps"] == 4 and s["steps_per_epoch"] == 2 for s in _summaries(out))
    assert "top-1 val (%)" in result.table
    (out / "notes.txt").write_text("mine")

    result = compare(data, "none", [1], config=config, output=out, overwrite=True)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["none-seed1"]  # the earlier runs are gone
    assert (out / "notes.txt").read_text() == "mine"  # a file diffcoremix did not make stays
    assert [r.label for r in result.rows] == ["none"]


def _summaries(out: Path) -> list[dict[str, Any]]:
    from diffcoremix.train import read_summary

    return [read_summary(p) for p in sorted((out / "runs").iterdir())]


def test_refused_before_any_run(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, test = tiny
    config = TrainConfig(max_steps=3, batch_size=8, img_size=32)
    with pytest.raises(CompareError, match="evaluation set"):
        compare(data, "none", [0], config=config, output=tmp_path / "a")
    with pytest.raises(CompareError, match="diffcoremix trains on generated images: give --synthetic"):
        compare(data, "none,diffcoremix", [0], config=config, output=tmp_path / "b", test=test)
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()

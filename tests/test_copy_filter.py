"""The filter against copies: every candidate's nearest real image and its cosine, ``--max-copy-similarity``, and
the copy share in the filter report, the calibration and ``report``."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffcoremix import PromptsConfig
from diffcoremix.data import open_image
from diffcoremix.embedders import load_embedder
from diffcoremix.filter import RealIndex
from diffcoremix.filter.references import nearest_real
from diffcoremix.generate import GenerateConfig, generate, read_manifest
from diffcoremix.report import build_report

from .helpers import make_class_folders, run_in_process


def _unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float64)
    unit: np.ndarray = v / np.linalg.norm(v)
    return unit


def test_the_nearest_real_image_is_the_closest_of_the_class_or_the_candidates_own_source() -> None:
    # Class "a": a0 along x, a1 along y; class "b": b0 along z.
    vectors = {"a/a0.png": _unit(1, 0, 0), "a/a1.png": _unit(0, 1, 0), "b/b0.png": _unit(0, 0, 1)}
    index = RealIndex(vectors, {"a": ["a/a0.png", "a/a1.png"], "b": ["b/b0.png"]})
    candidate = _unit(0.1, 0.3, 1.0)  # closest to b0, but of class a: its nearest is sought in class a
    near = nearest_real(index, candidate, "a/a0.png", "a")
    assert (near.reference, near.score) == ("a/a1.png", pytest.approx(float(candidate[1])))
    # A cross-class counterpart drawn from b0 is a copy of b0 however far class a is: its own source counts.
    near = nearest_real(index, candidate, "b/b0.png", "a")
    assert (near.reference, near.score) == ("b/b0.png", pytest.approx(float(candidate[2])))
    # Its own source, inside the class, competes with the class like any other image.
    near = nearest_real(index, _unit(1, 0.1, 0), "a/a1.png", "a")
    assert near.reference == "a/a0.png"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny generation (two classes of three images, two candidates each), never filtered: tests copy it."""
    root = tmp_path_factory.mktemp("copies")
    data = make_class_folders(root / "data", {"001.cat": 3, "002.dog": 3})
    generate(data, root / "out", PromptsConfig(per_image=2), GenerateConfig(preset="tiny", num_inference_steps=1))
    return root


@pytest.fixture
def run(template: Path, tmp_path: Path) -> tuple[Path, Path, str]:
    """This test's own OUT, and its own DATA holding a byte copy of one generated image, as a real training image of
    that image's class (listed last: no class's first image); returns ``(data, out, key of the copied candidate)``."""
    out = Path(shutil.copytree(template / "out", tmp_path / "out"))
    data = Path(shutil.copytree(template / "data", tmp_path / "data"))
    row = read_manifest(out).sort_values("key").iloc[0]
    shutil.copyfile(out / row.output, data / row.class_folder / "zz_copy.png")
    return data, out, str(row.key)


def _filter(capsys: pytest.CaptureFixture[str], data: Path, out: Path, *args: str) -> str:
    result = run_in_process(capsys, "filter", out, "--data", data, "--embedder", "tiny", "--threshold", "-1", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def test_a_byte_copy_is_found_recorded_without_a_bound_and_rejected_under_one(
    run: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    data, out, copied = run
    manifest, images = _hashes(out / "manifest"), _hashes(out / "images")
    printed = _filter(capsys, data, out, "--reference", "prototype")
    table = read_manifest(out).set_index("key")
    # Without a bound: recorded for every candidate, nothing is a copy, everything is kept (threshold -1).
    assert table.nearest_real.notna().all()
    assert table.near_copy.isna().all()
    assert table.accepted.all()
    assert table.rejected_by.isna().all()
    assert (table.at[copied, "nearest_real"], table.at[copied, "nearest_real_score"]) == (
        f"{table.at[copied, 'class_folder']}/zz_copy.png", pytest.approx(1.0, abs=1e-5))  # fmt: skip
    # The nearest image is the closest of all the candidate's class in DATA, by the embedder's own cosine.
    embedder = load_embedder("tiny")

    def embed(path: Path) -> np.ndarray:
        vector: np.ndarray = embedder.embed_images(embedder.preprocess(open_image(path))[None])[0].numpy()
        return vector

    for key, row in table.iterrows():
        reals = sorted((data / row.class_folder).iterdir())
        sims = [float(embed(p) @ embed(out / row.output)) for p in reals]
        assert row.nearest_real == f"{row.class_folder}/{reals[int(np.argmax(sims))].name}", key
        assert row.nearest_real_score == pytest.approx(max(sims), abs=1e-5), key
    # The printed report counts near-copies above 0.95 for information.
    line = next(line for line in printed.splitlines() if line.startswith(f"{table.at[copied, 'class_folder']} "))
    share = _count_above(table, table.at[copied, "class_folder"], 0.95)
    assert line.split()[6:8] == [str(share[0]), f"({share[1]:.1%})"]
    assert "information only: no --max-copy-similarity bound" in printed

    # With the bound: the copy (and only what is above the bound) is rejected as a copy; generation untouched.
    printed = _filter(capsys, data, out, "--reference", "prototype", "--max-copy-similarity", "0.99")
    table = read_manifest(out).set_index("key")
    assert bool(table.at[copied, "near_copy"])
    assert not table.at[copied, "accepted"]
    assert table.at[copied, "rejected_by"] == "copy"
    above = table.nearest_real_score > 0.99
    assert (table.near_copy.astype(bool) == above).all()
    assert (table.accepted == ~above).all()
    assert (table.rejected_by.isna() == ~above).all()
    assert (out / "rejected" / table.at[copied, "class_folder"] / Path(table.at[copied, "output"]).name).is_file()
    assert (_hashes(out / "manifest"), _hashes(out / "images")) == (manifest, images)
    report = json.loads((out / "filter_report.json").read_text())
    assert report["max_copy_similarity"] == 0.99
    for name, cls in report["classes"].items():  # counted above the bound, not above 0.95
        assert cls["copies"] == _count_above(table, name, 0.99)[0], name
        assert cls["copy_share"] == pytest.approx(cls["copies"] / cls["candidates"])
    assert report["classes"][table.at[copied, "class_folder"]]["copies"] >= 1
    assert sum(c["copies"] for c in report["classes"].values()) < sum(_count_above(table, c, 0.95)[0]
                                                                      for c in report["classes"])  # fmt: skip
    assert "(--max-copy-similarity): rejected as copies" in printed
    # Whatever the rule compares with, the nearest image is sought in the whole class (the same for every rule).
    for rule in ("first", "source", "knn", "prototype"):
        _filter(capsys, data, out, "--reference", rule)
        again = read_manifest(out).set_index("key")
        assert again.at[copied, "accepted"], rule  # and without the bound the copy is kept again
        assert again.nearest_real.equals(table.nearest_real), rule
        assert np.allclose(again.nearest_real_score, table.nearest_real_score, atol=1e-6), rule


def _count_above(table: pd.DataFrame, cls: str, cut: float) -> tuple[int, float]:
    scores = table[table.class_folder == cls].nearest_real_score
    return int((scores > cut).sum()), float((scores > cut).mean())


def test_the_threshold_and_the_copy_bound_each_reject_and_say_which(
    run: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    data, out, copied = run
    _filter(capsys, data, out, "--reference", "source")
    scores = read_manifest(out).set_index("key").score
    cut = float(np.sort(scores.to_numpy(dtype=float))[6])  # the upper median: six candidates below it
    _filter(capsys, data, out, "--reference", "source", "--threshold", repr(cut), "--max-copy-similarity", "0.99")
    table = read_manifest(out).set_index("key")
    far, copy = table.score < cut, table.nearest_real_score > 0.99
    assert far.any()
    assert copy[copied]
    assert (table.accepted == (~far & ~copy)).all()
    assert (table.rejected_by[far] == "threshold").all()  # the first check failed is named
    assert (table.rejected_by[~far & copy] == "copy").all()


def test_augment_changes_only_its_decisions_when_only_the_bound_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_class_folders(tmp_path / "data", {"001.cat": 2, "002.dog": 2})
    out = tmp_path / "out"
    args = ("augment", data, "-o", out, "--preset", "tiny", "--num-inference-steps", "1", "--per-image", "2",
            "--embedder", "tiny", "--threshold", "-1")  # fmt: skip
    first = run_in_process(capsys, *args)
    assert first.returncode == 0, first.stderr
    before = read_manifest(out).set_index("key")
    assert before.nearest_real_score.notna().all()
    manifest, images = _hashes(out / "manifest"), _hashes(out / "images")
    bound = float(np.median(before.nearest_real_score))
    second = run_in_process(capsys, *args, "--max-copy-similarity", repr(bound), "--retries", "0")
    assert second.returncode == 0, second.stderr
    after = read_manifest(out).set_index("key")
    assert (_hashes(out / "manifest"), _hashes(out / "images")) == (manifest, images)  # nothing generated again
    assert after.nearest_real_score.equals(before.nearest_real_score)
    assert (after.accepted == (after.nearest_real_score <= bound)).all()
    assert 0 < int(after.accepted.sum()) < len(after)
    assert "(--max-copy-similarity): rejected as copies" in second.stdout


def test_calibration_shows_how_close_real_images_are_to_each_other(
    run: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    data, out, copied = run
    cls = read_manifest(out).set_index("key").at[copied, "class_folder"]
    shutil.copyfile(data / cls / "img_000.png", data / cls / "img_000_again.png")  # a duplicate in DATA
    printed = _filter(capsys, data, out, "--calibrate", "--json")
    copies = json.loads(printed)["copy_calibration"]
    assert copies[cls]["count"] == 5  # three images, the generated copy, the duplicate
    assert copies[cls]["max"] == pytest.approx(1.0, abs=1e-5)
    other = next(c for c in copies if c != cls)
    assert copies[other]["count"] == 3
    assert copies[other]["max"] < 0.9999
    text = _filter(capsys, data, out, "--calibrate")
    assert "nearest other real image of the class" in text


def test_the_report_shows_the_copy_share_per_class(
    run: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data, out, _ = run
    _filter(capsys, data, out, "--max-copy-similarity", "0.99")
    table = read_manifest(out)
    page = build_report(out, tmp_path / "r.html", data=data).path.read_text()
    budget = page.split('id="budget"')[1].split('id="scores"')[0]
    assert '<th class="num">copies</th>' in budget
    for cls, group in table.groupby("class_folder"):
        n = int((group.nearest_real_score > 0.99).sum())
        cells = re.search(rf"<td>{re.escape(str(cls))}</td>(.*?)</tr>", budget)
        assert cells is not None
        assert f'<td class="num">{n} ({n / len(group):.0%})</td>' in cells.group(1), cls
    assert "<td>max copy similarity</td><td>0.99</td>" in page
    assert "(--max-copy-similarity): rejected as copies" in budget


@pytest.mark.parametrize("command", ["filter", "augment"])
def test_a_bound_outside_the_cosine_range_is_one_line_exit_2(
    command: str, template: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = (template / "out",) if command == "filter" else (template / "data", "-o", tmp_path / "out")
    result = run_in_process(capsys, command, *target, "--max-copy-similarity", "1.5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"diffcoremix {command}: error: --max-copy-similarity must be in [-1, 1] or null, got 1.5"
    ]
    assert not (tmp_path / "out").exists()

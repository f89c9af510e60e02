"""`report`: one self-contained HTML page, checked in headless Chromium (no console error, no request, every section
and image there, user text shown as text), and its parts: sampling, borderline cases, distances, histograms,
ownership of the output file, and a run of thousands of candidates drawn from bounded samples."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffcoremix import PromptsConfig
from diffcoremix.filter import FilterConfig, filter_run
from diffcoremix.filter.plots import draw_histogram
from diffcoremix.generate import GenerateConfig, generate
from diffcoremix.manifest.layout import OutputFolderError
from diffcoremix.report import GENERATOR_MARK, REPORT_MAX_BYTES, build_report
from diffcoremix.report.build import HISTOGRAM_CLASSES
from diffcoremix.report.distances import distance
from diffcoremix.report.sample import borderline, stratified_sample
from diffcoremix.train import TrainConfig, compare, evaluate

from .browser import render_page
from .helpers import make_class_folders, run_cli
from .synthetic_run import make_synthetic_run

SECTIONS = ["overview", "provenance", "counterparts", "budget", "scores", "grids", "distances", "mixing", "training"]
SCRIPT_NAME = "<script>alert('name')</script> dog"
"""A class name (through --class-map) that a page without escaping would run."""
TAG_FOLDER = "003.<b onmouseover=alert(1)>eel"
"""A class folder name holding markup (folders cannot hold "/", so no closing tag)."""


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real run of the tools: tiny generation, filtering at the median score, a calibration, a two-method compare
    and an eval with Grad-CAM maps."""
    root = tmp_path_factory.mktemp("report")
    data = make_class_folders(root / "data", {"001.cat": 3, "002.dog": 3, TAG_FOLDER: 3}, size=32)
    class_map = root / "names.json"
    class_map.write_text(json.dumps({"002.dog": SCRIPT_NAME}), encoding="utf-8")
    out = root / "out"
    generate(data, out, PromptsConfig(per_image=2, class_map=str(class_map)),
             GenerateConfig(preset="tiny", num_inference_steps=1))  # fmt: skip
    probe = filter_run(out, FilterConfig(embedder="tiny", threshold=-1.0))
    median = float(np.median([s for c in probe.classes.values() for s in c.scores]))
    filter_run(out, FilterConfig(embedder="tiny", threshold=median, calibrate=True))
    filter_run(out, FilterConfig(embedder="tiny", threshold=median))
    recipe = TrainConfig(model="resnet20", img_size=32, batch_size=4, max_steps=3, lr=0.02)
    compare(data, "none,diffcoremix", "0", config=recipe, output=root / "compare", synthetic=out, test=data)
    runs = sorted((root / "compare" / "runs").iterdir())
    evaluate(runs, data, output=root / "eval", saliency=2, batch_size=16)
    return {"root": root, "data": data, "out": out, "compare": root / "compare", "eval": root / "eval"}


@pytest.fixture(scope="module")
def page(made: dict[str, Path]) -> tuple[Path, str]:
    target = made["root"] / "site" / "report.html"
    result = build_report(made["out"], target, compare=made["compare"], evaluation=made["eval"])
    assert result.path == target
    assert list(result.sections) == SECTIONS
    return target, target.read_text(encoding="utf-8")


def test_the_page_loads_in_chromium_with_no_error_no_request_and_every_section_and_image(
    page: tuple[Path, str], tmp_path: Path
) -> None:
    path, _ = page
    shot = tmp_path / "report.png"
    result = render_page(path, shot)
    assert result.console_errors == []
    assert result.requests == []
    assert result.dialogs == []
    assert result.section_ids == SECTIONS
    assert len(result.images) >= 20  # histograms, cards (source + candidate), mixing, curves, confusion, Grad-CAM
    broken = [i.alt for i in result.images if not (i.complete and i.natural_width > 0 and i.natural_height > 0)]
    assert broken == []
    alts = " | ".join(i.alt or "" for i in result.images)
    for expected in ("score histogram: all classes", "candidate ", "source ", "mixing preview", "training curves",
                     "overhead against accuracy", "confusion matrix", "Grad-CAM grid"):  # fmt: skip
        assert expected in alts, expected
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_user_text_is_shown_as_text_never_as_markup(page: tuple[Path, str]) -> None:
    path, source = page
    result = render_page(path)
    assert SCRIPT_NAME in result.text  # the class name, shown literally
    assert "<b onmouseover=alert(1)>eel" in result.text  # the folder name, shown literally
    assert result.dialogs == []
    assert "<script" not in source.lower()  # the page holds no script at all: every "<" of user text is escaped
    assert "<b onmouseover" not in source
    # and the browser is told to refuse any script, and any request but inline images, anyway
    assert "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\"" in source


def test_the_page_fits_a_phone_screen(page: tuple[Path, str]) -> None:
    result = render_page(page[0], mobile=True)
    assert result.viewport_width == 390
    assert result.scroll_width <= result.viewport_width
    assert result.console_errors == []


def test_the_page_shows_provenance_budget_and_training_figures(made: dict[str, Path], page: tuple[Path, str]) -> None:
    _, source = page
    table = pd.read_json(made["out"] / "filter.jsonl", lines=True)
    kept = int(table.accepted.sum())
    assert f"<b>{kept}</b>kept" in source
    assert f"<b>{len(table) - kept}</b>rejected" in source
    calibration = json.loads((made["out"] / "calibration.json").read_text())
    assert f"calibrated threshold {calibration['suggested_threshold']:.3f}" in source
    for text in ("tiny-open-clip-seed0", "StableDiffusionPipeline", "prototype", "torchmetrics"):
        assert text in source, text
    results = pd.read_csv(made["compare"] / "results.csv")
    for label, top1 in zip(results.label, results.top1_mean, strict=True):
        assert re.search(rf"<td>{label}</td><td>[^<]*</td><td class=\"num\">1</td><td class=\"num\">{100 * top1:.1f}",
                         source), label  # fmt: skip


def test_an_existing_file_is_replaced_only_if_it_is_our_report(made: dict[str, Path], tmp_path: Path) -> None:
    foreign = tmp_path / "notes.html"
    foreign.write_text("<html>my notes</html>")
    with pytest.raises(OutputFolderError, match="not a diffcoremix report"):
        build_report(made["out"], foreign)
    assert foreign.read_text() == "<html>my notes</html>"
    ours = tmp_path / "report.html"
    build_report(made["out"], ours, seed=1)
    first = ours.read_text()
    assert f'<meta name="generator" content="{GENERATOR_MARK}' in first
    build_report(made["out"], ours, seed=2)  # a report of ours is replaced
    assert ours.read_text() != first
    with pytest.raises(OutputFolderError, match="inside the dataset"):
        build_report(made["out"], made["data"] / "report.html")
    assert not (made["data"] / "report.html").exists()


@pytest.mark.slow  # the kill harness runs the report command too (tests/test_faults_generation.py): make test-all
def test_the_cli_writes_the_report_and_refuses_a_folder_that_is_no_run(made: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "r.html"
    done = run_cli("report", made["out"], "-o", target, "--grid", "4")
    assert done.returncode == 0, done.stderr
    assert str(target) in done.stdout
    assert target.is_file()
    assert len(re.findall(r'alt="candidate ', target.read_text())) <= 4 + 4 + 16  # kept, rejected, borderline
    bad = run_cli("report", made["data"], "-o", tmp_path / "x.html")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert "was not made by" in bad.stderr
    assert not (tmp_path / "x.html").exists()


@pytest.mark.slow  # heavy: a synthetic run of thousands of candidates: make test-all
def test_a_run_of_thousands_of_candidates_is_drawn_from_bounded_seeded_samples(tmp_path: Path) -> None:
    classes = 60
    _data, out = make_synthetic_run(tmp_path, candidates=6000, classes=classes, judged=True)
    first = build_report(out, tmp_path / "a.html", grid=30, seed=3)
    source = first.path.read_text()
    assert first.size < REPORT_MAX_BYTES
    cards = re.findall(r'alt="candidate ([^"]+)"', source)
    assert len(cards) == 30 + 30 + 16
    kept_grid = source.split('id="kept"')[1].split('id="rejected"')[0]
    kept_classes = re.findall(r'alt="source (\d{4})\.', kept_grid)
    assert len(set(kept_classes)) == 30  # 30 cards over 60 classes: 30 classes, one card each
    histograms = re.findall(r'alt="score histogram: ([^"]+)"', source)
    assert len(histograms) == 1 + HISTOGRAM_CLASSES
    assert f"the {HISTOGRAM_CLASSES} classes with the lowest keep rates, of {classes}" in source
    assert source.count("judge: <span") == len(cards)
    decided = pd.read_json(out / "filter.jsonl", lines=True)
    rates = decided.groupby("class_folder").accepted.mean().sort_values(kind="stable")
    lowest = rates.reset_index().sort_values(["accepted", "class_folder"], kind="stable").class_folder
    shown = {f"{folder.split('.', 1)[1]} ({folder})" for folder in lowest.head(HISTOGRAM_CLASSES)}
    assert set(histograms[1:]) == shown
    again = build_report(out, tmp_path / "b.html", grid=30, seed=3).path.read_text()
    assert _without_build_time(again) == _without_build_time(source)  # the same seed, the same page
    other = re.findall(r'alt="candidate ([^"]+)"', build_report(out, tmp_path / "c.html", grid=30, seed=4)
                       .path.read_text())  # fmt: skip
    assert other[:16] == cards[:16]
    assert other[16:] != cards[16:]


def _without_build_time(page: str) -> str:
    return re.sub(r"built \d{4}-\d\d-\d\d \d\d:\d\d UTC", "built (time)", page)


def test_judge_agreement_per_class_in_the_budget_table(tmp_path: Path) -> None:
    _data, out = make_synthetic_run(tmp_path, candidates=40, classes=4, judged=True)
    page = build_report(out, tmp_path / "r.html").path.read_text()
    source = page.split('id="budget"')[1].split('id="scores"')[0]
    rows = re.findall(r"<tr><td>class (\d)</td>.*?</tr>", source)
    assert rows == ["0", "1", "2", "3"]
    agree = re.findall(r'<td>class (\d)</td>(?:<td[^>]*>[^<]*</td>){11}<td class="num">([^<]*)</td></tr>', source)
    assert agree == [("0", "100%"), ("1", "0%"), ("2", "100%"), ("3", "0%")]
    assert "<b>50%</b>judge agrees (of 40 judged)" in page


def test_judge_agreement_among_the_kept_and_among_the_rejected(tmp_path: Path) -> None:
    _data, out = make_synthetic_run(tmp_path, candidates=40, classes=4, judged=True)
    # The judge agrees with every kept candidate, with one rejected one, and leaves another rejected one unjudged.
    kept = {d["key"]: d["accepted"] for d in map(json.loads, (out / "filter.jsonl").read_text().splitlines())}
    rejected = [k for k, accepted in kept.items() if not accepted]
    n_kept, n_rejected = sum(kept.values()), len(rejected)
    assert n_kept >= 2
    assert n_rejected >= 3
    lines = []
    for line in map(json.loads, (out / "judge.jsonl").read_text().splitlines()):
        agrees = kept[line["key"]] or line["key"] == rejected[0]
        lines.append({**line, "agrees": None if line["key"] == rejected[1] else agrees})
    (out / "judge.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    page = build_report(out, tmp_path / "r.html").path.read_text()
    overview = page.split('id="overview"')[1].split('id="provenance"')[0]
    assert f"<b>100%</b>judge agrees among the kept (of {n_kept})" in overview
    share = f"{1 / (n_rejected - 1):.0%}"
    assert f"<b>{share}</b>judge agrees among the rejected (of {n_rejected - 1})" in overview


def _table(classes: dict[str, int]) -> pd.DataFrame:
    rows = [{"class_folder": c, "key": f"{c}#{i}", "score": i / 100} for c, n in classes.items() for i in range(n)]
    return pd.DataFrame(rows)


def test_a_stratified_sample_spreads_over_classes_and_depends_only_on_the_seed() -> None:
    table = _table({"a": 50, "b": 3, "c": 40, "d": 20})
    sample = stratified_sample(table, 30, seed=0)
    counts = sample.class_folder.value_counts().to_dict()
    assert counts == {"a": 9, "c": 9, "d": 9, "b": 3}  # b gives what it has; the others share the rest evenly
    assert sample.key.is_unique
    assert list(sample.index) == sorted(sample.index)
    assert stratified_sample(table, 30, seed=0).equals(sample)
    assert not stratified_sample(table, 30, seed=1).equals(sample)
    assert len(stratified_sample(table, 500, seed=0)) == len(table)
    many = _table({f"c{i}": 5 for i in range(40)})
    assert stratified_sample(many, 10, seed=0).class_folder.nunique() == 10


def test_borderline_cases_sit_on_both_sides_of_the_threshold_highest_first() -> None:
    decided = pd.DataFrame({"key": [f"k{i}" for i in range(10)], "score": np.linspace(0.5, 0.95, 10)})
    decided["accepted"] = decided.score >= 0.72
    cases = borderline(decided, 2)
    assert list(cases.score.round(2)) == [0.8, 0.75, 0.7, 0.65]
    assert list(cases.accepted) == [True, True, False, False]


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """KID's estimate written out: the unbiased squared MMD with the kernel (x.y / d + 1) ** 3."""
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    n, m = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())  # fmt: skip


def test_kid_is_the_unbiased_mmd_of_the_two_sets_and_fid_needs_more_images_than_dimensions() -> None:
    rng = np.random.default_rng(0)
    real, near, far = rng.normal(size=(30, 8)), rng.normal(size=(30, 8)), rng.normal(size=(30, 8)) + 1.0
    result = distance("x", real, far)  # 30 < 100 per subset: every subset is the whole of both sets
    assert result.kid == pytest.approx(_mmd2_unbiased(real, far), rel=1e-6)
    assert result.kid_std == pytest.approx(0.0, abs=1e-9)
    assert distance("x", real, near).kid < result.kid
    assert result.fid is not None
    assert result.fid > distance("x", real, near).fid
    few = distance("x", real[:5], far[:5])
    assert few.fid is None
    assert "FID needs 9 images" in few.note
    assert distance("x", real[:1], far).kid is None


def test_the_histogram_draws_the_threshold_and_the_calibrated_suggestion() -> None:
    from matplotlib.figure import Figure

    axes = Figure().add_subplot()
    draw_histogram(axes, "cat", np.array([0.5, 0.6, 0.7, 0.9]), 0.65, 10, suggestion=0.8)
    lines = sorted(float(line.get_xdata()[0]) for line in axes.lines)  # type: ignore[index]
    assert lines == [pytest.approx(0.65), pytest.approx(0.8)]
    assert any("suggested 0.800" in t.get_text() for t in axes.texts)
    plain = Figure().add_subplot()
    draw_histogram(plain, "cat", np.array([0.5, 0.6, 0.7, 0.9]), 0.65, 10)
    assert len(plain.lines) == 1


def test_a_missing_image_is_said_on_its_card(tmp_path: Path) -> None:
    _data, out = make_synthetic_run(tmp_path, candidates=8, classes=2)
    shutil.rmtree(out / "images")
    source = build_report(out, tmp_path / "r.html").path.read_text()
    assert source.count("image missing") == 2 * 8  # each candidate has a card in the borderline row and in a grid

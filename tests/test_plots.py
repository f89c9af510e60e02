"""Score histograms of the filter: the files written, their size, and the colours on each side of the threshold."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from diffcoremix.filter.plots import (
    KEPT_COLOR,
    REJECTED_COLOR,
    THRESHOLD_COLOR,
    histogram_edges,
    histogram_file_name,
    write_histograms,
)


def _rgb(color: str) -> np.ndarray:
    return np.round(np.array(to_rgb(color)) * 255).astype(int)


def _count(column: np.ndarray, color: str) -> int:
    """Pixels of ``column`` (``(H, 3)``) that are exactly ``color``."""
    return int((column == _rgb(color)).all(axis=1).sum())


def _threshold_line(pixels: np.ndarray) -> tuple[int, slice]:
    """The x of the vertical red line (the column with the most near-red pixels), and the rows it spans (the
    plot area, without the tick labels whose anti-aliased edges may hold any gray)."""
    near = np.abs(pixels - _rgb(THRESHOLD_COLOR)).sum(axis=2) < 60
    x = int(near.sum(axis=0).argmax())
    rows = np.flatnonzero(near[:, x])
    assert len(rows) > 100, "no vertical threshold line found"
    return x, slice(int(rows[0]), int(rows[-1]) + 1)


def test_bars_left_of_the_threshold_are_gray_and_right_of_it_green(tmp_path: Path) -> None:
    # Scores just below and just above the threshold: with bars split anywhere but at the threshold, one bar
    # would straddle it and show one colour on both sides of the line. (Twenty equal bins over this range, with a
    # 5% margin, would put the threshold 0.8 of the way into a bin.)
    scores = [0.0, 0.299, 0.299, 0.299, 0.3, 0.301, 0.301, 0.5]
    (path,) = write_histograms(tmp_path, {"001.cat": scores}, 0.3)
    image = Image.open(path)
    assert (image.format, image.size) == ("PNG", (640, 360))
    pixels = np.asarray(image.convert("RGB")).astype(int)
    x, rows = _threshold_line(pixels)
    for dx in (4, 6):
        left, right = pixels[rows, x - dx], pixels[rows, x + dx]
        assert _count(left, REJECTED_COLOR) > 50
        assert _count(left, KEPT_COLOR) == 0
        assert _count(right, KEPT_COLOR) > 50
        assert _count(right, REJECTED_COLOR) == 0


def test_a_score_equal_to_the_threshold_is_counted_kept(tmp_path: Path) -> None:
    (path,) = write_histograms(tmp_path, {"c": [0.6, 0.6, 0.6]}, 0.6)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    x, rows = _threshold_line(pixels)
    plot = pixels[rows, x - 40 : x + 40].reshape(-1, 3)  # around the line, away from the tick labels
    assert _count(plot, KEPT_COLOR) > 1000
    assert _count(plot, REJECTED_COLOR) == 0


def test_one_file_per_class_with_safe_one_to_one_names(tmp_path: Path) -> None:
    classes = {"001.cat": [0.5, 0.7], "a/b": [0.2], "a%2Fb": [0.9], "Großer Bär": [0.6], "empty": []}
    paths = write_histograms(tmp_path / "report", classes, 0.6, bins=5)
    names = ["001.cat.png", "a%2Fb.png", "a%252Fb.png", "Großer Bär.png", "empty.png"]
    assert paths == [tmp_path / "report" / n for n in names]
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(names)
    for path in paths:
        assert Image.open(path).size == (640, 360)


def test_file_names_escape_percent_first() -> None:
    assert histogram_file_name("x/y") == "x%2Fy.png"
    assert histogram_file_name("x%2Fy") == "x%252Fy.png"
    assert histogram_file_name("100% / 2") == "100%25 %2F 2.png"


def test_a_single_score_an_empty_class_and_a_mathtext_lookalike_name_draw(tmp_path: Path) -> None:
    classes = {"one": [0.42], "none": [], r"price $\notacommand$": [0.1, 0.9]}
    paths = write_histograms(tmp_path, classes, -0.25)
    assert [Image.open(p).size for p in paths] == [(640, 360)] * 3


@pytest.mark.parametrize("threshold", [-1.0, -0.25, 0.0, 0.3, 0.6, 1.0])
@pytest.mark.parametrize("scores", [[], [0.5], [0.1, 0.2, 0.95], list(np.linspace(-1, 1, 41))])
def test_the_threshold_is_a_bin_edge_and_the_range_holds_every_score(threshold: float, scores: list[float]) -> None:
    values = np.array(scores, dtype=np.float64)
    edges, split = histogram_edges(values, threshold, 20)
    assert edges[split] == threshold
    assert np.all(np.diff(edges) > 0)
    assert 20 <= len(edges) - 1 <= 21
    assert edges[0] < min([*scores, threshold])
    assert max([*scores, threshold]) < edges[-1]


def test_importing_the_module_does_not_import_matplotlib() -> None:
    import subprocess

    code = "import sys, diffcoremix.filter.plots; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

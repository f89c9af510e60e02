"""Score histograms of the hard cosine filter (METHOD.md §6): one PNG per class, split at the threshold.

Each plot shows how a class's candidates scored against their references: bars below the threshold in gray
(rejected), bars at or above it in green (kept), the threshold as a labelled red line, and "k of n kept" in the
title. The bin edges are laid out so that the threshold is one of them: a bar is all kept or all rejected, and
the two colours count exactly what the filter's ``score >= threshold`` decided.

matplotlib is imported inside :func:`write_histograms` (Agg backend, no pyplot state), so importing this module
stays light.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from diffcoremix.atomic import write_bytes_if_changed
from diffcoremix.cells import text_cell

if TYPE_CHECKING:
    from matplotlib.axes import Axes

REJECTED_COLOR = "#9e9e9e"
"""Bars below the threshold (gray)."""
KEPT_COLOR = "#2e8b57"
"""Bars at or above the threshold (sea green)."""
THRESHOLD_COLOR = "#d62728"
"""The threshold line and its label (red)."""
SUGGESTION_COLOR = "#1f5fbf"
"""The calibrated threshold's dashed line and label (blue)."""
FIGSIZE = (6.4, 3.6)
"""Inches; at :data:`DPI` a plot is 640 x 360 pixels."""
DPI = 100


def histogram_file_name(cls: str) -> str:
    """The file name of a class's histogram: ``<class>.png``, with ``%`` written ``%25`` and ``/`` written ``%2F``.

    Escaping ``%`` first keeps the mapping one-to-one (``a/b`` -> ``a%2Fb.png``, ``a%2Fb`` -> ``a%252Fb.png``);
    every other character, spaces and unicode included, is kept as it is.
    """
    return cls.replace("%", "%25").replace("/", "%2F") + ".png"


def histogram_edges(scores: np.ndarray, threshold: float, bins: int) -> tuple[np.ndarray, int]:
    """Equal-width bin edges over the scores' range (with a margin, threshold included), one edge on the threshold.

    Args:
        scores: ``(N,)`` cosine similarities; may be empty.
        threshold: the filter's threshold.
        bins: about this many bins over the plotted range (one more at most).

    Returns:
        The edges, increasing, and the position ``i`` of the threshold among them (``edges[i] == threshold``).
    """
    lo = min(float(scores.min()), threshold) if len(scores) else threshold
    hi = max(float(scores.max()), threshold) if len(scores) else threshold
    margin = max(0.05 * (hi - lo), 0.02)  # a single score (or only the threshold) still gets a readable range
    lo, hi = lo - margin, hi + margin
    width = (hi - lo) / bins
    below, above = math.ceil((threshold - lo) / width), math.ceil((hi - threshold) / width)
    return threshold + width * np.arange(-below, above + 1), below


def render_histograms(
    scores_by_class: Mapping[str, Sequence[float]], threshold: float, *, bins: int = 20
) -> dict[str, bytes]:
    """One histogram PNG per class (640 x 360 pixels), by file name (:func:`histogram_file_name`), in the order of
    ``scores_by_class``; arguments as for :func:`write_histograms`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pictures = {}
    for cls, scores in scores_by_class.items():
        figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
        FigureCanvasAgg(figure)
        draw_histogram(figure.add_subplot(), cls, np.asarray(scores, dtype=np.float64), threshold, bins)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
        pictures[histogram_file_name(cls)] = buffer.getvalue()
    return pictures


def write_histograms(
    folder: Path, scores_by_class: Mapping[str, Sequence[float]], threshold: float, *, bins: int = 20
) -> list[Path]:
    """Write one histogram PNG per class (640 x 360 pixels) into ``folder``.

    Args:
        folder: where the PNGs go (created if missing); a class's file is ``folder /``
            :func:`histogram_file_name` ``(class)``, the class name with ``%`` as ``%25`` and ``/`` as ``%2F``.
        scores_by_class: class -> its candidates' scores against their references. A class may be empty.
        threshold: the filter's threshold: a candidate is kept iff its score is ``>= threshold``.
        bins: about this many bars over the plotted range.

    Returns:
        The files written, in the order of ``scores_by_class``.

    Example:
        >>> write_histograms(Path("out/filter_report"), {"001.cat": [0.55, 0.71, 0.64]}, 0.6)  # doctest: +SKIP
        [PosixPath('out/filter_report/001.cat.png')]
    """
    paths = []
    for name, data in render_histograms(scores_by_class, threshold, bins=bins).items():
        write_bytes_if_changed(folder / name, data)  # a rerun leaves an equal plot as it was
        paths.append(folder / name)
    return paths


def draw_histogram(
    ax: Axes, cls: str, scores: np.ndarray, threshold: float, bins: int, *, suggestion: float | None = None
) -> None:
    """Draw one class's histogram on ``ax``: gray bars rejected, green bars kept, the threshold as a red line.

    Args:
        suggestion: a calibrated threshold (``filter --calibrate``) to draw as a dashed line, when one exists.
    """
    from matplotlib.ticker import MaxNLocator

    edges, split = histogram_edges(scores, threshold, bins)
    if suggestion is not None:  # widen the range to show the suggested threshold too
        lo, hi = min(edges[0], suggestion), max(edges[-1], suggestion)
        edges, split = histogram_edges(np.concatenate([scores, [lo, hi]]), threshold, bins)
    kept = scores >= threshold  # the filter's own decision decides the colour, whatever rounding in binning
    rejected_counts, _ = np.histogram(scores[~kept], edges[: split + 1])
    kept_counts, _ = np.histogram(scores[kept], edges[split:])
    counts = np.concatenate([rejected_counts, kept_counts])
    colors = [REJECTED_COLOR] * len(rejected_counts) + [KEPT_COLOR] * len(kept_counts)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=colors, linewidth=0)
    ax.axvline(threshold, color=THRESHOLD_COLOR, linewidth=1.5)
    right = threshold <= (edges[0] + edges[-1]) / 2  # label on the roomier side of the line
    label = f" threshold {threshold:g}" if right else f"threshold {threshold:g} "
    ax.text(threshold, 0.97, label, transform=ax.get_xaxis_transform(), color=THRESHOLD_COLOR,
            ha="left" if right else "right", va="top")  # fmt: skip
    if suggestion is not None:
        ax.axvline(suggestion, color=SUGGESTION_COLOR, linewidth=1.2, linestyle="--")
        ax.text(suggestion, 0.85, f" suggested {suggestion:.3f}" if right else f"suggested {suggestion:.3f} ",
                transform=ax.get_xaxis_transform(), color=SUGGESTION_COLOR, ha="left" if right else "right",
                va="top")  # fmt: skip
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(0, max(int(counts.max()), 1) * 1.15)  # headroom for the label
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("cosine similarity to the reference")
    ax.set_ylabel("candidates")
    # Class names are user text: no mathtext ("$...$" would be parsed, and may not parse).
    ax.set_title(f"{text_cell(cls)}: {int(kept.sum())} of {len(scores)} kept", parse_math=False)

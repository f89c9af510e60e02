"""The report's plots, drawn with matplotlib's Agg backend (no pyplot state) into PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from diffcoremix.filter.plots import draw_histogram

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from diffcoremix.report.collect import TrainingRun

DPI = 80


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def histogram_png(title: str, scores: np.ndarray, threshold: float, suggestion: float | None = None) -> bytes:
    """One histogram of scores (gray rejected, green kept), the threshold and the calibrated suggestion drawn."""
    figure = _figure(5.6, 3.0)
    draw_histogram(figure.add_subplot(), title, scores, threshold, 20, suggestion=suggestion)
    return png_bytes(figure)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """A trailing moving average (the first points average what there is)."""
    if window <= 1 or len(values) < 2:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    averages: np.ndarray = (sums[ends] - sums[starts]) / (ends - starts)
    return averages


def training_curves_png(runs: Sequence[TrainingRun]) -> bytes:
    """Training loss per step (smoothed) and accuracy per epoch (validation where there is one, else the training
    batches'), one line per run."""
    figure = _figure(9.6, 3.4)
    loss_ax, acc_ax = figure.subplots(1, 2)
    for run in runs:
        steps = np.array([s.get("step", i) for i, s in enumerate(run.steps)], dtype=np.float64)
        loss = np.array([s.get("loss", np.nan) for s in run.steps], dtype=np.float64)
        if len(steps):
            window = max(1, len(steps) // 50)
            (line,) = loss_ax.plot(steps, _smooth(loss, window), label=run.name, linewidth=1.2)
            color = line.get_color()
        else:
            color = None
        accuracy = _epoch_accuracy(run)
        if accuracy:
            x, y = zip(*accuracy, strict=True)
            acc_ax.plot(x, [100 * v for v in y], marker="o", markersize=3, label=run.name, color=color, linewidth=1.2)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("training loss (moving average)")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("top-1 (%)")
    acc_ax.set_title(_accuracy_title(runs), fontsize=9)
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return png_bytes(figure)


def _epoch_accuracy(run: TrainingRun) -> list[tuple[float, float]]:
    """(epoch, top-1) per epoch line: the validation figure if logged, else the training batches' accuracy."""
    points: list[tuple[float, float]] = []
    for entry in run.epochs:
        value = _first_number(entry, ("val_top1", "top1", "val_acc", "train_acc", "acc"))
        if value is not None:
            points.append((float(entry.get("epoch", len(points))) + 1, value))
    if not points and run.steps:  # no epoch lines: the mean training-batch accuracy of each epoch
        by_epoch: dict[float, list[float]] = {}
        for step in run.steps:
            if isinstance(step.get("acc"), (int, float)):
                by_epoch.setdefault(float(step.get("epoch", 0)), []).append(float(step["acc"]))
        points = [(epoch + 1, float(np.mean(values))) for epoch, values in sorted(by_epoch.items())]
    return points


def _first_number(entry: dict[str, object], keys: Sequence[str]) -> float | None:
    for key in keys:
        value = entry.get(key)
        if isinstance(value, dict):
            value = value.get("top1")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _accuracy_title(runs: Sequence[TrainingRun]) -> str:
    validated = any(_first_number(e, ("val_top1", "top1", "val_acc")) is not None for r in runs for e in r.epochs)
    return "validation top-1 per epoch" if validated else "training-batch top-1 per epoch (no validation split)"

"""The files of a training run folder (RUN), and loading a trained classifier back.

::

    RUN/run.json            the run record (made by diffcoremix, from which DATA): the ownership mark
    RUN/settings.json       what determines the weights; a rerun with other settings is refused
    RUN/config.yaml         resolved options and library versions
    RUN/metrics.jsonl       one line per logged step ({"kind": "step", ...}) and per epoch ({"kind": "epoch", ...})
    RUN/checkpoints/last.pt resumable state: model, optimizer, scheduler, step (the data position; every random
                            draw is a function of it), the epoch's running figures
    RUN/model.pt            the final weights and what is needed to use them (classes, model name, image size...)
    RUN/summary.json        final figures: validation / test top-1 and top-5, time per step split into data / mix
                            / compute
    RUN/layout.json         every file above (``--overwrite`` deletes only these)

A step line holds ``step``, ``epoch``, ``loss``, ``acc`` (top-1 on the mixed batch against its hard label or the
argmax of its soft target), ``lr``, ``images_per_s``, ``data_s``, ``mix_s``, ``compute_s``; timing keys are the
only ones that differ between two runs with the same settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffcoremix.classifiers import MODEL_FILE, RunError, TrainedModel, load_run

__all__ = [  # the run's classifier is loaded in diffcoremix.classifiers, below the stages that read a run
    "CHECKPOINT_DIR", "CHECKPOINT_FILE", "METRICS_FILE", "MODEL_FILE", "SAMPLES_FILE", "SUMMARY_FILE", "TIMING_KEYS",
    "TRAIN_FILES", "RunError", "TrainedModel", "load_run", "read_metrics", "read_summary",
]  # fmt: skip

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = f"{CHECKPOINT_DIR}/last.pt"
SUMMARY_FILE = "summary.json"
SAMPLES_FILE = "samples.jsonl"
"""With ``--log-samples``: the dataset indices each process trained on, per step (an audit of the data split)."""
TRAIN_FILES = (METRICS_FILE, CHECKPOINT_FILE, MODEL_FILE, SUMMARY_FILE, SAMPLES_FILE)
TIMING_KEYS = frozenset({"images_per_s", "data_s", "mix_s", "compute_s", "seconds", "elapsed_s"})
"""Keys of metrics lines that measure time (and so differ between identical runs)."""


def read_summary(run: str | Path) -> dict[str, Any]:
    """``RUN/summary.json``.

    Raises:
        RunError: the run has not finished (no summary).
    """
    path = Path(run) / SUMMARY_FILE
    try:
        summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{run} is not a finished training run (no {SUMMARY_FILE}): run or resume `train`") from None
    except (OSError, json.JSONDecodeError) as err:
        raise RunError(f"{path} is damaged ({err})") from None
    return summary


def read_metrics(run: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The lines of ``RUN/metrics.jsonl`` (only those of ``kind``, ``step`` or ``epoch``, when given); a torn last
    line (a killed run) is left out."""
    path = Path(run) / METRICS_FILE
    lines: list[dict[str, Any]] = []
    if not path.exists():
        return lines
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(line, dict) and (kind is None or line.get("kind") == kind):
            lines.append(line)
    return lines

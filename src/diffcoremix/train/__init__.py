"""Training, comparing and evaluating classifiers with the method's mixing and its baselines (METHOD.md §7-8)."""

from __future__ import annotations

from diffcoremix.errors import ModelLoadError
from diffcoremix.train.comparison import CompareResult, compare
from diffcoremix.train.config import METHODS, PAIR_METHODS, TrainConfig
from diffcoremix.train.evaluation import EvalResult, evaluate
from diffcoremix.train.loop import TrainResult, train
from diffcoremix.train.models import check_model_name, create_model
from diffcoremix.train.run import RunError, TrainedModel, load_run, read_metrics, read_summary

__all__ = [
    "METHODS",
    "PAIR_METHODS",
    "CompareResult",
    "EvalResult",
    "ModelLoadError",
    "RunError",
    "TrainConfig",
    "TrainResult",
    "TrainedModel",
    "check_model_name",
    "compare",
    "create_model",
    "evaluate",
    "load_run",
    "read_metrics",
    "read_summary",
    "train",
]

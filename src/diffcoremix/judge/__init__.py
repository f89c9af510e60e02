"""An independent judge of generated images (issue 11): a classifier that is never the filter's embedder labels
every generated image of OUT and records whether it sees the class the image was prompted for.

Example:
    >>> from diffcoremix.judge import judge
    >>> result = judge("out", "resnet56:../shared/models/resnet56_cifar10.th")  # doctest: +SKIP
    >>> print(result.to_text())  # doctest: +SKIP
"""

from __future__ import annotations

from diffcoremix.judge.classes import ClassMap, map_classes, normalise_class_name
from diffcoremix.judge.classifiers import (
    CLASSIFIERS,
    Classifier,
    JudgeError,
    ModuleClassifier,
    ZeroShotClassifier,
    load_classifier,
)
from diffcoremix.judge.runner import Agreement, JudgeResult, judge

__all__ = [
    "CLASSIFIERS",
    "Agreement",
    "ClassMap",
    "Classifier",
    "JudgeError",
    "JudgeResult",
    "ModuleClassifier",
    "ZeroShotClassifier",
    "judge",
    "load_classifier",
    "map_classes",
    "normalise_class_name",
]

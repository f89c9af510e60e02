"""Reference rules of the hard cosine filter (METHOD.md §6): what a candidate's embedding is compared with.

All vectors are unit-norm, so cosine similarity is a dot product. Given the real images' embeddings, grouped by
class in listing order:

- ``prototype``: the normalised mean of the class's real embeddings (the project's default);
- ``source``: the candidate's own source image;
- ``knn``: the most similar real image of the class (max over the class);
- ``first``: the class's first image in sorted listing order (the reference code's rule, made deterministic).

Apart from the rule, :func:`nearest_real` finds every candidate's closest real image (the class's images and the
candidate's own source): the measure of copying behind ``--max-copy-similarity``.

Each rule also has a calibration (:data:`CALIBRATIONS`, used by :func:`suggest_threshold`): the scores it gives
the real images themselves, each taken as a candidate and compared leave-one-out with the others of its class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from diffcoremix.errors import ConfigError
from diffcoremix.registry import Registry


@dataclass(frozen=True)
class Reference:
    """The score of one candidate and what it was compared with."""

    score: float
    reference: str
    """A real image's path relative to DATA, or ``prototype:<class folder>``."""


class RealIndex:
    """Real embeddings by class, in listing order.

    Args:
        vectors: relative path -> unit-norm embedding.
        classes: class folder -> its images' relative paths, in listing order.
    """

    def __init__(self, vectors: Mapping[str, np.ndarray], classes: Mapping[str, Sequence[str]]) -> None:
        self.vectors = vectors
        self.members = {c: list(paths) for c, paths in classes.items()}
        self.member_sets = {c: frozenset(paths) for c, paths in self.members.items()}
        self.matrices = {c: np.stack([vectors[p] for p in paths]) for c, paths in self.members.items() if paths}
        self.prototypes = {c: _unit(m.mean(axis=0)) for c, m in self.matrices.items()}


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


RuleFn = Callable[[RealIndex, np.ndarray, str, str], Reference]
"""``rule(index, candidate vector, source relpath, class folder)`` -> :class:`Reference`."""

REFERENCE_RULES: Registry[RuleFn] = Registry("reference rule")


@REFERENCE_RULES.register("source")
def _source(index: RealIndex, vector: np.ndarray, source: str, cls: str) -> Reference:
    return Reference(float(vector @ index.vectors[source]), source)


@REFERENCE_RULES.register("prototype")
def _prototype(index: RealIndex, vector: np.ndarray, source: str, cls: str) -> Reference:
    return Reference(float(vector @ index.prototypes[cls]), f"prototype:{cls}")


@REFERENCE_RULES.register("knn")
def _knn(index: RealIndex, vector: np.ndarray, source: str, cls: str) -> Reference:
    sims = index.matrices[cls] @ vector
    best = int(np.argmax(sims))
    return Reference(float(sims[best]), index.members[cls][best])


@REFERENCE_RULES.register("first")
def _first(index: RealIndex, vector: np.ndarray, source: str, cls: str) -> Reference:
    first = index.members[cls][0]
    return Reference(float(vector @ index.vectors[first]), first)


def score_candidates(
    rule: str, index: RealIndex, vectors: np.ndarray, sources: Sequence[str], classes: Sequence[str]
) -> list[Reference]:
    """Score each candidate row of ``vectors`` against its reference under ``rule``."""
    fn = REFERENCE_RULES.get(rule)
    return [fn(index, v, s, c) for v, s, c in zip(vectors, sources, classes, strict=True)]


def nearest_real(index: RealIndex, vector: np.ndarray, source: str, cls: str) -> Reference:
    """The real image closest to a candidate: the most similar image of its class (the first in listing order on a
    tie), or its own source when that is closer and lies outside the class (a cross-class counterpart's): a
    near-copy of any real training image, its source included, is a copy.

    Example:
        >>> index = RealIndex({"a/0": np.array([1.0, 0.0]), "a/1": np.array([0.0, 1.0])}, {"a": ["a/0", "a/1"]})
        >>> nearest_real(index, np.array([0.6, 0.8]), "a/0", "a")
        Reference(score=0.8, reference='a/1')
    """
    best = _knn(index, vector, source, cls) if cls in index.matrices else Reference(-np.inf, "")
    own = index.vectors.get(source)
    if own is not None and source not in index.member_sets.get(cls, ()):
        mine = float(vector @ own)
        if mine > best.score:
            return Reference(mine, source)
    return best


def nearest_real_scores(index: RealIndex) -> dict[str, dict[str, float]]:
    """Per class (with two images or more), how close real images are to their nearest other image of the class:
    the count and the median, 90th and 99th percentiles and max of those cosines. A ``--max-copy-similarity``
    bound below them would reject generations that are no closer to a real image than real images are to each
    other (duplicates in DATA show as a max near 1)."""
    stats: dict[str, dict[str, float]] = {}
    for cls, matrix in index.matrices.items():
        if len(matrix) < 2:
            continue
        nearest = _knn_scores(matrix.astype(np.float64))
        stats[cls] = {"count": float(len(nearest)), "median": float(np.median(nearest)),
                      "p90": float(np.quantile(nearest, 0.9)), "p99": float(np.quantile(nearest, 0.99)),
                      "max": float(nearest.max())}  # fmt: skip
    return stats


CalibrationFn = Callable[[np.ndarray], np.ndarray]
"""``calibrate(class matrix)`` -> the leave-one-out scores of a class's real images (``(n, D)``, ``n >= 2``)."""

CALIBRATIONS: Registry[CalibrationFn] = Registry("reference rule calibration")
"""One per reference rule, under the rule's name: the scores the rule gives real images taken as candidates."""


@CALIBRATIONS.register("source")
def _source_scores(matrix: np.ndarray) -> np.ndarray:
    # A real image standing for a counterpart of another one: every same-class pair, once (cosine is symmetric).
    pairs: np.ndarray = (matrix @ matrix.T)[np.triu_indices(len(matrix), k=1)]
    return pairs


@CALIBRATIONS.register("prototype")
def _prototype_scores(matrix: np.ndarray) -> np.ndarray:
    # Row i of `others` is the sum of the class's other images: its direction is their normalised mean.
    others = matrix.sum(axis=0) - matrix
    norms = np.linalg.norm(others, axis=1)
    dots = np.einsum("ij,ij->i", matrix, others)
    scores: np.ndarray = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return scores


@CALIBRATIONS.register("knn")
def _knn_scores(matrix: np.ndarray) -> np.ndarray:
    gram = matrix @ matrix.T
    np.fill_diagonal(gram, -np.inf)  # an image is not its own neighbour
    nearest: np.ndarray = gram.max(axis=1)
    return nearest


@CALIBRATIONS.register("first")
def _first_scores(matrix: np.ndarray) -> np.ndarray:
    scores: np.ndarray = matrix[1:] @ matrix[0]  # the first image itself is no candidate
    return scores


def suggest_threshold(index: RealIndex, rule: str, quantile: float = 0.1) -> tuple[float, dict[str, dict[str, float]]]:
    """Calibrate a threshold for ``rule`` on real images, each scored as if it were a candidate, leave-one-out.

    Every real image of a class with at least two images is scored the way ``rule`` would score a candidate of
    that class, against the class's *other* real images: ``source``, its similarity to each other image (every
    same-class pair once, a real image standing for a counterpart of the other); ``prototype``, its similarity to
    the normalised mean of the others; ``knn``, its largest similarity to one of the others; ``first``, its
    similarity to the class's first image (the first image itself left out). The suggestion is the pooled
    ``quantile`` of those scores: with 0.1, a kept image is as close to its reference as 90% of real images are
    to theirs. It adapts to the rule and to each embedder's cosine scale, which differ widely (CLIP's same-class
    similarities sit near 0.6-0.9, a CNN's pooled features elsewhere).

    Args:
        index: the real embeddings by class.
        rule: a reference rule of :data:`REFERENCE_RULES`.
        quantile: the pooled quantile to suggest, in [0, 1].

    Returns:
        The suggested threshold (NaN when no class has two images), and per class with at least two images the
        number of scores (``pairs`` for ``source``, ``count`` otherwise) and their min, 10th percentile, median
        and max.

    Raises:
        UnknownNameError: ``rule`` has no calibration.
        ConfigError: ``quantile`` is outside [0, 1].

    Example:
        >>> index = RealIndex({"a/0": np.array([1.0, 0.0]), "a/1": np.array([0.0, 1.0])}, {"a": ["a/0", "a/1"]})
        >>> suggest_threshold(index, "knn")[0]
        0.0
    """
    calibrate = CALIBRATIONS.get(rule)
    if not 0.0 <= quantile <= 1.0:
        raise ConfigError("quantile", quantile, "in [0, 1]")
    counted = "pairs" if rule == "source" else "count"
    pooled: list[np.ndarray] = []
    stats: dict[str, dict[str, float]] = {}
    for cls, matrix in index.matrices.items():
        if len(matrix) < 2:
            continue
        scores = calibrate(matrix.astype(np.float64))
        pooled.append(scores)
        stats[cls] = {
            counted: float(len(scores)),
            "min": float(scores.min()),
            "p10": float(np.quantile(scores, 0.1)),
            "median": float(np.median(scores)),
            "max": float(scores.max()),
        }
    if not pooled:
        return float("nan"), stats
    return float(np.quantile(np.concatenate(pooled), quantile)), stats

"""Reference rules of the hard cosine filter (METHOD.md §6): what a candidate's embedding is compared with.

All vectors are unit-norm, so cosine similarity is a dot product. Given the real images' embeddings, grouped by
class in listing order:

- ``source``: the candidate's own source image (the project's default);
- ``prototype``: the normalised mean of the class's real embeddings;
- ``knn``: the most similar real image of the class (max over the class);
- ``first``: the class's first image in sorted listing order (the reference code's rule, made deterministic).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

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


def suggest_threshold(index: RealIndex, quantile: float = 0.1) -> tuple[float, dict[str, dict[str, float]]]:
    """Calibrate a threshold on real images: per-class statistics of real-to-real cosine similarity.

    The suggestion is the pooled ``quantile`` (10%) of same-class real-to-real similarities: a generated image
    passes when it is at least as close to its reference as 90% of pairs of real images of one class are to
    each other. It adapts to each embedder's cosine scale, which differs widely (CLIP's same-class
    similarities sit near 0.6-0.9, a CNN's pooled features elsewhere).

    Returns:
        The suggested threshold, and per class: count, min, 10th percentile, median, max of its pairs.
    """
    pooled: list[np.ndarray] = []
    stats: dict[str, dict[str, float]] = {}
    for cls, matrix in index.matrices.items():
        if len(matrix) < 2:
            continue
        sims = (matrix @ matrix.T)[np.triu_indices(len(matrix), k=1)]
        pooled.append(sims)
        stats[cls] = {
            "pairs": float(len(sims)),
            "min": float(sims.min()),
            "p10": float(np.quantile(sims, 0.1)),
            "median": float(np.median(sims)),
            "max": float(sims.max()),
        }
    if not pooled:
        return float("nan"), stats
    return float(np.quantile(np.concatenate(pooled), quantile)), stats

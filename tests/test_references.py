"""Threshold calibration per reference rule: each real image scored as a candidate, leave-one-out, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffcoremix.errors import ConfigError, UnknownNameError
from diffcoremix.filter import REFERENCE_RULES, RealIndex, score_candidates, suggest_threshold
from diffcoremix.filter.references import CALIBRATIONS


def _angle(degrees: float) -> np.ndarray:
    return np.array([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])


@pytest.fixture
def fan() -> RealIndex:
    """Class "a": three unit vectors at 0, 60 and 120 degrees (listed in that order): their pairwise cosines are
    cos 60 = 0.5 (0-60, 60-120) and cos 120 = -0.5 (0-120). Class "b" has one image: it contributes nothing."""
    vectors = {"a/0": _angle(0), "a/60": _angle(60), "a/120": _angle(120), "b/0": _angle(30)}
    return RealIndex(vectors, {"a": ["a/0", "a/60", "a/120"], "b": ["b/0"]})


# rule -> (its scores on the fan by hand, the name of their count, the pooled 10% quantile of those scores)
BY_HAND = {
    # every pair once: 0.5, -0.5, 0.5; the 10% quantile of [-0.5, 0.5, 0.5] sits 0.2 of the way from -0.5 to 0.5
    "source": ([-0.5, 0.5, 0.5], "pairs", -0.3),
    # the mean of the two others points at 90 (for 0), 60 (for 60), 30 (for 120) degrees: cos 90, cos 0, cos 90
    "prototype": ([0.0, 0.0, 1.0], "count", 0.0),
    # the closest other image is 60 degrees away for each of the three
    "knn": ([0.5, 0.5, 0.5], "count", 0.5),
    # 60 and 120 against the first (0): 0.5 and -0.5; the 10% quantile is 0.1 of the way from -0.5 to 0.5
    "first": ([-0.5, 0.5], "count", -0.4),
}


@pytest.mark.parametrize("rule", sorted(BY_HAND))
def test_calibration_by_hand(fan: RealIndex, rule: str) -> None:
    scores, counted, expected = BY_HAND[rule]
    threshold, stats = suggest_threshold(fan, rule)
    assert threshold == pytest.approx(expected, abs=1e-9)
    assert list(stats) == ["a"]  # "b" has a single image
    assert stats["a"] == pytest.approx(
        {
            counted: len(scores),
            "min": min(scores),
            "p10": float(np.quantile(scores, 0.1)),
            "median": float(np.median(scores)),
            "max": max(scores),
        },
        abs=1e-9,
    )


def test_the_four_rules_suggest_four_different_thresholds(fan: RealIndex) -> None:
    suggestions = {rule: suggest_threshold(fan, rule)[0] for rule in REFERENCE_RULES.names()}
    assert len({round(t, 6) for t in suggestions.values()}) == 4, suggestions


def test_the_four_rules_differ_on_random_embeddings_too() -> None:
    rng = np.random.default_rng(0)
    centre = rng.normal(size=8)
    vectors = {f"c{c}/{i}": centre * (c + 1) + rng.normal(size=8) for c in range(3) for i in range(6)}
    vectors = {k: v / np.linalg.norm(v) for k, v in vectors.items()}
    index = RealIndex(vectors, {f"c{c}": [f"c{c}/{i}" for i in range(6)] for c in range(3)})
    suggestions = {rule: suggest_threshold(index, rule)[0] for rule in REFERENCE_RULES.names()}
    assert len({round(t, 6) for t in suggestions.values()}) == 4, suggestions


def _without(index: RealIndex, cls: str, left_out: str) -> RealIndex:
    return RealIndex(index.vectors, {cls: [p for p in index.members[cls] if p != left_out]})


@pytest.mark.parametrize("rule", ["prototype", "knn", "first"])
def test_calibration_scores_are_the_rule_applied_to_a_left_out_real_image(rule: str) -> None:
    # Independently of the calibration code: leave each real image out of the index, score it with the rule
    # itself, and compare the pooled quantiles (quantile 0 and 1 give the min and max: every score counts).
    rng = np.random.default_rng(1)
    raw = {f"a/{i}": rng.normal(size=5) for i in range(5)}
    vectors = {k: v / np.linalg.norm(v) for k, v in raw.items()}
    index = RealIndex(vectors, {"a": sorted(vectors)})
    candidates = index.members["a"][1:] if rule == "first" else index.members["a"]
    expected = [
        score_candidates(rule, _without(index, "a", p), vectors[p][None], [p], ["a"])[0].score for p in candidates
    ]
    for q in (0.0, 0.1, 0.5, 1.0):
        assert suggest_threshold(index, rule, q)[0] == pytest.approx(float(np.quantile(expected, q)), abs=1e-6)
    assert suggest_threshold(index, rule)[1]["a"]["count"] == len(expected)


def test_source_calibration_is_every_same_class_pair_once() -> None:
    rng = np.random.default_rng(2)
    vectors = {f"a/{i}": v / np.linalg.norm(v) for i, v in enumerate(rng.normal(size=(4, 5)))}
    index = RealIndex(vectors, {"a": sorted(vectors)})
    paths = index.members["a"]
    expected = [
        score_candidates("source", index, vectors[p][None], [s], ["a"])[0].score
        for i, p in enumerate(paths)
        for s in paths[i + 1 :]
    ]
    threshold, stats = suggest_threshold(index, "source", 0.25)
    assert stats["a"]["pairs"] == 6
    assert threshold == pytest.approx(float(np.quantile(expected, 0.25)), abs=1e-6)


def test_classes_are_pooled_and_the_quantile_is_the_one_asked_for(fan: RealIndex) -> None:
    # Add class "c": two orthogonal images; each one's prototype (the other image) is 90 degrees away.
    vectors = {**fan.vectors, "c/0": _angle(0), "c/90": _angle(90)}
    index = RealIndex(vectors, {**fan.members, "c": ["c/0", "c/90"]})
    pooled = [0.0, 0.0, 1.0, 0.0, 0.0]  # "a" then "c"
    for q in (0.1, 0.5, 0.9):
        assert suggest_threshold(index, "prototype", q)[0] == pytest.approx(float(np.quantile(pooled, q)))
    assert suggest_threshold(index, "prototype", 0.9)[0] == pytest.approx(0.6)


def test_no_class_with_two_images_gives_nan() -> None:
    index = RealIndex({"a/0": _angle(0), "b/0": _angle(90)}, {"a": ["a/0"], "b": ["b/0"], "c": []})
    for rule in REFERENCE_RULES.names():
        threshold, stats = suggest_threshold(index, rule)
        assert math.isnan(threshold)
        assert stats == {}


def test_unknown_rule_and_bad_quantile_are_refused(fan: RealIndex) -> None:
    with pytest.raises(UnknownNameError, match="known: first, knn, prototype, source"):
        suggest_threshold(fan, "nearest")
    with pytest.raises(ConfigError, match=r"quantile must be in \[0, 1\], got 1.5"):
        suggest_threshold(fan, "knn", 1.5)


def test_every_reference_rule_has_a_calibration() -> None:
    assert CALIBRATIONS.names() == REFERENCE_RULES.names()

"""Negative prompts that do not contradict their positive prompt (METHOD.md §2).

The reference code sends one fixed negative string with every prompt, so "sky" is forbidden in a prompt that
asks for a stormy sky, and "car" in every Stanford Cars prompt. Here a negative term that appears in the
positive prompt (as a whole word, plural forms included, case ignored) is dropped from that prompt, and the
conflict is reported with where the term appeared.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class NegativeConflict:
    """A negative term dropped because it appears in part of the positive prompt."""

    term: str
    where: str
    """Which part of the prompt holds it: ``class name``, ``domain word``, ``context`` or ``template``."""
    text: str
    """That part's text."""

    def describe(self) -> str:
        return f"negative term {self.term!r} contradicts the {self.where} {self.text!r}"


@functools.cache
def _term_pattern(term: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in term.split()]
    return re.compile(r"\b" + r"\s+".join(words) + r"(?:s|es)?\b", re.IGNORECASE)


def term_in(term: str, text: str) -> bool:
    """Whether ``term`` occurs in ``text`` as whole words (``car`` is in "race cars", not in "Cargo Van")."""
    return _term_pattern(term).search(text) is not None


def filter_negatives(
    terms: Sequence[str], parts: Iterable[tuple[str, str]]
) -> tuple[list[str], list[NegativeConflict]]:
    """Split negative terms into those kept and those that contradict the positive prompt.

    Args:
        terms: the pack's negative terms, in order.
        parts: ``(where, text)`` pairs making up the positive prompt, checked in order; the first part that
            holds a term is the one reported.

    Returns:
        The kept terms (order preserved) and one conflict per dropped term.
    """
    parts = list(parts)
    kept: list[str] = []
    conflicts: list[NegativeConflict] = []
    for term in terms:
        hit = next(((where, text) for where, text in parts if text and term_in(term, text)), None)
        if hit is None:
            kept.append(term)
        else:
            conflicts.append(NegativeConflict(term, *hit))
    return kept, conflicts

"""What a context selector is given and gives back (METHOD.md §3): the contract every selector keeps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ContextRequest:
    """What a selector knows of one candidate."""

    key: str
    source: Path
    """The real image file (a similarity-based selector reads it)."""
    class_name: str
    seed: int
    """The candidate's context seed: the only randomness a selector may use."""


@dataclass(frozen=True)
class ContextChoice:
    """The chosen context, and its similarity score where the selector computes one."""

    text: str
    score: float | None = None


class ContextSelector(Protocol):
    """Chooses one context per request, deterministically from the requests' seeds."""

    def choose(self, requests: Sequence[ContextRequest]) -> list[ContextChoice]: ...

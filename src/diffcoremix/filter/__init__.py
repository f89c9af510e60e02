"""Hard cosine filtration (METHOD.md §6): reference rules and the filter runner (embedders live in
:mod:`diffcoremix.embedders`), and the filter against copies: every candidate's nearest real image and its cosine
are recorded, and ``max_copy_similarity`` rejects near-copies of training images, which a lower bound on
similarity can never catch.

Names are imported on first use, so that importing the package (as the command line does for its options)
does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from diffcoremix.filter.config import FilterConfig

_LAZY = {
    "REFERENCE_RULES": "references",
    "RealIndex": "references",
    "Reference": "references",
    "score_candidates": "references",
    "suggest_threshold": "references",
    "FilterReport": "runner",
    "filter_run": "runner",
}

__all__ = ["FilterConfig", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"diffcoremix.filter.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Hard cosine filtration (METHOD.md §6): embedders, the embedding cache, reference rules, the filter runner.

Names are imported on first use, so that importing the package (as the command line does for its options)
does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from diffcoremix.filter.config import FilterConfig

_LAZY = {
    "EmbeddingCache": "cache",
    "embed_files": "cache",
    "EMBEDDERS": "embedders",
    "Embedder": "embedders",
    "EmbedderLoadError": "embedders",
    "HFClipEmbedder": "embedders",
    "ModuleEmbedder": "embedders",
    "OpenClipEmbedder": "embedders",
    "load_embedder": "embedders",
    "tiny_open_clip": "embedders",
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

"""Hard cosine filtration (METHOD.md §6): embedders, the embedding cache, reference rules, the filter runner."""

from __future__ import annotations

from diffcoremix.filter.cache import EmbeddingCache, embed_files
from diffcoremix.filter.embedders import (
    EMBEDDERS,
    Embedder,
    EmbedderLoadError,
    ModuleEmbedder,
    OpenClipEmbedder,
    load_embedder,
    tiny_open_clip,
)
from diffcoremix.filter.references import REFERENCE_RULES, RealIndex, Reference, score_candidates, suggest_threshold
from diffcoremix.filter.runner import FilterConfig, FilterReport, filter_run

__all__ = [
    "EMBEDDERS",
    "REFERENCE_RULES",
    "Embedder",
    "EmbedderLoadError",
    "EmbeddingCache",
    "FilterConfig",
    "FilterReport",
    "ModuleEmbedder",
    "OpenClipEmbedder",
    "RealIndex",
    "Reference",
    "embed_files",
    "filter_run",
    "load_embedder",
    "score_candidates",
    "suggest_threshold",
    "tiny_open_clip",
]

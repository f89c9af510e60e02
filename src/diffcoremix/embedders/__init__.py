"""Image and text embedders, and their on-disk cache: the feature space of the hard cosine filter (METHOD.md §6)
and of sample-based context (§3), below both ``prompts`` and ``filter``.

Names are imported on first use, so that importing the package (as the command line does) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "EmbeddingCache": "cache",
    "embed_files": "cache",
    "EMBEDDERS": "models",
    "Embedder": "models",
    "EmbedderLoadError": "models",
    "HFClipEmbedder": "models",
    "ModuleEmbedder": "models",
    "OpenClipEmbedder": "models",
    "load_embedder": "models",
    "tiny_open_clip": "models",
    "ResNet20": "resnet20",
    "load_resnet20": "resnet20",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"diffcoremix.embedders.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

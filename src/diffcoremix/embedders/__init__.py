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


DEFAULT_EMBEDDER = "open_clip:ViT-B-32:openai"
"""CLIP ViT-B/32 with OpenAI's weights: the paper's embedder, for the filter and for sample-based context."""


def default_embedder(generator_model: str | None = None) -> str:
    """The embedder spec used when none is given: ``tiny`` for images of a built-in (offline, tiny) generator or
    of a model fine-tuned from one, else :data:`DEFAULT_EMBEDDER`."""
    from diffcoremix.finetuned import base_model

    model = base_model(generator_model) if generator_model is not None else None
    return "tiny" if model is not None and model.startswith("builtin:") else DEFAULT_EMBEDDER

"""Contextual and negative prompts (METHOD.md §2-3): packs, context selection, negative-conflict filtering."""

from __future__ import annotations

from diffcoremix.prompts.builder import PromptPlan, PromptRecord, PromptsConfig, build_prompts
from diffcoremix.prompts.context import (
    CONTEXT_SELECTORS,
    ContextChoice,
    ContextRequest,
    ContextSelector,
    UniformContext,
)
from diffcoremix.prompts.negatives import NegativeConflict, filter_negatives, term_in
from diffcoremix.prompts.packs import PromptPack, list_packs, load_pack, read_pack

__all__ = [
    "CONTEXT_SELECTORS",
    "ContextChoice",
    "ContextRequest",
    "ContextSelector",
    "NegativeConflict",
    "PromptPack",
    "PromptPlan",
    "PromptRecord",
    "PromptsConfig",
    "UniformContext",
    "build_prompts",
    "filter_negatives",
    "list_packs",
    "load_pack",
    "read_pack",
    "term_in",
]

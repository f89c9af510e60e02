"""Choosing a scene context for each candidate (METHOD.md §3).

A context selector receives a batch of requests (so that one that embeds images can batch them) and returns one
choice per request. Selectors are registered by name; a factory takes the pack and the list of user contexts.

- ``random``: uniform over the pack's context bank (the reference code's rule), drawn from the candidate's
  own derived seed, so a candidate's context does not depend on any other candidate.
- ``fixed``: uniform over a user-given list (one entry means always that one).
- ``sample`` (the method's default) ranks the bank by CLIP text-image similarity to the source image and
  draws from the top-k (:class:`diffcoremix.prompts.sample_context.SampleContext`); each choice carries its score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from diffcoremix.prompts.choices import ContextChoice, ContextRequest, ContextSelector
from diffcoremix.prompts.packs import PromptPack
from diffcoremix.registry import Registry

__all__ = ["CONTEXT_SELECTORS", "ContextChoice", "ContextRequest", "ContextSelector", "SelectorOptions",
           "UniformContext"]  # fmt: skip


@dataclass(frozen=True)
class SelectorOptions:
    """What a selector factory may use besides the pack (from :class:`~diffcoremix.prompts.PromptsConfig`)."""

    contexts: tuple[str, ...] = ()
    """The user's contexts (``fixed``)."""
    top_k: int = 3
    """Draw among the k best-matching contexts (``sample``)."""
    embedder: str = "open_clip:ViT-B-32:openai"
    """Image-text embedder spec (``sample``)."""
    device: str = "auto"


SelectorFactory = Callable[[PromptPack, SelectorOptions], ContextSelector]
"""``factory(pack, options)`` -> selector."""

CONTEXT_SELECTORS: Registry[SelectorFactory] = Registry("context selector")


class UniformContext:
    """Uniform choice over a list of contexts, one draw per request from its seed."""

    def __init__(self, contexts: Sequence[str]) -> None:
        if not contexts:
            raise ValueError("UniformContext needs at least one context")
        self.contexts = list(contexts)

    def choose(self, requests: Sequence[ContextRequest]) -> list[ContextChoice]:
        n = len(self.contexts)
        return [ContextChoice(self.contexts[r.seed % n]) for r in requests]


@CONTEXT_SELECTORS.register("random")
def _random(pack: PromptPack, options: SelectorOptions) -> ContextSelector:
    return UniformContext(pack.contexts)


@CONTEXT_SELECTORS.register("fixed")
def _fixed(pack: PromptPack, options: SelectorOptions) -> ContextSelector:
    return UniformContext(options.contexts)


@CONTEXT_SELECTORS.register("sample")
def _sample(pack: PromptPack, options: SelectorOptions) -> ContextSelector:
    # The embedder (torch, open_clip) is imported only when this selector is used.
    from diffcoremix.devices import resolve_device
    from diffcoremix.embedders.models import load_embedder
    from diffcoremix.prompts.sample_context import SampleContext

    # Errors name the option the spec came from (its alternatives are spelled --context-embedder ...).
    embedder = load_embedder(options.embedder, resolve_device(options.device), option="--context-embedder")
    return SampleContext(embedder, pack.contexts, options.top_k)

"""Sample-based context (METHOD.md §3): the pack's contexts ranked by image-text similarity to each source image.

For a source image of class ``c``, every context ``x`` of the bank is written as "a photo of a {c}, {x}" and
embedded with the embedder's text tower; the contexts are ranked by cosine similarity to the source image's
embedding, and one of the ``top_k`` best is drawn with the candidate's own context seed (so the draw does not
depend on other candidates). The chosen context's similarity is its score, recorded in the prompt plan and the
manifest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diffcoremix.embedders.cache import embed_files
from diffcoremix.embedders.models import Embedder
from diffcoremix.errors import ConfigError
from diffcoremix.prompts.choices import ContextChoice, ContextRequest


class SampleContext:
    """A :class:`~diffcoremix.prompts.choices.ContextSelector` by image-text similarity.

    Args:
        embedder: an embedder with a text tower (a CLIP model).
        contexts: the pack's context bank.
        top_k: draw uniformly among this many best-matching contexts.
    """

    def __init__(self, embedder: Embedder, contexts: Sequence[str], top_k: int = 3) -> None:
        if not embedder.has_text:
            raise ConfigError("context_embedder", embedder.id, "an image-text embedder (a CLIP model) for sample")
        self.embedder = embedder
        self.contexts = list(contexts)
        self.top_k = max(1, min(top_k, len(self.contexts)))
        self._texts: dict[str, np.ndarray] = {}
        """Each class's context prompts, embedded once (a plan asks block by block)."""

    def choose(self, requests: Sequence[ContextRequest]) -> list[ContextChoice]:
        if not requests:
            return []
        sources = sorted({r.source for r in requests})
        images = dict(zip(sources, embed_files(self.embedder, sources), strict=True))
        texts = self._texts
        for name in sorted({r.class_name for r in requests} - texts.keys()):
            prompts = [f"a photo of a {name}, {context}" for context in self.contexts]
            texts[name] = self.embedder.embed_texts(prompts).numpy()
        choices = []
        for r in requests:
            sims = texts[r.class_name] @ images[r.source]
            ranked = np.argsort(-sims, kind="stable")[: self.top_k]
            pick = int(ranked[r.seed % len(ranked)])
            choices.append(ContextChoice(self.contexts[pick], round(float(sims[pick]), 6)))
        return choices

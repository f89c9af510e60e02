"""Options of the filter stage (kept free of torch, so that the command line starts quickly)."""

from __future__ import annotations

from dataclasses import dataclass

from diffcoremix.config import check_types, require

REFERENCE_RULE_NAMES = ("first", "knn", "prototype", "source")
"""The rules of :mod:`diffcoremix.filter.references` (a test checks that the two lists agree)."""

NEAR_COPY_SIMILARITY = 0.95
"""Where the reports count near-copies when no ``max_copy_similarity`` bound is set: informational only (nothing is
rejected for it); the issue's measure of memorisation (a copy share above 0.95 cosine)."""


@dataclass(frozen=True)
class FilterConfig:
    """Options of ``diffcoremix filter``."""

    embedder: str | None = None
    """Embedder spec: open_clip:<model>[:<pretrained or weights file>], hf:<hub id or folder> (a transformers
    CLIPModel), resnet20:<checkpoint>, resnet56:<checkpoint>, cifar-resnet:<checkpoint> (any CIFAR ResNet depth),
    or tiny (offline, random weights); null is open_clip:ViT-B-32:openai, or tiny when the images come from a
    built-in generator preset (tiny, tiny-sdxl) or a model fine-tuned from one."""
    threshold: float = 0.6
    """Keep a candidate iff cosine(candidate, reference) >= threshold (the paper's 0.6 is for CLIP ViT-B/32)."""
    reference: str = "prototype"
    """Reference rule: prototype (the class's mean real embedding), source (the candidate's own source image),
    knn (the closest real image of the class) or first (the class's first image: the reference code's rule)."""
    text_check: float | None = None
    """Also require cosine(candidate, text of "a photo of a {class}") >= this (needs a CLIP embedder)."""
    max_copy_similarity: float | None = None
    """Also reject a near-copy: a candidate whose cosine with the nearest real image of its class (any image of the
    class in DATA, its own source included) is > this; null: no bound. The nearest image and its cosine are recorded
    for every candidate either way."""
    calibrate: bool = False
    """Only report real-to-real similarity statistics per class and a suggested threshold; change nothing."""
    batch_size: int = 64
    """Images per embedder call."""
    loader_workers: int = 0
    """DataLoader worker processes decoding images (``--workers`` is the Ray executor's)."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""
    cache_dir: str | None = None
    """Where embeddings are cached; null means OUT/cache."""

    def __post_init__(self) -> None:
        check_types(self)
        known = list(REFERENCE_RULE_NAMES)
        require(self.reference in known, "reference", self.reference, "one of " + ", ".join(known))
        require(-1.0 <= self.threshold <= 1.0, "threshold", self.threshold, "in [-1, 1]")
        tc = self.text_check
        require(tc is None or -1.0 <= tc <= 1.0, "text_check", tc, "in [-1, 1] or null")
        bound = self.max_copy_similarity
        require(bound is None or -1.0 <= bound <= 1.0, "max_copy_similarity", bound, "in [-1, 1] or null")
        require(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        require(self.loader_workers >= 0, "loader_workers", self.loader_workers, ">= 0")
        require(self.embedder is None or bool(self.embedder.strip()), "embedder", self.embedder, "a non-empty spec")

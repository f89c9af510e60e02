"""``diffcoremix augment``: the main job. Generate the planned counterparts, filter them, and regenerate rejected
ones with new derived seeds, up to ``retries`` times, until each class's budget of accepted images is met.

Each round is a resumable :func:`~diffcoremix.generate.generate` over the plan plus every regeneration decided so
far (appended in a deterministic order), followed by :func:`~diffcoremix.filter.filter_run`, whose real-image
embeddings are cached. So a killed ``augment`` reruns to the same result, and every attempt stays recorded in
the manifest (``attempt`` column) with its own score and decision.

Example:
    >>> from diffcoremix import augment, FilterConfig, GenerateConfig, PromptsConfig
    >>> result = augment("data", "out", generate_config=GenerateConfig(preset="tiny"),
    ...                  filter_config=FilterConfig(embedder="tiny"), retries=2)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from diffcoremix.data.folder import list_images
from diffcoremix.embedders.models import Embedder
from diffcoremix.filter.config import FilterConfig
from diffcoremix.filter.runner import FilterReport, filter_run
from diffcoremix.generate.backend import ImageGenerator
from diffcoremix.generate.config import GenerateConfig
from diffcoremix.generate.runner import generate
from diffcoremix.manifest import read_manifest
from diffcoremix.prompts.builder import PromptRecord, PromptsConfig, build_prompts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentResult:
    """What ``augment`` ended with."""

    report: FilterReport
    """The final filter report (every attempt)."""
    budget: dict[str, int]
    """Planned candidates per class."""
    accepted: dict[str, int]
    """Accepted images per class (all attempts)."""
    attempts: int
    """Rounds of generation run (1 + retries used)."""


def augment(
    data: str | Path,
    out: str | Path,
    prompts: PromptsConfig | None = None,
    generate_config: GenerateConfig | None = None,
    filter_config: FilterConfig | None = None,
    *,
    retries: int = 0,
    generator: ImageGenerator | None = None,
    embedder: Embedder | None = None,
    progress: bool = False,
) -> AugmentResult:
    """Generate, filter, and regenerate rejected candidates until the class budgets are met (or retries end).

    Args:
        data: the real dataset (read only).
        out: the output folder (resumable).
        prompts, generate_config, filter_config: the stages' options.
        retries: how many times a rejected candidate may be regenerated with a new seed.
        generator, embedder: prebuilt models to use instead of loading the configs' ones.
        progress: show progress bars.
    """
    if retries < 0:
        from diffcoremix.errors import ConfigError

        raise ConfigError("retries", retries, ">= 0")
    prompts = prompts or PromptsConfig()
    generate_config = generate_config or GenerateConfig()
    filter_config = filter_config or FilterConfig()
    plan = build_prompts(list_images(data), prompts)
    plan.warn_conflicts()
    records: list[PromptRecord] = list(plan.records)
    budget = dict(Counter(r.class_folder for r in plan.records))
    latest = {r.key: r for r in records}  # planned key -> its latest attempt
    attempt = 0
    while True:
        generate(data, out, prompts, generate_config, generator=generator, records=records, progress=progress)
        report = filter_run(out, filter_config, data=data, embedder=embedder, progress=progress)
        table = read_manifest(out)
        accepted = dict(Counter(table[table.accepted == True].class_folder))  # noqa: E712 (None = not filtered)
        if attempt >= retries:
            break
        decided = dict(zip(table.key, table.accepted, strict=True))
        redo: list[PromptRecord] = []
        for cls, wanted in budget.items():
            missing = wanted - accepted.get(cls, 0)
            rejected = [r for r in latest.values() if r.class_folder == cls and decided.get(r.key) is not True]
            redo += rejected[: max(0, missing)]
        if not redo:
            break
        attempt += 1
        retried = [r.retry(attempt) for r in redo]
        logger.info("attempt %d: regenerating %d rejected candidate(s)", attempt, len(retried))
        for r in retried:
            latest[r.key.split("@", 1)[0]] = r
        records += retried
    return AugmentResult(report, budget, accepted, attempt + 1)

"""Which real images get generative counterparts, and the stable key and seed of each (METHOD.md §4).

For a fraction ``f`` of each class's images, ``K`` counterparts each. The images of a class are ranked by a
hash of (base seed, relative path), and the first ``round(f * n)`` (at least one) are taken: the choice does not
depend on the listing order, and a larger fraction keeps every image a smaller one chose. Every candidate has
a key ``<relative path>#<k>`` and a seed derived from (base seed, relative path, k), so any subset can be
regenerated on its own.

``sources="hard:F"`` spends the budget where a classifier struggles (TADA, DisCL): the images of a class are
ranked by a trained run's loss on each of them instead (highest first, ties by relative path), and the first
``round(F * n)`` (at least one) are taken; each candidate carries its source's rank in its class (1: the hardest)
and that loss. The losses are computed above this module (:mod:`diffcoremix.prompts.hardness`) and passed in.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from diffcoremix.data.folder import DatasetListing, ImageItem
from diffcoremix.errors import ConfigError, DatasetError
from diffcoremix.seeds import derive_seed
from diffcoremix.sequences import LazySequence


@dataclass(frozen=True)
class Candidate:
    """One planned generative counterpart of one real image."""

    key: str
    """Stable id: ``<source>#<k>``."""
    source: str
    """The real image's path relative to the dataset root."""
    class_folder: str
    label: int
    k: int
    """Index of this counterpart among the image's ``per_image`` ones."""
    seed: int
    """Generation seed, derived from (base seed, source, k)."""
    source_rank: int | None = None
    """With ``sources="hard:F"``: the source's rank in its class by the ranking run's loss (1: the highest)."""
    source_loss: float | None = None
    """With ``sources="hard:F"``: the ranking run's cross-entropy on the source, against its class."""


SOURCES_ALL = "all"
"""``sources``: every image (or a random ``fraction`` of each class)."""
SOURCES_HARD = "hard:"
"""``sources="hard:F"``: the share F of each class's images on which a trained run's loss is the highest."""


def hard_fraction(sources: str) -> float | None:
    """The F of ``"hard:F"``; None for ``"all"``.

    Raises:
        ConfigError: neither, or F outside (0, 1].
    """
    if sources == SOURCES_ALL:
        return None
    requirement = f"{SOURCES_ALL!r} or {SOURCES_HARD}F with F in (0, 1] (hard:0.4: the hardest 40% of each class)"
    if not sources.startswith(SOURCES_HARD):
        raise ConfigError("sources", sources, requirement)
    try:
        fraction = float(sources.removeprefix(SOURCES_HARD))
    except ValueError:
        raise ConfigError("sources", sources, requirement) from None
    if not 0.0 < fraction <= 1.0:  # NaN fails too
        raise ConfigError("sources", sources, requirement)
    return fraction


@dataclass(frozen=True)
class SourceRank:
    """Where a source stands in its class under the ranking run's loss."""

    rank: int
    """1 for the image of its class with the highest loss."""
    loss: float


def count_for_fraction(n: int, fraction: float) -> int:
    """How many of a class's ``n`` images get counterparts: ``round(f * n)`` half up, at least 1 (if n > 0).

    The product is exact decimal arithmetic on the fraction as written (``0.29`` is 29/100, not the nearest
    binary float, whose product with 50 is 14.499999999999998): 50 x 0.29 = 14.5 rounds to 15.
    """
    if n == 0:
        return 0
    product = Decimal(n) * Decimal(repr(fraction))
    return min(n, max(1, int(product.to_integral_value(rounding=ROUND_HALF_UP))))


PLAN_BYTES_PER_CANDIDATE = 16384
"""Memory that one candidate takes in a command that holds a table of every candidate, generously: ``augment``
reads its plan lazily but the filter holds its table (7.8 KB per candidate measured by
``benchmarks/plan_memory.py``)."""

STREAMED_BYTES_PER_CANDIDATE = 1024
"""Memory that one candidate takes in ``generate``, which streams its plan (on Ray too: each shard is sent its own
contiguous part of the plan, read as an actor comes free): its entry in the resume index and in the compaction of
its manifest file (measured by ``benchmarks/plan_memory.py``), generously."""


def available_memory() -> int | None:
    """Bytes of physical memory available now (None where the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_plan_fits(sources: int, per_image: int, bytes_per_candidate: int = PLAN_BYTES_PER_CANDIDATE) -> None:
    """Refuse, before anything is built, a plan that cannot fit in half of the memory available now.

    Args:
        sources, per_image: the plan's selected images and counterparts per image.
        bytes_per_candidate: what one candidate costs the command that runs the plan.

    Raises:
        ConfigError: ``per_image must be at most N here ...``, with the candidates and memory it would take.
    """
    available = available_memory()
    count = sources * per_image
    if available is None or sources == 0 or count * bytes_per_candidate <= available // 2:
        return
    most = max(0, available // 2 // bytes_per_candidate // sources)
    raise ConfigError(
        "per_image",
        per_image,
        f"at most {most:,} here: {sources:,} images x {per_image:,} = {count:,} candidates would take about "
        f"{count * bytes_per_candidate / 2**30:,.1f} GiB to plan and record, and {available / 2**30:.1f} GiB of "
        "memory is available",
    )


def select_sources(listing: DatasetListing, fraction: float, seed: int) -> list[ImageItem]:
    """The images that get counterparts, in listing order."""
    chosen: set[str] = set()
    for items in listing.by_class().values():
        ranked = sorted(items, key=lambda item: derive_seed(seed, "select", item.relpath))
        chosen.update(item.relpath for item in ranked[: count_for_fraction(len(items), fraction)])
    return [item for item in listing.items if item.relpath in chosen]


def select_hardest(
    listing: DatasetListing, fraction: float, losses: Mapping[str, float]
) -> tuple[list[ImageItem], dict[str, SourceRank]]:
    """The share ``fraction`` of each class's images with the highest loss (in listing order), and their ranks.

    Args:
        listing: the images to choose from.
        fraction: in (0, 1]: ``round(fraction * n)`` (at least one) of each class's ``n`` images.
        losses: a trained run's loss on each image, by relative path.

    Raises:
        DatasetError: an image has no loss, or one that is not a finite number.
    """
    ranks: dict[str, SourceRank] = {}
    for items in listing.by_class().values():
        for item in items:
            loss = losses.get(item.relpath)
            if loss is None or not math.isfinite(loss):
                raise DatasetError(f"no finite loss to rank {item.relpath} by (got {loss!r})")
        ranked = sorted(items, key=lambda item: (-losses[item.relpath], item.relpath))  # ties: by relative path
        for rank, item in enumerate(ranked[: count_for_fraction(len(items), fraction)], start=1):
            ranks[item.relpath] = SourceRank(rank, losses[item.relpath])
    return [item for item in listing.items if item.relpath in ranks], ranks


class CandidatePlan(LazySequence[Candidate]):
    """Every planned candidate, in listing order, then by k: a sequence computed on access, never held whole.

    Candidate ``i`` is counterpart ``i % per_image`` of selected image ``i // per_image``; its memory is that of
    the selected images (one entry per image, not per candidate).
    """

    def __init__(
        self, sources: Sequence[ImageItem], per_image: int, seed: int, ranks: Mapping[str, SourceRank] | None = None
    ) -> None:
        self.sources, self.per_image, self.seed = tuple(sources), per_image, seed
        self.ranks: Mapping[str, SourceRank] = ranks or {}
        """The rank and loss of each source chosen by ``sources="hard:F"`` (none otherwise)."""
        self._relpaths: frozenset[str] | None = None

    def __len__(self) -> int:
        return len(self.sources) * self.per_image

    def has_key(self, key: str) -> bool:
        """Whether ``key`` (``<source>#<k>``) is a candidate of this plan."""
        source, _, k = key.rpartition("#")
        if not (k.isdigit() and int(k) < self.per_image):
            return False
        if self._relpaths is None:
            self._relpaths = frozenset(item.relpath for item in self.sources)
        return source in self._relpaths

    def class_counts(self) -> dict[str, int]:
        """Candidates per class folder, in plan order."""
        counts: dict[str, int] = {}
        for item in self.sources:
            counts[item.class_folder] = counts.get(item.class_folder, 0) + self.per_image
        return counts

    def _slice(self, start: int, stop: int) -> list[Candidate]:
        return [self._make(i) for i in range(start, stop)]

    def _make(self, i: int) -> Candidate:
        item, k = self.sources[i // self.per_image], i % self.per_image
        rank = self.ranks.get(item.relpath)
        return Candidate(
            key=f"{item.relpath}#{k}",
            source=item.relpath,
            class_folder=item.class_folder,
            label=item.label,
            k=k,
            seed=derive_seed(self.seed, "generate", item.relpath, k),
            source_rank=None if rank is None else rank.rank,
            source_loss=None if rank is None else rank.loss,
        )


def candidate_plan(
    listing: DatasetListing,
    *,
    fraction: float = 1.0,
    per_image: int = 1,
    seed: int = 0,
    losses: Mapping[str, float] | None = None,
) -> CandidatePlan:
    """Every planned candidate, computed on access (:class:`CandidatePlan`): a plan of any size takes the memory
    of its selected images only.

    With ``losses`` (a trained run's loss on each image, by relative path), the ``fraction`` of each class with the
    highest loss is chosen (:func:`select_hardest`) instead of a seeded random one."""
    if losses is None:
        return CandidatePlan(select_sources(listing, fraction, seed), per_image, seed)
    sources, ranks = select_hardest(listing, fraction, losses)
    return CandidatePlan(sources, per_image, seed, ranks)


def plan_candidates(
    listing: DatasetListing, *, fraction: float = 1.0, per_image: int = 1, seed: int = 0
) -> list[Candidate]:
    """Every planned candidate as a list (in listing order, then by k), refused when it would not fit in memory.

    Example:
        >>> plan = plan_candidates(list_images("data"), fraction=0.3, per_image=2)  # doctest: +SKIP
    """
    plan = candidate_plan(listing, fraction=fraction, per_image=per_image, seed=seed)
    check_plan_fits(len(plan.sources), per_image)
    return list(plan)

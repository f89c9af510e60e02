"""Which images of DATA a command reads: class and size subsets, and the check of every source before generation.

Every command that reads DATA takes ``--classes`` and ``--max-per-class`` (:class:`DataConfig`). ``generate`` and
``augment`` also decode every image they could plan from, with the same check as ``scan``, before any model
loads: an unusable file is skipped with its reason (recorded in ``OUT/run.json``, named in one log line), and
counts in no budget.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from diffcoremix.config import check_types, require
from diffcoremix.data.folder import DatasetListing, Finding, list_images
from diffcoremix.data.scan import ScanConfig, inspect_all

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    """Which part of DATA a command reads (every command that reads DATA takes these options)."""

    classes: tuple[str, ...] = ()
    """Only these class folders (comma-separated, or several values); empty means every class. Labels keep
    DATA's class indices."""
    max_per_class: int | None = None
    """At most this many images of each class (the first in listing order); null means all."""

    def __post_init__(self) -> None:
        check_types(self)
        split = tuple(part.strip() for value in self.classes for part in value.split(",") if part.strip())
        object.__setattr__(self, "classes", split)
        require(self.max_per_class is None or self.max_per_class >= 1, "max_per_class", self.max_per_class,
                ">= 1 or null")  # fmt: skip

    def select(self, data: str | Path | DatasetListing) -> DatasetListing:
        """The listing of ``data`` restricted to this subset."""
        listing = data if isinstance(data, DatasetListing) else list_images(data)
        if not self.classes and self.max_per_class is None:
            return listing
        return listing.subset(self.classes, self.max_per_class)


@dataclass(frozen=True)
class Sources:
    """The images a generation run may plan from, and those it skipped."""

    listing: DatasetListing
    skipped: tuple[Finding, ...]
    """Each unusable file with its problem code and reason (as ``scan`` reports them)."""


def usable_sources(
    data: str | Path | DatasetListing,
    config: DataConfig | None = None,
    *,
    progress: bool = False,
    scan: ScanConfig | None = None,
) -> Sources:
    """Decode every image of the (subset of the) dataset and leave out those that cannot be used.

    Args:
        data: the dataset folder or its listing.
        config: the subset to read.
        progress: show a progress bar.
        scan: what counts as unusable (default: ``scan``'s defaults, which generation needs; training passes
            ``min_side=1``: any image it can decode).

    Returns:
        The usable listing and the skipped files.
    """
    listing = (config or DataConfig()).select(data)
    scan = scan or ScanConfig()
    bad = [r.problem for r in inspect_all(list(listing.items), scan, progress) if r.problem is not None]
    if bad:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(Counter(f.kind for f in bad).items()))
        logger.warning(
            "skipped %d image(s) that cannot be used (%s; first: %s: %s); they are neither planned, counted in "
            "any budget nor trained on (run `diffcoremix scan` for the list)",
            len(bad),
            kinds,
            bad[0].relpath,
            bad[0].reason,
        )
    return Sources(listing.without({f.relpath for f in bad}), tuple(bad))

"""Which images of DATA a command reads: class and size subsets, and the check of every source before generation.

Every command that reads DATA takes ``--classes`` and ``--max-per-class`` (:class:`DataConfig`). ``generate`` and
``augment`` also decode every image they could plan from, with the same check as ``scan``, before any model
loads: an unusable file is skipped with its reason (recorded in ``OUT/run.json``, named in one log line), and
counts in no budget.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from diffcoremix.config import check_types, require
from diffcoremix.data.folder import DatasetListing, Finding, list_images
from diffcoremix.data.scan import ScanConfig, inspect_all
from diffcoremix.errors import DatasetError

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
    what: str = "DATA",
) -> Sources:
    """Decode every image of the (subset of the) dataset and leave out those that cannot be used.

    What was left out (each bad file, and the listing's own problems: empty class folders, symbolic-link loops,
    special files) is named in one warning line (:func:`warn_skipped`).

    Args:
        data: the dataset folder or its listing.
        config: the subset to read.
        progress: show a progress bar.
        scan: what counts as unusable (default: ``scan``'s defaults, which generation needs; training passes
            ``min_side=1``: any image it can decode).
        what: how messages name the dataset (``DATA``, ``--val``, ``--test``).

    Returns:
        The usable listing and the skipped files.

    Raises:
        DatasetError: no usable image is left.
    """
    listing = (config or DataConfig()).select(data)
    scan = scan or ScanConfig()
    bad = [r.problem for r in inspect_all(list(listing.items), scan, progress) if r.problem is not None]
    usable = listing.without({f.relpath for f in bad})
    warn_skipped(usable, bad, what)
    if not usable.items:
        raise DatasetError(f"{what} {listing.root} has no usable image{_summary(listing.problems, bad)}: run "
                           f"`diffcoremix scan {listing.root}` for the list")  # fmt: skip
    return Sources(usable, tuple(bad))


def require_classes(listing: DatasetListing, what: str = "DATA", minimum: int = 2) -> None:
    """Refuse a listing with usable images in fewer than ``minimum`` classes (a classifier needs two to learn).

    Raises:
        DatasetError: naming the classes that hold images.
    """
    held = [c for c, items in listing.by_class().items() if items]
    if len(held) < minimum:
        names = ", ".join(map(repr, held))
        raise DatasetError(f"{what} {listing.root} has usable images in {len(held)} class(es) ({names}): training a "
                           f"classifier needs at least {minimum}")  # fmt: skip


def warn_skipped(listing: DatasetListing, bad: Sequence[Finding], what: str = "DATA") -> None:
    """One warning line about what of ``listing`` a command does not read: the bad files ``bad`` and the listing's
    problems, counted per kind, with the first one and the classes left without any usable image.

    Args:
        listing: the listing the command reads (without ``bad``).
        bad: the files left out, with their problem codes.
        what: how the message names the dataset.
    """
    problems = [*listing.problems, *bad]
    if not problems:
        return
    others = len(listing.problems)
    counted = f"{len(bad)} image(s) that cannot be used" + (f" and {others} other problem(s)" if others else "")
    if not bad:
        counted = f"{others} problem(s)"
    reported = {f.relpath for f in listing.problems if f.kind == "empty_class"}
    emptied = [c for c, items in listing.by_class().items() if not items and c not in reported]
    empty = f"; no usable image in class(es) {', '.join(map(repr, emptied))}" if emptied else ""
    message = (f"{what} {listing.root}: skipped {counted}{_summary(listing.problems, bad)}{empty}; run "
               f"`diffcoremix scan {listing.root}` for the list")  # fmt: skip
    said = _SAID.get()
    if said is not None:
        if message in said:
            return
        said.add(message)
    logger.warning("%s", message)


_SAID: ContextVar[set[str] | None] = ContextVar("_SAID", default=None)
"""The skip warnings given so far inside :func:`skips_named_once`, else None."""


@contextmanager
def skips_named_once() -> Iterator[None]:
    """Within, :func:`warn_skipped` gives each distinct warning once (``compare`` reads DATA for every run)."""
    token = _SAID.set(set())
    try:
        yield
    finally:
        _SAID.reset(token)


def _summary(problems: Sequence[Finding], bad: Sequence[Finding]) -> str:
    """`` (corrupt 1, empty_class 2; first: a/x.png: corrupt image data)``, or nothing when there is no problem."""
    every = [*problems, *bad]
    if not every:
        return ""
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(Counter(f.kind for f in every).items()))
    return f" ({kinds}; first: {every[0].relpath}: {every[0].reason})"

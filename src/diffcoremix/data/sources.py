"""Which images of DATA a command reads: class and size subsets, and the check of every source before generation.

Every command that reads DATA takes ``--classes`` and ``--max-per-class`` (:class:`DataConfig`). ``generate`` and
``augment`` also decode every image they could plan from, with the same check as ``scan``, before any model
loads: an unusable file is skipped with its reason (recorded in ``OUT/run.json``, named in one log line), and
counts in no budget. ``filter`` decodes only the real images its reference rule compares with
(:class:`ImageCheck`).

The same line names the images a command reads despite a problem: those that links make images of two classes
(:meth:`~diffcoremix.data.folder.DatasetListing.linked`; ``train`` and ``compare`` refuse them unless
``--allow-duplicates``: :func:`refuse_shared_files`), and the kinds a command keeps (``mix-preview`` shows images
below ``scan``'s minimum side, as training reads them).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from diffcoremix.config import check_types, require
from diffcoremix.data.checks import ScanConfig, check_files
from diffcoremix.data.folder import DatasetListing, Finding, ImageItem, list_images
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
    keep: Collection[str] = (),
    allow_duplicates: bool = True,
) -> Sources:
    """Decode every image of the (subset of the) dataset and leave out those that cannot be used.

    What was left out (each bad file, and the listing's own problems: empty class folders, symbolic-link loops,
    special files), and what is read despite a problem (files linked into two classes, the ``keep`` kinds), is
    named in one warning line (:func:`warn_skipped`).

    Args:
        data: the dataset folder or its listing.
        config: the subset to read.
        progress: show a progress bar.
        scan: what counts as unusable (default: ``scan``'s defaults, which generation needs; training passes
            ``min_side=1``: any image it can decode).
        what: how messages name the dataset (``DATA``, ``--val``, ``--test``).
        keep: problem kinds whose images are read all the same (named in the warning line, not left out).
        allow_duplicates: read a file that links make an image of two classes (named in the warning line);
            False refuses it (``train`` and ``compare``).

    Returns:
        The usable listing and the skipped files.

    Raises:
        DatasetError: no usable image is left, or (``allow_duplicates=False``) one file is an image of two classes.
    """
    check = ImageCheck((config or DataConfig()).select(data), scan=scan, progress=progress, what=what, keep=keep,
                       allow_duplicates=allow_duplicates)  # fmt: skip
    check.check(check.listing.items)
    return check.result()


class ImageCheck:
    """The images of a listing, each decoded (as ``scan`` does) once, when a command first asks about it.

    :func:`usable_sources` checks every image; ``filter`` only those it compares with (the candidates' classes and
    sources), so that an image it never reads is never decoded.

    Args:
        listing: the images that may be checked.
        scan: what counts as unusable (default: ``scan``'s defaults).
        progress: show a progress bar per batch of images decoded.
        what: how messages name the dataset (``DATA``, ``--val``, ``--test``).
        keep: problem kinds whose images are usable all the same (named in the warning line).
        allow_duplicates: False refuses a file that links make an image of two classes (see :meth:`result`).
    """

    def __init__(
        self,
        listing: DatasetListing,
        *,
        scan: ScanConfig | None = None,
        progress: bool = False,
        what: str = "DATA",
        keep: Collection[str] = (),
        allow_duplicates: bool = True,
    ) -> None:
        self.listing = listing
        self.scan = scan or ScanConfig()
        self.progress = progress
        self.what = what
        self.keep = frozenset(keep)
        self.allow_duplicates = allow_duplicates
        self.problems: dict[str, Finding | None] = {}
        """Relative path -> its problem, or None when it decoded; only the images checked so far."""

    def check(self, items: Iterable[ImageItem]) -> None:
        """Decode those of ``items`` not checked yet (in worker processes when they are many)."""
        todo = list({i.relpath: i for i in items if i.relpath not in self.problems}.values())
        if not todo:
            return
        for result in check_files(self.listing.root, todo, self.scan, progress=self.progress):
            self.problems[result.relpath] = result.problem

    def _usable(self, problem: Finding | None) -> bool:
        return problem is None or problem.kind in self.keep

    def holds_usable(self, items: Iterable[ImageItem]) -> bool:
        """Whether one of ``items`` is known to be usable (checked, without a problem or with one of ``keep``)."""
        return any(i.relpath in self.problems and self._usable(self.problems[i.relpath]) for i in items)

    def unusable(self) -> list[Finding]:
        """The problems found so far that leave their image out, in listing order."""
        return self._in_order(f for f in self.problems.values() if not self._usable(f))

    def kept(self) -> list[Finding]:
        """The problems found so far whose images are read all the same (``keep``), in listing order."""
        return self._in_order(f for f in self.problems.values() if f is not None and f.kind in self.keep)

    def _in_order(self, findings: Iterable[Finding | None]) -> list[Finding]:
        order = {item.relpath: n for n, item in enumerate(self.listing.items)}
        return sorted((f for f in findings if f is not None), key=lambda f: order.get(f.relpath, len(order)))

    def result(self) -> Sources:
        """The listing less the images found unusable, which are named in one warning line (:func:`warn_skipped`).

        Images never checked stay in. When none is known to be usable, every image left is checked first, so that
        a dataset with nothing usable is refused as :func:`usable_sources` refuses it. Without ``allow_duplicates``,
        a file that links make an image of two classes is refused before anything is named.

        Raises:
            DatasetError: no usable image is left, or (``allow_duplicates=False``) one file is an image of two classes.
        """
        if not self.holds_usable(self.listing.items):
            self.check(self.listing.items)
        bad = self.unusable()
        usable = self.listing.without({f.relpath for f in bad})
        if not self.allow_duplicates:
            refuse_shared_files(usable, self.what)
        warn_skipped(usable, bad, self.what, self.kept())
        if not usable.items:
            root = self.listing.root
            raise DatasetError(f"{self.what} {root} has no usable image{_summary(self.listing.problems, bad)}: run "
                               f"`diffcoremix scan {root}` for the list")  # fmt: skip
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


def refuse_shared_files(listing: DatasetListing, what: str = "DATA") -> None:
    """Refuse a listing in which links make one file an image of two classes: training would read it under two
    labels, scoring would count it wrong under one of them (``train`` and ``compare``, unless
    ``--allow-duplicates``).

    Raises:
        DatasetError: naming the first such file, its classes, and how many there are.
    """
    shared = listing.shared_files()
    if not shared:
        return
    first = shared[0]
    classes = " and ".join(map(repr, dict.fromkeys(i.class_folder for i in first)))
    paths = " and ".join(i.relpath for i in first)
    raise DatasetError(f"{what} {listing.root}: {len(shared)} file(s) are images of two classes through links (first: "
                       f"{paths} are one file, in classes {classes}): each would be read under two labels; remove "
                       "the links, or pass --allow-duplicates to read them as they are")  # fmt: skip


def warn_skipped(
    listing: DatasetListing, bad: Sequence[Finding], what: str = "DATA", kept: Sequence[Finding] = ()
) -> None:
    """One warning line about what of ``listing`` a command does not read: the bad files ``bad`` and the listing's
    problems, counted per kind, with the first one and the classes left without any usable image; and, on the same
    line, what it reads despite a problem: the ``kept`` images and those that links make images of two classes.

    Args:
        listing: the listing the command reads (without ``bad``).
        bad: the files left out, with their problem codes.
        what: how the message names the dataset.
        kept: images read all the same, with their problem codes.
    """
    problems = [*listing.problems, *bad]
    flagged = [*kept, *listing.linked()]
    if not problems and not flagged:
        return
    parts = []
    if problems:
        parts.append(f"skipped {_skipped(listing, bad)}")
    if flagged:
        order = {item.relpath: n for n, item in enumerate(listing.items)}
        flagged.sort(key=lambda f: order.get(f.relpath, len(order)))
        parts.append(f"read {len({f.relpath for f in flagged})} image(s) despite a problem{_summary(flagged, ())}")
    message = f"{what} {listing.root}: {'; '.join(parts)}; run `diffcoremix scan {listing.root}` for the list"
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


def _skipped(listing: DatasetListing, bad: Sequence[Finding]) -> str:
    """``2 image(s) that cannot be used and 1 other problem(s) (corrupt 2, special 1; first: ...)``, and the classes
    left without any usable image."""
    others = len(listing.problems)
    counted = f"{len(bad)} image(s) that cannot be used" + (f" and {others} other problem(s)" if others else "")
    if not bad:
        counted = f"{others} problem(s)"
    reported = {f.relpath for f in listing.problems if f.kind == "empty_class"}
    emptied = [c for c, items in listing.by_class().items() if not items and c not in reported]
    empty = f"; no usable image in class(es) {', '.join(map(repr, emptied))}" if emptied else ""
    return f"{counted}{_summary(listing.problems, bad)}{empty}"


def _summary(problems: Sequence[Finding], bad: Sequence[Finding]) -> str:
    """`` (corrupt 1, empty_class 2; first: a/x.png: corrupt image data)``, or nothing when there is no problem."""
    every = [*problems, *bad]
    if not every:
        return ""
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(Counter(f.kind for f in every).items()))
    return f" ({kinds}; first: {every[0].relpath}: {every[0].reason})"

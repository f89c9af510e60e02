"""``diffcoremix scan``: check a class-folder dataset before anything is generated from it.

Every image is read and fully decoded (in worker processes for large datasets), once: later checks read what was
found from the dataset's check index (:mod:`diffcoremix.data.checks`; ``--recheck`` decodes again). Its content hash
finds byte-identical files, and its identity on disk the files that links make images of two classes (the listing's
:meth:`~diffcoremix.data.folder.DatasetListing.linked`, which every command that reads DATA names). Nothing in the
dataset is modified. Problems are reported per file with a code and a
reason; a file with any problem is not counted among the class's images.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffcoremix.cells import text_cell
from diffcoremix.data.checks import FileResult, check_files
from diffcoremix.data.checks import ScanConfig as ScanConfig  # its home was here: imported from here everywhere
from diffcoremix.data.folder import LINKED, DatasetListing, Finding, list_images

logger = logging.getLogger(__name__)

PROBLEM_KINDS = {
    "empty_file": "zero-byte file",
    "not_an_image": "not an image, despite its extension",
    "corrupt": "corrupt image data",
    "truncated": "truncated image data",
    "too_large": "too large to decode safely",
    "too_small": "smaller than min_side",
    "empty_class": "class folder without images",
    "duplicate_across_classes": "byte-identical to a file in another class",
    "duplicate_within_class": "byte-identical to another file of the same class",
    LINKED: "the same file as an image of another class, through a link (read under two labels)",
    "unreadable": "permission denied or unreadable",
    "symlink_loop": "symbolic link loop",
    "broken_symlink": "symbolic link to a missing target",
    "missing": "file vanished during the scan",
    "special": "not a regular file or directory",
}
"""Every problem code ``scan`` can report, with a short gloss."""


@dataclass(frozen=True)
class ClassSummary:
    """Per-class counts and image-size statistics (of the images without problems)."""

    folder: str
    name: str
    images: int
    flagged: int
    min_side: int | None
    median_width: float | None
    median_height: float | None
    max_side: int | None


@dataclass(frozen=True)
class ScanReport:
    """Everything ``scan`` found. ``num_images`` counts files that passed every check."""

    root: Path
    classes: list[ClassSummary]
    problems: list[Finding]
    ignored: list[Finding]
    modes: dict[str, int] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return sum(c.images for c in self.classes)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of the report."""
        return {
            "root": str(self.root),
            "num_classes": len(self.classes),
            "num_images": self.num_images,
            "num_problems": len(self.problems),
            "classes": [vars(c) for c in self.classes],
            "problems": [vars(p) for p in self.problems],
            "problem_counts": dict(Counter(p.kind for p in self.problems)),
            "ignored": [vars(i) for i in self.ignored],
            "modes": self.modes,
            "formats": self.formats,
        }

    def to_text(self) -> str:
        """A human-readable table of the report."""
        lines = [
            f"dataset  {self.root}",
            f"classes  {len(self.classes)}    images  {self.num_images}    problems  {len(self.problems)}"
            f"    ignored  {len(self.ignored)}",
            "",
        ]
        width = max([len(text_cell(c.folder)) for c in self.classes] + [5])
        lines.append(f"{'class':<{width}}  {'images':>6}  {'flagged':>7}  {'min side':>8}  {'median WxH':>11}")
        for c in self.classes:
            median = "-" if c.median_width is None else f"{c.median_width:.0f}x{c.median_height:.0f}"
            min_side = "-" if c.min_side is None else str(c.min_side)
            lines.append(f"{text_cell(c.folder):<{width}}  {c.images:>6}  {c.flagged:>7}  {min_side:>8}  {median:>11}")
        if self.modes:
            lines.append("")
            lines.append("modes    " + ", ".join(f"{k} {v}" for k, v in sorted(self.modes.items())))
            lines.append("formats  " + ", ".join(f"{k} {v}" for k, v in sorted(self.formats.items())))
        if self.problems:
            lines.append("")
            lines.append("problems:")
            for p in self.problems:
                lines.append(f"  {text_cell(p.relpath)}  [{p.kind}]  {text_cell(p.reason)}")
        if self.ignored:
            lines.append("")
            counts = Counter(i.kind for i in self.ignored)
            lines.append("ignored (not used): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        return "\n".join(lines)


def scan_dataset(
    root: str | Path | DatasetListing, config: ScanConfig | None = None, *, progress: bool = False
) -> ScanReport:
    """Check every file of a class-folder dataset.

    Args:
        root: the dataset folder, or its listing (a subset of it: :class:`~diffcoremix.data.sources.DataConfig`).
        config: scan options (defaults if omitted).
        progress: show a progress bar on stderr.

    Returns:
        The report; ``report.problems`` lists every bad file with its reason.

    Raises:
        DatasetError: the folder itself cannot be used (see :func:`diffcoremix.data.folder.list_images`).

    Example:
        >>> report = scan_dataset("../shared/data/cub200_25")  # doctest: +SKIP
        >>> len(report.classes), report.num_images
        (25, 411)
    """
    config = config or ScanConfig()
    listing = root if isinstance(root, DatasetListing) else list_images(root)
    results = list(check_files(listing.root, listing.items, config, progress=progress))
    class_of = {item.relpath: item.class_folder for item in listing.items}

    problems = {r.relpath: r.problem for r in results if r.problem is not None}
    for finding in listing.linked():  # one file, through links: named as such, not as a byte-identical copy
        problems.setdefault(finding.relpath, finding)
    by_digest: dict[str, list[str]] = defaultdict(list)
    for r in results:
        decoded = r.problem is None or r.problem.kind == "too_small"
        if r.digest and decoded:
            by_digest[r.digest].append(r.relpath)
    for paths in by_digest.values():
        if len(paths) < 2:
            continue
        across = len({class_of[p] for p in paths}) > 1
        for p in paths:
            others = ", ".join(o for o in paths if o != p)
            kind = "duplicate_across_classes" if across else "duplicate_within_class"
            problems.setdefault(p, Finding(p, kind, f"byte-identical to {others}"))

    names = listing.class_names()
    good_by_class: dict[str, list[FileResult]] = defaultdict(list)
    for r in results:
        if r.relpath not in problems:
            good_by_class[class_of[r.relpath]].append(r)
    summaries = []
    for cls, items in listing.by_class().items():
        good = good_by_class[cls]
        sizes = [r.size for r in good if r.size is not None]
        summaries.append(
            ClassSummary(
                folder=cls,
                name=names[cls],
                images=len(good),
                flagged=len(items) - len(good),
                min_side=min(min(s) for s in sizes) if sizes else None,
                median_width=statistics.median(s[0] for s in sizes) if sizes else None,
                median_height=statistics.median(s[1] for s in sizes) if sizes else None,
                max_side=max(max(s) for s in sizes) if sizes else None,
            )
        )
    ordered = [problems[r.relpath] for r in results if r.relpath in problems]
    all_problems = list(listing.problems) + ordered
    clean = [r for r in results if r.relpath not in problems]
    report = ScanReport(
        root=listing.root,
        classes=summaries,
        problems=all_problems,
        ignored=list(listing.ignored),
        modes=dict(Counter(r.mode for r in clean if r.mode)),
        formats=dict(Counter(r.format for r in clean if r.format)),
    )
    logger.debug("scanned %s: %d images, %d problems", listing.root, report.num_images, len(all_problems))
    return report

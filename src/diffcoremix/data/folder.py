"""Class-folder datasets as a deterministic listing.

DATA holds one folder per class; every image file at any depth below a class folder belongs to that class.
Image extensions match case-insensitively; symbolic links are followed (loops are detected and reported).
Items come in the same order as torchvision's ``ImageFolder`` (classes sorted; within a class, directories by
path, then file names), so labels and indices agree with it. Entries whose names start with a dot (``.DS_Store``,
``.ipynb_checkpoints``) and files that are not images are not used, but every one is recorded in ``ignored``,
never silently dropped.

A file that links make an image of two classes (a class folder that is a link to another class's folder, a file
linked into two classes by a symbolic or a hard link) would be read under two labels: each is found by its
identity on disk (device and inode, links followed), which costs no read (:meth:`DatasetListing.linked`).
Byte-identical copies are distinct files: ``scan`` finds those by their content.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from diffcoremix.data.classnames import class_names
from diffcoremix.data.images import is_image_file
from diffcoremix.errors import DatasetError, UnknownNameError


@dataclass(frozen=True)
class ImageItem:
    """One image of the dataset."""

    path: Path
    """The file, as found under the dataset root (symbolic links not resolved)."""
    relpath: str
    """The path relative to the dataset root, with ``/`` separators: the image's stable id."""
    label: int
    """Index of the class in ``DatasetListing.classes``."""
    class_folder: str
    """Name of the class folder."""
    file: tuple[int, int] | None = field(default=None, compare=False, repr=False)
    """The file's ``(device, inode)``, links followed: two items with the same are one file on disk (None for an
    item not found by :func:`list_images`)."""


@dataclass(frozen=True)
class Finding:
    """A listing-level observation: a problem (``kind`` like ``empty_class``) or an ignored entry."""

    relpath: str
    kind: str
    reason: str


@dataclass(frozen=True)
class DatasetListing:
    """Every image of a class-folder dataset, with what was left out and why."""

    root: Path
    classes: tuple[str, ...]
    """Class folder names, sorted; a label is an index into this."""
    items: tuple[ImageItem, ...]
    problems: tuple[Finding, ...] = ()
    """Empty class folders, symbolic-link loops, broken links, unreadable directories."""
    ignored: tuple[Finding, ...] = ()
    """Hidden entries, non-image files, files outside any class folder."""
    selected: tuple[str, ...] | None = None
    """The classes in use when the listing is a subset (:meth:`subset`); None means all. ``classes`` stays every
    class of DATA, so labels keep DATA's indices."""
    _by_class: dict[str, list[ImageItem]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for cls in self.classes if self.selected is None else self.selected:
            self._by_class[cls] = []
        for item in self.items:
            self._by_class[item.class_folder].append(item)

    def by_class(self) -> Mapping[str, list[ImageItem]]:
        """Items grouped by class folder, in listing order (every class in use present, possibly empty)."""
        return self._by_class

    def subset(self, classes: Sequence[str] = (), max_per_class: int | None = None) -> DatasetListing:
        """Only ``classes`` (all when empty), and at most ``max_per_class`` images of each, first in listing order.

        Labels keep DATA's indices. Raises:
            UnknownNameError: a class is not a class folder of DATA.
        """
        for cls in classes:
            if cls not in self.classes:
                raise UnknownNameError("class", cls, list(self.classes))
        chosen = tuple(c for c in self.classes if c in classes) if classes else self.selected
        keep = set(chosen if chosen is not None else self.classes)
        taken: dict[str, int] = {}
        items = []
        for item in self.items:
            n = taken.get(item.class_folder, 0)
            if item.class_folder in keep and (max_per_class is None or n < max_per_class):
                items.append(item)
                taken[item.class_folder] = n + 1
        problems = tuple(f for f in self.problems if f.relpath.split("/")[0] in keep)
        return dataclasses.replace(self, items=tuple(items), problems=problems, selected=chosen)

    def shared_files(self) -> list[tuple[ImageItem, ...]]:
        """The files that are images of more than one class (through links), each with its items in listing order;
        the files in the order their first item is listed. Only this listing's items count (a subset's)."""
        counts = Counter(item.file for item in self.items if item.file is not None)
        repeated = {file for file, n in counts.items() if n > 1}  # most datasets: none (one pass, no list per file)
        by_file: dict[tuple[int, int], list[ImageItem]] = defaultdict(list)
        for item in self.items:
            if item.file in repeated:
                by_file[item.file].append(item)
        return [tuple(items) for items in by_file.values() if len({i.class_folder for i in items}) > 1]

    def linked(self) -> list[Finding]:
        """A ``linked_across_classes`` finding for every item of :meth:`shared_files`, in listing order: the image
        is read under two labels."""
        found = {}
        for items in self.shared_files():
            labels = " and ".join(map(repr, dict.fromkeys(i.class_folder for i in items)))
            for item in items:
                others = ", ".join(o.relpath for o in items if o is not item)
                reason = f"the same file as {others}, through a link: one image labelled {labels}"
                found[item.relpath] = Finding(item.relpath, LINKED, reason)
        return [found[i.relpath] for i in self.items if i.relpath in found]

    def without(self, relpaths: Collection[str]) -> DatasetListing:
        """The listing less the images at ``relpaths`` (labels unchanged)."""
        return dataclasses.replace(self, items=tuple(i for i in self.items if i.relpath not in relpaths))

    def class_names(self, class_map: Mapping[str, str] | None = None) -> dict[str, str]:
        """Prompt words per class folder (see :func:`diffcoremix.data.classnames.class_names`)."""
        return class_names(self.classes, class_map)

    def __len__(self) -> int:
        return len(self.items)


LINKED = "linked_across_classes"
"""The finding kind of an image that is one file with an image of another class (:meth:`DatasetListing.linked`)."""


def _relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def list_images(root: str | Path) -> DatasetListing:
    """List a class-folder dataset without decoding anything.

    Args:
        root: the dataset folder (one sub-folder per class).

    Returns:
        The listing; it records every entry it does not use.

    Raises:
        DatasetError: ``root`` is missing, not a directory, unreadable, or has no class folders.

    Example:
        >>> listing = list_images("../shared/data/cub200_25")  # doctest: +SKIP
        >>> len(listing.classes), len(listing)
        (25, 411)
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset path {root} is not a directory")
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as err:
        raise DatasetError(f"cannot read dataset folder {root}: {err}") from None

    problems: list[Finding] = []
    ignored: list[Finding] = []
    classes: list[str] = []
    for entry in entries:
        rel = entry.name
        if entry.name.startswith("."):
            ignored.append(Finding(rel, "hidden", "hidden entry"))
            continue
        kind, _ = _entry_kind(Path(entry.path))
        if kind == "dir":
            classes.append(entry.name)
        elif kind == "file":
            ignored.append(Finding(rel, "outside_class", "file at the dataset root, outside any class folder"))
        else:
            problems.append(Finding(rel, kind, _KIND_REASONS[kind]))
    if not classes:
        raise DatasetError(f"dataset folder {root} has no class sub-folders (expected DATA/<class>/<images>)")

    items: list[ImageItem] = []
    for label, cls in enumerate(classes):
        found = _walk_class(root, root / cls, label, cls, problems, ignored)
        if not found:
            problems.append(Finding(cls, "empty_class", "class folder holds no image files"))
        items.extend(found)
    return DatasetListing(root, tuple(classes), tuple(items), tuple(problems), tuple(ignored))


_KIND_REASONS = {
    "symlink_loop": "symbolic link loop",
    "broken_symlink": "symbolic link to a missing target",
    "unreadable": "cannot be accessed (permission denied)",
    "special": "not a regular file or directory",
}


def _entry_kind(path: Path) -> tuple[str, tuple[int, int] | None]:
    """``dir``, ``file``, or a problem code, following symbolic links; and the ``(device, inode)`` it leads to."""
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symlink_loop", None
        if err.errno == errno.ENOENT:
            return "broken_symlink", None
        return "unreadable", None
    ident = (st.st_dev, st.st_ino)
    if stat.S_ISDIR(st.st_mode):
        return "dir", ident
    if stat.S_ISREG(st.st_mode):
        return "file", ident
    return "special", ident


def _walk_class(
    root: Path, class_dir: Path, label: int, cls: str, problems: list[Finding], ignored: list[Finding]
) -> list[ImageItem]:
    """Images below one class folder, in torchvision ``ImageFolder`` order (directory path, then file name)."""
    found: list[tuple[str, str, ImageItem]] = []
    # Each stack entry carries the (device, inode) of its ancestors, so a link back up the tree is a loop,
    # while a link to a sibling directory is simply followed.
    # The dataset root counts as an ancestor: a link to it from inside a class would relabel other classes.
    root_stat = os.stat(root)
    stack: list[tuple[Path, frozenset[tuple[int, int]]]] = [
        (class_dir, frozenset({(root_stat.st_dev, root_stat.st_ino)}))
    ]
    while stack:
        directory, ancestors = stack.pop()
        try:
            st = os.stat(directory)
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as err:
            problems.append(Finding(_relpath(directory, root), "unreadable", f"cannot list directory: {err}"))
            continue
        ident = (st.st_dev, st.st_ino)
        if ident in ancestors:
            problems.append(
                Finding(_relpath(directory, root), "symlink_loop", "directory link points back to its ancestor")
            )
            continue
        ancestors = ancestors | {ident}
        subdirs: list[Path] = []
        for entry in entries:
            path = Path(entry.path)
            rel = _relpath(path, root)
            if entry.name.startswith("."):
                ignored.append(Finding(rel, "hidden", "hidden entry"))
                continue
            kind, file = _entry_kind(path)
            if kind == "dir":
                subdirs.append(path)
            elif kind == "file":
                if is_image_file(path):
                    item = ImageItem(path, rel, label, cls, file)
                    found.append((str(directory), entry.name, item))
                else:
                    ignored.append(Finding(rel, "not_image_extension", f"extension {path.suffix!r} is not read"))
            elif is_image_file(path) or kind != "broken_symlink":
                problems.append(Finding(rel, kind, _KIND_REASONS[kind]))
            else:
                ignored.append(Finding(rel, kind, _KIND_REASONS[kind]))
        stack.extend((d, ancestors) for d in reversed(subdirs))
    found.sort(key=lambda t: (t[0], t[1]))
    return [item for _, _, item in found]

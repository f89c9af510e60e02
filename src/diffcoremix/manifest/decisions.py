"""The filter's decisions in OUT, and the ``train/`` and ``rejected/`` views derived from them.

``OUT/filter.jsonl`` holds one decision per filtered candidate. ``OUT/train/<class>/`` and ``OUT/rejected/<class>/``
hold hard links to the images of ``OUT/images`` (a copy only where the file system has no hard links), named by
a one-to-one escape of the image's path below its class folder, so that two candidates never share a name.
Every class of DATA gets both folders, empty if need be, so ``ImageFolder(..., allow_empty=True)`` gives DATA's
class indices; ``OUT/train/metadata.jsonl`` (Hugging Face imagefolder's metadata convention) carries each image's
label (DATA's index), prompt, score and source.

Re-deriving the views changes only what differs: a file that our layout record names is removed or replaced,
anything else is never touched (a name clash with a foreign file is an error), and nothing is ever opened for
writing through a link, so ``OUT/images`` cannot change.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from diffcoremix import faults
from diffcoremix.atomic import atomic_writer, ensure_folder, write_text_if_changed
from diffcoremix.digests import file_sha256
from diffcoremix.manifest.layout import DECISIONS_FILE, REJECTED_DIR, REPORT_DIR, TRAIN_DIR, Layout, OutputFolderError

logger = logging.getLogger(__name__)

FILTER_COLUMNS = ("embedder", "reference_rule", "reference", "score", "threshold", "text_score", "nearest_real",
                  "nearest_real_score", "near_copy", "accepted", "rejected_by")  # fmt: skip
"""Columns that ``diffcoremix filter`` adds to the manifest table: what each candidate was compared with, its
score, its nearest real image (path in DATA) and their cosine, whether that makes it a copy (None without a
``--max-copy-similarity`` bound; not named ``copy``, which is a DataFrame method), the decision, and the check that
rejected it (``threshold``, ``text`` or ``copy``, the first failed in that order; None when kept)."""

METADATA_FILE = "metadata.jsonl"

_NO_LINKS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
"""``os.link`` errors that mean "no hard link possible here" (another device, links not allowed, too many)."""


def read_decisions(out: str | Path) -> dict[str, dict[str, Any]]:
    """The decisions of ``OUT/filter.jsonl`` by key (empty when the run has not been filtered); a damaged line is
    skipped with a warning (its candidate is undecided until the next ``filter``, which rewrites the file)."""
    return read_keyed_lines(Path(out) / DECISIONS_FILE, "filter decision", f"rerun `diffcoremix filter {out}`")


def read_keyed_lines(path: Path, what: str, remedy: str) -> dict[str, dict[str, Any]]:
    """The JSON objects of a JSON Lines file that we write atomically, by their ``key`` (empty when it is missing).

    A line that is not a JSON object with a key (torn or altered: the file is written atomically, so something else
    damaged it) is skipped with one warning per file, ``"{path}:{line}: ... is not a {what} ...; {remedy}"``, as the
    manifest skips a torn record: the command that rewrites the file still runs, and repairs it.
    """
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return {}
    rows: dict[str, dict[str, Any]] = {}
    damaged: list[int] = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("key"), str):
            damaged.append(number)
            continue
        rows[row["key"]] = row
    if damaged:
        where = ", ".join(map(str, damaged[:5])) + (", ..." if len(damaged) > 5 else "")
        logger.warning("%s: line(s) %s damaged (not a %s): ignored; %s", path, where, what, remedy)
    return rows


def write_decisions(out: str | Path, rows: Iterable[Mapping[str, Any]]) -> bool:
    """Replace ``OUT/filter.jsonl`` with ``rows`` (atomically, and only if they differ); True if written."""
    text = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows)
    return write_text_if_changed(Path(out) / DECISIONS_FILE, text)


def view_name(output: str) -> str:
    """The file name in ``train/<class>/`` of an image at ``images/<class>/<path>``: the path below the class
    folder with ``%`` written ``%25`` and ``/`` written ``%2F``, a one-to-one map (flat names stay as they are)."""
    below = Path(output).parts[2:]
    return "/".join(below).replace("%", "%25").replace("/", "%2F")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _place(source: Path, target: Path) -> None:
    """A hard link to ``source`` at ``target`` (which must not exist); a copy where links are impossible.

    The copy is written through a temporary file and renamed into place: nothing is ever written through a link.
    """
    ensure_folder(target.parent)
    faults.write_point(target)
    try:
        os.link(source, target)
        return
    except OSError as err:
        if err.errno not in _NO_LINKS:  # FileExistsError above all: never taken for "links not allowed"
            raise
    with open(source, "rb") as handle, atomic_writer(target) as copy:
        shutil.copyfileobj(handle, copy)


def relayout(
    out: str | Path,
    rows: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    extra: Mapping[str, bytes] | None = None,
) -> dict[str, int]:
    """Make ``train/`` and ``rejected/`` match the decisions, touching only what differs.

    Args:
        out: the output folder.
        rows: one per decided candidate, with ``output``, ``output_sha256``, ``class_folder``, ``accepted``, and for
            the metadata ``key``, ``label``, ``source``, ``prompt``, ``score``.
        classes: every class folder of DATA (each gets its folders in both views).
        extra: other files the filter writes (relative to OUT: their contents), recorded like the views.

    Returns:
        Counts: ``placed`` (new links), ``removed`` (our stale files), ``kept``, ``foreign`` (left alone), ``changed``
        (ours once, replaced or changed since: left alone).

    Raises:
        OutputFolderError: a file that diffcoremix did not make stands where a view file must go.
    """
    out = Path(out)
    desired: dict[str, Mapping[str, Any]] = {}
    metadata: list[dict[str, Any]] = []
    for row in rows:
        view = TRAIN_DIR if row["accepted"] else REJECTED_DIR
        name = f"{row['class_folder']}/{view_name(row['output'])}"
        desired[f"{view}/{name}"] = row
        if row["accepted"]:
            fields = ("key", "label", "class_folder", "source", "prompt", "score")
            metadata.append({"file_name": name, **{f: row.get(f) for f in fields}})
    layout = Layout(out, damaged="reset")
    if layout.damaged:
        adopt_views(layout, {row["output_sha256"] for row in rows})
    previous = layout.names()
    meta_path = f"{TRAIN_DIR}/{METADATA_FILE}"
    files = {meta_path: "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in metadata).encode(), **(extra or {})}
    final = set(desired) | set(files)
    # Recorded first: a crash below still leaves every file we place named, with the content it holds.
    layout.expect({relpath: row["output_sha256"] for relpath, row in desired.items()})
    counts = {"placed": 0, "removed": 0, "kept": 0, "foreign": 0, "changed": 0}
    counts["removed"] = layout.delete(previous - final)
    for relpath, row in desired.items():
        target, source = out / relpath, out / row["output"]
        if os.path.lexists(target):
            if _same_file(target, source):
                counts["kept"] += 1
                continue
            if relpath not in previous:
                raise OutputFolderError(
                    f"{target} was not made by diffcoremix and stands where the filter puts {row['output']}: move it "
                    "away"
                )
            if not layout.ours(relpath):
                layout.changed.append(relpath)
                continue
            target.unlink()
            counts["removed"] += 1
        _place(source, target)
        counts["placed"] += 1
    for view in (TRAIN_DIR, REJECTED_DIR):
        for cls in classes:
            ensure_folder(out / view / cls)
    for relpath, data in files.items():
        layout.write(relpath, data)
    layout.settle({relpath: row["output_sha256"] for relpath, row in desired.items() if relpath not in layout.changed})
    layout.forget(set(layout.changed) - final)
    layout.save()
    layout.warn_changed()
    counts["changed"] = len(layout.changed)
    counts["foreign"] = _count_foreign(out, final | set(layout.changed))
    return counts


def adopt_views(layout: Layout, digests: Collection[str]) -> int:
    """Rebuild the view part of a damaged layout record from evidence: a file of ``train/`` or ``rejected/`` that holds
    the content of a generated image (``digests``: the manifest's) is ours, and so are the metadata file and the
    filter's histograms, by name. Returns how many files were adopted."""
    out, adopted = layout.out, 0
    for view in (TRAIN_DIR, REJECTED_DIR, REPORT_DIR):
        for path in sorted((out / view).rglob("*")) if (out / view).is_dir() else []:
            if not path.is_file() or path.is_symlink():
                continue
            relpath = path.relative_to(out).as_posix()
            if relpath == f"{TRAIN_DIR}/{METADATA_FILE}" or (view == REPORT_DIR and path.suffix == ".png"):
                layout.adopt(relpath, None)
            elif view != REPORT_DIR and (sha := file_sha256(path)) in digests:
                layout.adopt(relpath, sha)
            else:
                continue
            adopted += 1
    layout.save()
    return adopted


def _count_foreign(out: Path, ours: set[str]) -> int:
    foreign = [
        p.relative_to(out).as_posix()
        for view in (TRAIN_DIR, REJECTED_DIR)
        for p in sorted((out / view).rglob("*"))
        if (p.is_file() or p.is_symlink()) and p.relative_to(out).as_posix() not in ours
    ]
    if foreign:
        logger.warning(
            "%d file(s) in %s/train or rejected were not made by diffcoremix and are left in place (image loaders "
            "will read them): %s",
            len(foreign),
            out,
            ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else ""),
        )
    return len(foreign)

"""The layout of an output folder, who owns it, and how a run opens it.

::

    OUT/run.json                             the run record: made by diffcoremix, from which DATA (ownership mark)
    OUT/settings.json                        what determines the pixels; a rerun with other settings is refused
    OUT/config.yaml                          resolved options and library versions
    OUT/images/<class>/<source file>.k<k>.png
    OUT/manifest/shard-RRRRR-of-WWWWW.jsonl  one record per candidate (names every image above)
    OUT/filter.jsonl                         the filter's decisions, one per candidate
    OUT/judge.jsonl                          the judge's label of each generated image (``diffcoremix judge``)
    OUT/augment.json                         whether ``augment`` finished its rounds (see :class:`AugmentRecord`)
    OUT/train/<class>/..., OUT/rejected/<class>/...   hard links to the images, by decision
    OUT/train/metadata.jsonl                 Hugging Face imagefolder metadata (prompt, score, source, label)
    OUT/layout.json                          every file the filter placed (train/, rejected/, plots)
    OUT/cache/                               embeddings of real and generated images, by content hash
    OUT/.diffcoremix.lock                    the lock of a running command (see :mod:`.lock`)

DATA and OUT never overlap, in either direction, symbolic links followed (:func:`check_separate`); how a command
opens OUT, and how it starts afresh, is in :mod:`diffcoremix.manifest.ownership`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffcoremix.atomic import atomic_write_bytes, write_text_if_changed
from diffcoremix.config import CONFIG_MARK
from diffcoremix.digests import file_sha256
from diffcoremix.errors import DiffCoReMixError
from diffcoremix.scratch import SCRATCH_DIR

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
SETTINGS_FILE = "settings.json"
CONFIG_FILE = "config.yaml"
IMAGES_DIR = "images"
MANIFEST_DIR = "manifest"
DECISIONS_FILE = "filter.jsonl"
TRAIN_DIR = "train"
REJECTED_DIR = "rejected"
LAYOUT_FILE = "layout.json"
CACHE_DIR = "cache"
FILTER_CONFIG_FILE = "filter.config.yaml"
FILTER_REPORT_FILE = "filter_report.json"
CALIBRATION_FILE = "calibration.json"
JUDGE_FILE = "judge.jsonl"
"""The judge's labels (``diffcoremix judge``), one line per judged candidate."""
FILTER_FILES = (FILTER_CONFIG_FILE, FILTER_REPORT_FILE, CALIBRATION_FILE, JUDGE_FILE)
"""Fixed-name files that the filter and the judge write (starting afresh deletes them by name). The judge's file is
named here, not in the layout record: a re-filtering prunes that record to the filter's own files, and a judgement
outlives a re-filtering."""
AUGMENT_FILE = "augment.json"
"""``augment``'s record of its rounds (:class:`AugmentRecord`); ours by its name in a generation folder."""
GENERATION_FILES = (AUGMENT_FILE,)
"""Fixed-name files of a generation folder beyond the filter's (``generate``/``augment`` ``--overwrite`` delete them by
name; other commands' folders do not hold them)."""
REPORT_DIR = "filter_report"
"""Where the filter's histograms go (the files are named in the layout record)."""

MADE_BY = "diffcoremix"


class OutputFolderError(DiffCoReMixError):
    """The output folder cannot be used as asked (it overlaps DATA, or holds files diffcoremix did not make)."""


class SettingsConflictError(OutputFolderError):
    """The output folder holds a run of ours made with other settings (``--overwrite`` starts it afresh)."""


def check_separate(data: str | Path, out: str | Path) -> None:
    """Refuse an output path that is DATA, inside DATA, or contains DATA (resolved, symbolic links followed).

    Raises:
        OutputFolderError: the two overlap.
    """
    data_r, out_r = Path(data).resolve(), Path(out).resolve()
    if out_r == data_r or data_r in out_r.parents:
        raise OutputFolderError(f"output {out} is inside the dataset {data}: diffcoremix never writes into DATA")
    if out_r in data_r.parents:
        raise OutputFolderError(
            f"output folder {out} contains the dataset {data}: its files could be replaced; choose a folder "
            "outside DATA"
        )


def entries(folder: Path) -> list[str]:
    """The folder's entries, less our lock files and scratch folder."""
    return sorted(
        n for n in os.listdir(folder) if n != SCRATCH_DIR and not (n.startswith(".diffcoremix") and n.endswith(".lock"))
    )


class OutputFolder:
    """The paths of one output folder, and what our records say about them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, relpath: str) -> Path:
        return self.path / relpath

    @property
    def images(self) -> Path:
        return self.path / IMAGES_DIR

    def shard_path(self, rank: int, world_size: int) -> Path:
        """The manifest part of one generation shard."""
        return self.path / MANIFEST_DIR / f"shard-{rank:05d}-of-{world_size:05d}.jsonl"

    def shard_paths(self) -> list[Path]:
        folder = self.path / MANIFEST_DIR
        return sorted(folder.glob("shard-*-of-*.jsonl")) if folder.is_dir() else []

    def run_record(self) -> dict[str, Any] | None:
        """``run.json``, or None when the folder is not (yet) a diffcoremix output."""
        path = self.path / RUN_FILE
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return record if isinstance(record, dict) and record.get("made_by") == MADE_BY else None

    def is_ours(self) -> bool:
        return self.run_record() is not None

    def run_record_problem(self) -> str | None:
        """Why the folder is not (yet) ours, in words that follow its path (``has no run.json``); None when it is."""
        path = self.path / RUN_FILE
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"has no {RUN_FILE}"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"has a damaged {RUN_FILE} ({err})"
        if not (isinstance(record, dict) and record.get("made_by") == MADE_BY):
            return f"has a {RUN_FILE} that diffcoremix did not write"
        return None

    def has_our_records(self) -> bool:
        """Whether the folder holds records that only diffcoremix writes: the facts line of a resolved config, or a
        layout record of our format (what takes back a folder whose run record was lost)."""
        try:
            with open(self.path / CONFIG_FILE, encoding="utf-8", errors="replace") as handle:
                if any(line.startswith(CONFIG_MARK) for line in handle):
                    return True
        except OSError:
            pass
        try:
            layout = json.loads((self.path / LAYOUT_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return (
            isinstance(layout, dict) and layout.get("format") == LAYOUT_FORMAT and isinstance(layout.get("files"), dict)
        )

    def is_empty(self) -> bool:
        return not self.path.exists() or not entries(self.path)

    def data_folder(self) -> Path:
        """The dataset this output was made from.

        Raises:
            OutputFolderError: the folder has no run record.
        """
        record = self.run_record()
        if record is None or "data" not in record:
            raise OutputFolderError(
                f"{self.path} is not a diffcoremix output (no {RUN_FILE}); run generate or augment first, or pass "
                "the dataset with --data"
            )
        return Path(record["data"])

    def write_run_record(self, data: Path, **facts: Any) -> None:
        """Mark the folder as ours: ``run.json`` names DATA and the facts of the run (atomic, if changed)."""
        record = {"made_by": MADE_BY, "data": str(data.resolve()), **facts}
        write_text_if_changed(self.path / RUN_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class AugmentRecord:
    """``OUT/augment.json``: whether ``augment``'s rounds finished, with ``retries`` regeneration rounds allowed.

    ``augment`` writes it unfinished just before it writes the decisions of a round that is not its last, and finished
    just after the last round's: a run killed between two rounds leaves every image it made decided, which alone would
    look like a finished set. A rerun that replays a finished job writes nothing new, so it changes no file. ``rounds``,
    ``budget`` and ``accepted`` describe the augment run as it ended (a later ``filter`` of OUT changes its decisions,
    not this record).
    """

    finished: bool
    retries: int
    rounds: int | None = None
    """Rounds of generation run (1 + retries used); None while unfinished."""
    budget: dict[str, int] | None = None
    """Planned candidates per class."""
    accepted: dict[str, int] | None = None
    """Accepted images per class, every attempt, when the run ended."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True) + "\n"


def _counts(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and all(isinstance(v, int) for v in value.values()))


def read_augment_record(out: str | Path) -> AugmentRecord | None:
    """``OUT/augment.json``; None without one (a folder of ``generate`` and ``filter``, or of a version before it).

    Raises:
        OutputFolderError: the record is damaged (rerun augment: it writes it again).
    """
    path = Path(out) / AUGMENT_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OutputFolderError(f"{path} is damaged ({err}): rerun augment to write it again") from None
    fields = {f.name for f in dataclasses.fields(AugmentRecord)}
    valid = (
        isinstance(raw, dict)
        and isinstance(raw.get("finished"), bool)
        and isinstance(raw.get("retries"), int)
        and isinstance(raw.get("rounds"), int | None)
        and _counts(raw.get("budget"))
        and _counts(raw.get("accepted"))
    )
    if not valid:
        raise OutputFolderError(f"{path} is damaged (not an augment record): rerun augment to write it again")
    return AugmentRecord(**{k: v for k, v in raw.items() if k in fields})


def augment_problem(out: str | Path) -> str | None:
    """Why the augment run that made OUT has not finished, in words; None when it finished or when no augment run made
    OUT (a folder of ``generate`` and ``filter`` has no record). The one reading of the record for every caller that
    asks "may I use this set as it is?"."""
    try:
        record = read_augment_record(out)
    except OutputFolderError as err:
        return str(err)
    if record is not None and not record.finished:
        return "augment stopped before it finished its rounds (rerun the augment command to finish it)"
    return None


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies below ``folder`` (lexically: ``..`` in a record cannot lead out)."""
    return os.path.normpath(path).startswith(os.path.normpath(folder) + os.sep)


LAYOUT_FORMAT = 2
"""``layout.json`` format 2 maps each file to the digests of the contents we wrote there, or to null for a file of the
folder's fixed bookkeeping (``metrics.jsonl``, ``model.pt``...), which is ours by its name; format 1 (a list of names,
written before 0.2) named the files only, and its files are ours by name."""


def read_layout(out: str | Path) -> dict[str, list[str] | None]:
    """The files (relative to OUT) that a command placed, from ``layout.json``, each with the digests of the contents
    it wrote there (None: a file that is ours by its name); empty if there is no record.

    Raises:
        LayoutError: the record is damaged.
    """
    path = Path(out) / LAYOUT_FILE
    try:
        files = json.loads(path.read_text(encoding="utf-8")).get("files", [])
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise LayoutError(path, str(err)) from None
    if isinstance(files, list):
        return {f: None for f in files if isinstance(f, str)}
    if not isinstance(files, dict):
        raise LayoutError(path, "its files are not a mapping")
    return {f: None if v is None else [d for d in v if isinstance(d, str)] for f, v in files.items()
            if v is None or isinstance(v, list)}  # fmt: skip


class LayoutError(OutputFolderError):
    """``layout.json`` is damaged."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} is damaged ({reason})")
        self.path = path


def content_digest(data: bytes) -> str:
    """The digest that the layout records for a whole file's content."""
    return hashlib.sha256(data).hexdigest()


def prefix_digest(path: Path) -> str:
    """The digest that the layout records for a log we append to: ``SHA256/SIZE`` of its content so far (a file
    that begins with that content is still ours)."""
    data = path.read_bytes()
    return f"{content_digest(data)}/{len(data)}"


def holds(path: Path, digests: list[str] | None) -> bool:
    """Whether the file at ``path`` (which exists) holds one of the contents ``digests`` records (always, for a file
    that is ours by name: None)."""
    if digests is None:
        return True
    if not digests or path.is_dir():
        return False
    try:
        if path.is_symlink():
            return False  # we write files and hard links, never symbolic links
        whole = file_sha256(path)
        for digest in digests:
            sha, _, size = digest.partition("/")
            if sha == whole or (size.isdigit() and _prefix_sha(path, int(size)) == sha):
                return True
    except OSError:
        return False
    return False


def _prefix_sha(path: Path, size: int) -> str | None:
    with open(path, "rb") as handle:
        data = handle.read(size)
    return content_digest(data) if len(data) == size else None


class Layout:
    """``OUT/layout.json``: every file a command placed in OUT (besides the generated images, which the manifest names)
    with the digests of the contents it wrote there.

    A command replaces or deletes such a file only while it still holds one of those contents: a file that the user has
    since replaced or edited is left in place and counted in :attr:`changed` (the caller warns once, or stops where
    the file is needed). A content is recorded *before* it is written (a kill between the two leaves the old and
    the new content both recorded, both ours), and the record is rewritten only when it changes.

    Args:
        out: the output folder.
        damaged: what to do with a damaged record: ``"raise"`` (:class:`LayoutError`) or ``"reset"`` (start an
            empty one, with a warning: its files are then ours only where other records prove it).
    """

    def __init__(self, out: str | Path, *, damaged: str = "raise") -> None:
        self.out = Path(out)
        self.damaged = False
        """The record was damaged and has been started anew (``damaged="reset"``)."""
        try:
            self.files = read_layout(self.out)
        except LayoutError as err:
            if damaged != "reset":
                raise
            logger.warning("%s: rebuilding it from the other records", err)
            self.files = {}
            self.damaged = True
        self.changed: list[str] = []
        """The files found changed since we wrote them, left in place (relative to OUT)."""

    def names(self) -> set[str]:
        """The recorded files (relative to OUT) that lie inside OUT (a ``..`` in a damaged record leads nowhere)."""
        return {f for f in self.files if inside(self.out / f, self.out)}

    def ours(self, relpath: str) -> bool:
        """Whether ``OUT/relpath`` may be replaced or deleted: it is missing, or holds a content recorded for it."""
        path = self.out / relpath
        if not os.path.lexists(path):
            return True
        return relpath in self.files and holds(path, self.files[relpath])

    def declare(self, relpaths: Iterable[str]) -> None:
        """Name the folder's bookkeeping files (ours by name, whatever they hold), before they are written, and save."""
        for relpath in relpaths:
            self.files[relpath] = None
        self.save()

    def adopt(self, relpath: str, digest: str | None) -> None:
        """Record a file found to be ours by other evidence (rebuilding a damaged record)."""
        self.files[relpath] = None if digest is None else [digest]

    def expect(self, digests: Mapping[str, str]) -> None:
        """Record contents about to be written (kept beside the last one until :meth:`settle`), and save."""
        for relpath, digest in digests.items():
            if relpath in self.files and self.files[relpath] is None:
                continue  # ours by name
            known = self.files.get(relpath) or []
            self.files[relpath] = [*(d for d in known[-1:] if d != digest), digest]
        self.save()

    def settle(self, digests: Mapping[str, str]) -> None:
        """Record that these contents are now on disk (the earlier ones are forgotten at the next save)."""
        for relpath, digest in digests.items():
            if not (relpath in self.files and self.files[relpath] is None):
                self.files[relpath] = [digest]

    def forget(self, relpaths: Iterable[str]) -> None:
        for relpath in relpaths:
            self.files.pop(relpath, None)

    def save(self) -> None:
        files = dict(sorted(self.files.items()))
        text = json.dumps({"format": LAYOUT_FORMAT, "files": files}, indent=1) + "\n"
        write_text_if_changed(self.out / LAYOUT_FILE, text)

    def write(self, relpath: str, data: bytes, *, required: bool = False) -> bool:
        """Write ``OUT/relpath`` (atomically, recorded) unless it holds ``data`` already or was changed since we wrote
        it (then it is left in place and counted in :attr:`changed`); True if written.

        Raises:
            OutputFolderError: ``required`` and the file there was changed since we wrote it.
        """
        path = self.out / relpath
        digest = content_digest(data)
        if os.path.lexists(path) and path.is_file() and not path.is_symlink() and file_sha256(path) == digest:
            if relpath not in self.files or self.files[relpath] not in (None, [digest]):
                self.expect({relpath: digest})
                self.settle({relpath: digest})
                self.save()
            return False
        if not self.ours(relpath):
            if required:
                raise OutputFolderError(changed_message(self.out, [relpath]))
            self.changed.append(relpath)
            return False
        self.expect({relpath: digest})
        atomic_write_bytes(path, data)
        self.settle({relpath: digest})  # saved with the next change (until then the old content counts as ours too)
        return True

    def write_text(self, relpath: str, text: str, *, required: bool = False) -> bool:
        """:meth:`write` for UTF-8 text."""
        return self.write(relpath, text.encode("utf-8"), required=required)

    def delete(self, relpaths: Iterable[str]) -> int:
        """Delete these recorded files where they are still ours (the others are counted in :attr:`changed`), forget
        them, and save; returns how many were deleted."""
        deleted = 0
        for relpath in sorted(relpaths):
            path = self.out / relpath
            if not self.ours(relpath):
                self.changed.append(relpath)
            elif path.is_file() or path.is_symlink():
                path.unlink()
                deleted += 1
            self.files.pop(relpath, None)
        self.save()
        return deleted

    def warn_changed(self) -> None:
        """One warning naming how many files were left in place, and the first (if any)."""
        if self.changed:
            logger.warning("%s", changed_message(self.out, self.changed))


def changed_message(out: Path, relpaths: list[str]) -> str:
    """``N file(s) ... left in place: FIRST``: what a command says of files it did not replace or delete."""
    first = out / relpaths[0]
    more = f" (and {len(relpaths) - 1} more)" if len(relpaths) > 1 else ""
    return (f"{len(relpaths)} file(s) that diffcoremix wrote in {out} have been replaced or changed since, and are "
            f"left in place: {first}{more}; move them away to let diffcoremix write them again")  # fmt: skip

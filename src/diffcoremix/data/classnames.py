"""Class folder names to prompt words (METHOD.md §1).

``001.Black_footed_Albatross`` becomes ``Black footed Albatross``: a leading ``NNN.`` index is dropped and
underscores become spaces; the dataset's own spelling (case, hyphens) is kept. A user map (CSV or JSON) can
name any class differently.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from diffcoremix.errors import ClassMapError

_INDEX_PREFIX = re.compile(r"^\d+\.")


def prompt_name(folder: str) -> str:
    """The prompt word for a class folder name.

    Example:
        >>> prompt_name("002.hard-leaved_pocket_orchid")
        'hard-leaved pocket orchid'
    """
    name = _INDEX_PREFIX.sub("", folder.strip())
    name = " ".join(name.replace("_", " ").split())
    return name or folder


def load_class_map(path: str | Path) -> dict[str, str]:
    """Read a class-name map: JSON ``{"folder": "name"}``, or CSV rows ``folder,name`` (header optional).

    Raises:
        ClassMapError: the file is missing, malformed, or maps a folder to an empty name.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ClassMapError(f"cannot read class map {path}: {err}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ClassMapError(f"class map {path} is not valid JSON: {err}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ClassMapError(f"class map {path} must be a JSON object of folder -> name strings")
        mapping = {str(k): v for k, v in data.items()}
    else:
        mapping = {}
        for line, row in enumerate(csv.reader(text.splitlines()), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2:
                raise ClassMapError(f"{path}:{line}: expected 2 columns (folder,name), got {len(row)}: {row}")
            folder, name = row[0].strip(), row[1].strip()
            if line == 1 and (folder.lower(), name.lower()) in {("folder", "name"), ("class", "name")}:
                continue
            mapping[folder] = name
    for folder, name in mapping.items():
        if not name.strip():
            raise ClassMapError(f"class map {path} gives class {folder!r} an empty name")
    return mapping


def class_names(folders: Iterable[str], class_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """Prompt words for every class folder: the map's name where given, else :func:`prompt_name`.

    Raises:
        ClassMapError: the map names folders that are not classes of the dataset (likely a typo).
    """
    folders = list(folders)
    class_map = dict(class_map or {})
    unknown = sorted(set(class_map) - set(folders))
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ClassMapError(f"class map names {len(unknown)} folder(s) that are not classes here: {shown}")
    return {folder: class_map.get(folder, prompt_name(folder)) for folder in folders}

"""Prompt packs (METHOD.md §2): templates, a context bank, negative terms and a domain word, as data files.

A pack is a YAML file. The shipped ones live in ``prompts/packs/``; a user adds more by passing a file path to
``--pack``, or by putting files in a folder listed in the ``DIFFCOREMIX_PACK_PATH`` environment variable
(separated like ``PATH``). Templates may use the placeholders ``{name}`` (the class's prompt word, required),
``{domain}`` and ``{context}``.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from diffcoremix.errors import PackError, UnknownNameError
from diffcoremix.registry import Registry

BUILTIN_PACK_DIR = Path(__file__).with_name("packs")
PACK_PATH_ENV = "DIFFCOREMIX_PACK_PATH"
PLACEHOLDERS = frozenset({"name", "domain", "context"})


@dataclass(frozen=True)
class PromptPack:
    """A validated prompt pack."""

    name: str
    """The pack's name (``--pack NAME``)."""
    domain: str
    """The domain word ("bird", "flower", "car", "object"); fills ``{domain}``."""
    templates: tuple[str, ...]
    """Prompt templates; one is drawn per candidate."""
    contexts: tuple[str, ...]
    """The context bank; ``{context}`` is filled from it."""
    negative: tuple[str, ...]
    """Negative terms, joined with ", " into the negative prompt."""
    description: str = ""
    """One line on what the pack is for."""
    source: str = ""
    """The file the pack was read from."""

    def __post_init__(self) -> None:
        where = f"pack {self.name!r} ({self.source or 'in memory'})"
        if not self.name or not self.domain:
            raise PackError(f"{where}: 'name' and 'domain' must be non-empty strings")
        if not self.templates:
            raise PackError(f"{where}: needs at least one template")
        if not self.contexts:
            raise PackError(f"{where}: needs at least one context")
        for template in self.templates:
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            except ValueError as err:
                raise PackError(f"{where}: template {template!r} is malformed: {err}") from None
            if "name" not in fields:
                raise PackError(f"{where}: template {template!r} lacks the {{name}} placeholder")
            unknown = fields - PLACEHOLDERS
            if unknown:
                raise PackError(
                    f"{where}: template {template!r} uses unknown placeholder(s) {sorted(unknown)}; "
                    f"allowed: {sorted(PLACEHOLDERS)}"
                )
        for kind, values in (("context", self.contexts), ("negative term", self.negative)):
            blank = [v for v in values if not v.strip()]
            if blank:
                raise PackError(f"{where}: empty {kind}")
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise PackError(f"{where}: duplicate {kind}(s) {dupes}")


def _strings(data: dict[str, Any], key: str, path: Path) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PackError(f"pack file {path}: {key!r} must be a list of strings")
    return tuple(v.strip() for v in value)


def read_pack(path: str | Path) -> PromptPack:
    """Read and validate a pack file.

    Raises:
        PackError: the file cannot be read or does not describe a valid pack.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise PackError(f"cannot read pack file {path}: {err}") from None
    if not isinstance(data, dict):
        raise PackError(f"pack file {path} must hold a YAML mapping")
    known = {"name", "domain", "description", "templates", "contexts", "negative"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PackError(f"pack file {path}: unknown key(s) {unknown}; known: {sorted(known)}")
    for key in ("name", "domain", "description"):
        if key in data and not isinstance(data[key], str):
            raise PackError(f"pack file {path}: {key!r} must be a string")
    return PromptPack(
        name=data.get("name", path.stem),
        domain=data.get("domain", ""),
        templates=_strings(data, "templates", path),
        contexts=_strings(data, "contexts", path),
        negative=_strings(data, "negative", path),
        description=data.get("description", ""),
        source=str(path),
    )


def pack_registry() -> Registry[Path]:
    """Pack name -> file, for the shipped packs and those in ``DIFFCOREMIX_PACK_PATH`` folders.

    A user folder may replace a shipped pack by using its name; the first folder listed wins among user folders.
    """
    registry: Registry[Path] = Registry("prompt pack")
    for path in sorted(BUILTIN_PACK_DIR.glob("*.yaml")):
        registry.add(path.stem, path)
    user_dirs = [Path(p) for p in os.environ.get(PACK_PATH_ENV, "").split(os.pathsep) if p]
    seen: set[str] = set()
    for folder in user_dirs:
        for path in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")):
            if path.stem not in seen:
                registry.add(path.stem, path, override=True)
                seen.add(path.stem)
    return registry


def list_packs() -> list[str]:
    """Names of every pack that ``load_pack`` can find by name."""
    return pack_registry().names()


def load_pack(name_or_path: str | Path) -> PromptPack:
    """A pack by name (see :func:`list_packs`) or by the path of a YAML file.

    Raises:
        UnknownNameError: no pack of that name, and no such file; the message lists the known packs.
        PackError: the pack file is invalid.

    Example:
        >>> load_pack("paper").contexts[0]
        'in the garden'
    """
    candidate = Path(name_or_path)
    if candidate.suffix.lower() in {".yaml", ".yml"} or candidate.is_file():
        if not candidate.is_file():
            raise PackError(f"pack file {candidate} does not exist")
        return read_pack(candidate)
    registry = pack_registry()
    try:
        return read_pack(registry.get(str(name_or_path)))
    except UnknownNameError as err:
        err.kind = "prompt pack (or pack file path)"
        raise

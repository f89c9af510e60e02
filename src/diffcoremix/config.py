"""Configuration: one frozen dataclass per stage, YAML presets, and the resolved record of a run.

Each stage's options live in a frozen dataclass whose attribute docstrings are its documentation (and the CLI's
help). Validation happens in ``__post_init__`` through :func:`check_types` and explicit range checks, so the
Python API and the CLI reject the same values with the same message. Precedence: defaults < ``--config`` file
< command-line flags. A YAML file is either a flat mapping of one stage's options or a mapping of stage names
to such mappings (``prompts: {fraction: 0.3}``); unknown keys are errors, not silently ignored.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import math
import textwrap
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from diffcoremix.atomic import write_text_if_changed
from diffcoremix.errors import ConfigError, ForeignFileError, UnknownNameError

C = TypeVar("C")

NONE_IS_A_VALUE = "none_is_a_value"
"""Field metadata: on the command line, ``none`` is this option's value, not "unset" (``--vae none``: the model's
own VAE, where unset means the preset's)."""
PRESET_DIR = Path(__file__).with_name("configs")
"""Where the shipped YAML presets live (``configs/`` at the repository root links here)."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal that follows each field's annotation."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        statements = body.body
        for node, after in itertools.pairwise(statements):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if hint is int:
        return "an integer"
    if hint is float:
        return "a finite number"
    if hint is str:
        return "a string"
    if hint is bool:
        return "true or false"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin is dict:
        return "a mapping"
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin in (Union, types.UnionType):
        parts = [_describe(a) for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(parts) + " (or null)"
    return str(hint)


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # NaN and infinity pass every comparison a validator makes (nan > 0 is False, inf > 0 True)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_matches(v, item) for v in value)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    return isinstance(value, hint)


def _coerce(value: Any, hint: Any) -> Any:
    """YAML and argparse give lists where a config holds tuples, and ints where it holds floats."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        return _coerce(value, next(a for a in typing.get_args(hint) if a is not type(None)))
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin is Literal and isinstance(value, bool) and {"on", "off"} <= set(typing.get_args(hint)):
        return "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value) if abs(value) < 2**1023 else math.inf  # beyond a float: refused as not finite
    return value


def check_types(config: Any) -> None:
    """Coerce and type-check every field of a frozen dataclass instance, in place.

    Raises:
        ConfigError: a field holds a value of the wrong type.
    """
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        hint = hints[f.name]
        value = _coerce(getattr(config, f.name), hint)
        if not _matches(value, hint):
            raise ConfigError(f.name, value, _describe(hint))
        object.__setattr__(config, f.name, value)


def require(condition: bool, field: str, value: Any, requirement: str) -> None:
    """Raise :class:`ConfigError` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(field, value, requirement)


def resolve_preset(path_or_name: str | Path) -> Path:
    """A config file path, or the name of a shipped preset (``paper`` -> ``configs/paper.yaml``)."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{path_or_name}.yaml"  # a preset name, even where a folder of that name is at hand
    if preset.exists():
        return preset
    known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise ConfigError("config", str(path_or_name), f"an existing YAML file or a preset name ({', '.join(known)})")


def _read_config_document(path_or_name: str | Path) -> tuple[Path, dict[str, Any]]:
    """The file's path and its top-level mapping (empty for an empty file)."""
    path = resolve_preset(path_or_name)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError("config", str(path), f"a readable YAML file ({err})") from None
    if data is None:
        return path, {}
    if not isinstance(data, dict):
        raise ConfigError("config", str(path), "a YAML mapping of option names to values")
    return path, data


def is_sectioned(data: Mapping[str, Any]) -> bool:
    """Whether a config document has one section per stage (some value is a mapping) rather than flat options."""
    return any(isinstance(v, dict) for v in data.values())


def check_config_sections(path_or_name: str | Path, sections: Mapping[str, type]) -> None:
    """Check the option names of every section of a sectioned config file, not only the running command's.

    One file serves every stage, so a misspelt key in a section that this command does not read (``generate:`` in
    a file given to ``filter``) would otherwise pass unnoticed until another command reads it -- or never.

    Args:
        sections: every section name and its stage config dataclass.

    Raises:
        UnknownNameError: a section, or a key of a section, that no stage knows.
    """
    path, data = _read_config_document(path_or_name)
    if not is_sectioned(data):
        return
    for section, values in data.items():
        if section not in sections:
            raise UnknownNameError(f"config section (in {path})", str(section), sorted(sections))
        if not isinstance(values, dict):
            raise ConfigError(f"{section} (in {path})", values, "a mapping of option names to values")
        assert dataclasses.is_dataclass(sections[section])
        known = {f.name for f in dataclasses.fields(sections[section])}
        for key in values:
            if str(key).replace("-", "_") not in known:
                raise UnknownNameError(f"{section} option", str(key), sorted(known))


def load_config_file(path_or_name: str | Path, section: str) -> dict[str, Any]:
    """The options for ``section`` from a YAML file or preset (an empty dict if the file has none).

    A file whose top-level keys include ``section`` (or any other stage name) is read as sectioned;
    otherwise the whole mapping belongs to ``section``.
    """
    path, data = _read_config_document(path_or_name)
    if is_sectioned(data):
        values = data.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{section} (in {path})", values, "a mapping of option names to values")
        return dict(values)
    return dict(data)


def build_config(cls: type[C], *layers: Mapping[str, Any], section: str = "") -> C:
    """Instantiate a stage config from layered mappings (later layers win); keys may use ``-`` or ``_``.

    Raises:
        UnknownNameError: a key is not an option of ``cls``.
        ConfigError: a value is invalid.
    """
    assert dataclasses.is_dataclass(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            name = str(key).replace("-", "_")  # YAML keys may be numbers (`1: x`)
            if name not in known:
                raise UnknownNameError(f"{section or cls.__name__} option", str(key), sorted(known))
            merged[name] = value
    return cls(**merged)


def to_plain(value: Any) -> Any:
    """A YAML/JSON-ready copy of a config value (dataclasses, tuples and paths turned into plain types)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


CONFIG_MARK = "# diffcoremix_version: "
"""The first facts line of every resolved config (:func:`write_resolved_config`): a mark only diffcoremix writes."""


def check_config_target(path: str | Path) -> None:
    """Refuse a path where :func:`write_resolved_config` would replace a file that is not a resolved config.

    Raises:
        ForeignFileError: such a file (or a folder) stands at ``path``.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            if not any(line.startswith(CONFIG_MARK) for line in handle):
                raise ForeignFileError(path, "a resolved config")
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise ForeignFileError(path, "a resolved config") from None


def write_resolved_config(path: str | Path, stages: Mapping[str, Any], **extra: Any) -> Path:
    """Write the resolved configuration of a run (one section per stage, plus ``extra`` facts) as YAML.

    The file can be passed back with ``--config`` to repeat the run. An existing file is replaced only when it is a
    resolved config (it holds :data:`CONFIG_MARK`): ``scan -o report.json`` writes ``report.config.yaml`` beside the
    file the user named, which may be one of the user's.

    Raises:
        ForeignFileError: a file that is not a resolved config stands at ``path``.
    """
    from diffcoremix._version import __version__

    document = {name: to_plain(cfg) for name, cfg in stages.items()}
    meta = to_plain(extra)
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    text += f"# run facts (not options)\n{CONFIG_MARK}{__version__}\n" + "".join(
        f"# {k}: {v}\n" for k, v in meta.items()
    )
    check_config_target(path)
    write_text_if_changed(path, text)  # a rerun with the same options leaves the file as it was
    return Path(path)

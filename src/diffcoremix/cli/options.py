"""Command-line options generated from a stage's config dataclass, and the layering of config sources.

Every field becomes ``--field-name`` (help from its attribute docstring, ``Literal`` fields get choices, bools
get ``--x/--no-x``, tuples take several values). Options left off the command line are absent from the parsed
namespace (``argparse.SUPPRESS``), so the precedence defaults < ``--config`` < flags is a plain dict merge.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from diffcoremix.config import NONE_IS_A_VALUE, build_config, check_config_sections, field_docs, load_config_file


def option_name(field: str) -> str:
    """``per_image`` -> ``--per-image``."""
    return "--" + field.replace("_", "-")


def _none_or(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in {"none", "null"} else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value" messages
    return parse


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)  # a ValueError here becomes argparse's "invalid _json_object value" message
    if not isinstance(value, dict):
        raise ValueError(text)
    return value


_json_object.__name__ = "JSON object"


def _argument_kwargs(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        kwargs = _argument_kwargs(inner)
        if "type" in kwargs:
            kwargs["type"] = _none_or(kwargs["type"])
            if "choices" not in kwargs:  # argparse shows the choices themselves: {on,off}
                kwargs["metavar"] = kwargs.get("metavar", inner.__name__.upper())
        return kwargs
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": list(args), "type": type(args[0])}
    if origin is tuple:
        return {"nargs": "*", "type": args[0]}
    if origin is dict:
        return {"type": _json_object, "metavar": "JSON"}
    if hint in (int, float, str):
        return {"type": hint, "metavar": hint.__name__.upper()}
    raise TypeError(f"no command-line form for options of type {hint}")


def add_config_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    skip: tuple[str, ...] = (),
    aliases: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """Add one option per field of the dataclass ``cls`` (except ``skip``), under a group named after it.

    ``aliases`` gives fields more option strings (``{"batch_size": ("-b",)}``, as timm's ``train.py``).
    """
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(f"{cls.__name__} options (defaults < --config < flags)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default: Any = f.default
        factory: Any = f.default_factory
        if default is dataclasses.MISSING and factory is not dataclasses.MISSING:
            default = factory()
        shown = list(default) if isinstance(default, tuple) else default
        group.add_argument(
            *(aliases or {}).get(f.name, ()),
            option_name(f.name),
            dest=f.name,
            default=argparse.SUPPRESS,
            help=f"{docs.get(f.name, '')} [default: {shown}]".replace("%", "%%"),
            **_argument_kwargs(str if f.metadata.get(NONE_IS_A_VALUE) else hints[f.name]),
        )


def config_from_args(
    cls: type,
    args: argparse.Namespace,
    section: str,
    *,
    skip: tuple[str, ...] = (),
    defaults: Mapping[str, Any] | None = None,
) -> Any:
    """The stage config: the dataclass defaults, then ``defaults`` (a recipe's), then ``--config`` (file or preset),
    then explicit flags.

    ``skip`` names fields whose flags belong to another stage of the same command (``augment``'s batch size).
    """
    file_layer, flags = config_layers(cls, args, section, skip=skip)
    return build_config(cls, defaults or {}, file_layer, flags, section=section)


def config_layers(
    cls: type, args: argparse.Namespace, section: str, *, skip: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``--config`` file's options for ``section`` and the explicit flags of ``cls``'s fields (two layers)."""
    names = {f.name for f in dataclasses.fields(cls)} - set(skip)
    flags = {k: v for k, v in vars(args).items() if k in names}
    file_layer = {}
    if getattr(args, "config", None):
        check_config_sections(args.config, config_sections())  # every section, not only those of this command
        file_layer = load_config_file(args.config, section)
    return file_layer, flags


def config_sections() -> dict[str, type]:
    """Every section a ``--config`` file may hold, and the stage config whose fields are its keys."""
    from diffcoremix.cluster.config import ExecutorConfig
    from diffcoremix.data.checks import ScanConfig
    from diffcoremix.data.sources import DataConfig
    from diffcoremix.filter.config import FilterConfig
    from diffcoremix.finetune.config import FinetuneConfig
    from diffcoremix.generate.config import GenerateConfig
    from diffcoremix.prompts.builder import PromptsConfig
    from diffcoremix.train.config import TrainConfig

    return {
        "scan": ScanConfig,
        "data": DataConfig,
        "prompts": PromptsConfig,
        "generate": GenerateConfig,
        "filter": FilterConfig,
        "executor": ExecutorConfig,
        "train": TrainConfig,
        "finetune": FinetuneConfig,
    }

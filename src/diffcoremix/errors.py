"""Typed exceptions of diffcoremix.

Every error the library raises on purpose derives from :class:`DiffCoReMixError`, so a caller (and the CLI)
can tell the tool's own, explained failures from bugs. Messages name the offending value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class DiffCoReMixError(Exception):
    """Base class of every error raised on purpose by diffcoremix."""


class ConfigError(DiffCoReMixError, ValueError):
    """A configuration value is invalid.

    Args:
        field: the configuration field, in Python spelling (``per_image``); the CLI shows it as ``--per-image``.
        value: the rejected value.
        requirement: what the value must be, phrased to follow "must be" (``">= 1"``).
    """

    def __init__(self, field: str, value: Any, requirement: str) -> None:
        self.field = field
        self.value = value
        self.requirement = requirement
        super().__init__(f"{field} must be {requirement}, got {value!r}")

    def for_option(self, option: str) -> str:
        """The same message with the field spelled as a command-line option."""
        return f"{option} must be {self.requirement}, got {self.value!r}"


class UnknownNameError(DiffCoReMixError, KeyError):
    """A name was looked up in a registry that does not hold it; the message lists the known names."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = known
        super().__init__(name)

    def __str__(self) -> str:
        known = ", ".join(self.known) if self.known else "none registered"
        return f"unknown {self.kind} {self.name!r}; known: {known}"


class DatasetError(DiffCoReMixError):
    """A dataset folder cannot be used as a whole (missing, not a directory, no class folders)."""


class ImageReadError(DiffCoReMixError):
    """One image file cannot be used.

    Args:
        path: the file.
        kind: a short problem code shared with ``scan`` (``corrupt``, ``truncated``, ``too_large``...).
        reason: a human-readable explanation.
    """

    def __init__(self, path: str | Path, kind: str, reason: str) -> None:
        self.path = Path(path)
        self.kind = kind
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ModelLoadError(DiffCoReMixError):
    """A model's weights cannot be had (offline, gated, a missing or wrong file, not a pipeline or a state dict)."""


class PackError(DiffCoReMixError):
    """A prompt pack file is malformed."""


class ClassMapError(DiffCoReMixError):
    """A class-name map file is malformed or names classes that do not exist."""


class DeviceError(ConfigError):
    """A ``--device`` names a device that is not a torch device or that this machine does not have.

    Args:
        device: the requested device (``cuda:7``).
        problem: what is wrong and what is available instead.
    """

    def __init__(self, device: str, problem: str) -> None:
        super().__init__("device", device, f"a device this machine has ({problem})")
        self.problem = problem

    def __str__(self) -> str:
        return self.for_option("device")

    def for_option(self, option: str) -> str:
        """``--device cuda:7: this machine has 2 CUDA GPU(s): ...``."""
        return f"{option} {self.value}: {self.problem}"


class ToolchainError(ConfigError):
    """An option needs a tool that this machine lacks (a C++ compiler for ``compile`` or ``torchcompile``).

    Args:
        field: the option, in Python spelling (``torchcompile``); the CLI shows it as ``--torchcompile``.
        tool: what it needs (``a C++ compiler for torch.compile on CPU``).
        install: how to get it (``install g++``).
    """

    def __init__(self, field: str, tool: str, install: str) -> None:
        super().__init__(field, True, f"off where {tool} is missing")
        self.tool = tool
        self.install = install

    def __str__(self) -> str:
        return self.for_option(self.field)

    def for_option(self, option: str) -> str:
        """``--torchcompile needs a C++ compiler for torch.compile on CPU (none found: install g++ or drop ...)``."""
        return f"{option} needs {self.tool} (none found: {self.install} or drop {option})"


class PathBlockedError(DiffCoReMixError):
    """A file (or something else) stands where diffcoremix keeps a folder of its own output."""

    def __init__(self, blocker: str | Path) -> None:
        super().__init__(
            f"{blocker} is a file where diffcoremix keeps a folder: move it away (mv {blocker} ELSEWHERE) and rerun"
        )
        self.blocker = Path(blocker)


class ForeignFileError(DiffCoReMixError):
    """A file that diffcoremix did not write stands where it would write one of its own."""

    def __init__(self, path: str | Path, what: str) -> None:
        super().__init__(f"{path} exists and is not {what} written by diffcoremix: move it away, or choose another -o")
        self.path = Path(path)

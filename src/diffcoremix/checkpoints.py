"""Reading torch files without trusting them: every ``torch.load`` of the tool goes through :func:`load_torch_file`.

A torch file is a pickle, and unpickling can run any code the file names. A run folder on shared storage can be
written by anyone who can write there, so a resume, an ``--init`` or a ``resnet20:`` embedder that unpickled on trust
would run what such a person put there. Everything the tool saves (weights, optimizer, scheduler and scaler states,
step counters, loss lists) is tensors and plain values, which ``weights_only=True`` loads; a file that holds anything
else is refused in one line, before any of its code can run.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from diffcoremix.errors import ModelLoadError

__all__ = ["UnsafeCheckpointError", "load_torch_file", "unpickling_reason", "unsafe_refusal"]


class UnsafeCheckpointError(ModelLoadError):
    """A torch file holds objects other than tensors and plain values: loading it could run code, so it is refused."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(
            f"{what} {path} holds objects other than tensors and plain values: refused, since loading it could run "
            "code (no file that diffcoremix writes does); replace it with one you trust, or delete it to start afresh"
        )
        self.path = path


def load_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with each failure as one line naming ``what`` and the path.

    Raises:
        UnsafeCheckpointError: the file names a class or function that ``weights_only`` does not allow.
        ModelLoadError: the file cannot be read (missing, truncated, not a torch file).
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, or RuntimeError, EOFError, OSError... on a damaged or missing file
        if (refusal := unsafe_refusal(err, path, what)) is not None:
            raise refusal from None
        raise ModelLoadError(f"cannot read {what} {path}: {unpickling_reason(err) or _one_line(err)}") from None


def unsafe_refusal(err: BaseException, path: str | Path, what: str) -> UnsafeCheckpointError | None:
    """The refusal to raise when a load failed because a file names code to import (anywhere in ``err``'s chain: our
    own load, or a library's, which transformers, diffusers and open_clip make with ``weights_only=True`` too); None
    when it failed otherwise (the caller's own message then says what is wrong)."""
    cause = _unpickling_cause(err)
    if cause is None or not _is_unsafe(cause):
        return None
    return UnsafeCheckpointError(Path(path), what)


def unpickling_reason(err: BaseException) -> str | None:
    """The weights-only unpickler's reason in one line, if it is behind ``err`` (without torch's advice)."""
    cause = _unpickling_cause(err)
    return None if cause is None else _reason(cause)


def _is_unsafe(err: pickle.UnpicklingError) -> bool:
    return "unsupported global" in str(err).lower()


def _unpickling_cause(err: BaseException) -> pickle.UnpicklingError | None:
    """The weights-only refusal behind ``err``, if any: diffusers wraps it in an ``OSError`` ("Unable to load weights
    from checkpoint file") that no longer says why."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, pickle.UnpicklingError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _reason(err: pickle.UnpicklingError) -> str:
    """The weights-only unpickler's own reason (``Unsupported operand 110``: not a torch file, or a raw pickle), without
    its paragraph of advice to load with ``weights_only=False``, which is the one thing not to do."""
    _, marker, rest = str(err).partition("WeightsUnpickler error:")
    reason = rest.split("Check the documentation")[0] if marker else str(err)
    return f"not a torch file of tensors and plain values ({_one_line(reason)})"


def _one_line(err: BaseException | str) -> str:
    """torch's messages run over several lines (with advice about weights_only): the first 200 characters, on one."""
    return " ".join(str(err).split())[:200]

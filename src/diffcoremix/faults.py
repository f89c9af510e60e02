"""Write points: where the crash-safety harness may kill the process (tests/test_faults.py, benchmarks/faults.py).

Every durable write of the tool calls :func:`write_point` with its target at the worst moment for that write: an
atomic write after its temporary file is written and synced but before the rename, an appended record when half
of it is on disk, a hard link of the relayout before it is made. Normally this costs one global lookup and does
nothing. These environment variables, read once at import, arm it:

``DIFFCOREMIX_FAULT=PATTERN@N``
    SIGKILL this process at the ``N``-th write point (1-based) whose target path matches the ``fnmatch`` glob
    ``PATTERN`` (matched against the absolute path with ``/`` separators; ``*`` crosses folders). An appended
    record is torn first: its first half is flushed to disk, then the process dies.
``DIFFCOREMIX_FAULT_SIGNAL=NAME``
    Send this signal (``SIGTERM``, ``SIGHUP``, ``SIGINT``) instead of SIGKILL at that write point, as a scheduler
    would; no record is torn first (the process answers the signal itself, after the write point).
``DIFFCOREMIX_FAULT_TRACE=FILE``
    Append every write point's target path to ``FILE``, one per line (how the harness learns the writes of an
    uninterrupted run, to choose where to kill a second one).

None changes what is written when unset, and nothing here is meant for users.
"""

from __future__ import annotations

import fnmatch
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import IO

FAULT_ENV = "DIFFCOREMIX_FAULT"
TRACE_ENV = "DIFFCOREMIX_FAULT_TRACE"
SIGNAL_ENV = "DIFFCOREMIX_FAULT_SIGNAL"


class _Plan:
    def __init__(self, fault: str, trace: str, signum: signal.Signals = signal.SIGKILL) -> None:
        pattern, _, count = fault.rpartition("@")
        self.pattern = pattern if fault else ""
        self.target = int(count) if fault else 0
        self.seen = 0
        self.trace = trace
        self.signum = signum

    def reached(self, path: str | Path, partial: Callable[[], None] | None) -> None:
        name = Path(path).absolute().as_posix()
        if self.trace:
            with open(self.trace, "a", encoding="utf-8") as handle:
                handle.write(name.replace("\n", "\\n") + "\n")
        if self.pattern and fnmatch.fnmatchcase(name, self.pattern):
            self.seen += 1
            if self.seen == self.target:
                if partial is not None and self.signum == signal.SIGKILL:
                    partial()
                os.kill(os.getpid(), self.signum)


def _plan() -> _Plan | None:
    fault, trace = os.environ.get(FAULT_ENV, ""), os.environ.get(TRACE_ENV, "")
    if not fault and not trace:
        return None
    if fault and ("@" not in fault or not fault.rpartition("@")[2].isdigit()):
        raise ValueError(f"{FAULT_ENV} must be PATTERN@N, got {fault!r}")
    return _Plan(fault, trace, signal.Signals[os.environ.get(SIGNAL_ENV, "SIGKILL")])


_PLAN = _plan()


START_MARK = "<start>"
"""The trace's line for :func:`started`."""


def started() -> None:
    """Mark the end of start-up (the CLI has parsed its arguments and imported torch) in the trace, if one is
    kept: the harness's seeded moments count from here, so that no kill lands in the imports."""
    if _PLAN is not None and _PLAN.trace:
        with open(_PLAN.trace, "a", encoding="utf-8") as handle:
            handle.write(START_MARK + "\n")


def armed() -> bool:
    """True when a fault or a trace is requested (a writer may then split a record to tear it)."""
    return _PLAN is not None


def write_point(path: str | Path, partial: Callable[[], None] | None = None) -> None:
    """Mark a durable write of ``path``; the harness may kill the process here (``partial`` runs first)."""
    if _PLAN is not None:
        _PLAN.reached(path, partial)


def append_point(handle: IO[str], text: str, path: str | Path) -> None:
    """Append ``text`` to the open ``handle`` of ``path``; armed, a write point sits between its two halves."""
    if _PLAN is not None:
        half = len(text) // 2
        handle.write(text[:half])
        _PLAN.reached(path, lambda: _sync(handle))
        text = text[half:]
    handle.write(text)


def _sync(handle: IO[str]) -> None:
    handle.flush()
    os.fsync(handle.fileno())

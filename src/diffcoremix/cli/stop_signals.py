"""SIGTERM and SIGHUP end a command the way Ctrl-C does: as an exception that unwinds it, not a sudden death.

Slurm, Kubernetes, Ray and ``timeout`` stop a process with SIGTERM (then SIGKILL after a grace period); a closed
terminal sends SIGHUP. Their default action ends the process at once: no ``finally`` block runs, so the output
folder's lock file and the temporary file of the write under way stay behind. Raised as :class:`Terminated` (a
``BaseException``, as ``KeyboardInterrupt`` is) in the main thread, the signal leaves through the clean-up paths
that Ctrl-C takes: an atomic writer removes its temporary file, the output folder's lock is released, a DataLoader
shuts its workers down; the CLI then prints one line and exits with 128 + the signal's number.

Only the CLI installs these handlers, for the length of one command, and restores the earlier ones after: a library
must not change how its caller's process answers signals.
"""

from __future__ import annotations

import _thread
import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that end a command cleanly. SIGINT keeps its ``KeyboardInterrupt``; the others raise
:class:`Terminated`."""


class Terminated(BaseException):
    """The process was asked to stop by SIGTERM or SIGHUP (not an ``Exception``: nothing may catch it as an error).

    Args:
        signum: the signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class StopState:
    """Which stop signal the command received, if any (the first one: later ones are ignored)."""

    signum: int | None = None

    @property
    def message(self) -> str:
        """The one line's text: ``interrupted`` for Ctrl-C (as before), ``terminated (SIGTERM)`` otherwise."""
        if self.signum is None or self.signum == signal.SIGINT:
            return "interrupted"
        return f"terminated ({signal.Signals(self.signum).name})"

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended (130, 143, 129)."""
        return 128 + (self.signum or signal.SIGINT)


def _stop_exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


class _Handler:
    """The handler of the stop signals, and the ``sys.unraisablehook`` of a command that is stopping."""

    REDELIVERY_DELAY = 0.02
    """Seconds after a lost stop before it is raised again: time for the main thread to leave the finaliser."""

    def __init__(self, state: StopState, unraisable: Callable[[Any], object]) -> None:
        self.state = state
        self.owner = os.getpid()
        self.lost = False
        self.redelivery: threading.Timer | None = None
        self.previous_unraisable = unraisable

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.owner:  # a process forked inside the command: its parent ends it
            return
        if self.state.signum is not None and not self.lost:  # the command is unwinding: let its clean-up finish
            return
        self.lost = False
        if self.state.signum is None:
            self.state.signum = signum
            # torch's SIGCHLD handler raises when a DataLoader worker dies: a SIGTERM sent to the process group
            # (Slurm, `timeout`) kills the workers, and that error would break off the clean-up under way
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        raise _stop_exception(self.state.signum)

    def unraisable(self, hook: Any) -> None:
        """Once the command is stopping: a stop that the handler raised inside a finaliser (a ``__del__``, a
        generator closed by the garbage collector) was dropped there, and the command would go on: raise it again,
        from another thread, at the main thread's next step after the finaliser; any other error of a finaliser is
        an after-effect of the stop (torch's DataLoader iterator cut off while it started its workers) and is not
        printed: the stop's one line is the whole report."""
        if self.state.signum is None:
            self.previous_unraisable(hook)
            return
        if isinstance(hook.exc_value, (KeyboardInterrupt, Terminated)):
            self.lost = True
            self.redelivery = threading.Timer(self.REDELIVERY_DELAY, _thread.interrupt_main, (self.state.signum,))
            self.redelivery.daemon = True
            self.redelivery.start()

    def close(self) -> None:
        if self.redelivery is not None:
            self.redelivery.cancel()


@contextlib.contextmanager
def stop_signals() -> Iterator[StopState]:
    """Turn SIGINT, SIGTERM and SIGHUP into exceptions in the main thread while the block runs.

    The first of them raises (``KeyboardInterrupt`` for SIGINT, :class:`Terminated` for the others) and is recorded in
    the yielded state; any later one is ignored, so that a second SIGTERM cannot break off the clean-up that the first
    started (SIGKILL still ends the process at once). A signal that was ignored when the block began stays ignored
    (``nohup`` ignores SIGHUP); one whose handler Python cannot restore is left alone. Processes forked inside the
    block ignore these signals (their parent ends them; torch's DataLoader workers install their own). Outside the
    main thread nothing is installed (Python allows handlers only there). On the way out, every handler and hook it
    changed is restored.
    """
    state = StopState()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    handler = _Handler(state, sys.unraisablehook)
    earlier = {sig: signal.getsignal(sig) for sig in (*STOP_SIGNALS, signal.SIGCHLD)}
    taken = [sig for sig in STOP_SIGNALS if earlier[sig] is not None and earlier[sig] != signal.SIG_IGN]
    try:
        for sig in taken:
            signal.signal(sig, handler)
        sys.unraisablehook = handler.unraisable
        yield state
    finally:
        if state.signum is not None:
            gc.collect()  # finalise what the unwinding left in reference cycles while their errors stay unprinted
        handler.close()
        sys.unraisablehook = handler.previous_unraisable
        for sig in taken:
            signal.signal(sig, earlier[sig])
        child_handler = earlier[signal.SIGCHLD]
        if state.signum is not None and child_handler is not None:
            signal.signal(signal.SIGCHLD, child_handler)

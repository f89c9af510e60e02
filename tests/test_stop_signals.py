"""The CLI's stop signals, in this process with real signals: the first SIGTERM raises, a second one during the
clean-up is ignored, a stop lost in a finaliser is raised again, forked children and ``nohup`` keep their ways,
torch's SIGCHLD check stays quiet while the command unwinds, and every handler is restored after. (The commands
stopped by real signals in subprocesses: tests/test_faults_training.py and tests/test_faults_generation.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from diffcoremix.cli.stop_signals import STOP_SIGNALS, StopState, Terminated, stop_signals

WATCHED = (*STOP_SIGNALS, signal.SIGCHLD)


def _handlers() -> dict[int, Any]:
    return {sig: signal.getsignal(sig) for sig in WATCHED}


@pytest.fixture(autouse=True)
def put_back_the_handlers() -> Iterator[None]:
    """Whatever a test does, the process's handlers are put back after it."""
    before = _handlers()
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _run_stopped(body: Callable[[], None], raised: type[BaseException]) -> StopState:
    """Run ``body`` in a ``stop_signals`` block, which must end by raising ``raised``; the block's state."""
    states = []

    def block() -> None:
        with stop_signals() as stop:
            states.append(stop)
            body()

    with pytest.raises(raised):
        block()
    return states[0]


def _wait_for_the_signal() -> None:
    for _ in range(500):  # a signal to this process is handled at once; the loop only bounds a failure
        time.sleep(0.01)
    raise AssertionError("the signal did not stop the block")


def test_the_first_sigterm_raises_and_a_second_one_during_the_clean_up_is_ignored() -> None:
    before = _handlers()
    cleaned = []

    def command() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            _wait_for_the_signal()
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's second SIGTERM, mid clean-up
            os.kill(os.getpid(), signal.SIGINT)  # or an impatient Ctrl-C
            cleaned.append(True)

    stop = _run_stopped(command, Terminated)
    assert cleaned == [True]
    assert (stop.signum, stop.message, stop.exit_status) == (signal.SIGTERM, "terminated (SIGTERM)", 143)
    assert _handlers() == before


@pytest.mark.parametrize(
    ("signum", "raised", "message", "status"),
    [(signal.SIGINT, KeyboardInterrupt, "interrupted", 130), (signal.SIGHUP, Terminated, "terminated (SIGHUP)", 129)],
    ids=["SIGINT", "SIGHUP"],
)
def test_ctrl_c_stays_a_keyboard_interrupt_and_sighup_is_a_stop_like_sigterm(
    signum: signal.Signals, raised: type[BaseException], message: str, status: int
) -> None:
    def command() -> None:
        os.kill(os.getpid(), signum)
        _wait_for_the_signal()

    # as in a terminal: a run under nohup, or in the background of a shell without job control, starts with SIGHUP or
    # SIGINT ignored, and an ignored signal stays ignored (test_a_signal_ignored_before_the_command_stays_ignored)
    before = signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    try:
        stop = _run_stopped(command, raised)
    finally:
        signal.signal(signum, before)
    assert (stop.message, stop.exit_status) == (message, status)


def test_a_signal_ignored_before_the_command_stays_ignored() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    with stop_signals() as stop:
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.05)
    assert stop.signum is None
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


def test_a_process_forked_inside_the_block_ignores_the_stop_signals() -> None:
    with stop_signals():
        child = os.fork()
        if child == 0:  # the child: its parent decides when it ends (it would die here with the default action)
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGHUP)
                os._exit(0)
            finally:
                os._exit(1)
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


class _StopsInItsFinaliser:
    """An object whose ``__del__`` receives the SIGTERM: what the handler raises there, Python drops."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(1000))  # Python code after the signal: the handler runs here, inside the finaliser


def test_a_stop_raised_inside_a_finaliser_is_raised_again_in_the_command_and_nothing_is_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def command() -> None:
        _StopsInItsFinaliser()  # dropped at once: its __del__ runs here
        _wait_for_the_signal()

    assert _run_stopped(command, Terminated).signum == signal.SIGTERM
    assert capsys.readouterr().err == ""  # no "Exception ignored in ..." report


class _FailsInItsFinaliser:
    def __del__(self) -> None:
        raise AttributeError("'_MultiProcessingDataLoaderIter' object has no attribute '_shutdown'")


def test_a_finaliser_that_fails_while_the_command_unwinds_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    def command() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            _wait_for_the_signal()
        finally:
            _FailsInItsFinaliser()  # torch's iterator, cut off while it started its workers, fails so

    _run_stopped(command, Terminated)
    assert capsys.readouterr().err == ""


def test_a_sigchld_handler_that_raises_is_quiet_while_the_command_unwinds_and_restored_after() -> None:
    calls: list[int] = []

    def worker_check(signum: int, frame: Any) -> None:  # what torch's DataLoader installs: a dead worker raises
        calls.append(signum)
        raise RuntimeError("DataLoader worker exited unexpectedly")

    def command() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            _wait_for_the_signal()
        finally:
            subprocess.run(["true"], check=True)  # a child ends while the command unwinds
            time.sleep(0.05)

    signal.signal(signal.SIGCHLD, worker_check)
    _run_stopped(command, Terminated)
    assert calls == []
    assert signal.getsignal(signal.SIGCHLD) is worker_check


def test_a_dataloader_worker_killed_by_a_stop_signal_is_read_as_that_stop() -> None:
    """A group stop can kill a DataLoader worker before this process runs its own handler: torch's SIGCHLD check
    then raises first, naming the signal, and the command ends as stopped by it (exit 143, one line), not as a bug.
    The message is torch's, as the four-moments trial of tests/test_faults_training.py met it under load."""
    from diffcoremix.cli.main import _workers_stopped_by

    seen = RuntimeError("DataLoader worker (pid 17621) is killed by signal: Terminated. ")
    assert _workers_stopped_by(seen) == signal.SIGTERM
    assert _workers_stopped_by(RuntimeError("DataLoader worker (pid 1) is killed by signal: Hangup. ")) == signal.SIGHUP
    assert _workers_stopped_by(RuntimeError("DataLoader worker (pid 1) is killed by signal: Killed. ")) is None
    assert _workers_stopped_by(RuntimeError("DataLoader worker (pid(s) 1) exited unexpectedly")) is None

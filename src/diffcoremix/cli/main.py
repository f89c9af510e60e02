"""The ``diffcoremix`` entry point: argument parsing, logging handlers and exit codes, nothing else.

Exit codes: 0 success; 1 the command ran and found a failure it was asked to fail on (``scan --strict``) or
an unexpected error; 2 bad input (an invalid option value, a missing dataset, an unknown name); 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP): each of these signals ends the command through its
clean-up paths (:mod:`diffcoremix.cli.stop_signals`). Errors are one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import select
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from diffcoremix import __version__, faults
from diffcoremix.cli.commands import COMMANDS, Command
from diffcoremix.cli.compare_command import COMPARE_COMMAND
from diffcoremix.cli.demo_command import DEMO_COMMAND
from diffcoremix.cli.eval_command import EVAL_COMMAND
from diffcoremix.cli.finetune_command import FINETUNE_COMMAND
from diffcoremix.cli.judge_command import JUDGE_COMMAND
from diffcoremix.cli.options import option_name
from diffcoremix.cli.report_command import REPORT_COMMAND
from diffcoremix.cli.stop_signals import STOP_SIGNALS, StopState, Terminated, stop_signals
from diffcoremix.cli.train_command import TRAIN_COMMAND
from diffcoremix.errors import ConfigError, DiffCoReMixError, ImageReadError
from diffcoremix.generate.runner import GenerationError

PROG = "diffcoremix"
ALL_COMMANDS = (
    *COMMANDS,
    TRAIN_COMMAND,
    COMPARE_COMMAND,
    EVAL_COMMAND,
    JUDGE_COMMAND,
    FINETUNE_COMMAND,
    REPORT_COMMAND,
    DEMO_COMMAND,
)
BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), exit code 2, and that takes no abbreviated
    option: ``finetune --vae X`` must not be read as ``--vae-steps X``, nor an option added later change what an
    abbreviation in a user's script means."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str) -> NoReturn:
        self.exit(BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _common_options() -> _Parser:
    # Accepted before or after the subcommand: defaults are suppressed so that a later position does not reset
    # an earlier one.
    common = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("-v", "--verbose", action="count", help="more log output (-vv for debug messages)")
    common.add_argument("-q", "--quiet", action="count", help="only errors (and no progress bars)")
    common.add_argument("--debug", action="store_true", help="show the traceback of errors")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with one subparser per command."""
    common = _common_options()
    parser = _Parser(
        prog=PROG,
        description="Diffusion-based, context-guided and filtered data augmentation for image classifiers.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in ALL_COMMANDS:
        text = command.help.replace("%", "%%")  # argparse %-formats help and descriptions
        child = sub.add_parser(command.name, help=text, description=text, parents=[common])
        command.add_arguments(child)
        child.set_defaults(_command=command)
    return parser


LIBRARY_VERBOSITY = ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_VERBOSITY")
"""Read by transformers, diffusers and huggingface_hub when first imported (the commands import them lazily)."""


class _DropRecords(logging.NullHandler):
    """The root logger's handler without ``-v``: other loggers' records end here, not in ``logging.lastResort``
    (and a root with a handler keeps a library's module-level ``logging.error(...)`` from calling basicConfig)."""


class _ShowRecords(logging.StreamHandler):  # type: ignore[type-arg]
    """The root logger's handler with ``-v``: other loggers' records on stderr, named by their logger."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))


def configure_logging(verbose: int, quiet: int) -> None:
    """Route log records and warnings to stderr by ``-v``/``-q`` (the library adds no handlers).

    The ``diffcoremix`` logger prints warnings (``-q``: errors only, ``-v``: info, ``-vv``: debug). Other
    libraries' log records (transformers, diffusers, huggingface_hub, open_clip, torch) and Python warnings
    appear only with ``-v``: without it they would bury the one-line error of a failed command.
    """
    level = logging.WARNING - 10 * verbose + 10 * quiet
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    ours = logging.getLogger("diffcoremix")
    ours.handlers[:] = [handler]
    ours.setLevel(max(logging.DEBUG, min(level, logging.CRITICAL)))
    ours.propagate = False
    _configure_other_loggers(verbose)
    if quiet:
        _hide_download_bars()


def _hide_download_bars() -> None:
    """``-q``: huggingface_hub's download bars off as well (the loaders hide the libraries' loading bars always:
    :func:`diffcoremix.hub.quiet_loading`). The variable is read when huggingface_hub is first imported, which the
    commands do lazily; an import made already is switched off directly."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils.tqdm import disable_progress_bars

        disable_progress_bars()


def _configure_other_loggers(verbose: int) -> None:
    """Other libraries' verbosity, Python warnings and the root logger's handler: shown only with ``-v``."""
    for name in LIBRARY_VERBOSITY:
        os.environ[name] = "error" if verbose < 1 else "warning" if verbose == 1 else "info"
    logging.captureWarnings(True)  # warnings.warn(...) -> the "py.warnings" logger -> the root's handler
    root = logging.getLogger()
    # Replace only the handler set by an earlier call; others' (pytest's, an embedding application's) stay.
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, (_DropRecords, _ShowRecords))]
    root.addHandler(_ShowRecords() if verbose >= 1 else _DropRecords())
    if verbose >= 1:
        root.setLevel(logging.WARNING if verbose == 1 else logging.INFO)


def _message(err: BaseException) -> str:
    if isinstance(err, ConfigError) and err.field.isidentifier():
        return err.for_option(option_name(err.field))
    return str(err)


def _check_device(args: argparse.Namespace) -> None:
    """A ``--device`` this machine lacks is refused before the command reads anything (the library refuses it
    too, where the device comes from a config file)."""
    device = getattr(args, "device", "auto")
    if device != "auto":
        from diffcoremix.devices import resolve_device  # imports torch: only commands with --device get here

        resolve_device(device)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    with stop_signals() as stop:
        return _main(argv, stop)


def _main(argv: Sequence[str] | None, stop: StopState) -> int:
    prefix = f"{PROG}: error:"  # until the command is known
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command: Command | None = getattr(args, "_command", None)
        if command is None:
            parser.print_help(sys.stderr)
            return BAD_INPUT
        configure_logging(getattr(args, "verbose", 0), getattr(args, "quiet", 0))
        faults.started()
        prefix = f"{PROG} {command.name}: error:"
        return _run(command, args, prefix, stop)
    except (KeyboardInterrupt, Terminated) as err:
        if stop.signum is None and isinstance(err, Terminated):
            stop.signum = err.signum
        return _stopped(stop, prefix)


def _stopped(stop: StopState, prefix: str) -> int:
    """One line for a run a stop signal ended; the terminal may be gone (SIGHUP), so the line may be lost."""
    with contextlib.suppress(OSError):
        print(f"{prefix} {stop.message}", file=sys.stderr)
    return stop.exit_status


def _run(command: Command, args: argparse.Namespace, prefix: str, stop: StopState) -> int:
    try:
        _check_device(args)
        return command.run(args)
    except Exception as err:
        if stop.signum is None:
            stop.signum = _workers_stopped_by(err)
        if stop.signum is not None:  # raised by clean-up code while a stop signal unwound the command: still a stop
            return _stopped(stop, prefix)
        return _failed(err, prefix, args)


_WORKER_STOPPED = re.compile(r"DataLoader worker \(pid \d+\) is killed by signal: (\w+)")


def _workers_stopped_by(err: Exception) -> int | None:
    """The stop signal that killed the command's DataLoader workers, when that is why ``err`` was raised.

    A stop sent to the process group (Slurm, ``timeout``) reaches the workers too; when one of them dies before
    this process runs its own handler, torch's SIGCHLD check raises first. That is the same stop, not a bug."""
    found = _WORKER_STOPPED.search(str(err)) if isinstance(err, RuntimeError) else None
    names = {signal.strsignal(signum): signum for signum in STOP_SIGNALS}
    return names.get(found.group(1)) if found else None


def _failed(err: Exception, prefix: str, args: argparse.Namespace) -> int:
    """The one line (or none) and the exit status of a command that raised ``err``."""
    debug = getattr(args, "debug", False)
    if isinstance(err, BrokenPipeError) and _stdout_gone():
        # the reader of stdout left (`diffcoremix scan DATA | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 128 + signal.SIGPIPE
    if not isinstance(err, DiffCoReMixError):
        return _unexpected(err, prefix, args, debug)
    if debug:
        traceback.print_exc()
    print(f"{prefix} {_message(err)}", file=sys.stderr)
    return 1 if isinstance(err, (ImageReadError, GenerationError)) else BAD_INPUT


def _unexpected(err: Exception, prefix: str, args: argparse.Namespace, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    full = _caused_by(err, NO_SPACE)
    if full is not None:  # not a bug: the run stopped cleanly, and a rerun with room resumes it
        print(f"{prefix} {_no_space_message(full, args)}", file=sys.stderr)
        return 1
    denied = _caused_by(err, NOT_WRITABLE)
    if denied is not None:  # a read-only mount, or no permission: the place, not the input, is wrong
        where = denied.filename or _output(args) or "the output"
        text = (
            f"cannot write to {where}: read-only file system"
            if denied.errno == errno.EROFS
            else f"{where}: permission denied"
        )
        print(f"{prefix} {text}", file=sys.stderr)
        return BAD_INPUT
    hint = "" if debug else " (rerun with --debug for the traceback)"  # a bug, not bad input: say so
    print(f"{prefix} unexpected {type(err).__name__}: {err}{hint}", file=sys.stderr)
    return 1


def _stdout_gone() -> bool:
    """True when nobody reads our stdout any more (a pipe whose reader closed it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no poll() on this platform, or stdout is no file
        return False


NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
"""A full disk, or a full quota: what a rerun after freeing space recovers from."""


NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
"""A read-only file system, or no permission to write there."""


def _caused_by(err: BaseException, errnos: frozenset[int]) -> OSError | None:
    """The OSError of one of ``errnos`` that ``err`` is or was raised from (torch and PIL wrap their write errors)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in errnos:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _output(args: argparse.Namespace) -> str | None:
    """The output the command was writing (``-o``), if it has one."""
    return next((str(getattr(args, name)) for name in ("output", "out") if getattr(args, name, None)), None)


def _no_space_message(err: OSError, args: argparse.Namespace) -> str:
    """Where the disk ran full: the file being written (the destination of a link or rename), else the output
    the command was writing (an append to an open file names no file)."""
    output = _output(args)
    where = err.filename2 or err.filename or output or "the output"
    target = output if output is not None else "the output"
    return (f"no space left on device at {where} (free space or write {target} to a larger disk; a rerun resumes "
            f"where this run stopped)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

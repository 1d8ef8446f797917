"""``cryophile``: the command line. Parses, sets up logging, runs one command, maps errors.

Every command's options and help are in :mod:`cryophile.cli.parsers`; what a
command does is in ``cryophile.cli.NAME`` (its ``run``), imported only when
that command runs, so that a cheap command never pays for loading an
expensive one.

Every exception a command raises ends here and becomes one line on stderr and
the exit code its class carries (see :mod:`cryophile.errors`); a traceback is
shown only with ``-dd``. stdout carries data only.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import NoReturn, TextIO

from cryophile.cli.defaults import complete
from cryophile.cli.logs import log_levels, setup_logging
from cryophile.cli.parsers import build_parser
from cryophile.errors import CryophileError, ExitCode, UsageError, exit_code_of

logger = logging.getLogger(__name__)


@dataclass
class Environment:
    """What a command may touch outside its arguments; tests substitute their own."""

    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    stdin_fd: int = 0
    stdout_fd: int = 1
    stderr: TextIO = field(default_factory=lambda: sys.stderr)


#: What runs a parsed command line.
Command = Callable[[argparse.Namespace, Environment], int]


def _show_help(args: argparse.Namespace, environment: Environment) -> int:
    """``cryophile help [COMMAND]``: argparse prints the help and raises SystemExit(0)."""
    del environment
    build_parser().parse_args([args.topic, "--help"] if args.topic else ["--help"])
    return 0


def command_named(name: str) -> Command:
    """The function that runs command ``name``: ``cryophile.cli.NAME.run`` (a ``-`` in
    the name is ``_`` in the module's).

    Its module is imported only now, once the command line is parsed: the
    parsers (:mod:`cryophile.cli.parsers`) import no command's work, so
    ``status`` never loads what ``backup`` needs.
    """
    if name == "help":
        return _show_help
    module = name.replace("-", "_")
    run: Command = importlib.import_module(f"cryophile.cli.{module}").run
    return run


def run(argv: Sequence[str], environment: Environment | None = None) -> int:
    """Run one command line; return its exit code (never raises for user errors)."""
    environment = environment or Environment()
    try:
        _refuse_nul(argv)
        args = build_parser().parse_args(list(argv))
        complete(args, environment.env)
        levels = log_levels(args.debug, args.quiet, environment.env,
                            default=getattr(args, "default_log_level", logging.WARNING))
        setup_logging(levels, environment.env,
                      json_lines=getattr(args, "json_logs", False), stream=environment.stderr)
        return command_named(args.command)(args, environment)
    except CryophileError as error:
        print(f"cryophile: error: {error}", file=environment.stderr)
        # A transient error is "try later" (75) whatever its class (errors.py).
        return int(exit_code_of([error]))
    except OSError as error:
        # Only the standard streams' failures are expected here: EPIPE when
        # the reader of `cryophile list | head -1` left, EBADF when a stream
        # was closed at start-up (see _standard_fds). Anything else is a bug.
        if error.errno not in (errno.EPIPE, errno.EBADF):
            raise
        what = ("standard output was closed by its reader" if error.errno == errno.EPIPE
                else "a standard stream (stdin or stdout) is closed")
        print(f"cryophile: error: {what}", file=environment.stderr)
        return int(ExitCode.IOERR)
    except KeyboardInterrupt:
        print("cryophile: interrupted", file=environment.stderr)
        return 130
    except SystemExit as exit_request:  # --help and --version
        return exit_request.code if isinstance(exit_request.code, int) else 0


def _refuse_nul(argv: Sequence[str]) -> None:
    """A NUL character cannot reach the OS in a path or name: refuse it up front.

    execve() cannot pass one, but in-process callers (tests, embedders) can,
    and os/pathlib calls would raise ValueError deep inside a command.
    """
    for position, argument in enumerate(argv, start=1):
        if "\0" in argument:
            shown = repr(argument if len(argument) <= 80 else argument[:80] + "…")
            raise UsageError(f"argument {position} {shown} contains a NUL character")


def _standard_fds() -> tuple[int, int]:
    """Make fds 0-2 safe to use; return the stdin and stdout fds to read and write data.

    A standard fd that was closed when we started (``cryophile backup <&-``)
    would be handed to the next file we open (a keyring, the backup's lock):
    backup would then read that file as its input, restore would write
    plaintext into it. Each closed one is pointed at /dev/null, and -1 is
    returned in its place so the commands refuse it (EBADF) instead of
    silently reading nothing or writing nowhere.
    """
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    for fd in sorted(closed):
        null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
    if 2 in closed or sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - lives as long as the process
    return (-1 if 0 in closed else 0), (-1 if 1 in closed else 1)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every job's clean-up runs.
    raise KeyboardInterrupt


def main() -> NoReturn:
    """Console entry point."""
    signal.signal(signal.SIGTERM, _terminate)
    # Let writes to a closed pipe raise BrokenPipeError instead of killing us.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    stdin_fd, stdout_fd = _standard_fds()
    try:
        code = run(sys.argv[1:], Environment(stdin_fd=stdin_fd, stdout_fd=stdout_fd))
    except Exception as error:
        logger.debug("internal error", exc_info=True)
        print(f"cryophile: internal error: {type(error).__name__}: {error} "
              "(please report this; run with -dd for a traceback)", file=sys.stderr)
        code = int(ExitCode.SOFTWARE)
    if sys.stdout is not None:  # None when fd 1 was closed at start-up
        with contextlib.suppress(OSError):
            sys.stdout.flush()
    sys.exit(code)

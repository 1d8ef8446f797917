"""``cryophile``: the command line. Parses, sets up logging, runs one command, maps errors.

Every exception a command raises ends here and becomes one line on stderr and
the exit code its class carries (see :mod:`cryophile.errors`); a traceback is
shown only with ``-dd``. stdout carries data only.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import NoReturn, TextIO

from cryophile import __version__
from cryophile.cli import backup as backup_command
from cryophile.cli import completion as completion_command
from cryophile.cli import freeze as freeze_command
from cryophile.cli import list as list_command
from cryophile.cli import prune as prune_command
from cryophile.cli import restore as restore_command
from cryophile.cli import status as status_command
from cryophile.cli import thaw as thaw_command
from cryophile.cli import verify as verify_command
from cryophile.cli.logs import level_from, setup_logging
from cryophile.errors import CryophileError, ExitCode, UsageError, exit_code_of

logger = logging.getLogger(__name__)

COMMANDS = (backup_command, restore_command, freeze_command, thaw_command, list_command,
            verify_command, status_command, prune_command, completion_command)


@dataclass
class Environment:
    """What a command may touch outside its arguments; tests substitute their own."""

    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    stdin_fd: int = 0
    stdout_fd: int = 1
    stderr: TextIO = field(default_factory=lambda: sys.stderr)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UsageErrors (exit 64), not exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _path(text: str) -> Path:
    """A path option's value; "" is refused: Path("") is the current directory,
    and ``-S ""`` (an unset shell variable) would make it the spool."""
    if not text:
        # ArgumentTypeError: argparse names the option in its message.
        raise argparse.ArgumentTypeError("empty path (an unset shell variable?)")
    return Path(text)


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Subcommand copies use SUPPRESS defaults so an option given before the
    # subcommand is not reset by the subcommand's own (absent) default.
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument("-S", "--spool", type=_path, default=default(None), metavar="DIR",
                       help="spool directory (default: $CRYOPHILE_SPOOL, else "
                            "/var/spool/cryophile as root, else ~/.local/state/cryophile/spool)")
    group.add_argument("-c", "--config", type=_path, default=default(None), metavar="FILE",
                       help="configuration file (default: ~/.config/cryophile/cryophile.toml, "
                            "else /etc/cryophile/cryophile.toml)")
    group.add_argument("-d", "--debug", action="count", default=default(0),
                       help="more log output on stderr (-d info, -dd debug)")
    group.add_argument("-q", "--quiet", action="store_true", default=default(False),
                       help="log errors only")


def build_parser() -> argparse.ArgumentParser:
    """The full parser, every command included (also used for docs and completion)."""
    parser = _Parser(
        prog="cryophile",
        description="Off-site backup of streams: compress, encrypt to OpenPGP keys, split into "
                    "fragments in a spool, freeze to S3/Glacier, thaw and restore.",
        epilog="Exit codes: 0 ok, 3 partial (some backups could not be read), 64 usage, "
               "65 bad data, 66 no input, 69 service unavailable, 73 already exists, "
               "74 I/O error, 75 try later, 77 no usable key, 78 config.")
    parser.add_argument("--version", action="version", version=f"cryophile {__version__}")
    _add_global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)
    for module in COMMANDS:
        sub = module.register(commands)
        _add_global_options(sub, suppress=True)
    names = list(commands.choices)
    helper = commands.add_parser("help", help="show a command's help (cryophile help COMMAND)",
                                 description="Print the help of COMMAND (the same as "
                                             "'cryophile COMMAND --help'), or of cryophile.")
    helper.add_argument("topic", nargs="?", choices=names, metavar="COMMAND",
                        help=f"one of: {', '.join(names)}")
    helper.set_defaults(run=_show_help)
    return parser


def _show_help(args: argparse.Namespace, environment: Environment) -> int:
    """``cryophile help [COMMAND]``: argparse prints the help and raises SystemExit(0)."""
    del environment
    build_parser().parse_args([args.topic, "--help"] if args.topic else ["--help"])
    return 0


def run(argv: Sequence[str], environment: Environment | None = None) -> int:
    """Run one command line; return its exit code (never raises for user errors)."""
    environment = environment or Environment()
    try:
        _refuse_nul(argv)
        args = build_parser().parse_args(list(argv))
        level = level_from(args.debug, args.quiet, environment.env,
                           default=getattr(args, "default_log_level", logging.WARNING))
        setup_logging(level, environment.env,
                      json_lines=getattr(args, "json_logs", False), stream=environment.stderr)
        command: Callable[[argparse.Namespace, Environment], int] = args.run
        return command(args, environment)
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

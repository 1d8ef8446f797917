"""Logging set-up, done once per process by the CLI. Logs go to stderr only.

Level: ``-q`` (errors only), default ``warn`` (``info`` for the ``freeze`` and
``thaw`` daemons, ``--once`` included: one line per fragment moved), ``-d``
info, ``-dd`` debug. The options win; without them ``CRYOPHILE_LOG`` decides, in
the original's (Rust env_logger's) syntax: a level, or comma-separated
``TARGET=LEVEL`` directives, e.g. ``warn,cryophile=trace`` or
``info,cryophile.vault.s3=debug,botocore=debug``. Levels are ``error``,
``warn`` (``warning`` too), ``info``, ``debug``, ``trace`` and ``off``; a target
is a logger name (``cryophile.vault.s3``; Rust's ``::`` is read as ``.``) and
covers the loggers below it. The bare level applies to cryophile's own logs;
another library's (``botocore``, ``urllib3``) are shown only when named.

Style: ``CRYOPHILE_LOG_STYLE`` = ``auto`` (also when empty: colour on a
terminal unless NO_COLOR is set), ``always`` (or ``color``), ``never`` (or
``plain``), or ``json`` (one JSON object per line).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from cryophile.errors import UsageError

#: Below DEBUG: Python has no such level; env_logger's ``trace`` shows everything.
TRACE = 5
#: Above CRITICAL: nothing is logged.
OFF = logging.CRITICAL + 10
logging.addLevelName(TRACE, "TRACE")

LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "warning": logging.WARNING,
          "info": logging.INFO, "debug": logging.DEBUG, "trace": TRACE, "off": OFF}
#: The level names as messages list them (``warning`` is accepted too).
LEVEL_NAMES = ("error", "warn", "info", "debug", "trace", "off")
#: CRYOPHILE_LOG_STYLE's values and the style each means.
STYLES = {"auto": "auto", "always": "color", "never": "plain", "color": "color",
          "plain": "plain", "json": "json"}
ROOT = "cryophile"
_COLOURS = {logging.DEBUG: "\x1b[2m", logging.INFO: "\x1b[36m", logging.WARNING: "\x1b[33m",
            logging.ERROR: "\x1b[31m", logging.CRITICAL: "\x1b[1;31m"}
_TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_]*((\.|::)[A-Za-z_][A-Za-z0-9_]*)*")
#: The loggers a previous set-up in this process configured (tests run many).
_configured: set[str] = set()


@dataclass(frozen=True)
class LogLevels:
    """What to log: ``default`` for cryophile's loggers, and per-target levels
    (logger names, most general first) that override it for a target and below."""

    default: int
    targets: tuple[tuple[str, int], ...] = ()


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "…")


def parse_log_spec(text: str) -> tuple[int | None, tuple[tuple[str, int], ...]]:
    """Parse ``CRYOPHILE_LOG``: (the bare level or None, the ``TARGET=LEVEL`` pairs).

    Raises UsageError naming the directive that is wrong and the syntax.
    """
    def fail(directive: str, why: str) -> UsageError:
        which = "it" if directive == text.strip() else _shown(directive)
        return UsageError(f"invalid CRYOPHILE_LOG {_shown(text)}: {which} {why}; expected a "
                          f"level ({', '.join(LEVEL_NAMES)}) or comma-separated TARGET=LEVEL, "
                          "e.g. warn,cryophile=trace")

    default: int | None = None
    targets: dict[str, int] = {}
    for raw in text.split(","):
        directive = raw.strip()
        if not directive:
            continue
        if "/" in directive:
            raise fail(directive, "has a /FILTER, which cryophile does not support")
        target, equals, level_name = directive.partition("=")
        if not equals:
            if directive.lower() not in LEVELS:
                raise fail(directive, "is not a level")
            default = LEVELS[directive.lower()]
            continue
        target, level_name = target.strip(), level_name.strip()
        if not _TARGET.fullmatch(target):
            raise fail(directive, "names no target (a logger name such as cryophile.vault)")
        if level_name.lower() not in LEVELS:
            raise fail(directive, "has no level")
        targets[target.replace("::", ".")] = LEVELS[level_name.lower()]
    # Most general first, so that a narrower target's level wins below it.
    ordered = sorted(targets.items(), key=lambda item: item[0].count("."))
    return default, tuple(ordered)


def log_levels(verbose: int, quiet: bool, env: Mapping[str, str],
               default: int = logging.WARNING) -> LogLevels:
    """The levels the options and the environment ask for; ``default`` is the
    command's own (info for the daemons). ``-q``/``-d`` win over CRYOPHILE_LOG."""
    if quiet:
        return LogLevels(logging.ERROR)
    if verbose >= 2:
        return LogLevels(logging.DEBUG)
    if verbose == 1:
        return LogLevels(min(logging.INFO, default))
    level, targets = parse_log_spec(env.get("CRYOPHILE_LOG", ""))
    return LogLevels(default if level is None else level, targets)


def level_from(verbose: int, quiet: bool, env: Mapping[str, str],
               default: int = logging.WARNING) -> int:
    """The level of cryophile's own logs that the options and environment ask for."""
    levels = log_levels(verbose, quiet, env, default)
    return dict(levels.targets).get(ROOT, levels.default)


def log_style(env: Mapping[str, str], *, json_lines: bool = False) -> str:
    """``color``, ``plain``, ``json`` or ``auto``, from ``--json`` or CRYOPHILE_LOG_STYLE."""
    if json_lines:
        return "json"
    text = env.get("CRYOPHILE_LOG_STYLE", "")
    name = text.strip().lower() or "auto"
    if name not in STYLES:
        raise UsageError(f"invalid CRYOPHILE_LOG_STYLE {_shown(text)}: use auto (the default, "
                         "also when empty), always, never or json")
    return STYLES[name]


class _PlainFormatter(logging.Formatter):
    def __init__(self, colour: bool) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.levelno <= logging.DEBUG:
            message += "\n" + self.formatException(record.exc_info)
        line = f"cryophile: {record.levelname.lower()}: {message}"
        if self.colour:
            return f"{_COLOURS.get(record.levelno, '')}{line}\x1b[0m"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)))

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in self._STANDARD and not name.startswith("_"):
                document[name] = value
        return json.dumps(document, default=str)


def setup_logging(levels: LogLevels | int, env: Mapping[str, str], *, json_lines: bool = False,
                  stream: TextIO | None = None) -> None:
    """Install the one stderr handler on the ``cryophile`` logger (and on every other
    target CRYOPHILE_LOG names), with the levels asked for."""
    if isinstance(levels, int):
        levels = LogLevels(levels)
    stream = stream if stream is not None else sys.stderr
    style = log_style(env, json_lines=json_lines)
    handler = logging.StreamHandler(stream)
    if style == "json":
        handler.setFormatter(JsonFormatter())
    else:
        colour = style == "color" or (style == "auto" and stream.isatty()
                                      and "NO_COLOR" not in env)
        handler.setFormatter(_PlainFormatter(colour))
    for name in _configured - {ROOT}:
        previous = logging.getLogger(name)
        previous.setLevel(logging.NOTSET)
        if not name.startswith(ROOT + "."):
            for old in list(previous.handlers):
                previous.removeHandler(old)
            previous.propagate = True
    _configured.clear()
    root = logging.getLogger(ROOT)
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levels.default)
    root.propagate = False
    _configured.add(ROOT)
    for name, level in levels.targets:
        target = logging.getLogger(name)
        target.setLevel(level)
        _configured.add(name)
        if name != ROOT and not name.startswith(ROOT + "."):
            # Another library's logger: it gets the same handler, once.
            for old in list(target.handlers):
                target.removeHandler(old)
            target.addHandler(handler)
            target.propagate = False

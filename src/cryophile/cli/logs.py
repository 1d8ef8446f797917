"""Logging set-up, done once per process by the CLI. Logs go to stderr only.

Level: ``-q`` (errors only), default warnings (info for the daemons), ``-d``
info, ``-dd`` debug;
``CRYOPHILE_LOG`` (debug, info, warning, error) sets the default.
Style: ``CRYOPHILE_LOG_STYLE`` = ``auto`` (colour on a terminal unless NO_COLOR
is set), ``color``, ``plain`` or ``json`` (one JSON object per line).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

from cryophile.errors import UsageError

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
STYLES = ("auto", "color", "plain", "json")
_COLOURS = {logging.DEBUG: "\x1b[2m", logging.INFO: "\x1b[36m", logging.WARNING: "\x1b[33m",
            logging.ERROR: "\x1b[31m", logging.CRITICAL: "\x1b[1;31m"}


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


def level_from(verbose: int, quiet: bool, env: Mapping[str, str],
               default: int = logging.WARNING) -> int:
    """The log level the options and environment ask for (daemons default to info)."""
    if quiet:
        return logging.ERROR
    if verbose >= 2:
        return logging.DEBUG
    if verbose == 1:
        return min(logging.INFO, default)
    name = env.get("CRYOPHILE_LOG", "").strip().lower()
    if not name:
        return default
    if name not in LEVELS:
        raise UsageError(f"invalid CRYOPHILE_LOG {name!r}: use one of {', '.join(LEVELS)}")
    return LEVELS[name]


def setup_logging(level: int, env: Mapping[str, str], *, json_lines: bool = False,
                  stream: TextIO | None = None) -> None:
    """Install the one stderr handler on the ``cryophile`` logger."""
    stream = stream if stream is not None else sys.stderr
    style = "json" if json_lines else env.get("CRYOPHILE_LOG_STYLE", "auto").strip().lower()
    if style not in STYLES:
        raise UsageError(f"invalid CRYOPHILE_LOG_STYLE {style!r}: use one of {', '.join(STYLES)}")
    handler = logging.StreamHandler(stream)
    if style == "json":
        handler.setFormatter(JsonFormatter())
    else:
        colour = style == "color" or (style == "auto" and stream.isatty()
                                      and "NO_COLOR" not in env)
        handler.setFormatter(_PlainFormatter(colour))
    root = logging.getLogger("cryophile")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False

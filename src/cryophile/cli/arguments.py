"""Argument types and option groups shared by several commands.

Each type function raises UsageError naming the bad value; the parser turns
that into a one-line message and exit code 64.
"""

from __future__ import annotations

import argparse
import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from ulid import ULID

from cryophile import units
from cryophile.backup_id import (
    BackupId,
    Selection,
    normalize_prefix,
    parse_timestamp,
    parse_ulid,
    parse_vault,
    ulid_for_timestamp,
)
from cryophile.cli.defaults import add_id_option, needs_keyring, needs_vault
from cryophile.errors import UsageError
from cryophile.manifest import check_labels

KIB = 1024
# S3 requires multipart parts of at least 5 MiB; a smaller fragment could not
# be uploaded in parts, and tiny objects in Glacier cost more than they store.
MIN_FRAGMENT_SIZE = 5 * KIB**2
MAX_FRAGMENT_SIZE = 5 * KIB**4  # S3's largest object
DEFAULT_FRAGMENT_SIZE = 256 * KIB**2


def parse_size(text: str) -> int:
    """A size with an optional binary unit, as a UsageError naming it when wrong."""
    try:
        return units.parse_size(text)
    except ValueError as error:
        raise UsageError(str(error)) from None


def fragment_size(text: str) -> int:
    """A fragment size within S3's limits."""
    size = parse_size(text)
    if size < MIN_FRAGMENT_SIZE:
        raise UsageError(f"invalid fragment size {text!r}: at least 5M (S3's smallest "
                         "multipart part) is needed")
    if size > MAX_FRAGMENT_SIZE:
        raise UsageError(f"invalid fragment size {text!r}: at most 5T (S3's largest object)")
    return size


#: Longest duration an option takes: a year ("inf" or 1e300 would overflow the
#: clocks and sleeps they are handed to).
MAX_SECONDS = 366 * 24 * 3600


def non_negative_seconds(text: str) -> float:
    """A duration in seconds, 0 to :data:`MAX_SECONDS`."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid number of seconds {text!r}") from None
    if not value >= 0:
        raise UsageError(f"invalid number of seconds {text!r}: must be 0 or more")
    if not value <= MAX_SECONDS:  # also inf
        raise UsageError(f"invalid number of seconds {text!r}: at most {MAX_SECONDS} "
                         "(366 days)")
    return value


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"([0-9]+)([smhdw])")


def duration(text: str) -> timedelta:
    """A duration such as ``7d``, ``36h`` or ``1w2d``: ASCII digits and a unit
    (s, m, h, d, w) per part, at most 100 years."""
    parts = _DURATION.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise UsageError(f"invalid duration {text!r}: expected e.g. 7d, 36h or 1w2d "
                         "(units s, m, h, d, w)")
    seconds = sum(int(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if seconds > 36500 * 86400:
        raise UsageError(f"invalid duration {text!r}: at most 100 years")
    return timedelta(seconds=seconds)


def positive_int(text: str) -> int:
    """A whole number ≥ 1 (ASCII digits: str.isdigit() also takes "²" and "٣")."""
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise UsageError(f"invalid number {text!r}: expected a whole number of at least 1")
    return int(text)


def whole_number_up_to(maximum: int) -> Callable[[str], int]:
    """An option type: a whole number from 1 to ``maximum``."""
    def parse(text: str) -> int:
        value = positive_int(text)
        if value > maximum:
            raise UsageError(f"invalid number {text!r}: at most {maximum}")
        return value
    return parse


def non_negative_count(text: str) -> int:
    """A whole number ≥ 0, in ASCII digits (str.isdigit() also takes "²" and "٣")."""
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"invalid number {text!r}: expected a whole number of 0 or more")
    return int(text)


def file_descriptor(text: str) -> int:
    """A file descriptor number (≥ 0), in ASCII digits."""
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"invalid file descriptor {text!r}: expected a number such as 4")
    return int(text)


def add_backup_id_options(parser: argparse.ArgumentParser, *,
                          ulid_required: bool) -> argparse._MutuallyExclusiveGroup:
    """``-v/--vault``, ``-p/--prefix`` and ``-u/--ulid`` | ``-t/--timestamp``; returns
    the group of ``-u``/``-t``/``--id``, for a command's other ways to name a backup."""
    parser.add_argument("-v", "--vault", metavar="VAULT",
                        help="vault id (a UUID) or its configured name; a vault not in the "
                             "configuration is a local directory vault (default: "
                             "$CRYOPHILE_VAULT)")
    needs_vault(parser)
    parser.add_argument("-p", "--prefix", default="", metavar="PREFIX",
                        help="path-like name of the backup series, e.g. hosts/db1")
    when = parser.add_mutually_exclusive_group(required=ulid_required)
    when.add_argument("-u", "--ulid", metavar="ULID", help="the backup's ULID")
    when.add_argument("-t", "--timestamp", metavar="TIME",
                      help="RFC 3339 time (e.g. 2026-11-26T03:00:00Z); the same time always "
                           "names the same backup")
    add_id_option(when)
    return when


def backup_id_from(args: argparse.Namespace, *, new: bool) -> BackupId:
    """Build the BackupId the options name; a new one from the clock when ``new``."""
    vault: uuid.UUID = parse_vault(args.vault)
    prefix = normalize_prefix(args.prefix or "")
    ulid: ULID
    if args.ulid is not None:
        ulid = parse_ulid(args.ulid)
    elif args.timestamp is not None:
        ulid = ulid_for_timestamp(parse_timestamp(args.timestamp))
    elif new:
        ulid = ULID()
    else:
        raise UsageError("name the backup with -u/--ulid or -t/--timestamp")
    return BackupId(vault, prefix, ulid)


def label_pair(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` → (key, value), checked as the manifest checks labels."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"invalid label {text!r}: expected KEY=VALUE")
    try:
        check_labels({key: value})
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return key, value


def add_keyring_option(parser: argparse.ArgumentParser, help_text: str, *,
                       required: bool = True) -> None:
    """``-k/--keyring FILE``, repeatable; else ``$CRYOPHILE_KEYRING`` (``required``:
    one of them must give a file)."""
    parser.add_argument("-k", "--keyring", action="append", type=Path, default=[],
                        metavar="FILE", help=f"{help_text} (default: $CRYOPHILE_KEYRING, "
                                             "files separated by ':')")
    needs_keyring(parser, required=required)


def add_selection_options(parser: argparse.ArgumentParser) -> None:
    """``-v``/``-p``/``-u``|``-t`` as filters: a vault, a prefix in it, one backup."""
    parser.add_argument("-v", "--vault", metavar="VAULT",
                        help="only this vault (its UUID or configured name)")
    parser.add_argument("-p", "--prefix", metavar="PREFIX", help="only this prefix (with -v)")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("-u", "--ulid", metavar="ULID", help="only this backup (with -v)")
    when.add_argument("-t", "--timestamp", metavar="TIME", help="only the backup of this time")
    add_id_option(when)


def selection_from(args: argparse.Namespace) -> Selection:
    """The backups ``-v/-p/-u/-t`` select."""
    if args.vault is None:
        if args.prefix is not None or args.ulid is not None or args.timestamp is not None:
            raise UsageError("-p, -u and -t select within a vault: give -v VAULT too")
        return Selection()
    ulid = None
    if args.ulid is not None:
        ulid = parse_ulid(args.ulid)
    elif args.timestamp is not None:
        ulid = ulid_for_timestamp(parse_timestamp(args.timestamp))
    prefix = normalize_prefix(args.prefix) if args.prefix is not None else None
    if ulid is not None and prefix is None:
        prefix = ""
    return Selection(parse_vault(args.vault), prefix, ulid)

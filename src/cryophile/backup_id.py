"""Backup identity and every name derived from it: ids, prefixes, ULIDs, object keys,
fragment and manifest names, selections of backups, and times as we write them.

A backup is addressed by ``(vault, prefix, ulid)``. Below a spool queue it lives
at ``<vault>/<prefix>/<ULID>``; in the vault's bucket its objects are
``<prefix>/<ULID>/chunk.N`` (no prefix: ``<ULID>/chunk.N``): ``chunk.1`` …
``chunk.N`` are the fragments, ``chunk.0`` (:data:`MANIFEST_NAME`) the manifest,
``chunk.0.sig`` (:data:`SIGNATURE_NAME`) its detached signature. Nothing else
spells these names; :func:`parse_fragment_name` is the one parser.

Every parser here raises :class:`~cryophile.errors.UsageError` with a message
naming the bad value, so the CLI can report it as is.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

from ulid import ULID

from cryophile.errors import UsageError

#: File and object name of the manifest: fragment 0.
MANIFEST_NAME = "chunk.0"
#: File and object name of the manifest's detached signature.
SIGNATURE_NAME = "chunk.0.sig"

_FRAGMENT_NAME = re.compile(r"chunk\.(0|[1-9][0-9]*)")

# S3 object keys are at most 1024 bytes of UTF-8. A key is
# "<prefix>/<ULID>/chunk.<N>"; we reserve room for an index of up to 10 digits,
# far more fragments than any stream will have.
S3_KEY_LIMIT = 1024
ULID_LENGTH = 26
MAX_INDEX_DIGITS = 10
MAX_PREFIX_BYTES = S3_KEY_LIMIT - len("/") - ULID_LENGTH - len("/chunk.") - MAX_INDEX_DIGITS

# The characters AWS documents as safe in object keys, plus "/" as separator.
_PREFIX_ALLOWED = re.compile(r"[A-Za-z0-9/()!'*._-]")
_UUID_FORM = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_ULID_FORM = re.compile(r"[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}")


def parse_vault(text: str) -> uuid.UUID:
    """Parse a vault id: a hyphenated UUID (any case). Raises UsageError."""
    if not _UUID_FORM.fullmatch(text):
        raise UsageError(f"invalid vault UUID {text!r}: expected the form "
                         "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
    return uuid.UUID(text)


def parse_ulid(text: str) -> ULID:
    """Parse a ULID (26 Crockford base-32 characters). Raises UsageError."""
    if not _ULID_FORM.fullmatch(text):
        raise UsageError(f"invalid ULID {text!r}: expected 26 characters of Crockford base 32")
    return ULID.from_str(text.upper())


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 time with an explicit offset ("Z" or "+02:00").

    A time without an offset is refused: "02:00" in a cron job and in a restore
    weeks later must not mean two different instants.
    """
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"invalid timestamp {text!r}: expected RFC 3339, "
                         "e.g. 2026-11-26T03:00:00Z") from None
    if when.tzinfo is None:
        raise UsageError(f"invalid timestamp {text!r}: give a UTC offset, e.g. 'Z' or '+01:00'")
    try:
        when = when.astimezone(UTC)
    except OverflowError:  # "9999-12-31T23:59:59-23:59" is past year 9999 in UTC
        raise UsageError(f"invalid timestamp {text!r}: out of range") from None
    if when < datetime(1970, 1, 1, tzinfo=UTC):
        raise UsageError(f"invalid timestamp {text!r}: before 1970, outside the ULID range")
    return when


def ulid_for_timestamp(when: datetime) -> ULID:
    """The ULID a timestamp maps to: its milliseconds and an all-zero random part.

    Deterministic on purpose, so ``restore --timestamp T`` finds the backup made
    with ``backup --timestamp T``; the exclusive ``mkdir`` refuses a duplicate.
    """
    millis = int(when.timestamp() * 1000)
    return ULID.from_bytes(millis.to_bytes(6, "big") + bytes(10))


def normalize_prefix(text: str) -> str:
    """Canonicalise a prefix: drop empty and ``.`` components, resolve ``..``.

    Only ``A-Z a-z 0-9 / ( ) ! ' * . _ -`` are allowed; a prefix may not be
    absolute, may not climb above its root with ``..``, may not have a
    component shaped like a ULID, and must leave room in the S3 key limit.
    Returns "" for no prefix.
    """
    for char in text:
        if not _PREFIX_ALLOWED.fullmatch(char):
            raise UsageError(f"invalid prefix {_shorten(text)!r}: character {char!r} "
                             f"(U+{ord(char):04X}) is not allowed; "
                             "use A-Z a-z 0-9 / ( ) ! ' * . _ -")
    if text.startswith("/"):
        raise UsageError(f"invalid prefix {_shorten(text)!r}: it must be relative (no leading '/')")
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UsageError(f"invalid prefix {_shorten(text)!r}: "
                                 "'..' climbs above the vault root")
            parts.pop()
            continue
        if _ULID_FORM.fullmatch(part):
            # PREFIX/ULID is where a backup lives: a ULID-shaped component
            # would make a prefix and a backup indistinguishable.
            raise UsageError(f"invalid prefix {_shorten(text)!r}: component {part!r} looks "
                             "like a ULID, which would be mistaken for a backup id")
        parts.append(part)
    prefix = "/".join(parts)
    if len(prefix.encode()) > MAX_PREFIX_BYTES:
        raise UsageError(f"invalid prefix {_shorten(text)!r}: {len(prefix)} bytes, at most "
                         f"{MAX_PREFIX_BYTES} fit in S3's {S3_KEY_LIMIT}-byte key limit")
    return prefix


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True, order=True)
class BackupId:
    """The identity of one backup. ``prefix`` is already canonical ("" for none)."""

    vault: uuid.UUID
    prefix: str
    ulid: ULID

    @property
    def relative_path(self) -> PurePosixPath:
        """``<vault>/<prefix>/<ULID>``: where the backup lives below a queue."""
        return PurePosixPath(str(self.vault), self.prefix, str(self.ulid))

    @property
    def key_prefix(self) -> str:
        """``<prefix>/<ULID>`` (or ``<ULID>``): the object key of the backup's directory."""
        return f"{self.prefix}/{self.ulid}" if self.prefix else str(self.ulid)

    def object_key(self, index: int) -> str:
        """Object key of fragment ``index`` (0 is the manifest) in the vault's bucket."""
        return f"{self.key_prefix}/{fragment_name(index)}"

    @property
    def manifest_key(self) -> str:
        """Object key of the manifest ``chunk.0``."""
        return f"{self.key_prefix}/{MANIFEST_NAME}"

    @property
    def signature_key(self) -> str:
        """Object key of the manifest's signature ``chunk.0.sig``."""
        return f"{self.key_prefix}/{SIGNATURE_NAME}"

    def as_json(self) -> dict[str, str]:
        """The id as scripts read it: ``{"id", "vault", "prefix", "ulid"}``."""
        return {"id": str(self), "vault": str(self.vault), "prefix": self.prefix,
                "ulid": str(self.ulid)}

    @property
    def created(self) -> datetime:
        """The instant encoded in the ULID."""
        return self.ulid.datetime

    def __str__(self) -> str:
        return f"{self.vault}/{self.key_prefix}"


def fragment_name(index: int) -> str:
    """File and object name of fragment ``index``: ``chunk.N``; ``chunk.0`` is the manifest."""
    return f"chunk.{index}"


def parse_fragment_name(name: str) -> int | None:
    """``chunk.N`` → N (0 for the manifest); None for any other name
    (``chunk.0.sig``, ``chunk.3.part``, ``chunk.01``)."""
    match = _FRAGMENT_NAME.fullmatch(name)
    return int(match.group(1)) if match is not None else None


def rfc3339(when: datetime) -> str:
    """``when`` in UTC, RFC 3339 with a ``Z``, as manifests and our JSON write it."""
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Selection:
    """Which backups to work on: all, one vault, one prefix in it, or one backup."""

    vault: uuid.UUID | None = None
    prefix: str | None = None
    ulid: ULID | None = None

    @classmethod
    def only(cls, backup_id: BackupId) -> Selection:
        """Exactly ``backup_id``."""
        return cls(backup_id.vault, backup_id.prefix, backup_id.ulid)

    def matches(self, backup_id: BackupId) -> bool:
        """True when ``backup_id`` is selected."""
        if self.vault is not None and backup_id.vault != self.vault:
            return False
        if self.prefix is not None and backup_id.prefix != self.prefix:
            return False
        return self.ulid is None or backup_id.ulid == self.ulid

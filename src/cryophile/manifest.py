"""The manifest, ``chunk.0``: what a complete backup consists of.

Written last, its presence means "this backup is complete". It is small UTF-8
JSON, not encrypted, so ``list``, ``freeze``, ``thaw`` and ``verify`` work
without any secret. It never holds the plaintext's size or content.

Schema (version 1)::

    {
      "format": "cryophile-manifest", "version": 1,
      "vault": "<uuid>", "prefix": "<prefix or empty>", "ulid": "<ULID>",
      "created": "<RFC 3339 UTC>",
      "compression": "none" | "lz4" | "zstd",
      "encryption": "openpgp",
      "engine": "<engine that wrote it>",
      "recipients": ["<subkey fingerprint>", ...],
      "fragment_size": <int>,
      "fragments": [{"index": 1, "size": <int>, "sha256": "<hex>"}, ...]
    }

Version 2 adds two optional fields, and is written only when one is present
(a backup without them stays readable by a cryophile that knows version 1)::

      "parent": "<ULID>",                  the backup this incremental stream needs
                                           (same vault and prefix), see chains.py
      "labels": {"<key>": "<value>", ...}  the user's labels (backup --label K=V)

:func:`parse` is strict: a manifest is data from storage we do not trust, so
every field is type- and range-checked and a bad one is a DataError naming it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryophile.backup_id import BackupId, normalize_prefix, parse_ulid, parse_vault
from cryophile.errors import DataError, UsageError

if TYPE_CHECKING:
    from ulid import ULID

FORMAT = "cryophile-manifest"
VERSION = 2
#: Versions this cryophile reads. Version 1 has neither parent nor labels.
VERSIONS = (1, 2)
COMPRESSIONS = ("none", "lz4", "zstd")
#: Never in a manifest: what a restore may be told instead of one of COMPRESSIONS,
#: to detect the compression from the data.
AUTO_COMPRESSION = "auto"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
#: A real manifest signature (chunk.0.sig) is a few hundred bytes; anything far
#: larger is not one.
MAX_SIGNATURE_BYTES = 64 * 1024
# S3's object size limit; fragments are objects.
MAX_FRAGMENT_SIZE = 5 * 1024**4
MAX_FRAGMENTS = 10**9
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FINGERPRINT = re.compile(r"[0-9a-f]{16,64}")
_KEYS = frozenset({"format", "version", "vault", "prefix", "ulid", "created", "compression",
                   "encryption", "engine", "recipients", "fragment_size", "fragments"})
_KEYS_V2 = _KEYS | {"parent", "labels"}
_FRAGMENT_KEYS = frozenset({"index", "size", "sha256"})
#: A label's key: what a shell word and a metrics label can carry unquoted.
LABEL_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", re.ASCII)
MAX_LABEL_VALUE = 256
MAX_LABELS = 64


@dataclass(frozen=True)
class Fragment:
    """One fragment: its 1-based index, ciphertext size and SHA-256 (hex)."""

    index: int
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest."""

    backup_id: BackupId
    created: datetime
    compression: str
    engine: str
    recipients: tuple[str, ...]
    fragment_size: int
    fragments: tuple[Fragment, ...]
    #: The ULID of the backup this one's stream is an increment of, if any.
    parent: ULID | None = None
    #: The user's labels, sorted by key.
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def parent_id(self) -> BackupId | None:
        """The parent's full id (same vault and prefix), or None for a full backup."""
        if self.parent is None:
            return None
        return BackupId(self.backup_id.vault, self.backup_id.prefix, self.parent)

    def label(self, key: str) -> str | None:
        """The value of label ``key``, or None."""
        return dict(self.labels).get(key)

    @property
    def stored_bytes(self) -> int:
        """Total ciphertext size: what the backup occupies in the vault."""
        return sum(fragment.size for fragment in self.fragments)

    def to_json(self) -> bytes:
        """Serialise to the canonical UTF-8 JSON form (stable key order)."""
        extended = self.parent is not None or bool(self.labels)
        document: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION if extended else 1,
            "vault": str(self.backup_id.vault),
            "prefix": self.backup_id.prefix,
            "ulid": str(self.backup_id.ulid),
            "created": self.created.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "compression": self.compression,
            "encryption": "openpgp",
            "engine": self.engine,
            "recipients": list(self.recipients),
            "fragment_size": self.fragment_size,
            "fragments": [
                {"index": f.index, "size": f.size, "sha256": f.sha256} for f in self.fragments
            ],
        }
        if self.parent is not None:
            document["parent"] = str(self.parent)
        if self.labels:
            document["labels"] = dict(self.labels)
        return (json.dumps(document, indent=1) + "\n").encode()


def parse(data: bytes, expected: BackupId | None = None) -> Manifest:
    """Parse and validate manifest bytes; raise DataError naming what is wrong.

    With ``expected``, the manifest must describe that backup: a manifest
    copied from another backup is refused.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise DataError(f"manifest is {len(data)} bytes, larger than any real one")
    try:
        document = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        # ValueError covers UnicodeDecodeError and JSONDecodeError, and also the
        # int-from-string digit limit: a hostile '"size": 1111…' (5,000 digits)
        # must be refused as data, not crash list/restore/verify.
        raise DataError(f"manifest is not valid UTF-8 JSON: {_shorten(str(error))}") from None
    if not isinstance(document, dict):
        raise DataError("manifest is not a JSON object")
    if document.get("format") != FORMAT:
        raise DataError("not a cryophile manifest (format "
                        f"{_shorten(repr(document.get('format')))})")
    version = _field(document, "version", int)
    if version not in VERSIONS:
        raise DataError(f"manifest version {_shorten(str(version))} is not supported (this "
                        f"cryophile reads versions 1 to {VERSION}); upgrade cryophile")
    # Each version's schema is closed: a key we never write means the document
    # was not written by us (or was tampered with), so it is not trusted.
    _refuse_unknown(document, _KEYS if version == 1 else _KEYS_V2, "manifest")
    try:
        backup_id = BackupId(
            parse_vault(_field(document, "vault", str)),
            normalize_prefix(_field(document, "prefix", str)),
            parse_ulid(_field(document, "ulid", str)),
        )
    except UsageError as error:
        raise DataError(f"manifest has a bad backup id: {error}") from None
    if expected is not None and backup_id != expected:
        raise DataError(f"manifest describes backup {backup_id}, not {expected}")
    try:
        created = datetime.fromisoformat(_field(document, "created", str))
    except ValueError:
        raise DataError("manifest field 'created' is not a time: "
                        f"{_shorten(repr(document['created']))}") from None
    if created.tzinfo is None:
        raise DataError("manifest field 'created' has no UTC offset")
    try:
        # Normalised here, once: "9999-12-31T23:59:59-23:59" is valid ISO but
        # overflows when converted to UTC, which list and restore do later.
        created = created.astimezone(UTC)
    except OverflowError:
        raise DataError("manifest field 'created' is out of range: "
                        f"{_shorten(repr(document['created']))}") from None
    compression = _field(document, "compression", str)
    if compression not in COMPRESSIONS:
        raise DataError(f"manifest names unknown compression {_shorten(repr(compression))}")
    if document.get("encryption") != "openpgp":
        raise DataError("manifest names unknown encryption "
                        f"{_shorten(repr(document.get('encryption')))}")
    engine = _field(document, "engine", str)
    recipients = _field(document, "recipients", list)
    for recipient in recipients:
        if not isinstance(recipient, str) or not _FINGERPRINT.fullmatch(recipient):
            raise DataError("manifest has a bad recipient fingerprint "
                            f"{_shorten(repr(recipient))}")
    fragment_size = _field(document, "fragment_size", int)
    if not 0 < fragment_size <= MAX_FRAGMENT_SIZE:
        raise DataError("manifest field 'fragment_size' out of range: "
                        f"{_shorten(str(fragment_size))}")
    fragments = tuple(_parse_fragments(_field(document, "fragments", list), fragment_size))
    parent = None
    if "parent" in document:
        try:
            parent = parse_ulid(_field(document, "parent", str))
        except UsageError as error:
            raise DataError(f"manifest field 'parent' is not a backup id: {error}") from None
        if parent == backup_id.ulid:
            raise DataError("manifest names its own backup as its parent")
    labels: tuple[tuple[str, str], ...] = ()
    if "labels" in document:
        try:
            labels = check_labels(_field(document, "labels", dict))
        except ValueError as error:
            raise DataError(f"manifest field 'labels': {error}") from None
    return Manifest(backup_id, created, compression, engine, tuple(recipients), fragment_size,
                    fragments, parent, labels)


def check_labels(labels: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Validated labels, sorted by key; ValueError naming the first bad one.

    Keys match :data:`LABEL_KEY`; values are strings of at most
    :data:`MAX_LABEL_VALUE` characters without control characters.
    """
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{len(labels)} labels, more than {MAX_LABELS}")
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY.fullmatch(key):
            raise ValueError(f"bad label key {_shorten(repr(key))}: a letter, then letters, "
                             "digits, '_', '.' or '-' (at most 64)")
        if not isinstance(value, str):
            raise ValueError(f"label {key!r} has a value that is not a string")  # noqa: TRY004
        if len(value) > MAX_LABEL_VALUE or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError(f"label {key!r} has a bad value {_shorten(repr(value))}: at most "
                             f"{MAX_LABEL_VALUE} characters, no control characters")
    return tuple(sorted(labels.items()))


def _parse_fragments(entries: list[Any], fragment_size: int) -> list[Fragment]:
    if not entries:
        raise DataError("manifest lists no fragments")
    if len(entries) > MAX_FRAGMENTS:
        raise DataError(f"manifest lists {len(entries)} fragments, more than possible")
    fragments: list[Fragment] = []
    for position, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise DataError(f"manifest fragment entry {position} is not an object")
        _refuse_unknown(entry, _FRAGMENT_KEYS, f"manifest fragment entry {position}")
        index = _field(entry, "index", int, f"fragment {position}")
        if index != position:
            raise DataError(f"manifest fragment entry {position} has index "
                            f"{_shorten(str(index))}; "
                            "indices must run 1, 2, 3, … without gaps")
        size = _field(entry, "size", int, f"fragment {index}")
        last = position == len(entries)
        if not (0 < size <= fragment_size if last else size == fragment_size):
            raise DataError(f"manifest fragment {index} has size {_shorten(str(size))}; "
                            "every fragment but "
                            f"the last has the fragment size {fragment_size}")
        digest = _field(entry, "sha256", str, f"fragment {index}")
        if not _SHA256.fullmatch(digest):
            raise DataError(f"manifest fragment {index} has a bad sha256 "
                            f"{_shorten(repr(digest))}")
        fragments.append(Fragment(index, size, digest))
    return fragments


def _refuse_unknown(document: dict[str, Any], known: frozenset[str], where: str) -> None:
    """DataError naming the first key of ``document`` that is not in ``known``."""
    unknown = sorted(set(document) - known)
    if unknown:
        raise DataError(f"{where} has unknown field {_shorten(repr(unknown[0]))}")


def _shorten(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters: error lines stay readable."""
    return text if len(text) <= limit else text[:limit] + "…"


def _field(document: dict[str, Any], name: str, kind: type, where: str = "manifest") -> Any:
    if name not in document:
        raise DataError(f"{where}: field {name!r} is missing")
    value = document[name]
    # bool is a subclass of int; a manifest saying "size": true is damaged.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataError(f"{where}: field {name!r} should be {kind.__name__}, "
                        f"not {type(value).__name__}")
    return value

"""The storage interface every vault implements, and the values it speaks in.

Where this sits: the freeze daemon uploads queued fragments through a
:class:`Vault`, the thaw daemon warms them up and downloads them through one;
nothing above this layer knows whether a vault is an S3 bucket
(:mod:`cryophile.vault.s3`) or a local directory (:mod:`cryophile.vault.local`).
Both are checked by one contract test suite (``tests/unit/test_vault_contract.py``).

Keys are plain ``/``-separated strings such as ``hosts/db1/01J.../chunk.3``; the
caller (:mod:`cryophile.backup_id`) builds them, :func:`check_key` only refuses
keys no vault can store safely.

Errors, as the whole interface uses them (all from :mod:`cryophile.errors`):

- :class:`~cryophile.errors.ServiceError`: the vault refuses, permanently
  (no such bucket, access denied, bad credentials). Retrying will not help.
- :class:`~cryophile.errors.VaultUnavailableError` (a transient
  ``ServiceError``): connection failures, timeouts, 5xx and throttling that
  outlived the client's own retries. Back off and try again.
- :class:`~cryophile.errors.TryLaterError`: the object is in cold storage and
  not (yet) restored.
- :class:`~cryophile.errors.DataError`: content does not match its SHA-256.
- :class:`~cryophile.errors.AlreadyExistsError`: a different object already
  holds the key; it is never overwritten.
- :class:`~cryophile.errors.NoInputError`: the key does not exist (get,
  request_restore).
- :class:`~cryophile.errors.UsageError`: a key or argument no vault accepts.
- :class:`~cryophile.errors.ServiceRefusalError` (a ConfigError): the
  service permanently refuses what this configuration sends (a storage class,
  an integrity header, object lock), or ignored object lock. The message names
  the setting to change.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryophile.errors import UsageError
from cryophile.storage_classes import KNOWN_STORAGE_CLASSES, RESTORE_TIERS

#: S3's limit on the length of a key, in bytes of UTF-8.
MAX_KEY_BYTES = 1024


class RestoreState(enum.Enum):
    """Where an object stands on the way out of cold storage.

    NOT_NEEDED
        Readable now; its storage class needs no restore (or the vault has no
        cold storage at all).
    COLD
        Archived (GLACIER, DEEP_ARCHIVE, or an Intelligent-Tiering archive
        tier) and no restored copy exists: ``get`` will raise TryLaterError
        until :meth:`Vault.request_restore` has run its course. Some
        S3-compatible servers store the class name but keep every object
        readable; for them ``request_restore`` answers NOT_NEEDED.
    RESTORING
        A restore was requested and is still running.
    RESTORED
        A temporary readable copy exists until ``ObjectInfo.restore_expiry``.
    """

    NOT_NEEDED = "not-needed"
    COLD = "cold"
    RESTORING = "restoring"
    RESTORED = "restored"


@dataclass(frozen=True)
class ObjectInfo:
    """What a vault knows about one stored object.

    ``sha256`` is the lower-case hex SHA-256 of the whole content, or None when
    the vault cannot tell (an object some other tool uploaded without one).
    ``restore_expiry`` is set only for ``RestoreState.RESTORED`` (and even then
    only when the server says when the copy expires). ``modified`` is when the
    object was stored (S3 ``Last-Modified``, a file's mtime), None when unknown.
    """

    size: int
    sha256: str | None
    storage_class: str
    restore_state: RestoreState
    restore_expiry: datetime | None = None
    modified: datetime | None = None


@runtime_checkable
class Vault(Protocol):
    """Object storage for fragments and manifests: one bucket or one directory.

    Implementations are safe to call from several threads at once (the freeze
    daemon uploads in parallel) and never overwrite an object with different
    content: an object, once stored, changes only by being deleted.
    """

    def put(self, key: str, source: Path, *, sha256: str, storage_class: str) -> None:
        """Store the local file ``source`` under ``key``.

        ``sha256`` is the hex SHA-256 the caller recorded for the file (in the
        manifest). The content is verified against it by the storing side
        (the S3 server checks the checksum sent with the upload), so a file
        that changed on disk, or bytes damaged on the way, raise DataError and
        leave nothing stored under ``key``.

        If ``key`` already exists with the same size and SHA-256 this is a
        no-op (so an interrupted freeze can simply run again). If it exists
        with other content, or with content whose SHA-256 the vault cannot
        tell, raise AlreadyExistsError and leave the stored object untouched.

        ``storage_class`` is one of
        :data:`~cryophile.storage_classes.KNOWN_STORAGE_CLASSES`; the vault stores the
        object in that class (a directory vault records the name). A class,
        header or feature the vault's service permanently refuses raises
        :class:`~cryophile.errors.ServiceRefusalError` (a ConfigError, exit 78)
        naming the setting to change; so does object lock that the service
        silently did not apply.
        """
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Describe the object under ``key``, or return None if there is none.

        Never downloads the content and never needs a restore.
        """
        ...

    def request_restore(self, key: str, *, days: int, tier: str) -> RestoreState:
        """Ask for a temporary readable copy of a cold object for ``days`` days.

        ``tier`` is one of :data:`~cryophile.storage_classes.RESTORE_TIERS`.
        Returns RESTORING when a restore was started or is already running
        (asking twice is not an error), RESTORED when a readable copy already exists, and NOT_NEEDED
        when the object's class needs no restore or the vault has no restore
        operation at all (then ``get`` works at once). A missing key raises
        NoInputError.
        """
        ...

    def get(self, key: str, dest: Path) -> None:
        """Download the object under ``key`` into the local file ``dest``.

        ``dest`` is created or truncated; on any error it is removed again, so
        the caller never sees a partial file under that name (download to a
        ``.part`` name and rename to publish). When the vault knows the
        object's SHA-256 the downloaded bytes are checked against it
        (DataError on mismatch). A cold object that is not restored raises
        TryLaterError; a missing key raises NoInputError.
        """
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Yield every key that starts with ``prefix`` (a plain string prefix,
        not a path: ``"a/b"`` matches ``"a/bc"``), in ascending order.

        ``""`` lists the whole vault. Errors are raised while iterating.
        """
        ...

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; deleting a missing key is a no-op.

        A vault that refuses (object lock retention, permissions) raises
        ServiceError.
        """
        ...

    def abort_incomplete_uploads(self, key: str) -> int:
        """Abort every incomplete upload of exactly ``key`` and return how many.

        These are what a writer killed in the middle of an upload leaves (S3's
        multipart uploads: invisible to ``list``, but their parts are billed).
        Uploads of other keys, even of keys that start with ``key``, and the
        object stored under ``key``, if any, are untouched. Call it only when
        no upload of ``key`` is running: that one would be aborted too. A
        vault that has nothing of the kind returns 0; one that may not list
        or abort them (no permission, not implemented) logs that and returns 0,
        as they cost storage, never correctness.
        """
        ...


@runtime_checkable
class SharedFiles(Protocol):
    """A vault whose objects are local files that it can hand over without a copy
    (:class:`cryophile.vault.local.DirectoryVault`). Wrappers do not pass it on:
    through a throttle, objects are downloaded with :meth:`Vault.get`."""

    def get_shared(self, key: str, dest: Path, *, sha256: str) -> bool:
        """Place the object under ``key`` at ``dest`` (which must not exist), for
        reading only; return True when ``dest`` is the stored file itself.

        True: ``dest`` is a hard link to the object, nothing was read, written or
        fsynced (the object is durable already). The caller may read, link,
        rename and unlink ``dest``, never write to it or change its mode (that
        would change the vault's object), and must check its bytes before it
        uses them: nothing here read them. False: ``dest`` is a new, fsynced
        copy whose bytes were checked against ``sha256`` in the same pass
        (DataError on a mismatch). On any error nothing is left at ``dest``.
        A missing key raises NoInputError.
        """
        ...


def check_key(key: str) -> str:
    """Return ``key`` if every vault can store it, else raise UsageError.

    A key is relative, ``/``-separated, at most :data:`MAX_KEY_BYTES` bytes of
    UTF-8, with no empty, ``.`` or ``..`` component and no NUL: such keys
    would escape a directory vault or mean different objects on different
    servers.
    """
    if not key:
        raise UsageError("empty object key")
    if "\0" in key:
        raise UsageError(f"object key contains a NUL character: {key!r}")
    if key.startswith("/"):
        raise UsageError(f"object key must be relative, not absolute: {key!r}")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise UsageError(f"object key longer than {MAX_KEY_BYTES} bytes: {key[:60]!r}...")
    for component in key.split("/"):
        if component in ("", ".", ".."):
            raise UsageError(f"object key has an empty, '.' or '..' component: {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a possible start of a valid key, else raise
    UsageError. ``""`` (everything) is allowed, and so is a trailing ``/``.
    """
    if prefix == "":
        return prefix
    # A prefix ending in "/" or in a partial component is fine; check the
    # complete components only, plus the partial last one for "..".
    body = prefix[:-1] if prefix.endswith("/") else prefix
    if body == "":
        raise UsageError(f"object key prefix must be relative, not absolute: {prefix!r}")
    check_key(body)
    return prefix


def check_sha256(sha256: str) -> str:
    """Return ``sha256`` in lower case if it is 64 hex digits, else raise UsageError."""
    if len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256):
        raise UsageError(f"not a hex SHA-256 digest: {sha256!r}")
    return sha256.lower()


def check_storage_class(storage_class: str) -> str:
    """Return ``storage_class`` if some vault knows it (S3's and GCS's names), else
    raise UsageError."""
    if storage_class not in KNOWN_STORAGE_CLASSES:
        raise UsageError(
            f"unknown storage class {storage_class!r}; "
            f"expected one of {', '.join(sorted(KNOWN_STORAGE_CLASSES))}"
        )
    return storage_class


def check_restore_args(days: int, tier: str) -> None:
    """Raise UsageError unless ``days`` ≥ 1 and ``tier`` is a Glacier tier."""
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise UsageError(f"restore days must be a whole number ≥ 1, not {days!r}")
    if tier not in RESTORE_TIERS:
        raise UsageError(
            f"unknown restore tier {tier!r}; expected one of {', '.join(sorted(RESTORE_TIERS))}"
        )

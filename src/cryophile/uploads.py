"""What this spool sent to a vault for each backup that is not complete there yet.

One record per backup, ``SPOOL/uploads/<vault>/<prefix>/<ULID>.json``, from
the moment ``backup`` claims the id until ``freeze`` has uploaded the
manifest (or has removed again what it uploaded of a backup its writer
withdrew)::

    {"version": 1, "vault": "...", "prefix": "...", "ulid": "...",
     "destination": {"provider": "s3", "bucket": "...", "endpoint": null},
     "objects": {"hosts/db1/01J.../chunk.1": "<sha256>", ...},
     "error": null, "error_at": null}

Why each part exists:

- ``destination``: where the backup was queued for (:mod:`cryophile.destination`).
  ``freeze`` refuses to send it anywhere else.
- ``objects``: every object an upload was *started* for (written before the
  upload begins, so a freezer killed mid-upload still knows), with the SHA-256
  it was sent with. A backup whose writer removed it (SIGTERM, an input error, a
  full spool) must leave nothing in the vault: the freezer deletes what it
  uploaded of it. And only what it uploaded: objects under the same id that
  this spool never sent may be another host's backup in progress (two hosts,
  one prefix, the same ``-t``), and are never touched. A retry under the same
  id replaces this spool's own stale objects.
- ``error``: the last error that stopped the backup's upload, for ``status``.

Every change is a read-modify-write under a lock on ``SPOOL/uploads`` (the
writer claims, the freezer notes uploads, both may run at once); the file is
replaced atomically, so a reader without the lock sees one version or the
next, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryophile.backup_id import BackupId, normalize_prefix, parse_ulid, parse_vault
from cryophile.destination import Destination
from cryophile.durable import make_dirs, remove_empty_dirs, replace_file
from cryophile.errors import ConfigError, DataError, StorageIOError, UsageError
from cryophile.spool import Spool, describe_os_error, read_spool_file, refuse_symlinks
from cryophile.vault.base import Vault

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_SUFFIX = ".json"


@dataclass(frozen=True)
class UploadRecord:
    """One backup's record (see the module docstring)."""

    backup_id: BackupId
    destination: Destination | None = None
    objects: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    error_at: str | None = None

    def to_json(self) -> bytes:
        """The record as stored."""
        document = {
            "version": FORMAT_VERSION, "vault": str(self.backup_id.vault),
            "prefix": self.backup_id.prefix, "ulid": str(self.backup_id.ulid),
            "destination": None if self.destination is None else self.destination.as_json(),
            "objects": dict(sorted(self.objects.items())),
            "error": self.error, "error_at": self.error_at,
        }
        return json.dumps(document, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, backup_id: BackupId, where: Path) -> UploadRecord:
        """Parse a stored record of ``backup_id``; DataError naming ``where`` if damaged."""
        try:
            return _parse(json.loads(data), backup_id)
        except ValueError as problem:
            raise DataError(f"upload record {where} is damaged: {problem}") from None


def _parse(document: Any, backup_id: BackupId) -> UploadRecord:
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a version {FORMAT_VERSION} upload record")
    if (document.get("vault"), document.get("prefix"), document.get("ulid")) != (
            str(backup_id.vault), backup_id.prefix, str(backup_id.ulid)):
        raise ValueError("it names another backup")
    raw = document.get("destination")
    destination = None if raw is None else Destination.from_json(raw)
    objects = document.get("objects")
    if not isinstance(objects, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in objects.items()):
        raise ValueError("'objects' must map keys to SHA-256 digests")
    error = document.get("error")
    error_at = document.get("error_at")
    return UploadRecord(backup_id, destination, objects,
                        error if isinstance(error, str) else None,
                        error_at if isinstance(error_at, str) else None)


class UploadRecords:
    """The records of one spool."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.root = spool.uploads_dir

    def path(self, backup_id: BackupId) -> Path:
        """``SPOOL/uploads/<vault>/<prefix>/<ULID>.json``."""
        path = self.root / str(backup_id.vault) / backup_id.prefix / f"{backup_id.ulid}{_SUFFIX}"
        refuse_symlinks(self.root, path)
        return path

    def load(self, backup_id: BackupId) -> UploadRecord | None:
        """The record of ``backup_id``, or None; DataError when it is damaged."""
        path = self.path(backup_id)
        try:
            data = read_spool_file(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return UploadRecord.from_json(data, backup_id, path)

    def backup_ids(self) -> list[BackupId]:
        """Every backup with a record, sorted."""
        found: list[BackupId] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [name for name in dirnames
                           if not os.path.islink(os.path.join(dirpath, name))]
            relative = Path(dirpath).relative_to(self.root)
            if not relative.parts:
                continue
            for name in filenames:
                if not name.endswith(_SUFFIX):
                    continue
                try:
                    vault = parse_vault(relative.parts[0])
                    prefix = normalize_prefix("/".join(relative.parts[1:]))
                    ulid = parse_ulid(name.removesuffix(_SUFFIX))
                except UsageError:
                    continue
                found.append(BackupId(vault, prefix, ulid))
        return sorted(found)

    # -- changes, each under the lock -----------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the records' lock; an OSError inside becomes a StorageIOError naming it
        (a full spool must be one line, not a traceback)."""
        try:
            make_dirs(self.root)
            # flock on the directory itself: no lock file is left behind.
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            raise StorageIOError(f"cannot write upload records in {self.root}: "
                                 f"{describe_os_error(error)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        except OSError as error:
            raise StorageIOError(f"cannot write upload records in {self.root}: "
                                 f"{describe_os_error(error)}") from None
        finally:
            os.close(fd)

    def _save(self, record: UploadRecord) -> None:
        path = self.path(record.backup_id)
        make_dirs(path.parent)
        replace_file(path, record.to_json())

    def _remove(self, backup_id: BackupId) -> None:
        path = self.path(backup_id)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        remove_empty_dirs(path.parent, self.root)

    def claim(self, backup_id: BackupId, destination: Destination) -> None:
        """Record that ``backup_id`` is queued for ``destination`` (``backup``, at claim).

        A record left by an earlier attempt under the same id keeps its
        objects (the freezer still has to replace or remove them). If those
        objects went to another place, raise ConfigError: this configuration
        would strand them.
        """
        with self._locked():
            old = self.load(backup_id)
            if (old is not None and old.objects and old.destination is not None
                    and not old.destination.same_place(destination)):
                raise ConfigError(
                    f"backup {backup_id}: an earlier attempt under this id uploaded "
                    f"{len(old.objects)} object(s) to {old.destination.describe()}, but this "
                    f"backup is for {destination.describe()}; run 'cryophile freeze' with the "
                    "configuration of that attempt to remove them first, or use another -t/-u")
            base = old if old is not None else UploadRecord(backup_id)
            self._save(replace(base, destination=destination, error=None, error_at=None))

    def retarget(self, backup_id: BackupId, destination: Destination) -> None:
        """Bind ``backup_id`` to ``destination`` instead (``freeze --retarget``). What was
        uploaded to the old place is forgotten: it is not where this record now points."""
        with self._locked():
            record = self.load(backup_id) or UploadRecord(backup_id)
            self._save(replace(record, destination=destination, objects={}))

    def note_upload(self, backup_id: BackupId, key: str, sha256: str) -> str | None:
        """Record, before it starts, an upload of ``key`` with ``sha256``.

        Returns the SHA-256 recorded for ``key`` before (an earlier upload of
        it by this spool), or None.
        """
        with self._locked():
            record = self.load(backup_id) or UploadRecord(backup_id)
            previous = record.objects.get(key)
            if previous != sha256:
                self._save(replace(record, objects={**record.objects, key: sha256}))
            return previous

    def forget(self, backup_id: BackupId, removed: Mapping[str, str], *,
               drop_if_unused: bool) -> None:
        """Take the objects in ``removed`` (key → the SHA-256 they had) out of the record.

        With ``drop_if_unused``, the record goes too once no object is left in it.
        """
        with self._locked():
            record = self.load(backup_id)
            if record is None:
                return
            objects = {key: sha for key, sha in record.objects.items()
                       if removed.get(key) != sha}
            if not objects and drop_if_unused:
                self._remove(backup_id)
            elif objects != record.objects:
                self._save(replace(record, objects=objects))

    def release(self, backup_id: BackupId) -> None:
        """Drop the record if nothing was uploaded under it (a writer that failed early)."""
        with self._locked():
            record = self.load(backup_id)
            if record is not None and not record.objects:
                self._remove(backup_id)

    def set_error(self, backup_id: BackupId, error: str | None) -> None:
        """Record (or clear, with None) the error that stopped the backup's upload."""
        with self._locked():
            record = self.load(backup_id)
            if record is None and error is None:
                return
            record = record or UploadRecord(backup_id)
            if record.error == error:
                return
            when = None if error is None else _now()
            self._save(replace(record, error=error, error_at=when))

    def remove(self, backup_id: BackupId) -> None:
        """Drop the record: the backup is complete in its vault (or gone entirely)."""
        with self._locked():
            self._remove(backup_id)


def delete_own(vault: Vault, objects: Mapping[str, str]) -> list[str]:
    """Delete each object of ``objects`` (key → the SHA-256 this spool uploaded under it)
    that still holds what this spool uploaded; return the keys deleted.

    An object whose checksum differs is not ours (another host wrote that key
    since) and is left alone. An incomplete multipart upload of the key that a
    killed freezer left is aborted too.
    """
    deleted = []
    for key, sha256 in sorted(objects.items()):
        abort_incomplete(vault, key)
        info = vault.stat(key)
        if info is not None and info.sha256 == sha256:
            vault.delete(key)
            deleted.append(key)
    return deleted


def abort_incomplete(vault: Vault, key: str) -> None:
    """Abort the incomplete uploads of ``key`` (S3's multipart uploads) that a killed
    freezer left: their parts are billed, and invisible to ``list``."""
    aborted = vault.abort_incomplete_uploads(key)
    if aborted:
        logger.info("aborted %d incomplete upload(s) of %s", aborted, key,
                    extra={"event": "uploads-aborted", "key": key})


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def describe_objects(keys: Any, limit: int = 5) -> str:
    """``chunk.1, chunk.2, … (7 in all)`` from object keys, for messages."""
    names = sorted(str(key).rsplit("/", 1)[-1] for key in keys)
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")

"""Backups whose writer died before its manifest: finding them, and removing what is left.

A backup killed before its manifest (``chunk.0``) can never be completed:
``status`` lists it as abandoned and ``freeze`` leaves it alone. What stays
behind is ``backup/ID`` (the released lock, a ``.part``), ``freeze/ID``
(fragments not uploaded yet) and, in the vault, the fragments a freezer
uploaded while the writer was alive. Nothing else removes them, and the id
stays taken (a cron job's ``backup -t TIME`` is refused).

:func:`remove` deletes all three: the vault's objects first, then
``freeze/ID``, then ``backup/ID``, then the upload record, holding the
backup's lock *shared*. In the vault it deletes only what this spool's
upload record (:mod:`cryophile.uploads`) says it uploaded, and only while
the object still holds that upload: other objects under the same id may be
another host's backup in progress; they are counted and left alone. A
writer that is alive holds it exclusively, so it is never touched; a shared
holder does not look like a writer to ``freeze`` (which then keeps leaving
the backup alone instead of uploading it); no new writer can claim the id
meanwhile, since ``backup/ID`` exists until the very end. An interrupted
removal leaves a backup that is still abandoned, for the next run; two runs
at once both succeed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sys
import uuid
from dataclasses import dataclass

from cryophile.backup_id import SIGNATURE_NAME, BackupId, fragment_name
from cryophile.destination import Destination
from cryophile.durable import remove_empty_dirs
from cryophile.errors import StorageIOError
from cryophile.inventory import BackupState, scan_spool
from cryophile.spool import LOCK_NAME, Queue, Spool, describe_os_error, refuse_symlinks
from cryophile.uploads import UploadRecords, delete_own
from cryophile.vault.base import Vault

REMOVE, REMOVED, LEFT = "remove", "removed", "left"


@dataclass
class Abandoned:
    """One abandoned backup, what the spool holds of it, and what became of it."""

    backup_id: BackupId
    spool_fragments: int
    spool_bytes: int
    vault_objects: int = 0
    #: Objects under its id that this spool did not upload: never deleted here.
    foreign_objects: int = 0
    action: str = REMOVE
    reason: str | None = None  # why it was left alone

    def as_json(self) -> dict[str, object]:
        """One entry of ``prune --abandoned --json``."""
        return {"id": str(self.backup_id), "vault": str(self.backup_id.vault),
                "prefix": self.backup_id.prefix, "ulid": str(self.backup_id.ulid),
                "action": self.action, "spool_fragments": self.spool_fragments,
                "spool_bytes": self.spool_bytes, "vault_objects": self.vault_objects,
                "foreign_objects": self.foreign_objects, "reason": self.reason}


def find(spool: Spool, vault_id: uuid.UUID, prefix: str | None) -> list[Abandoned]:
    """The spool's abandoned backups of ``vault_id`` (below ``prefix``), oldest first."""
    found = []
    for backup_id, record in sorted(scan_spool(spool, vault=vault_id, prefix=prefix).items()):
        if record.upload_state is not BackupState.INCOMPLETE:
            continue
        fragments = record.freeze.fragments_waiting if record.freeze else 0
        size = ((record.freeze.bytes_waiting if record.freeze else 0)
                + (record.writer.part_bytes if record.writer else 0))
        found.append(Abandoned(backup_id, fragments, size))
    return found


def vault_keys(vault: Vault, backup_id: BackupId) -> list[str] | None:
    """The backup's fragments (and manifest signature) in ``vault``; None if it has a manifest.

    Only ``chunk.N`` and ``chunk.0.sig`` directly below the backup's key are
    listed: anything else there is not ours.
    """
    base = f"{backup_id.key_prefix}/"
    keys = []
    for key in vault.list(base):
        name = key[len(base):]
        if name == fragment_name(0):
            return None
        if name == SIGNATURE_NAME or (name.startswith("chunk.") and name[6:].isascii()
                                      and name[6:].isdigit()):
            keys.append(key)
    return keys


def remove(spool: Spool, vault: Vault, destination: Destination, item: Abandoned, *,
           dry_run: bool) -> None:
    """Delete what this spool uploaded of ``item`` from ``vault`` (at ``destination``),
    then its spool directories and its upload record.

    Sets ``item.action`` to REMOVED (or stays REMOVE on a dry run) or LEFT with
    a reason when it is no longer abandoned. Vault errors propagate (the spool
    is then untouched); symlinked spool directories raise DataError.
    """
    backup_id = item.backup_id
    work = spool.backup_dir(Queue.BACKUP, backup_id)
    queued = spool.backup_dir(Queue.FREEZE, backup_id)
    for directory in (work, queued):
        refuse_symlinks(spool.root, directory)
    lock = _take_lock(work)
    if isinstance(lock, str):
        item.action, item.reason = LEFT, lock
        return
    try:
        if (queued / fragment_name(0)).exists():
            item.action, item.reason = LEFT, "its manifest is there now"
            return
        keys = vault_keys(vault, backup_id)
        if keys is None:
            item.action, item.reason = LEFT, "the vault holds its manifest"
            return
        records = UploadRecords(spool)
        record = records.load(backup_id)
        if (record is not None and record.objects and record.destination is not None
                and not record.destination.same_place(destination)):
            item.action, item.reason = LEFT, (
                f"what was uploaded of it is in {record.destination.describe()}, not in "
                f"{destination.describe()}: run prune with the configuration it was made with")
            return
        uploaded = dict(record.objects) if record is not None else {}
        item.vault_objects = sum(1 for key in keys if key in uploaded)
        item.foreign_objects = len(keys) - item.vault_objects
        if dry_run:
            return
        delete_own(vault, uploaded)
        try:
            _remove_tree(queued)
            remove_empty_dirs(queued.parent, spool.queue_dir(Queue.FREEZE))
            if lock is not None:
                # Only a backup/ID whose lock we hold: without one, the id was free
                # the moment freeze/ID went, and a new writer may have claimed it.
                _remove_tree(work)  # its lock file too; our fd keeps the lock meanwhile
                remove_empty_dirs(work.parent, spool.queue_dir(Queue.BACKUP))
        except OSError as error:
            raise StorageIOError(f"cannot remove {backup_id} from the spool: "
                                 f"{describe_os_error(error)}") from None
        # Last: an interrupted removal keeps the record for the next run (or freeze).
        records.forget(backup_id, uploaded, drop_if_unused=True)
        item.action = REMOVED
    finally:
        if lock is not None:
            os.close(lock)


def _remove_tree(directory: os.PathLike[str]) -> None:
    """``rm -r`` that never follows a symlink and takes what vanishes meanwhile as removed."""
    def vanished(function: object, path: str, error: BaseException) -> None:
        if not isinstance(error, FileNotFoundError):
            raise error

    if sys.version_info >= (3, 12):
        shutil.rmtree(directory, onexc=vanished)
    else:
        shutil.rmtree(directory, onerror=lambda f, p, info: vanished(f, p, info[1]))


def _take_lock(work: os.PathLike[str]) -> int | str | None:
    """The writer's lock, held shared (an fd); None without ``backup/ID``; else why not."""
    if not os.path.isdir(work):
        return None
    try:
        fd = os.open(os.path.join(work, LOCK_NAME), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        # backup/ID is made a moment before its lock: a writer may be starting.
        return "no lock file: a writer may be starting"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "its lock file is a symbolic link; refusing to follow it"
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return "its writer is alive"
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return fd

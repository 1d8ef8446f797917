"""The spool: four queues of backups on local disk, and the atomic hand-off between them.

Layout (DESIGN.md §1)::

    SPOOL/backup/<vault>/<prefix>/<ULID>/chunk.N.part   being written by ``backup``
    SPOOL/freeze/<vault>/<prefix>/<ULID>/chunk.N        complete, waiting for upload
    SPOOL/thaw/<vault>/<prefix>/<ULID>/...              restore requests and their state
    SPOOL/restore/<vault>/<prefix>/<ULID>/chunk.N       downloaded, waiting for restore

A consumer only ever sees complete files: a file is written under a name no
consumer looks at, fsynced, then hard-linked into place (a link never clobbers
an existing file) and the directories are fsynced. Spool directories are 0700
and files 0600: they hold ciphertext, but names and sizes are private too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator, Mapping
from enum import StrEnum
from pathlib import Path

from cryophile.backup_id import BackupId, normalize_prefix, parse_ulid, parse_vault
from cryophile.durable import DIR_MODE, FILE_MODE, fsync_dir, make_dirs
from cryophile.errors import AlreadyExistsError, StorageIOError, UsageError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class Queue(StrEnum):
    """The spool's queues, named as their directories."""

    BACKUP = "backup"
    FREEZE = "freeze"
    THAW = "thaw"
    RESTORE = "restore"


def default_spool_root(env: Mapping[str, str], configured: str | None = None) -> Path:
    """Where the spool is when ``-S`` is not given.

    ``CRYOPHILE_SPOOL``, else the configuration's ``spool``, else
    ``/var/spool/cryophile`` for root, else ``$XDG_STATE_HOME/cryophile/spool``
    (``~/.local/state/cryophile/spool``).
    """
    if env.get("CRYOPHILE_SPOOL"):
        return Path(env["CRYOPHILE_SPOOL"])
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/spool/cryophile")
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "cryophile" / "spool"


class Spool:
    """An opened spool directory. Construct with :meth:`open`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def open(cls, root: Path, *, create_root: bool) -> Spool:
        """Check the spool and create its queue directories (0700).

        ``create_root`` creates a missing root (the default location); an
        explicitly named spool must exist. Raises StorageIOError naming the
        path when the spool is missing, not a directory, or not writable.
        """
        if not root.exists():
            if not create_root:
                raise StorageIOError(f"spool directory {str(root)!r} does not exist")
            try:
                make_dirs(root)
            except OSError as error:
                raise StorageIOError(f"cannot create spool directory {str(root)!r}: "
                                     f"{error.strerror}") from None
        if not root.is_dir():
            raise StorageIOError(f"spool {str(root)!r} is not a directory")
        spool = cls(root)
        try:
            for queue in Queue:
                with contextlib.suppress(FileExistsError):
                    spool.queue_dir(queue).mkdir(mode=DIR_MODE)
        except OSError as error:
            raise StorageIOError(f"spool {str(root)!r} is not writable: {error.strerror}") from None
        if not os.access(root, os.W_OK | os.X_OK):
            raise StorageIOError(f"spool {str(root)!r} is not writable")
        return spool

    def queue_dir(self, queue: Queue) -> Path:
        """The directory of one queue."""
        return self.root / queue.value

    def backup_dir(self, queue: Queue, backup_id: BackupId) -> Path:
        """``SPOOL/<queue>/<vault>/<prefix>/<ULID>``."""
        return self.queue_dir(queue) / backup_id.relative_path

    def is_taken(self, backup_id: BackupId) -> Queue | None:
        """The first queue that already holds ``backup_id``, or None."""
        for queue in Queue:
            if self.backup_dir(queue, backup_id).exists():
                return queue
        return None

    def create_backup(self, backup_id: BackupId) -> BackupLock:
        """Claim ``backup_id`` for writing: exclusive ``mkdir`` of ``backup/ID``.

        Raises AlreadyExistsError when the id is taken in any queue. The
        returned lock is held (flock) until released, so other processes can
        tell a backup being written from one whose writer died.
        """
        taken = self.is_taken(backup_id)
        if taken is not None:
            raise AlreadyExistsError(f"backup {backup_id} already exists (in the {taken} queue)")
        work = self.backup_dir(Queue.BACKUP, backup_id)
        make_dirs(work.parent)
        try:
            work.mkdir(mode=DIR_MODE)
        except FileExistsError:
            raise AlreadyExistsError(f"backup {backup_id} already exists") from None
        lock = BackupLock(work / LOCK_NAME)
        # Re-check after claiming: another writer may have finished this id
        # between our check and our mkdir (it then removed its backup/ dir).
        for queue in (Queue.FREEZE, Queue.THAW, Queue.RESTORE):
            if self.backup_dir(queue, backup_id).exists():
                lock.release()
                os.unlink(work / LOCK_NAME)
                work.rmdir()
                raise AlreadyExistsError(
                    f"backup {backup_id} already exists (in the {queue} queue)")
        make_dirs(self.backup_dir(Queue.FREEZE, backup_id))
        return lock

    def backups(self, queue: Queue) -> Iterator[BackupId]:
        """Every backup directory in ``queue`` (a directory whose name is a ULID)."""
        base = self.queue_dir(queue)
        for dirpath, dirnames, _ in os.walk(base):
            relative = Path(dirpath).relative_to(base)
            if len(relative.parts) < 2:
                continue
            try:
                vault = parse_vault(relative.parts[0])
                ulid = parse_ulid(relative.name)
                prefix = normalize_prefix("/".join(relative.parts[1:-1]))
            except UsageError:
                continue
            dirnames.clear()
            yield BackupId(vault, prefix, ulid)


class BackupLock:
    """An exclusive flock on ``backup/ID/.lock``, held while a backup is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, FILE_MODE)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def is_being_written(lock_path: Path) -> bool:
    """True when a live process holds the backup lock at ``lock_path``."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def publish(part: Path, final: Path) -> None:
    """Hand a complete, fsynced file over: link ``part`` to ``final``, unlink ``part``.

    The link never clobbers: an existing ``final`` raises AlreadyExistsError and
    ``part`` stays. Both directories are fsynced, so after a crash ``final``
    either does not exist or is complete.
    """
    try:
        os.link(part, final)
    except FileExistsError:
        raise AlreadyExistsError(f"{final} already exists; refusing to overwrite it") from None
    fsync_dir(final.parent)
    os.unlink(part)
    if part.parent != final.parent:
        fsync_dir(part.parent)


def write_file_durably(part: Path, final: Path, data: bytes) -> None:
    """Write ``data`` to ``part`` (new, 0600), fsync it and :func:`publish` it as ``final``."""
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    publish(part, final)


def describe_os_error(error: OSError) -> str:
    """A short reason for an OSError, with a hint for the full-disk case."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{error.strerror} (the spool's file system is full)"
    if error.errno == errno.EFBIG:
        return f"{error.strerror} (file size limit reached)"
    return error.strerror or str(error)

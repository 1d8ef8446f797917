"""The spool: four queues of backups on local disk, and the atomic hand-off between them.

Layout (DESIGN.md §1)::

    SPOOL/backup/<vault>/<prefix>/<ULID>/chunk.N.part   being written by ``backup``
    SPOOL/freeze/<vault>/<prefix>/<ULID>/chunk.N        complete, waiting for upload
    SPOOL/thaw/<vault>/<prefix>/<ULID>/...              restore requests and their state
    SPOOL/restore/<vault>/<prefix>/<ULID>/chunk.N       downloaded, waiting for restore
    SPOOL/uploads/<vault>/<prefix>/<ULID>.json          what freeze sent of a backup
                                                        (:mod:`cryophile.uploads`)
    SPOOL/run/<daemon>.pid                              a running daemon's presence
                                                        (:mod:`cryophile.presence`)
    SPOOL/run/uploading.json                            a freezer's uploads now
                                                        (:mod:`cryophile.in_flight`)
    SPOOL/run/restore/<hash>.lock                       held by the one restore of a backup
    SPOOL/run/backup-wait/<hash>.json                   a backup waiting for spool space
                                                        (:mod:`cryophile.backpressure`)
    SPOOL/prune/<vault>.json                            deletions under way (prune's journal)
    SPOOL/.cryophile-<purpose>-<random>/                a command's private scratch directory
                                                        (:meth:`Spool.scratch`)

A consumer only ever sees complete files: a file is written under a name no
consumer looks at, fsynced, then hard-linked into place (a link never clobbers
an existing file) and the directories are fsynced. Spool directories are 0700
and files 0600: they hold ciphertext, but names and sizes are private too.

A spool is trusted only when it is ours: its root and every queue directory
must be owned by the user running cryophile and writable by nobody else (as
ssh's StrictModes checks ``~/.ssh``). A world-writable spool root would let
another local user plant a "restored" backup made from the public
certificate, which ``restore`` would then write out as ours.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import pwd
import stat
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from enum import StrEnum
from pathlib import Path

from cryophile.backup_id import BackupId, fragment_name, normalize_prefix, parse_ulid, parse_vault
from cryophile.durable import DIR_MODE, FILE_MODE, fsync_dir, make_dirs, remove_empty_dirs
from cryophile.errors import AlreadyExistsError, DataError, StorageIOError, UsageError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
UPLOADS_DIR = "uploads"
RUN_DIR = "run"


#: The dedicated system user the daemons run as (contrib/systemd/cryophile.sysusers.conf).
SERVICE_USER = "cryophile"


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


class Queue(StrEnum):
    """The spool's queues, named as their directories."""

    BACKUP = "backup"
    FREEZE = "freeze"
    THAW = "thaw"
    RESTORE = "restore"


def default_spool_root(env: Mapping[str, str], configured: str | None = None) -> Path:
    """Where the spool is when ``-S`` is not given.

    ``CRYOPHILE_SPOOL``, else the configuration's ``spool``, else
    ``/var/spool/cryophile`` for root and for the dedicated system user
    :data:`SERVICE_USER` (the systemd units run as it), else
    ``$XDG_STATE_HOME/cryophile/spool`` (``~/.local/state/cryophile/spool``).
    """
    if env.get("CRYOPHILE_SPOOL"):
        return Path(env["CRYOPHILE_SPOOL"])
    if configured:
        return Path(configured)
    if os.geteuid() == 0 or _user_name(os.geteuid()) == SERVICE_USER:
        return Path("/var/spool/cryophile")
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "cryophile" / "spool"


class Spool:
    """An opened spool directory. Construct with :meth:`open`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def open(cls, root: Path, *, create_root: bool, read_only: bool = False) -> Spool:
        """Check the spool and create its queue directories (0700).

        ``create_root`` creates a missing root (the default location); an
        explicitly named spool must exist. Raises StorageIOError naming the
        path when the spool is missing, not a directory, or not writable.
        ``read_only`` (list, status) creates nothing and needs no write
        permission: a missing default root or queue is simply empty.
        """
        if read_only and not root.exists() and create_root:
            return cls(root)
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
        check_private(root, "spool directory", owner=not read_only)
        if read_only:
            spool._refuse_linked_queues()
            spool._check_queues(owner=False)
            return spool
        try:
            for queue in Queue:
                with contextlib.suppress(FileExistsError):
                    spool.queue_dir(queue).mkdir(mode=DIR_MODE)
        except OSError as error:
            raise StorageIOError(f"spool {str(root)!r} is not writable: {error.strerror}") from None
        spool._refuse_linked_queues()
        spool._check_queues(owner=True)
        if not os.access(root, os.W_OK | os.X_OK):
            raise StorageIOError(f"spool {str(root)!r} is not writable")
        return spool

    def _check_queues(self, *, owner: bool) -> None:
        for directory in [*(self.queue_dir(queue) for queue in Queue), self.uploads_dir,
                          self.run_dir]:
            if os.path.lexists(directory):
                check_private(directory, "spool queue", owner=owner)

    @property
    def uploads_dir(self) -> Path:
        """``SPOOL/uploads``: the upload records (:mod:`cryophile.uploads`)."""
        return self.root / UPLOADS_DIR

    def restore_lock_path(self, backup_id: BackupId) -> Path:
        """``SPOOL/run/restore/<hash>.lock``: held by the one restore of ``backup_id``
        running on this spool (a hash: prefixes hold slashes and may be long)."""
        digest = hashlib.sha256(str(backup_id).encode()).hexdigest()[:32]
        return self.run_dir / "restore" / f"{digest}.lock"

    @property
    def backup_waits_dir(self) -> Path:
        """``SPOOL/run/backup-wait``: one record per backup waiting for uploads to free
        spool space (:mod:`cryophile.backpressure`)."""
        return self.run_dir / "backup-wait"

    def backup_wait_path(self, backup_id: BackupId) -> Path:
        """``SPOOL/run/backup-wait/<hash>.json``: ``backup_id``'s wait record."""
        digest = hashlib.sha256(str(backup_id).encode()).hexdigest()[:32]
        return self.backup_waits_dir / f"{digest}.json"

    @property
    def run_dir(self) -> Path:
        """``SPOOL/run``: presence files of running daemons (:mod:`cryophile.presence`)."""
        return self.root / RUN_DIR

    @property
    def in_flight_path(self) -> Path:
        """``SPOOL/run/uploading.json``: a freezer's uploads now (:mod:`cryophile.in_flight`)."""
        return self.run_dir / "uploading.json"

    def _refuse_linked_queues(self) -> None:
        for queue in Queue:
            # A queue that is a symlink would make backup write, freeze upload and
            # restore delete wherever it points: refuse it (the root may be a link).
            if self.queue_dir(queue).is_symlink():
                raise StorageIOError(f"spool queue {str(self.queue_dir(queue))!r} is a "
                                     "symbolic link; refusing to follow it")

    def queue_dir(self, queue: Queue) -> Path:
        """The directory of one queue."""
        return self.root / queue.value

    def backup_dir(self, queue: Queue, backup_id: BackupId) -> Path:
        """``SPOOL/<queue>/<vault>/<prefix>/<ULID>``.

        Raises DataError when a component of it below the queue directory is a
        symbolic link: the spool is cryophile's own tree, and a link planted in
        it must never make a command write, upload or delete elsewhere.
        """
        path = self.queue_dir(queue) / backup_id.relative_path
        refuse_symlinks(self.queue_dir(queue), path)
        return path

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
        tell a backup being written from one whose writer died. Raises
        StorageIOError naming the path when the spool cannot take the claim
        (no space or no inodes left); then nothing of it stays behind, since a
        ``backup/ID`` without its lock would look like a dead writer and block
        the id for good.
        """
        taken = self.is_taken(backup_id)
        if taken is not None:
            raise AlreadyExistsError(f"backup {backup_id} already exists (in the {taken} "
                                     f"queue){self._dead_writer_hint(backup_id)}")
        work = self.backup_dir(Queue.BACKUP, backup_id)
        try:
            _make_dirs_racing_removals(work, exclusive=True)
        except FileExistsError:
            raise AlreadyExistsError(f"backup {backup_id} already exists") from None
        except OSError as error:  # not claimed: nothing of ours to remove
            raise StorageIOError(f"cannot create {work}: {describe_os_error(error)}") from None
        try:
            lock = BackupLock(work / LOCK_NAME)
        except OSError as error:
            self._unclaim(backup_id, None)
            raise StorageIOError(f"cannot create {work / LOCK_NAME}: "
                                 f"{describe_os_error(error)}") from None
        # Re-check after claiming: another writer may have finished this id
        # between our check and our mkdir (it then removed its backup/ dir).
        for queue in (Queue.FREEZE, Queue.THAW, Queue.RESTORE):
            if self.backup_dir(queue, backup_id).exists():
                lock.release()
                os.unlink(work / LOCK_NAME)
                work.rmdir()
                raise AlreadyExistsError(
                    f"backup {backup_id} already exists (in the {queue} queue)")
        freeze_dir = self.backup_dir(Queue.FREEZE, backup_id)
        try:
            _make_dirs_racing_removals(freeze_dir, exclusive=False)
        except OSError as error:
            self._unclaim(backup_id, lock)
            raise StorageIOError(f"cannot create {freeze_dir}: "
                                 f"{describe_os_error(error)}") from None
        return lock

    def _dead_writer_hint(self, backup_id: BackupId) -> str:
        """How to free an id whose writer was killed before its manifest ("" otherwise):
        nothing removes such a leftover by itself, and ``-t TIME`` always names that id."""
        work = self.backup_dir(Queue.BACKUP, backup_id)
        queued = self.backup_dir(Queue.FREEZE, backup_id)
        if (not work.is_dir() or is_being_written(work / LOCK_NAME)
                or (queued / fragment_name(0)).exists()):
            return ""
        return (f"; its writer died before the manifest: remove {work} and {queued} "
                f"('cryophile prune -v {backup_id.vault} --abandoned') to use this id again")

    def abandon_claim(self, backup_id: BackupId, lock: BackupLock) -> None:
        """Give up a claim made by :meth:`create_backup` before anything was written."""
        self._unclaim(backup_id, lock)

    def _unclaim(self, backup_id: BackupId, lock: BackupLock | None) -> None:
        """Undo a claim that could not be finished: the lock, ``backup/ID`` and the
        empty directories our ``mkdir -p`` left in both queues (unlink and rmdir
        work on a full file system)."""
        work = self.backup_dir(Queue.BACKUP, backup_id)
        if lock is not None:
            lock.release()
        with contextlib.suppress(FileNotFoundError):
            (work / LOCK_NAME).unlink()
        remove_empty_dirs(work, self.queue_dir(Queue.BACKUP))
        remove_empty_dirs(self.backup_dir(Queue.FREEZE, backup_id), self.queue_dir(Queue.FREEZE))

    def backups(self, queue: Queue) -> Iterator[BackupId]:
        """Every backup directory in ``queue`` (a directory whose name is a ULID)."""
        base = self.queue_dir(queue)
        for dirpath, dirnames, _ in os.walk(base):
            for name in dirnames:
                # os.walk never descends into a symlinked directory: say so.
                if os.path.islink(os.path.join(dirpath, name)):
                    logger.warning("ignoring %s: a symbolic link in the spool is never "
                                   "followed", os.path.join(dirpath, name))
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

    @contextlib.contextmanager
    def scratch(self, purpose: str) -> Iterator[Path]:
        """A new private (0700) directory in the spool, removed with what it holds on exit.

        For downloads a command reads and throws away (manifests, signatures,
        fragments it checks): ``SPOOL/.cryophile-PURPOSE-RANDOM``, on the
        spool's file system, invisible to the queues, and never shared with
        another command or process. ``purpose`` (a word: ``verify``) names it
        for whoever finds one left by a killed process. Raises OSError when
        the spool is not writable.
        """
        with tempfile.TemporaryDirectory(prefix=f".cryophile-{purpose}-", dir=self.root) as name:
            yield Path(name)

    def prune_journal(self, vault_id: uuid.UUID) -> Path:
        """``SPOOL/prune/<vault>.json``: the deletions ``prune`` has begun in one vault
        (see :class:`cryophile.prune.Journal`)."""
        return self.root / "prune" / f"{vault_id}.json"


_CREATE_ATTEMPTS = 5


def _make_dirs_racing_removals(directory: Path, *, exclusive: bool) -> None:
    """``mkdir -p directory`` (``exclusive``: the last ``mkdir`` must create it).

    A backup or freeze that finishes removes the parents it leaves empty
    (:func:`remove_empty_dirs`); when one vanishes between our ``mkdir -p``
    and our ``mkdir`` (FileNotFoundError), we start again instead of failing
    a concurrent backup of the same prefix.
    """
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            make_dirs(directory.parent)
            if exclusive:
                directory.mkdir(mode=DIR_MODE)
            else:
                make_dirs(directory)
            return
        except FileNotFoundError:
            if attempt == _CREATE_ATTEMPTS - 1:
                raise


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


def check_private(path: Path, what: str, *, owner: bool = True) -> None:
    """Raise StorageIOError unless ``path`` is writable by its owner alone (and,
    with ``owner``, owned by the user running this process).

    A spool anyone else can write to is not ours to trust: another user could
    put a backup of their own into the restore queue, or a link anywhere. The
    message says how to fix it.
    """
    try:
        info = path.stat()
    except OSError as error:
        raise StorageIOError(f"cannot use {what} {str(path)!r}: {error.strerror}") from None
    user = os.geteuid()
    if owner and info.st_uid != user and _user_name(info.st_uid) == SERVICE_USER:
        raise StorageIOError(
            f"{what} {str(path)!r} belongs to the {SERVICE_USER} user (the daemons' user), not "
            f"to this one (uid {user}): run the command as that user, e.g. runuser -u "
            f"{SERVICE_USER} -- cryophile ... (another user's spool is never trusted)")
    if owner and info.st_uid != user:
        raise StorageIOError(
            f"{what} {str(path)!r} is owned by uid {info.st_uid}, not by this user "
            f"(uid {user}): another user's spool is never trusted; use a spool of your own "
            f"(-S DIR), or fix it with: chown {user} {path}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(info.st_mode)
        raise StorageIOError(
            f"{what} {str(path)!r} is writable by others (mode {mode:04o}): another local "
            f"user could plant files in it, so it is not trusted; fix it with: chmod go-w "
            f"{path}")


def refuse_symlinks(base: Path, path: Path) -> None:
    """Raise DataError when ``path`` or a directory between ``base`` and it is a symlink.

    Components that do not exist (yet) end the check: nothing can be followed there.
    """
    current = base
    for part in path.relative_to(base).parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISLNK(mode):
            raise DataError(f"{current} is a symbolic link; refusing to follow it (nothing "
                            "in the spool may point elsewhere)")


def read_spool_file(path: Path) -> bytes:
    """The bytes of a small spool file (manifest, state), never through a symlink.

    FileNotFoundError when it does not exist; DataError when it is a symlink.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DataError(f"{path} is a symbolic link; refusing to follow it") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


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
    """Write ``data`` to ``part`` (new, 0600), fsync it and :func:`publish` it as ``final``.

    On failure ``part`` is removed again: a full spool (ENOSPC on the write,
    or on the link: tmpfs counts links against its inodes) must not leave a
    file that keeps ``backup/ID`` from being cleaned up and its id taken.
    """
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        publish(part, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        raise


def describe_os_error(error: OSError) -> str:
    """A short reason for an OSError, with a hint for the full-disk case."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{error.strerror} (the spool's file system is full)"
    if error.errno == errno.EFBIG:
        return f"{error.strerror} (file size limit reached)"
    return error.strerror or str(error)

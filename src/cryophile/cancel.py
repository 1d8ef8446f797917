"""Cancelling a restore: ``cryophile thaw --cancel`` and ``restore --cancel``.

What the spool holds of a backup being restored goes: its thaw request
(``SPOOL/thaw/ID``, with the partial downloads ``chunk.N.part`` in it) and its
restore queue (``SPOOL/restore/ID``). Nothing in the vault is touched: Glacier
restores already asked for cannot be withdrawn (and are billed); their copies
simply expire after the request's days.

Crash-safe, in this order:

1. the backup's restore lock is held (a restore of it running: TryLaterError),
   so no restore starts or files a request meanwhile;
2. the request is renamed out of the queue, to ``SPOOL/thaw/VAULT/PREFIX/.ULID.cancelled``
   (a name no scanner takes for a request): atomically, the daemon no longer
   sees it, and a pass of it under way fails at its next step in the old path;
3. its lock is taken there, which waits for such a pass to let go, so that no
   thaw writes to the restore queue any more;
4. the restore queue goes, then the renamed request.

Killed anywhere, the spool holds either the request (before 2) or no request:
a restore queue without a request (which a new restore simply reuses) and
perhaps the renamed request, both listed by ``status`` with this command,
which finishes the job when run again. Never a request whose downloaded
fragments are gone (the daemon would call it complete and a restore would
wait for them forever).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryophile import thaw_request
from cryophile.backup_id import BackupId
from cryophile.durable import fsync_dir, remove_empty_dirs
from cryophile.errors import TryLaterError
from cryophile.leftovers import CANCELLED_SUFFIX
from cryophile.restoring import hold_restore_lock
from cryophile.spool import LOCK_NAME, Queue, Spool, refuse_symlinks

logger = logging.getLogger(__name__)

#: After this long waiting for a thaw pass to let go of the request, say so.
_WAIT_NOTICE_SECONDS = 1.0


@dataclass(frozen=True)
class Cancelled:
    """What a cancel removed: ``request`` (it existed), the partial downloads in it,
    the restore queue's files."""

    backup_id: BackupId
    request: bool
    partial_files: int
    partial_bytes: int
    restore_files: int
    restore_bytes: int

    @property
    def nothing(self) -> bool:
        """Nothing of the backup was in the spool."""
        return not self.request and not self.restore_files and not self.partial_files

    def describe(self) -> str:
        """One line for the user."""
        if self.nothing:
            return (f"nothing to cancel for {self.backup_id}: no thaw request and no restore "
                    "queue of it in this spool")
        parts = []
        if self.request:
            parts.append("its thaw request")
        if self.partial_files:
            parts.append(f"{self.partial_files} partial download(s) ({self.partial_bytes} bytes)")
        if self.restore_files:
            parts.append(f"its restore queue ({self.restore_files} file(s), "
                         f"{self.restore_bytes} bytes)")
        return (f"cancelled the restore of {self.backup_id}: removed {', '.join(parts)}; "
                "Glacier restores already requested cannot be withdrawn (they are billed "
                "and expire by themselves)")


def cancelled_dir(spool: Spool, backup_id: BackupId) -> Path:
    """``SPOOL/thaw/VAULT/PREFIX/.ULID.cancelled``: a request being cancelled."""
    directory = thaw_request.request_dir(spool, backup_id)
    return directory.parent / f".{directory.name}{CANCELLED_SUFFIX}"


def cancel_restore(spool: Spool, backup_id: BackupId, *,
                   notify: Callable[[str], None] | None = None) -> Cancelled:
    """Remove ``backup_id``'s thaw request, partial downloads and restore queue.

    Idempotent: with nothing there, it removes nothing and says so in the
    result. Raises TryLaterError while a restore of the backup runs.
    """
    say = notify if notify is not None else (lambda _message: None)
    claimed: int | None = None
    try:
        with hold_restore_lock(spool, backup_id):
            claimed = thaw_request.claimant(thaw_request.request_dir(spool, backup_id))
            if claimed is None:
                return _cancel(spool, backup_id, say)
    except TryLaterError:
        pid = _lock_owner(spool, backup_id)
        raise TryLaterError(
            f"a restore of {backup_id} is running{f' (pid {pid})' if pid else ''}: stop it "
            f"first{f' (kill {pid})' if pid else ''}, then cancel again; nothing was "
            "removed") from None
    # A chain restore (pid) filed this request and will read it later.
    raise TryLaterError(
        f"the request of {backup_id} belongs to a running restore (pid {claimed}, a chain "
        "restore that reads it later): stop that restore first, then cancel again; nothing "
        "was removed")


def _lock_owner(spool: Spool, backup_id: BackupId) -> str | None:
    try:
        text = spool.restore_lock_path(backup_id).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if text.isdigit() else None


def _cancel(spool: Spool, backup_id: BackupId, say: Callable[[str], None]) -> Cancelled:
    request = thaw_request.request_dir(spool, backup_id)
    staged = cancelled_dir(spool, backup_id)
    thaw_queue = spool.queue_dir(Queue.THAW)
    refuse_symlinks(thaw_queue, staged)
    had_request = request.is_dir()
    if had_request:
        if staged.exists():
            shutil.rmtree(staged)  # an earlier cancel's, killed before it removed it
        os.rename(request, staged)
        fsync_dir(staged.parent)
        logger.debug("thaw request of %s withdrawn from the thaw queue", backup_id)
    partial_files = partial_bytes = 0
    if staged.is_dir():
        _wait_for_thaw_pass(staged, backup_id, say)
        partial_files, partial_bytes = _files_in(staged, suffix=".part")
    restore_files = restore_bytes = 0
    restore = spool.backup_dir(Queue.RESTORE, backup_id)
    if restore.is_dir():
        restore_files, restore_bytes = _files_in(restore)
        shutil.rmtree(restore)
        remove_empty_dirs(restore.parent, spool.queue_dir(Queue.RESTORE))
    if staged.is_dir():
        shutil.rmtree(staged)
        remove_empty_dirs(staged.parent, thaw_queue)
        had_request = True
    return Cancelled(backup_id, had_request, partial_files, partial_bytes, restore_files,
                     restore_bytes)


def _wait_for_thaw_pass(staged: Path, backup_id: BackupId, say: Callable[[str], None]) -> None:
    """Take the withdrawn request's lock: a thaw pass holding it (it opened it before the
    rename) is finishing a step that now fails; its restore queue is ours once it lets go."""
    try:
        fd = os.open(staged / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # never served: nobody to wait for
    try:
        deadline = time.monotonic() + _WAIT_NOTICE_SECONDS
        while time.monotonic() < deadline:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                time.sleep(0.1)
        # Still held: say so once, then sleep in the kernel until the pass lets go.
        say(f"waiting for the thaw pass serving {backup_id} to end (it is finishing a "
            "download, which is then thrown away)")
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)


def _files_in(directory: Path, *, suffix: str = "") -> tuple[int, int]:
    """How many regular files (ending in ``suffix``) ``directory`` holds, and their bytes."""
    count = size = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(suffix) and entry.is_file(follow_symlinks=False) and (
                    entry.name != LOCK_NAME):
                with contextlib.suppress(FileNotFoundError):
                    size += entry.stat(follow_symlinks=False).st_size
                    count += 1
    return count, size

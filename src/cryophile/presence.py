"""Is a daemon serving this spool? A lock file held for as long as it runs.

``SPOOL/run/<name>.pid`` (``freeze``, ``thaw``) holds the daemon's pid and an
exclusive flock for the daemon's lifetime. The kernel drops the lock when the
process dies however it dies (kill -9 included), so "the lock is held" means
exactly "a daemon is alive", with no stale pid files to clean up and no pid
reuse to fool anyone.

``restore`` asks whether a thaw daemon will serve its request (else it
thaws in-process and says so); ``status`` shows who is running.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from cryophile.durable import FILE_MODE, make_dirs
from cryophile.spool import Spool

logger = logging.getLogger(__name__)

FREEZE = "freeze"
THAW = "thaw"


def _path(spool: Spool, name: str) -> Path:
    return spool.run_dir / f"{name}.pid"


@contextlib.contextmanager
def announce(spool: Spool, name: str) -> Iterator[None]:
    """Hold ``SPOOL/run/<name>.pid`` while the block runs (the daemon's whole life).

    Logs "NAME daemon started" once the lock is held, never before.

    A second daemon of the same name on the same spool is allowed (both
    serialise on the queues' own locks) but logged, since it is rarely meant.
    """
    make_dirs(spool.run_dir)
    path = _path(spool, name)
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read_pid(fd)
            logger.warning("another %s daemon (pid %s) already serves spool %s", name,
                           other or "?", spool.root)
            logger.info("%s daemon started", name)
            yield
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        # Only now: whoever waits for this line may count on alive() seeing us.
        logger.info("%s daemon started", name)
        yield
    finally:
        os.close(fd)


def alive(spool: Spool, name: str) -> int | None:
    """The pid of a live ``name`` daemon on ``spool``, or None when none runs."""
    try:
        fd = os.open(_path(spool, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES):
            return None
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        return None
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user's counts: it exists)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None

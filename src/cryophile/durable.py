"""Durable file-system steps shared by the spool and the directory vault.

Every step that makes a name appear or disappear is followed by an fsync of
the directory holding it, so that after a crash a file is either there whole
or not there at all. Directories are created 0700: what they hold is private.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, links, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(directory: Path, mode: int = DIR_MODE) -> None:
    """``mkdir -p`` with ``mode`` for every directory created, each entry made durable.

    A concurrent creator is fine; a non-directory in the way raises
    NotADirectoryError.
    """
    missing: list[Path] = []
    current = directory
    while not current.is_dir() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=mode)
        except FileExistsError:
            if not path.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "something else is in the way",
                                         str(path)) from None
            continue
        fsync_dir(path.parent)


def remove_empty_dirs(directory: Path, stop: Path) -> None:
    """Remove ``directory`` and its parents while they are empty, never ``stop`` itself."""
    current = directory
    while current != stop and stop in current.parents:
        try:
            current.rmdir()
        except OSError:
            return  # not empty (or already gone): the rest is someone else's
        try:
            fsync_dir(current.parent)
        except FileNotFoundError:
            # A concurrent remover (another backup or freeze finishing in the
            # same prefix) emptied and removed the parent meanwhile: its job now.
            return
        current = current.parent


def replace_file(path: Path, data: bytes) -> None:
    """Atomically make ``path`` hold ``data`` (0600): temporary file, fsync, rename."""
    temporary = path.parent / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                 | os.O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_dir(path.parent)


#: sync_file_range(2) flag: start writing the range's dirty pages, do not wait.
SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes of ``fd`` from ``offset`` to disk now.

    Only a hint, and it does not wait: durability still comes from fsync. A
    large file written in one go and then fsynced makes the disk idle while
    it is written and the fsync long (0.4-0.5 s per 256 MiB here), and on
    ext4 that flush also stalls writers of other files. Started in steps as
    the file grows, the writing happens meanwhile and the fsync finds little
    left. Does nothing where the call does not exist (not Linux, not glibc).
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)

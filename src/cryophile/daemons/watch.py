"""Waiting for files to appear in a queue directory.

The directory tree is the source of truth: a waiter rescans it at least every
``rescan`` seconds. inotify (IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE) only
wakes it early, so a missed or overflowed event costs at most one rescan
interval, never a lost fragment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import inotify_simple

from cryophile.errors import TryLaterError

logger = logging.getLogger(__name__)

RESCAN_SECONDS = 5.0
_FLAGS = (inotify_simple.flags.MOVED_TO | inotify_simple.flags.CLOSE_WRITE
          | inotify_simple.flags.CREATE)


class DirectoryWatcher:
    """Wakes up early when something lands in one directory.

    Use as a context manager; :meth:`sleep` returns after an event in the
    directory or after ``timeout`` seconds, whichever comes first.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._inotify: inotify_simple.INotify | None = None

    def __enter__(self) -> DirectoryWatcher:
        try:
            self._inotify = inotify_simple.INotify()
            self._inotify.add_watch(str(self.directory), _FLAGS)
        except OSError as error:
            # Out of watches, or a file system without inotify: rescans still work.
            logger.debug("inotify unavailable for %s (%s); polling", self.directory, error)
            self.close()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the inotify descriptor."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def sleep(self, timeout: float) -> None:
        """Block until an event arrives or ``timeout`` seconds pass."""
        if self._inotify is None:
            time.sleep(timeout)
            return
        self._inotify.read(timeout=int(timeout * 1000))


class TreeWatcher:
    """Wakes up early when something lands anywhere below a directory.

    inotify watches one directory, not a tree: :meth:`refresh` (called at each
    rescan) adds a watch for every directory that exists below the root now.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._inotify: inotify_simple.INotify | None = None

    def __enter__(self) -> TreeWatcher:
        try:
            self._inotify = inotify_simple.INotify()
        except OSError as error:
            logger.debug("inotify unavailable (%s); polling %s", error, self.root)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def refresh(self) -> None:
        """Watch every directory below the root (already watched ones are kept).

        Each directory is watched *before* it is listed: a subdirectory made
        between the two is then either listed or reported, never missed.
        """
        if self._inotify is None:
            return
        pending = [self.root]
        while pending:
            directory = pending.pop()
            try:
                self._inotify.add_watch(str(directory), _FLAGS)
                pending.extend(entry for entry in directory.iterdir()
                               if entry.is_dir() and not entry.is_symlink())
            except OSError:
                continue  # gone meanwhile, or out of watches: the rescan covers it

    def sleep(self, timeout: float, stop: threading.Event) -> None:
        """Block until an event, ``stop`` being set, or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # Short slices, so a stop request is seen within a second.
            slice_seconds = min(left, 1.0)
            if self._inotify is None:
                time.sleep(slice_seconds)
            elif self._inotify.read(timeout=int(slice_seconds * 1000)):
                return


def wait_for_file(watcher: DirectoryWatcher, path: Path, *, deadline: float | None,
                  on_wait: Callable[[Path], None] | None = None,
                  check: Callable[[], None] | None = None,
                  rescan: float = RESCAN_SECONDS) -> None:
    """Return once ``path`` exists; raise TryLaterError when ``deadline`` (monotonic) passes.

    ``on_wait`` is called once, when the file is not there on the first look;
    ``check`` at every look, to raise when whatever should deliver the file
    has given up.
    """
    announced = False
    while not path.exists():
        if check is not None:
            check()
        if not announced:
            announced = True
            if on_wait is not None:
                on_wait(path)
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise TryLaterError(f"gave up waiting for {path}: it has not arrived yet; "
                                "run restore again later")
        timeout = rescan if deadline is None else min(rescan, deadline - now)
        watcher.sleep(max(timeout, 0.01))

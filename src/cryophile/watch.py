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
    """Wakes up early when something another process cares about lands below a directory.

    inotify watches one directory, not a tree: :meth:`refresh` (called at each
    rescan) adds a watch for every directory that exists below the root now,
    and a directory created or moved in while :meth:`sleep` waits is watched
    at once (with what is below it).

    ``wake(name, is_directory)`` decides which events end a sleep. A daemon
    must never wake itself: the files it writes (its state, its lock opened
    for writing, its downloads) raise the same events as the files it waits
    for, so it names only what others deliver (``chunk.N`` linked in by a
    backup, a request directory renamed in by a restore). Every other event
    is read and ignored. An event queue overflow always wakes (rescan).
    """

    def __init__(self, root: Path,
                 wake: Callable[[str, bool], bool] | None = None) -> None:
        self.root = root
        self._wake = wake if wake is not None else (lambda _name, _is_dir: True)
        self._inotify: inotify_simple.INotify | None = None
        self._directories: dict[int, Path] = {}

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
        self._directories.clear()

    def refresh(self) -> None:
        """Watch every directory below the root (already watched ones are kept)."""
        self._watch_tree(self.root)

    def _watch_tree(self, top: Path) -> None:
        """Watch ``top`` and every directory below it.

        Each directory is watched *before* it is listed: a subdirectory made
        between the two is then either listed or reported, never missed.
        """
        if self._inotify is None:
            return
        pending = [top]
        while pending:
            directory = pending.pop()
            try:
                descriptor = self._inotify.add_watch(str(directory), _FLAGS)
                self._directories[descriptor] = directory
                pending.extend(entry for entry in directory.iterdir()
                               if entry.is_dir() and not entry.is_symlink())
            except OSError:
                continue  # gone meanwhile, or out of watches: the rescan covers it

    def sleep(self, timeout: float, stop: threading.Event) -> None:
        """Block until a waking event, ``stop`` being set, or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # Short slices, so a stop request is seen within a second.
            slice_seconds = min(left, 1.0)
            if self._inotify is None:
                time.sleep(slice_seconds)
                continue
            events = self._inotify.read(timeout=max(1, int(slice_seconds * 1000)))
            if self._handle(events):
                return

    def _handle(self, events: list[inotify_simple.Event]) -> bool:
        """Watch new directories; True when one of ``events`` should wake the sleeper."""
        wake = False
        for event in events:
            if event.mask & inotify_simple.flags.Q_OVERFLOW:
                wake = True  # events were lost: only a rescan can tell
                continue
            is_directory = bool(event.mask & inotify_simple.flags.ISDIR)
            parent = self._directories.get(event.wd)
            if is_directory and parent is not None and event.name:
                self._watch_tree(parent / event.name)
            if event.name and self._wake(event.name, is_directory):
                wake = True
        return wake


#: How often a waiter says it is still waiting, and for what.
NOTICE_SECONDS = 60.0


def wait_for_file(watcher: DirectoryWatcher, path: Path, *, deadline: float | None,
                  on_wait: Callable[[Path], None] | None = None,
                  check: Callable[[], None] | None = None,
                  still_waiting: Callable[[Path, float], None] | None = None,
                  rescan: float = RESCAN_SECONDS, notice: float = NOTICE_SECONDS) -> None:
    """Return once ``path`` exists; raise TryLaterError when ``deadline`` (monotonic) passes.

    ``on_wait`` is called once, when the file is not there on the first look;
    ``still_waiting(path, seconds)`` every ``notice`` seconds after that (a
    person at the terminal must never face silence); ``check`` at every look,
    to raise when whatever should deliver the file has given up.
    """
    announced = False
    started = time.monotonic()
    next_notice = started + notice
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
        if still_waiting is not None and now >= next_notice:
            still_waiting(path, now - started)
            next_notice = now + notice
        timeout = rescan if deadline is None else min(rescan, deadline - now)
        watcher.sleep(max(timeout, 0.01))

"""Waiting on, and looking into, directories that live processes are changing.

``wait_until`` polls a condition until it holds or a deadline passes (a failed
``assert`` naming what was awaited).  ``live_files`` lists files under a directory
while daemons create, rename and remove entries in it: ``Path.rglob`` raises
``FileNotFoundError`` when a directory vanishes between being listed and being
entered (thaw's ``.ID.PID.new`` staging directory, renamed into place), which
made tests fail at random; ``os.walk`` skips such directories.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable
from pathlib import Path

from cryophile import presence
from cryophile.spool import Spool


def wait_until(condition: Callable[[], object], what: str, *, timeout: float = 60,
               interval: float = 0.02) -> None:
    """Return once ``condition()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def live_files(root: Path, pattern: str = "*") -> list[Path]:
    """Files (not directories) under ``root`` whose name matches ``pattern``, sorted.

    Entries that disappear while the tree is walked are simply not listed.
    """
    found: list[Path] = []
    for directory, _subdirs, names in os.walk(root):
        found.extend(Path(directory, name) for name in fnmatch.filter(names, pattern))
    return sorted(found)


def wait_serving(spool: Path, daemon: str, *, timeout: float = 60) -> None:
    """Return once a ``daemon`` (``freeze``, ``thaw``) holds its presence lock on ``spool``.

    A command started right after ``Popen`` of a daemon may look before the
    daemon has announced itself (``restore`` then thaws in-process, as it
    should when none runs); a test about the daemon serving it waits first.
    """
    wait_until(lambda: presence.alive(Spool(spool), daemon) is not None,
               f"the {daemon} daemon to serve {spool}", timeout=timeout)

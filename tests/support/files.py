"""The checkout, spools and directory trees, real tar streams."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from cryophile.spool import Spool
from cryophile.spool_budget import spool_usage

#: The root of this checkout (README.md, pyproject.toml).
REPO = Path(__file__).resolve().parent.parent.parent


def prepare_spool(root: Path) -> None:
    """Create the spool's queue directories, as the first command that writes does.

    (``list`` and ``status`` create nothing: they cannot prepare a spool.)
    """
    Spool.open(root, create_root=True)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory below ``root`` with its size and mode: to prove nothing changed."""
    state: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            state[str(path.relative_to(root))] = (info.st_size, info.st_mode)
    return state


def tar_of(directory: Path) -> bytes:
    """A real tar stream of ``directory``, made by the real ``tar``."""
    return subprocess.run(["tar", "-C", str(directory), "-cf", "-", "."], capture_output=True,
                          check=True).stdout


class UsageSampler:
    """Samples the spool's usage (:func:`~cryophile.spool_budget.spool_usage`, every
    counted queue) every few milliseconds in a thread; ``peak`` is the most seen."""

    def __init__(self, root: Path, interval: float = 0.01) -> None:
        self.root = root
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, spool_usage(self.root).total)
            self.samples += 1

    def __enter__(self) -> UsageSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

"""The spool's budget: how many bytes of fragments the spool may hold at once.

The spool is a bounded window, never a copy of a backup. ``backup`` waits for
uploads before it writes a fragment that would take the queued ciphertext over
the budget, and a restore stages no more fragments than the budget allows. Both
directions share one number, so one setting bounds the disk a spool can take.

What counts (:func:`spool_usage`): every file under ``backup/``, ``freeze/`` and
``restore/``, of every backup in the spool, and the downloads in progress in
``thaw/`` (``chunk.N.part``). Small records (thaw request states, upload
records, the run directory) are not counted: they are bytes, not fragments.

The limit comes from the configuration's top-level ``spool_limit`` (or
``--spool-limit``): a size (``"48M"``, ``"20G"``) or a percentage of the spool's
file system (``"25%"``). Without one, the budget is what the spool holds now plus
the file system's free space, less a reserve of :data:`RESERVE_FRACTION` of the
file system (the disk is shared; a spool must not fill it). A budget below two
fragments cannot move any backup (a fragment being written and one being
uploaded): it is refused with the numbers and the fix.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryophile import units
from cryophile.errors import ConfigError

# Kept free on the spool's file system when no limit is configured.
RESERVE_FRACTION = 0.10
# Fragments a spool must be able to hold at once: one being written (or
# downloaded) while the one before it is uploaded (or restored).
MIN_FRAGMENTS = 2
COUNTED_QUEUES = ("backup", "freeze", "restore")
#: Below ``thaw/``, only fragments being downloaded count (not the request states).
DOWNLOAD_SUFFIX = ".part"

_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%", re.ASCII)


@dataclass(frozen=True)
class SpoolLimit:
    """A configured limit: ``size`` bytes, or ``percent`` of the file system."""

    size: int | None = None
    percent: float | None = None

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent:g}%"
        return units.human_bytes(self.size or 0)


def parse_spool_limit(text: str | int) -> SpoolLimit:
    """``"48M"``, ``1073741824``, ``"25%"`` → SpoolLimit. Raises ValueError naming ``text``."""
    if isinstance(text, bool):
        raise ValueError(f"expected a size or a percentage, not {text!r}")  # noqa: TRY004
    if isinstance(text, int):
        if text < 1:
            raise ValueError(f"spool limit must be at least 1 byte, not {text!r}")
        return SpoolLimit(size=text)
    if not isinstance(text, str):
        raise ValueError(f"expected a size or a percentage, not {text!r}")  # noqa: TRY004
    match = _PERCENT.fullmatch(text.strip())
    if match is not None:
        percent = float(match.group(1))
        if not 0 < percent <= 100:
            raise ValueError(f"spool limit {text!r} must be a percentage above 0 and at most 100")
        return SpoolLimit(percent=percent)
    size = units.parse_size(text)
    if size < 1:
        raise ValueError(f"spool limit must be at least 1 byte, not {text!r}")
    return SpoolLimit(size=size)


@dataclass(frozen=True)
class SpoolUsage:
    """Bytes of fragments in each counted queue (``thaw``: downloads in progress)."""

    backup: int = 0
    freeze: int = 0
    restore: int = 0
    thaw: int = 0

    @property
    def queued(self) -> int:
        """What waits to be uploaded: being written plus waiting for freeze."""
        return self.backup + self.freeze

    @property
    def staged(self) -> int:
        """What restores hold: fragments in the restore queue and being downloaded."""
        return self.restore + self.thaw

    @property
    def total(self) -> int:
        return self.backup + self.freeze + self.restore + self.thaw


def spool_usage(root: Path) -> SpoolUsage:
    """Bytes of every file under the counted queues of the spool at ``root``.

    Files that vanish while they are counted (uploaded, consumed) count as 0.
    Symlinks are not followed (the spool refuses them anyway). A file counts
    once however many names it has, or had while it was walked (in the first
    queue it is found in): a fragment being published is hard-linked into
    ``freeze/`` a moment before its ``backup/`` name goes, and takes its bytes
    once.
    """
    sizes: dict[str, int] = {}
    seen: set[tuple[int, int]] = set()
    for queue in (*COUNTED_QUEUES, "thaw"):
        total = 0
        for directory, _dirs, files in os.walk(root / queue):
            for name in files:
                if queue == "thaw" and not name.endswith(DOWNLOAD_SUFFIX):
                    continue
                try:
                    info = os.lstat(os.path.join(directory, name))
                except FileNotFoundError:
                    continue
                # By inode, whatever its link count now: a fragment counted under
                # its backup/ name may be published (linked, then unlinked) before
                # the walk reaches freeze/, where it then has one name again.
                if (info.st_dev, info.st_ino) in seen:
                    continue
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
        sizes[queue] = total
    return SpoolUsage(**sizes)


@dataclass(frozen=True)
class Budget:
    """The spool's budget in bytes, and where the number came from (for messages)."""

    limit: int
    source: str

    def __str__(self) -> str:
        return f"{units.human_bytes(self.limit)} ({self.source})"

    def fragments(self, fragment_size: int) -> int:
        """How many whole fragments of ``fragment_size`` fit (at least 0)."""
        return self.limit // max(1, fragment_size)

    def restore_window(self, fragment_size: int, overhead: int = 0) -> int:
        """How many fragments one restore may stage at once: the whole fragments of
        ``fragment_size`` that fit beside ``overhead`` bytes (its manifest and
        signature), and never fewer than :data:`MIN_FRAGMENTS` (one being
        read while the next is downloaded)."""
        return max(MIN_FRAGMENTS, (self.limit - overhead) // max(1, fragment_size))


def spool_budget(root: Path, limit: SpoolLimit | None, fragment_size: int) -> Budget:
    """The budget of the spool at ``root`` for fragments of ``fragment_size`` bytes.

    Raises ConfigError when it holds fewer than :data:`MIN_FRAGMENTS` fragments,
    naming the budget, the fragment size and both ways out (a larger limit, or
    ``-s`` smaller fragments).
    """
    stats = os.statvfs(root)
    fs_size = stats.f_blocks * stats.f_frsize
    free = stats.f_bavail * stats.f_frsize
    if limit is not None and limit.size is not None:
        budget = Budget(limit.size, f"spool_limit {limit}")
    elif limit is not None and limit.percent is not None:
        budget = Budget(int(fs_size * limit.percent / 100),
                        f"spool_limit {limit} of {units.human_bytes(fs_size)}")
    else:
        reserve = int(fs_size * RESERVE_FRACTION)
        available = spool_usage(root).total + free - reserve
        budget = Budget(max(0, available),
                        f"free space less a {RESERVE_FRACTION:.0%} reserve")
    if budget.fragments(fragment_size) < MIN_FRAGMENTS:
        raise ConfigError(
            f"the spool {str(root)!r} can hold {budget}, fewer than {MIN_FRAGMENTS} fragments "
            f"of {units.human_bytes(fragment_size)}: set spool_limit to at least "
            f"{units.human_bytes(MIN_FRAGMENTS * fragment_size)} (or free space on its file "
            f"system), or use smaller fragments with -s")
    return budget

"""Backpressure: ``backup`` waits for uploads before the spool's budget would be exceeded.

Before the backup writes a fragment (:class:`SpoolGate.reserve`, called as
each fragment opens and before the manifest), the bytes queued in the spool
(``backup/`` + ``freeze/`` of every backup, :func:`cryophile.spool_budget.spool_usage`)
plus the fragment must fit the budget. While they do not, the backup waits:

- polling the spool every :data:`FIRST_POLL_SECONDS`, doubling up to
  :data:`MAX_POLL_SECONDS` (never a hot loop, and a freed fragment is seen
  within two seconds);
- saying so: the job's counters (the progress line), a wait record
  ``SPOOL/run/backup-wait/<hash>.json`` for ``cryophile status`` (written
  atomically, removed when the wait ends, naming the pid so a record left by
  a killed backup is ignored), and a callback (the metrics file);
- failing at once when nothing would ever free the space: no freezer serves
  the spool (:class:`~cryophile.errors.SpoolFullError`, exit 69), or the
  in-process freezer of ``backup --freeze`` met a permanent error (that error);
- failing when the queued bytes have not gone down for the stall timeout
  (:class:`~cryophile.errors.UploadStalledError`, exit 75).

The waiting happens in the thread that writes fragments, so the stages
before it (encryption, compression, reading the input) stop on their bounded
queues: memory stays constant and the input is simply not read meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryophile import units
from cryophile.backup_id import BackupId, rfc3339
from cryophile.durable import make_dirs, replace_file
from cryophile.errors import CryophileError, SpoolFullError, UploadStalledError
from cryophile.pipeline.stages import Counters
from cryophile.spool import Spool
from cryophile.spool_budget import Budget, spool_usage
from cryophile.uploads import UploadRecords

logger = logging.getLogger(__name__)

FIRST_POLL_SECONDS = 0.2
MAX_POLL_SECONDS = 2.0
#: Default of ``--stall-timeout`` / ``stall_timeout``: 30 minutes without an upload.
DEFAULT_STALL_SECONDS = 1800.0
RECORD_VERSION = 1

NO_FREEZER_FIX = ("start `cryophile freeze` (systemd: cryophile-freeze.service) or run "
                  "backup with --freeze")


def describe_fill(queued: int, limit: int) -> str:
    """``47.9/48.0 MiB``: both numbers in the unit of the limit."""
    size = float(limit)
    divisor = 1.0
    unit = "B"
    for name in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024:
            break
        size /= 1024
        divisor *= 1024
        unit = name
    if unit == "B":
        return f"{queued}/{limit} B"
    return f"{queued / divisor:.1f}/{limit / divisor:.1f} {unit}"


@dataclass(frozen=True)
class WaitState:
    """A backup waiting for uploads: the spool's queued bytes against its budget."""

    queued: int
    limit: int
    since: datetime

    def describe(self) -> str:
        """``waiting for upload: spool 47.9/48.0 MiB``."""
        return f"waiting for upload: spool {describe_fill(self.queued, self.limit)}"


class SpoolGate:
    """Makes one backup wait until its next write fits the spool's budget.

    ``freezer_alive()`` tells whether anything uploads the spool's freeze
    queue (a freeze daemon, or the backup's own in-process freezer);
    ``failure()`` returns a permanent error of that freezer, which ends the
    wait at once. ``on_wait`` is told every change of the wait (a WaitState,
    or None when it ended).
    """

    def __init__(self, spool: Spool, budget: Budget, backup_id: BackupId, *,
                 freezer_alive: Callable[[], bool], stall_timeout: float = DEFAULT_STALL_SECONDS,
                 failure: Callable[[], CryophileError | None] = lambda: None,
                 counters: Counters | None = None,
                 on_wait: Callable[[WaitState | None], None] | None = None,
                 freezer_name: str = "freeze daemon",
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.spool = spool
        self.budget = budget
        self.backup_id = backup_id
        self.freezer_alive = freezer_alive
        self.stall_timeout = stall_timeout
        self.failure = failure
        self.counters = counters
        self.on_wait = on_wait
        self.freezer_name = freezer_name
        self._clock = clock
        self._sleep = sleep
        #: Seconds spent waiting, and how many writes had to wait (the final summary).
        self.waited_seconds = 0.0
        self.waits = 0
        #: The most bytes queued seen when a write was let through (for tests, reports).
        self.peak_queued = 0

    def reserve(self, size: int) -> None:
        """Return once ``size`` more bytes fit the budget; raise when they never will.

        Raises SpoolFullError when no freezer runs, UploadStalledError after
        the stall timeout without progress, or the freezer's permanent error.
        """
        queued = spool_usage(self.spool.root).queued
        if queued + size <= self.budget.limit:
            self.peak_queued = max(self.peak_queued, queued + size)
            return
        started = self._clock()
        lowest = queued
        progress_at = started
        interval = FIRST_POLL_SECONDS
        state = WaitState(queued, self.budget.limit, datetime.now(UTC))
        self.waits += 1
        self._announce(state)
        logger.info("backup %s: %s (%s)", self.backup_id, state.describe(), self.budget,
                    extra={"backup": str(self.backup_id), "event": "waiting",
                           "queued": queued, "limit": self.budget.limit})
        try:
            while True:
                self._check(queued, progress_at)
                self._sleep(interval)
                queued = spool_usage(self.spool.root).queued
                if queued + size <= self.budget.limit:
                    self.peak_queued = max(self.peak_queued, queued + size)
                    return
                now = self._clock()
                if queued < lowest:
                    lowest, progress_at, interval = queued, now, FIRST_POLL_SECONDS
                else:
                    interval = min(MAX_POLL_SECONDS, interval * 2)
                if queued != state.queued:
                    state = WaitState(queued, state.limit, state.since)
                    if self.counters is not None:
                        self.counters.waiting_for = state.describe()
        finally:
            self.waited_seconds += self._clock() - started
            self._announce(None)

    def _check(self, queued: int, progress_at: float) -> None:
        error = self.failure()
        if error is not None:
            raise error
        fill = (f"{units.human_bytes(queued)} of {units.human_bytes(self.budget.limit)}, "
                f"{self.budget.source}")
        if not self.freezer_alive():
            raise SpoolFullError(
                f"the spool is full ({fill}) and no {self.freezer_name} is running to upload "
                f"it: {NO_FREEZER_FIX}")
        stalled = self._clock() - progress_at
        if stalled >= self.stall_timeout:
            reason = ""
            with contextlib.suppress(CryophileError, OSError):
                record = UploadRecords(self.spool).load(self.backup_id)
                if record is not None and record.error:
                    reason = f"; the last upload error: {record.error}"
            raise UploadStalledError(
                f"uploads made no progress for {stalled:.0f} s (stall timeout "
                f"{self.stall_timeout:g} s) while the spool was full ({fill}){reason}; "
                "check that the freezer can reach the vault, then run the backup again")

    def _announce(self, state: WaitState | None) -> None:
        if self.counters is not None:
            self.counters.waiting_for = None if state is None else state.describe()
        _write_record(self.spool, self.backup_id, state, self.budget)
        if self.on_wait is not None:
            self.on_wait(state)


def _write_record(spool: Spool, backup_id: BackupId, state: WaitState | None,
                  budget: Budget) -> None:
    # For `status` only: failing to write it must never fail the backup.
    path = spool.backup_wait_path(backup_id)
    try:
        if state is None:
            path.unlink(missing_ok=True)
            return
        document = {"version": RECORD_VERSION, "pid": os.getpid(), "id": str(backup_id),
                    "since": rfc3339(state.since), "queued": state.queued,
                    "limit": state.limit, "budget": budget.source}
        make_dirs(path.parent)
        replace_file(path, json.dumps(document).encode())
    except OSError as error:
        logger.debug("cannot update %s: %s", path, error)


def waiting_backups(spool: Spool) -> dict[str, dict[str, Any]]:
    """Backup id → its wait record, for every live backup waiting for uploads now."""
    found: dict[str, dict[str, Any]] = {}
    try:
        paths = sorted(spool.backup_waits_dir.glob("*.json"))
    except OSError:
        return found
    for path in paths:
        try:
            document = json.loads(path.read_bytes())
            os.kill(int(document["pid"]), 0)
            found[str(document["id"])] = document
        except PermissionError:
            continue  # another user's process: not ours to report
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable, or left by a backup that is gone
    return found

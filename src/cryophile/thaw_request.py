"""A restore request on disk: ``SPOOL/thaw/<vault>/<prefix>/<ULID>/``.

``restore`` files it; the thaw daemon (or ``restore --thaw`` in-process)
serves it; ``status`` and ``list`` read it. The directory holds:

- ``state.json``: the :class:`ThawRequest`, versioned JSON, replaced
  atomically after every change, so a killed or rebooted thaw loses nothing::

      {"version": 2, "tier": "Bulk", "days": 7, "created": "<RFC 3339>",
       "status": "active" | "failed", "error": null | "...",
       "waiting_for_space": null | {"since": "<RFC 3339>", "fragment": 7,
                                    "needed": <bytes>, "free": <bytes>},
       "fragments": {"1": {"state": "cold" | "restoring" | "downloaded",
                           "attempts": 0, "requested_at": null, "thawed_until": null}}}

  Version 2 added ``waiting_for_space`` (thaw met a full spool and waits for
  room); a version 1 state reads as a request that is not waiting. Written
  only by whoever serves the request (under ``.lock``).
- ``position.json``: the :class:`ReadPosition` of the restore this request
  serves, written only by that restore (so the two writers never overwrite
  each other's state)::

      {"version": 1, "window": 3, "released": 12, "pid": 4242, "updated": "<RFC 3339>",
       "run": "4242.1765110000000000000"}

  Thaw downloads fragment N only while ``released < N <= released + window``,
  and records in the fragment's entry the ``run`` it downloaded it for: gone
  later in the same run, it was consumed; a new run (a rerun after a crash)
  needs it again;
  without the file (an older restore, ``restore --keep``) it downloads
  everything, as before.

- ``.lock``: held (flock) by whoever serves the request now;
- ``chunk.N.part``: a download in progress (never seen by a restore).

A request is filed under a name no scanner takes for one and renamed into
place, so nobody ever sees a request without its state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryophile.backup_id import BackupId, rfc3339
from cryophile.durable import DIR_MODE, FILE_MODE, make_dirs, remove_empty_dirs, replace_file
from cryophile.errors import DataError
from cryophile.presence import pid_alive
from cryophile.spool import LOCK_NAME, Queue, Spool, read_spool_file
from cryophile.units import human_bytes

logger = logging.getLogger(__name__)

STATE_NAME = "state.json"
POSITION_NAME = "position.json"
FORMAT_VERSION = 2
#: Every state version this code reads (an older request still reads).
READABLE_VERSIONS = (1, 2)
POSITION_VERSION = 1


class Status(StrEnum):
    """Where a request stands."""

    ACTIVE = "active"
    FAILED = "failed"


class FragmentState(StrEnum):
    """Where one fragment of a request stands."""

    COLD = "cold"
    RESTORING = "restoring"
    DOWNLOADED = "downloaded"


@dataclass
class FragmentProgress:
    """One fragment's progress: its state, failed attempts, when a restore was asked for
    and until when the restored copy is readable (RFC 3339 texts, as stored)."""

    state: FragmentState = FragmentState.COLD
    attempts: int = 0
    requested_at: str | None = None
    thawed_until: str | None = None
    #: The restore run (:attr:`ReadPosition.run`) it was downloaded for, if windowed.
    run: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The fragment's entry in ``state.json``."""
        entry: dict[str, Any] = {"state": self.state.value, "attempts": self.attempts,
                                 "requested_at": self.requested_at,
                                 "thawed_until": self.thawed_until}
        if self.run is not None:
            entry["run"] = self.run
        return entry


@dataclass(frozen=True)
class SpaceWait:
    """Thaw could not download ``fragment`` (``needed`` bytes) into a spool with
    ``free`` bytes left, and waits for room since ``since`` (RFC 3339)."""

    since: str
    fragment: int
    needed: int
    free: int

    def as_json(self) -> dict[str, Any]:
        """The ``waiting_for_space`` entry of ``state.json``."""
        return {"since": self.since, "fragment": self.fragment, "needed": self.needed,
                "free": self.free}

    def describe(self) -> str:
        """``waiting for space in the spool: chunk.7 needs 5.0 MiB, 1.2 MiB free``."""
        return (f"waiting for space in the spool: chunk.{self.fragment} needs "
                f"{human_bytes(self.needed)}, {human_bytes(self.free)} free (since "
                f"{self.since})")


def _space_wait(value: object) -> SpaceWait | None:
    if not isinstance(value, dict):
        return None
    fragment, needed, free = (_count(value.get(name)) for name in ("fragment", "needed", "free"))
    if fragment is None or needed is None or free is None:
        return None
    return SpaceWait(str(value.get("since") or ""), fragment, needed, free)


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class ThawRequest:
    """The state of one request (see the module docstring for its JSON form)."""

    tier: str
    days: int
    created: str
    status: Status = Status.ACTIVE
    error: str | None = None
    fragments: dict[int, FragmentProgress] = field(default_factory=dict)
    space_wait: SpaceWait | None = None

    @property
    def failed(self) -> bool:
        """The request gave up (``error`` says why)."""
        return self.status is Status.FAILED

    def fail(self, error: str) -> None:
        """Mark the request failed with ``error`` (restore stops with it)."""
        self.status, self.error = Status.FAILED, error

    def counts(self) -> dict[FragmentState, int]:
        """How many fragments are in each state."""
        counts = dict.fromkeys(FragmentState, 0)
        for progress in self.fragments.values():
            counts[progress.state] += 1
        return counts

    def to_json(self) -> bytes:
        """``state.json``'s bytes."""
        return json.dumps({
            "version": FORMAT_VERSION, "tier": self.tier, "days": self.days,
            "created": self.created, "status": self.status.value, "error": self.error,
            "waiting_for_space": (self.space_wait.as_json() if self.space_wait is not None
                                  else None),
            "fragments": {str(index): progress.as_json()
                          for index, progress in sorted(self.fragments.items())},
        }, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: Path) -> ThawRequest:
        """Parse ``state.json``; DataError naming ``where`` when it is not a request state."""
        try:
            return _parse(json.loads(data))
        except (ValueError, TypeError, KeyError) as problem:
            raise DataError(f"thaw state {where} is damaged: {problem}") from None


def _parse(document: Any) -> ThawRequest:
    if not isinstance(document, dict) or not isinstance(document.get("fragments"), dict):
        raise TypeError("not a cryophile thaw state")
    if document.get("version", FORMAT_VERSION) not in READABLE_VERSIONS:
        raise ValueError(f"version {document.get('version')!r}, expected one of "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    tier, days = document["tier"], document["days"]
    if not isinstance(tier, str) or isinstance(days, bool) or not isinstance(days, int):
        raise TypeError("bad tier or days")
    fragments: dict[int, FragmentProgress] = {}
    for name, entry in document["fragments"].items():
        if not (isinstance(name, str) and name.isascii() and name.isdigit()):
            raise ValueError(f"bad fragment index {name!r}")
        if not isinstance(entry, dict):
            raise TypeError(f"fragment {name} is not an object")
        attempts = entry.get("attempts", 0)
        fragments[int(name)] = FragmentProgress(
            FragmentState(entry.get("state", FragmentState.COLD.value)),
            attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0,
            _text(entry.get("requested_at")), _text(entry.get("thawed_until")),
            _text(entry.get("run")))
    error = document.get("error")
    return ThawRequest(tier, days, str(document.get("created") or ""),
                       Status(document.get("status") or Status.ACTIVE.value),
                       error if isinstance(error, str) else None, fragments,
                       _space_wait(document.get("waiting_for_space")))


@dataclass(frozen=True)
class ReadPosition:
    """How far the restore served by a request has read: fragments up to
    ``released`` are consumed (removed from the restore queue), and at most
    ``window`` fragments after it may be staged at once."""

    window: int
    released: int = 0
    pid: int = 0
    updated: str = ""
    #: Names one run of the restore: a fragment downloaded for this run and gone
    #: was consumed; one downloaded for another run (killed) is needed again.
    run: str = ""

    def allows(self, index: int) -> bool:
        """Whether fragment ``index`` may be downloaded now (it is inside the window)."""
        return self.released < index <= self.released + self.window

    def consumed(self, index: int) -> bool:
        """Whether fragment ``index`` was consumed already (not needed again)."""
        return index <= self.released

    def to_json(self) -> bytes:
        """``position.json``'s bytes."""
        return json.dumps({"version": POSITION_VERSION, "window": self.window,
                           "released": self.released, "pid": self.pid,
                           "updated": self.updated, "run": self.run}).encode()

    @classmethod
    def from_json(cls, data: bytes, where: Path) -> ReadPosition:
        """Parse ``position.json``; DataError naming ``where`` when it is not one."""
        try:
            document = json.loads(data)
            if not isinstance(document, dict):
                raise TypeError("not a read position")  # noqa: TRY301
            if document.get("version") != POSITION_VERSION:
                raise ValueError(f"version {document.get('version')!r}, expected "  # noqa: TRY301
                                 f"{POSITION_VERSION}")
            window, released = document["window"], document["released"]
            pid = document.get("pid", 0)
            for value in (window, released, pid):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise TypeError(f"bad number {value!r}")  # noqa: TRY301
            # 0: a restore that will read this request later (a chain's later link):
            # its Glacier restores are asked for, nothing is downloaded yet.
            return cls(window, released, pid, str(document.get("updated") or ""),
                       str(document.get("run") or ""))
        except (ValueError, TypeError, KeyError) as problem:
            raise DataError(f"read position {where} is damaged: {problem}") from None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def now_text() -> str:
    """The current time as requests store it."""
    return rfc3339(datetime.now(UTC))


# -- the request directory -----------------------------------------------------------


def request_dir(spool: Spool, backup_id: BackupId) -> Path:
    """``SPOOL/thaw/ID``."""
    return spool.backup_dir(Queue.THAW, backup_id)


def load(directory: Path) -> ThawRequest:
    """The request in ``directory``; FileNotFoundError if none, DataError if damaged."""
    return ThawRequest.from_json(read_spool_file(directory / STATE_NAME), directory / STATE_NAME)


def save(directory: Path, request: ThawRequest) -> None:
    """Replace the request's state atomically and durably."""
    replace_file(directory / STATE_NAME, request.to_json())


def load_position(directory: Path) -> ReadPosition | None:
    """The read position in the request ``directory``; None when there is none.

    A damaged one is logged and taken as none (downloading without a window
    loses nothing; refusing would stop the restore).
    """
    try:
        return ReadPosition.from_json(read_spool_file(directory / POSITION_NAME),
                                      directory / POSITION_NAME)
    except FileNotFoundError:
        return None
    except DataError as error:
        logger.warning("%s; downloading without a window", error)
        return None


def claimant(directory: Path) -> int | None:
    """The pid of the live process whose read position the request ``directory``
    holds (a running restore, or a chain restore that will read it later); None
    when there is none or it died."""
    position = load_position(directory)
    if position is None or position.pid <= 0 or position.pid == os.getpid():
        return None
    return position.pid if pid_alive(position.pid) else None


def save_position(directory: Path, position: ReadPosition) -> bool:
    """Record ``position`` in the request ``directory`` (atomically, durably).

    False when the request is gone (closed meanwhile): a position is never
    written into a directory that no longer exists.
    """
    stamped = ReadPosition(position.window, position.released, position.pid or os.getpid(),
                           now_text(), position.run)
    try:
        replace_file(directory / POSITION_NAME, stamped.to_json())
    except FileNotFoundError:
        return False
    return True


def file_request(spool: Spool, backup_id: BackupId, *, tier: str, days: int,
                 position: ReadPosition | None = None) -> bool:
    """Create the request for ``backup_id`` unless one exists; True if created.

    ``position`` (the restore's window) is part of the request from its first
    instant, so no thaw ever downloads it without the window.
    """
    directory = request_dir(spool, backup_id)
    if directory.exists():
        return False
    make_dirs(directory.parent)
    # Built under a name no scanner takes for a request (not a ULID), then
    # renamed into place: a thaw daemon never sees a request without state.
    staging = directory.parent / f".{directory.name}.{os.getpid()}.new"
    staging.mkdir(mode=DIR_MODE)
    save(staging, ThawRequest(tier, days, now_text()))
    if position is not None:
        save_position(staging, position)
    try:
        os.rename(staging, directory)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if directory.exists():
            return False  # filed meanwhile by another restore
        raise
    logger.info("thaw request filed for %s (tier %s, %d days)", backup_id, tier, days)
    return True


def failure(spool: Spool, backup_id: BackupId) -> str | None:
    """The error of a failed request for ``backup_id``, or None."""
    try:
        request = load(request_dir(spool, backup_id))
    except FileNotFoundError:
        return None
    except DataError as damaged:
        # A damaged state (or a symlink in its place) is never served: a restore
        # waiting on it must stop with the reason, not wait for its timeout.
        return str(damaged)
    return request.error if request.failed else None


def retry_failed(spool: Spool, backup_id: BackupId) -> str | None:
    """Make a failed request for ``backup_id`` active again; return its old error.

    A new restore retries: the cause (a missing fragment put back, a
    configuration fixed) may be gone. Failed attempts are forgotten, fragments
    already downloaded stay. None when there is no failed request.
    """
    directory = request_dir(spool, backup_id)
    with lock(directory) as held:
        if not held:
            return None  # being served right now: not failed
        try:
            request = load(directory)
        except FileNotFoundError:
            return None
        except DataError:
            # Damaged (or a planted symlink): not ours to repair silently; the
            # restore reports it (see failure()).
            return None
        if not request.failed:
            return None
        old = request.error
        request.status, request.error = Status.ACTIVE, None
        for progress in request.fragments.values():
            progress.attempts = 0
        save(directory, request)
    logger.info("retrying the failed thaw request of %s (it failed: %s)", backup_id, old)
    return old


@contextlib.contextmanager
def lock(directory: Path) -> Iterator[bool]:
    """Hold the request's lock; yield False when someone else holds it (or the
    request is gone)."""
    try:
        # O_NOFOLLOW: O_CREAT through a planted dangling symlink would create its target.
        fd = os.open(directory / LOCK_NAME, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW
                     | os.O_CLOEXEC, FILE_MODE)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


#: ``thaw/VAULT/PREFIX/.ULID.PID.closing``: a request being removed by process PID.
CLOSING_SUFFIX = ".closing"


def close(spool: Spool, backup_id: BackupId) -> None:
    """Remove the request directory (the request is done or withdrawn).

    It is renamed out of the queue first (``.ULID.PID.closing``, atomically), then
    removed. Removed in place, a restore recording its read position meanwhile
    (:func:`save_position`, another thread or process) could write into the
    directory while it was being emptied, leaving a request without its state: the
    thaw serving it then logged an error after a restore that succeeded. Now such a
    write finds no directory and reports the request gone. A process killed between
    the two steps leaves the ``.closing`` directory (``status`` lists it).
    """
    directory = request_dir(spool, backup_id)
    closing = directory.parent / f".{directory.name}.{os.getpid()}{CLOSING_SUFFIX}"
    try:
        os.rename(directory, closing)
    except FileNotFoundError:
        pass  # closed already: by its restore, or by the thaw that served it
    except OSError:
        # A stale .closing directory of a reused pid is in the way: remove in place.
        shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(closing, ignore_errors=True)
    remove_empty_dirs(directory.parent, spool.queue_dir(Queue.THAW))

"""Leftovers: what the spool holds that nothing will ever finish or remove by itself,
each with the exact command that removes it (``cryophile status``).

- ``thaw_request``: a restore request no restore waits on any more (the
  restore was killed or gave up): the thaw daemon would still thaw and
  download the whole backup for nobody. ``thaw --cancel``.
- ``cancelled_request``: a request a killed ``--cancel`` had withdrawn from the
  queue but not removed yet. ``thaw --cancel`` again.
- ``restore_queue``: downloaded fragments without a request and without a
  restore running (a killed restore, ``restore --keep``): a new restore would
  use them; otherwise they only take space. ``restore --cancel``.
- ``abandoned``: a backup whose writer died before its manifest: nothing will
  upload it. ``prune -v VAULT --abandoned``.
- ``backup_wait``: the wait record of a backup that was killed while it waited
  for spool space (ignored by everyone, removed by nothing). ``rm``.
- ``restore_lock``: the lock of a restore that was killed (harmless: the next
  restore or cancel of that backup takes it and removes it). ``rm``.
- ``staged_request``: a thaw request a killed restore was still filing
  (``thaw/VAULT/PREFIX/.ULID.PID.new``, never renamed into place). ``rm -r``.
- ``prune_journal``: deletions a prune began and did not finish (or is doing
  right now); the next prune of that vault finishes them. A prune that keeps
  every backup finishes them and deletes nothing else.

Read only: this module never changes the spool.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryophile import thaw_request
from cryophile.backup_id import BackupId, normalize_prefix, parse_ulid, parse_vault
from cryophile.errors import UsageError
from cryophile.inventory import BackupState, SpoolRecord
from cryophile.presence import pid_alive
from cryophile.spool import Queue, Spool

#: The suffix of a request being cancelled: ``SPOOL/thaw/VAULT/PREFIX/.ULID.cancelled``
#: (:mod:`cryophile.cancel`; a name no scanner takes for a request).
CANCELLED_SUFFIX = ".cancelled"
#: ``prune --keep-last`` this large keeps every backup: it only finishes the journal.
KEEP_EVERYTHING = 1_000_000_000

_CANCELLED = re.compile(rf"\.([0-9A-Za-z]{{26}}){re.escape(CANCELLED_SUFFIX)}")


class Kind(StrEnum):
    """What a leftover is (stable JSON values)."""

    THAW_REQUEST = "thaw_request"
    CANCELLED_REQUEST = "cancelled_request"
    RESTORE_QUEUE = "restore_queue"
    ABANDONED = "abandoned"
    BACKUP_WAIT = "backup_wait"
    RESTORE_LOCK = "restore_lock"
    PRUNE_JOURNAL = "prune_journal"
    STAGED_REQUEST = "staged_request"


@dataclass(frozen=True)
class Leftover:
    """One leftover: what, where, of which backup (if one), and the command removing it."""

    kind: Kind
    path: Path
    backup: BackupId | None
    command: str

    def as_json(self) -> dict[str, str | None]:
        """One entry of ``status --json``'s ``leftovers``."""
        return {"kind": self.kind.value, "path": str(self.path),
                "backup": None if self.backup is None else str(self.backup),
                "command": self.command}


def find_leftovers(spool: Spool, records: dict[BackupId, SpoolRecord], *,
                   global_options: str = "") -> list[Leftover]:
    """Every leftover in ``spool`` (``records``: :func:`cryophile.inventory.scan_spool`'s).

    ``global_options`` (``-S SPOOL``, ``-c FILE``, shell-quoted) go into every
    cryophile command, so that each can be pasted as it is.
    """
    cryophile = "cryophile" + (f" {global_options}" if global_options else "")
    found: list[Leftover] = []
    for backup_id in sorted(records):
        record = records[backup_id]
        paste = shlex.quote(str(backup_id))
        restoring = (_restore_running(spool, backup_id) or thaw_request.claimant(
            spool.backup_dir(Queue.THAW, backup_id)) is not None)
        if record.thaw is not None and not restoring:
            found.append(Leftover(Kind.THAW_REQUEST, spool.backup_dir(Queue.THAW, backup_id),
                                  backup_id, f"{cryophile} thaw --cancel --id {paste}"))
        elif record.restore is not None and not restoring:
            found.append(Leftover(Kind.RESTORE_QUEUE,
                                  spool.backup_dir(Queue.RESTORE, backup_id), backup_id,
                                  f"{cryophile} restore --cancel --id {paste}"))
        if record.upload_state is BackupState.INCOMPLETE:
            queue = Queue.BACKUP if record.writer is not None else Queue.FREEZE
            prefix = f" -p {shlex.quote(backup_id.prefix)}" if backup_id.prefix else ""
            found.append(Leftover(Kind.ABANDONED, spool.backup_dir(queue, backup_id), backup_id,
                                  f"{cryophile} prune -v {backup_id.vault}{prefix} --abandoned"))
    for backup_id, path in _cancelled_requests(spool):
        found.append(Leftover(Kind.CANCELLED_REQUEST, path, backup_id,
                              f"{cryophile} thaw --cancel --id {shlex.quote(str(backup_id))}"))
    found += [Leftover(Kind.BACKUP_WAIT, path, None, f"rm -- {shlex.quote(str(path))}")
              for path in _dead_records(spool.backup_waits_dir, "*.json")]
    found += [Leftover(Kind.RESTORE_LOCK, path, None, f"rm -- {shlex.quote(str(path))}")
              for path in _dead_records(spool.run_dir / "restore", "*.lock")]
    found += [Leftover(Kind.STAGED_REQUEST, path, None, f"rm -r -- {shlex.quote(str(path))}")
              for path in _staged_requests(spool)]
    for path, vault_id in _prune_journals(spool):
        found.append(Leftover(Kind.PRUNE_JOURNAL, path, None,
                              f"{cryophile} prune -v {vault_id} --keep-last {KEEP_EVERYTHING}"))
    return found


def _restore_running(spool: Spool, backup_id: BackupId) -> bool:
    """A live process holds this backup's restore lock (by the pid it wrote there: taking
    the lock to find out would make a restore starting right now fail)."""
    try:
        text = spool.restore_lock_path(backup_id).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return text.isdigit() and pid_alive(int(text))


def _cancelled_requests(spool: Spool) -> Iterator[tuple[BackupId, Path]]:
    base = spool.queue_dir(Queue.THAW)
    for dirpath, dirnames, _ in os.walk(base):
        relative = Path(dirpath).relative_to(base)
        for name in list(dirnames):
            match = _CANCELLED.fullmatch(name)
            if match is None or not relative.parts:
                continue
            dirnames.remove(name)
            with contextlib.suppress(UsageError):
                yield (BackupId(parse_vault(relative.parts[0]),
                                normalize_prefix("/".join(relative.parts[1:])),
                                parse_ulid(match.group(1))),
                       Path(dirpath) / name)


#: ``thaw/VAULT/PREFIX/.ULID.PID.new``: a request being filed by process PID
#: (thaw_request.file_request), renamed into place when written; ``.ULID.PID.closing``:
#: one being removed (thaw_request.close), renamed out of place first.
_STAGED = re.compile(r"\.([0-9A-Za-z]{26})\.([0-9]+)\.(?:new|closing)")


def _staged_requests(spool: Spool) -> Iterator[Path]:
    """Staging directories of requests whose filing process died before the rename."""
    base = spool.queue_dir(Queue.THAW)
    for dirpath, dirnames, _ in os.walk(base):
        for name in list(dirnames):
            match = _STAGED.fullmatch(name)
            if match is None:
                continue
            dirnames.remove(name)
            if not pid_alive(int(match.group(2))):
                yield Path(dirpath) / name


#: An empty lock or record this young is being written, not left over.
FRESH_SECONDS = 60.0


def _fresh(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime < FRESH_SECONDS
    except OSError:
        return True


def _dead_records(directory: Path, pattern: str) -> list[Path]:
    """Files in ``directory`` naming a pid (a wait record's ``pid``, a lock's text) that
    is no longer alive, or none readable."""
    dead = []
    with contextlib.suppress(OSError):
        for path in sorted(directory.glob(pattern)):
            try:
                text = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                continue
            if not text and _fresh(path):
                continue  # created, its pid not written yet: a live one, starting
            pid: object = text
            if text.startswith("{"):
                try:
                    pid = json.loads(text).get("pid")
                except (ValueError, AttributeError):
                    pid = None
            number = pid if isinstance(pid, int) else (
                int(pid) if isinstance(pid, str) and pid.isascii() and pid.isdigit() else None)
            if number is None or not pid_alive(number):
                dead.append(path)
    return dead


def _prune_journals(spool: Spool) -> Iterator[tuple[Path, uuid.UUID]]:
    directory = spool.prune_journal(uuid.UUID(int=0)).parent
    with contextlib.suppress(OSError):
        for path in sorted(directory.glob("*.json")):
            with contextlib.suppress(UsageError):
                yield path, parse_vault(path.stem)


def describe(leftover: Leftover) -> str:
    """What ``status`` says of one leftover, before its command."""
    what = {
        Kind.THAW_REQUEST: "a thaw request no restore is waiting on now: run that restore "
                           "again to use it; otherwise the thaw daemon downloads the whole "
                           "backup for nobody",
        Kind.CANCELLED_REQUEST: "a thaw request a killed --cancel withdrew but did not remove",
        Kind.RESTORE_QUEUE: "downloaded fragments with no restore running and no request",
        Kind.ABANDONED: "a backup whose writer died before its manifest (never uploaded)",
        Kind.BACKUP_WAIT: "the wait record of a backup that is gone",
        Kind.RESTORE_LOCK: "the lock of a restore that is gone",
        Kind.STAGED_REQUEST: "a thaw request a killed process was still filing or "
                             "removing (used by nobody)",
        Kind.PRUNE_JOURNAL: "deletions a prune began and did not finish (the next prune of "
                            "the vault finishes them; this one keeps every backup)",
    }[leftover.kind]
    subject = f"{leftover.backup}: " if leftover.backup is not None else ""
    return f"{subject}{what}"

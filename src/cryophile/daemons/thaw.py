"""The thaw daemon: bring backups out of the vault into ``SPOOL/restore/``.

A restore request is a directory ``SPOOL/thaw/<vault>/<prefix>/<ULID>/`` with
``state.json`` (tier, days, and per fragment: cold, restore requested at,
thawed until, downloaded, attempts). For each request, a pass:

1. downloads the manifest (always in STANDARD) and publishes it first, as
   ``SPOOL/restore/ID/chunk.0``;
2. for each fragment not yet in the restore queue: an object that needs no
   restore (or is restored and not about to expire) is downloaded at once to
   ``thaw/ID/chunk.N.part``, checked against the manifest's SHA-256, fsynced
   and linked into ``restore/ID/``; a cold one gets a RestoreObject with the
   request's tier and days ("already in progress" counts as progress); one
   being restored is polled again later, with back-off. Servers that store
   archive classes but have no restore operation answer NOT_NEEDED (the vault
   layer logs it once) and are downloaded directly;
3. a fragment missing from the vault, or whose bytes do not match the
   manifest, is retried a bounded number of times; then the request is marked
   failed, naming the fragment, and ``restore`` stops with that message.

State is written atomically after every change, so a killed or rebooted thaw
loses nothing and never downloads again what is already in the restore
queue. A finished request is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryophile.backup_id import BackupId, fragment_name
from cryophile.daemons.freeze import Selection
from cryophile.durable import DIR_MODE, FILE_MODE, make_dirs, remove_empty_dirs, replace_file
from cryophile.errors import (
    CryophileError,
    DataError,
    NoInputError,
    StorageIOError,
    TryLaterError,
    UsageError,
)
from cryophile.manifest import Manifest, parse
from cryophile.pipeline.fragments import sha256_of_file
from cryophile.signing import MAX_SIGNATURE_BYTES, SIGNATURE_NAME, signature_key
from cryophile.spool import (
    LOCK_NAME,
    Queue,
    Spool,
    publish,
    read_spool_file,
    write_file_durably,
)
from cryophile.vault.base import COLD_STORAGE_CLASSES, ObjectInfo, RestoreState
from cryophile.vault.factory import OpenedVault
from cryophile.watch import TreeWatcher

logger = logging.getLogger(__name__)

STATE_NAME = "state.json"
MAX_ATTEMPTS = 3
# A restored copy that expires sooner than this is asked for again before
# downloading it: a download of a large fragment must not race the expiry.
EXPIRY_MARGIN = timedelta(hours=1)
FIRST_POLL_SECONDS = 60.0
MAX_POLL_SECONDS = 15 * 60.0
RESCAN_SECONDS = 60.0

# AWS's documented retrieval times, by storage class and tier.
EXPECTED_WAIT = {
    ("GLACIER", "Expedited"): "1–5 minutes",
    ("GLACIER", "Standard"): "3–5 hours",
    ("GLACIER", "Bulk"): "5–12 hours",
    ("DEEP_ARCHIVE", "Standard"): "within 12 hours",
    ("DEEP_ARCHIVE", "Bulk"): "within 48 hours",
}


class FragmentState:
    """The states of one fragment of a request, as stored in ``state.json``."""

    COLD = "cold"
    RESTORING = "restoring"
    DOWNLOADED = "downloaded"


@dataclass(frozen=True)
class ThawPlan:
    """What a request will thaw: the figures printed before restores are asked for."""

    backup_id: BackupId
    fragments: int
    total_bytes: int
    cold_fragments: int
    cold_bytes: int
    classes: dict[str, int]
    tier: str
    days: int

    def describe(self) -> str:
        """One paragraph for a person."""
        classes = ", ".join(f"{count} × {name}" for name, count in sorted(self.classes.items()))
        lines = [f"backup {self.backup_id}: {self.fragments} fragment(s), "
                 f"{self.total_bytes} bytes ({classes})"]
        if not self.cold_fragments:
            lines.append("no restore needed: every fragment can be downloaded now")
        else:
            waits = sorted({expected_wait(name, self.tier) for name in self.classes
                            if _needs_restore(name)})
            lines.append(f"{self.cold_fragments} fragment(s), {self.cold_bytes} bytes, need a "
                         f"restore: tier {self.tier}, kept {self.days} day(s); expected wait "
                         f"{' / '.join(waits)} (AWS's documented retrieval times)")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The plan for ``--json`` output."""
        return {"id": str(self.backup_id), "fragments": self.fragments,
                "bytes": self.total_bytes, "cold_fragments": self.cold_fragments,
                "cold_bytes": self.cold_bytes, "storage_classes": self.classes,
                "tier": self.tier, "days": self.days}


def expected_wait(storage_class: str, tier: str) -> str:
    """AWS's documented wait for a restore of ``storage_class`` at ``tier``."""
    kind = "DEEP_ARCHIVE" if storage_class == "DEEP_ARCHIVE" else "GLACIER"
    return EXPECTED_WAIT.get((kind, tier), "unknown")


def _needs_restore(storage_class: str) -> bool:
    return storage_class in COLD_STORAGE_CLASSES or storage_class == "INTELLIGENT_TIERING"


def check_tier(storage_class: str, tier: str) -> None:
    """Refuse tier/class pairs AWS refuses, with a message saying what works."""
    if storage_class == "DEEP_ARCHIVE" and tier == "Expedited":
        raise UsageError("the Expedited tier is not available for DEEP_ARCHIVE objects; use "
                         "Standard (within 12 hours) or Bulk (within 48 hours)")


def make_plan(backup_id: BackupId, manifest: Manifest, infos: dict[int, ObjectInfo | None],
              tier: str, days: int) -> ThawPlan:
    """The plan for ``manifest`` given what ``stat`` said of each fragment."""
    classes: dict[str, int] = {}
    cold = cold_bytes = 0
    for fragment in manifest.fragments:
        info = infos.get(fragment.index)
        name = info.storage_class if info is not None else "MISSING"
        classes[name] = classes.get(name, 0) + 1
        if info is not None and info.restore_state in (RestoreState.COLD,
                                                       RestoreState.RESTORING):
            cold += 1
            cold_bytes += fragment.size
    return ThawPlan(backup_id, len(manifest.fragments), manifest.stored_bytes, cold, cold_bytes,
                    classes, tier, days)


def fetch_manifest(opened: OpenedVault, backup_id: BackupId,
                   scratch: Path) -> tuple[Manifest, bytes]:
    """Download and parse the manifest of ``backup_id``; NoInputError if the vault lacks it.

    Returns the parsed manifest and its bytes as stored.
    """
    part = scratch / f".{fragment_name(0)}.{os.getpid()}.{threading.get_ident()}.part"
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            opened.vault.get(backup_id.object_key(0), part)
            break
        except NoInputError:
            raise NoInputError(f"backup {backup_id} is not in vault {backup_id.vault} (no "
                               "manifest there)") from None
        except DataError as error:
            # A checksum mismatch may be a transfer damaged on the way: the manifest
            # is small, so fetch it again before a request (or restore) fails for good.
            if attempt == MAX_ATTEMPTS:
                raise
            logger.warning("manifest of %s: %s; will try again (attempt %d of %d)", backup_id,
                           error, attempt, MAX_ATTEMPTS)
    try:
        data = part.read_bytes()
        return parse(data, expected=backup_id), data
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()


def fetch_signature(opened: OpenedVault, backup_id: BackupId, scratch: Path) -> bytes | None:
    """The manifest signature ``chunk.0.sig`` of ``backup_id`` from the vault; None if unsigned.

    It is stored in STANDARD like the manifest, so no restore is needed.
    """
    key = signature_key(backup_id)
    info = opened.vault.stat(key)
    if info is None:
        return None
    if info.size > MAX_SIGNATURE_BYTES:
        # Whoever can write to the vault must not make us download gigabytes.
        raise DataError(f"{key} is {info.size} bytes: not a signature")
    part = scratch / f".{SIGNATURE_NAME}.{os.getpid()}.{threading.get_ident()}.part"
    try:
        opened.vault.get(key, part)
        data = part.read_bytes()
    except NoInputError:
        return None  # deleted since the stat
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    if len(data) > MAX_SIGNATURE_BYTES:
        raise DataError(f"{key} is {len(data)} bytes: not a signature")
    return data


# -- the request on disk --------------------------------------------------------


def request_dir(spool: Spool, backup_id: BackupId) -> Path:
    """``SPOOL/thaw/ID``."""
    return spool.backup_dir(Queue.THAW, backup_id)


def file_request(spool: Spool, backup_id: BackupId, *, tier: str, days: int) -> bool:
    """Create the thaw request for ``backup_id`` unless one exists; True if created."""
    directory = request_dir(spool, backup_id)
    if directory.exists():
        return False
    make_dirs(directory.parent)
    # Built under a name no scanner takes for a request (not a ULID), then
    # renamed into place: a thaw daemon never sees a request without state.
    staging = directory.parent / f".{directory.name}.{os.getpid()}.new"
    staging.mkdir(mode=DIR_MODE)
    _save(staging, {"version": 1, "tier": tier, "days": days,
                    "created": datetime.now(UTC).isoformat(), "status": "active",
                    "error": None, "fragments": {}})
    try:
        os.rename(staging, directory)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if directory.exists():
            return False  # filed meanwhile by another restore
        raise
    logger.info("thaw request filed for %s (tier %s, %d days)", backup_id, tier, days)
    return True


def request_failure(spool: Spool, backup_id: BackupId) -> str | None:
    """The error of a failed request for ``backup_id``, or None."""
    try:
        state = load_state(request_dir(spool, backup_id))
    except FileNotFoundError:
        return None
    except DataError as damaged:
        # A damaged state (or a symlink in its place) is never served: a restore
        # waiting on it must stop with the reason, not wait for its timeout.
        return str(damaged)
    error = state.get("error")
    return str(error) if state.get("status") == "failed" else None


def load_state(directory: Path) -> dict[str, Any]:
    """The request state in ``directory``; DataError when it is damaged."""
    try:
        state = json.loads(read_spool_file(directory / STATE_NAME))
    except json.JSONDecodeError as error:
        raise DataError(f"thaw state {directory / STATE_NAME} is damaged: {error}") from None
    if not isinstance(state, dict) or not isinstance(state.get("fragments"), dict):
        raise DataError(f"thaw state {directory / STATE_NAME} is not a cryophile thaw state")
    return state


def _save(directory: Path, state: dict[str, Any]) -> None:
    replace_file(directory / STATE_NAME, json.dumps(state, indent=1).encode())


@contextlib.contextmanager
def _request_lock(directory: Path) -> Any:
    """Hold the request's lock, or yield False when another thaw works on it."""
    # O_NOFOLLOW: O_CREAT through a planted dangling symlink would create its target.
    fd = os.open(directory / LOCK_NAME, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC,
                 FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# -- the daemon ------------------------------------------------------------------


class Thawer:
    """Serves the thaw queue: restores, polls and downloads."""

    def __init__(self, spool: Spool, open_vault: Callable[[uuid.UUID], OpenedVault], *,
                 selection: Selection | None = None, first_poll: float = FIRST_POLL_SECONDS,
                 max_poll: float = MAX_POLL_SECONDS,
                 on_plan: Callable[[ThawPlan], None] | None = None,
                 on_pass: Callable[[list[BackupId], dict[BackupId, CryophileError]], None]
                 | None = None) -> None:
        self.spool = spool
        self.on_pass = on_pass  # told each pass's completed requests and errors (metrics)
        self.open_vault = open_vault
        self.selection = selection or Selection()
        self.first_poll = first_poll
        self.max_poll = max_poll
        self.on_plan = on_plan
        self._vaults: dict[uuid.UUID, OpenedVault] = {}
        self._poll_delay: dict[BackupId, float] = {}
        self._next_poll: dict[BackupId, float] = {}

    def _vault(self, vault_id: uuid.UUID) -> OpenedVault:
        if vault_id not in self._vaults:
            self._vaults[vault_id] = self.open_vault(vault_id)
        return self._vaults[vault_id]

    def pending(self) -> list[BackupId]:
        """The selected requests in the thaw queue."""
        return [backup_id for backup_id in sorted(self.spool.backups(Queue.THAW))
                if self.selection.matches(backup_id)]

    def run_pass(self) -> dict[BackupId, CryophileError]:
        """Work on every due request once; return the errors that stopped a request's pass."""
        errors: dict[BackupId, CryophileError] = {}
        completed: list[BackupId] = []
        now = time.monotonic()
        for backup_id in self.pending():
            if self._next_poll.get(backup_id, 0.0) > now:
                continue
            try:
                if self._serve(backup_id):
                    completed.append(backup_id)
            except CryophileError as error:
                errors[backup_id] = error
                logger.error("thaw of %s: %s", backup_id, error,
                             extra={"backup": str(backup_id), "event": "error",
                                    "transient": error.transient})
            except OSError as error:
                # A local problem with one request must not stop the others.
                errors[backup_id] = StorageIOError(f"{error.filename}: {error.strerror}")
                logger.error("thaw of %s: %s", backup_id, errors[backup_id],
                             extra={"backup": str(backup_id), "event": "error"})
        if self.on_pass is not None:
            self.on_pass(completed, errors)
        return errors

    def next_wake(self) -> float:
        """Seconds until the earliest poll that is due (the rescan period if none)."""
        if not self._next_poll:
            return RESCAN_SECONDS
        return max(0.0, min(self._next_poll.values()) - time.monotonic())

    def run(self, stop: threading.Event, *, until_done: bool = False) -> None:
        """Pass after pass until ``stop`` (or, with ``until_done``, no selected request is left)."""
        with TreeWatcher(self.spool.queue_dir(Queue.THAW)) as watcher:
            while not stop.is_set():
                watcher.refresh()
                self.run_pass()
                if until_done and not [b for b in self.pending()
                                       if request_failure(self.spool, b) is None]:
                    return
                watcher.sleep(min(self.next_wake(), RESCAN_SECONDS), stop)

    # -- one request -------------------------------------------------------------

    def _serve(self, backup_id: BackupId) -> bool:
        """Advance one request; True when it completed in this call."""
        directory = request_dir(self.spool, backup_id)
        try:
            return self._serve_locked(backup_id, directory)
        except OSError:
            if directory.exists():
                raise
            # Withdrawn mid-pass: the restore it served finished and cleaned up
            # as soon as the last fragment arrived (or an operator removed it).
            self._forget(backup_id)
            logger.info("thaw of %s complete: the request was closed by its restore",
                        backup_id, extra={"backup": str(backup_id), "event": "thawed"})
            return True

    def _forget(self, backup_id: BackupId) -> None:
        self._next_poll.pop(backup_id, None)
        self._poll_delay.pop(backup_id, None)

    def _serve_locked(self, backup_id: BackupId, directory: Path) -> bool:
        with _request_lock(directory) as locked:
            if not locked:
                return False
            state = load_state(directory)
            if state.get("status") == "failed":
                return False
            try:
                done = self._advance(backup_id, directory, state)
            except (DataError, NoInputError, UsageError) as error:
                # Permanent for this request: record it where restore looks.
                state["status"], state["error"] = "failed", str(error)
                _save(directory, state)
                raise
            finally:
                if state.get("status") != "failed" and directory.exists():
                    _save(directory, state)
        if done:
            shutil.rmtree(directory, ignore_errors=True)
            remove_empty_dirs(directory.parent, self.spool.queue_dir(Queue.THAW))
            self._forget(backup_id)
            logger.info("thaw of %s complete: every fragment is in the restore queue",
                        backup_id, extra={"backup": str(backup_id), "event": "thawed"})
        return done

    def _advance(self, backup_id: BackupId, directory: Path, state: dict[str, Any]) -> bool:
        """Move every fragment of one request forward; True when all are downloaded."""
        opened = self._vault(backup_id.vault)
        target = self.spool.backup_dir(Queue.RESTORE, backup_id)
        make_dirs(target)
        manifest = self._manifest(opened, backup_id, directory, target)
        tier, days = str(state["tier"]), int(state["days"])
        fragments: dict[str, Any] = state["fragments"]
        infos: dict[int, ObjectInfo | None] = {}
        if not fragments:
            infos = {f.index: opened.vault.stat(backup_id.object_key(f.index))
                     for f in manifest.fragments}
            plan = make_plan(backup_id, manifest, infos, tier, days)
            logger.info("%s", plan.describe(), extra={"event": "plan", **plan.as_dict()})
            if self.on_plan is not None:
                self.on_plan(plan)
            for fragment in manifest.fragments:
                fragments[str(fragment.index)] = {"state": FragmentState.COLD, "attempts": 0,
                                                  "requested_at": None, "thawed_until": None}
        waiting = False
        for fragment in manifest.fragments:
            entry = fragments[str(fragment.index)]
            if entry["state"] == FragmentState.DOWNLOADED:
                continue
            if (target / fragment_name(fragment.index)).exists():
                entry["state"] = FragmentState.DOWNLOADED
                continue
            key = backup_id.object_key(fragment.index)
            info = infos[fragment.index] if fragment.index in infos else opened.vault.stat(key)
            if not self._fragment(opened, backup_id, fragment.index, fragment.size,
                                  fragment.sha256, key, info, entry, tier, days, directory,
                                  target):
                waiting = True
            _save(directory, state)
        if waiting:
            delay = self._poll_delay.get(backup_id, self.first_poll / 2) * 2
            self._poll_delay[backup_id] = min(delay, self.max_poll)
            self._next_poll[backup_id] = time.monotonic() + self._poll_delay[backup_id]
            return False
        return True

    def _manifest(self, opened: OpenedVault, backup_id: BackupId, directory: Path,
                  target: Path) -> Manifest:
        published = target / fragment_name(0)
        if published.exists():
            return parse(read_spool_file(published), expected=backup_id)
        manifest, data = fetch_manifest(opened, backup_id, directory)
        # The signature goes into the restore queue before the manifest: a
        # restore that sees chunk.0 finds chunk.0.sig already (if signed).
        try:
            signature = fetch_signature(opened, backup_id, directory)
        except DataError as error:
            # Not this request's business to refuse: a restore that requires a
            # signature (--signed-by) finds none and refuses; others need none.
            logger.warning("thaw of %s: ignoring the manifest signature: %s", backup_id, error)
            signature = None
        for name in (SIGNATURE_NAME, fragment_name(0)):
            with contextlib.suppress(FileNotFoundError):
                (directory / f"{name}.part").unlink()
        with contextlib.suppress(FileNotFoundError):
            (target / SIGNATURE_NAME).unlink()  # left by a pass killed before chunk.0
        if signature is not None:
            write_file_durably(directory / f"{SIGNATURE_NAME}.part", target / SIGNATURE_NAME,
                               signature)
        write_file_durably(directory / f"{fragment_name(0)}.part", published, data)
        return manifest

    def _fragment(self, opened: OpenedVault, backup_id: BackupId, index: int, size: int,
                  sha256: str, key: str, info: ObjectInfo | None, entry: dict[str, Any],
                  tier: str, days: int, directory: Path, target: Path) -> bool:
        """Advance one fragment; True when it is in the restore queue."""
        if info is None:
            return self._retry(entry, f"fragment {index} ({key}) is missing from vault "
                                      f"{backup_id.vault}")
        if info.size != size or (info.sha256 is not None and info.sha256 != sha256):
            return self._retry(entry, f"fragment {index} ({key}) in the vault does not match "
                                      f"the manifest ({info.size} bytes, SHA-256 {info.sha256})")
        readable = info.restore_state is RestoreState.NOT_NEEDED or (
            info.restore_state is RestoreState.RESTORED
            and (info.restore_expiry is None
                 or info.restore_expiry - datetime.now(UTC) > EXPIRY_MARGIN))
        if not readable and info.restore_state is not RestoreState.RESTORING:
            check_tier(info.storage_class, tier)
            answer = opened.vault.request_restore(key, days=days, tier=tier)
            entry["requested_at"] = datetime.now(UTC).isoformat()
            logger.info("restore of %s requested (%s, %s, %d days)", key, info.storage_class,
                        tier, days, extra={"backup": str(backup_id), "event": "restore",
                                           "key": key})
            readable = answer in (RestoreState.NOT_NEEDED, RestoreState.RESTORED)
        if not readable:
            entry["state"] = FragmentState.RESTORING
            return False
        if info.restore_expiry is not None:
            entry["thawed_until"] = info.restore_expiry.isoformat()
        return self._download(opened, backup_id, index, sha256, key, entry, directory, target)

    def _download(self, opened: OpenedVault, backup_id: BackupId, index: int, sha256: str,
                  key: str, entry: dict[str, Any], directory: Path, target: Path) -> bool:
        part = directory / f"{fragment_name(index)}.part"
        started = time.monotonic()
        # Whatever is at the .part name (a killed pass's leftover, a planted symlink)
        # goes first: the download must never be written through it.
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        try:
            opened.vault.get(key, part)
        except TryLaterError:
            entry["state"] = FragmentState.RESTORING
            return False
        except DataError as error:
            return self._retry(entry, f"fragment {index}: {error}")
        try:
            actual = sha256_of_file(part)
            if actual != sha256:
                part.unlink()
                return self._retry(entry, f"fragment {index} ({key}) downloaded with SHA-256 "
                                          f"{actual}, the manifest says {sha256}")
            os.chmod(part, FILE_MODE)
            size = part.stat().st_size
            publish(part, target / fragment_name(index))
        except OSError as error:
            raise StorageIOError(f"cannot place fragment {index} in {target}: "
                                 f"{error.strerror}") from None
        entry["state"] = FragmentState.DOWNLOADED
        seconds = max(time.monotonic() - started, 1e-6)
        logger.info("downloaded %s (%d bytes, %.1f MB/s)", key, size, size / seconds / 1e6,
                    extra={"backup": str(backup_id), "event": "downloaded", "key": key,
                           "bytes": size, "seconds": round(seconds, 3)})
        return True

    def _retry(self, entry: dict[str, Any], problem: str) -> bool:
        entry["attempts"] = int(entry.get("attempts", 0)) + 1
        if entry["attempts"] >= MAX_ATTEMPTS:
            raise DataError(f"{problem}; gave up after {entry['attempts']} attempts")
        logger.warning("%s; will try again (attempt %d of %d)", problem, entry["attempts"],
                       MAX_ATTEMPTS)
        return False



# -- what restore asks of thaw ----------------------------------------------------


@dataclass(frozen=True)
class Preparation:
    """Where a restore's fragments will come from.

    ``local``: every fragment is already in the restore queue. ``manifest``
    and ``plan`` are set when the backup must come from the vault and no thaw
    request exists yet: the caller checks its keys against the manifest, then
    files the request with :func:`file_request`.
    """

    local: bool
    plan: ThawPlan | None = None
    manifest: Manifest | None = None
    manifest_data: bytes | None = None  # the manifest's bytes as stored (to check a signature)


def in_restore_queue(spool: Spool, backup_id: BackupId) -> bool:
    """True when the manifest and every fragment it lists are in the restore queue."""
    directory = spool.backup_dir(Queue.RESTORE, backup_id)
    try:
        manifest = parse(read_spool_file(directory / fragment_name(0)), expected=backup_id)
    except FileNotFoundError:
        return False
    return all((directory / fragment_name(f.index)).exists() for f in manifest.fragments)


def _missing(directory: Path, backup_id: BackupId) -> list[str]:
    try:
        manifest = parse(read_spool_file(directory / fragment_name(0)), expected=backup_id)
    except FileNotFoundError:
        return [f"{fragment_name(0)} (the manifest)"]
    return [fragment_name(f.index) for f in manifest.fragments
            if not (directory / fragment_name(f.index)).exists()]


def prepare_restore(spool: Spool, backup_id: BackupId, opened: OpenedVault, *,
                    tier: str, days: int) -> Preparation:
    """Find out where the fragments of ``backup_id`` will come from; change nothing.

    Nothing to do when they are all in the restore queue, or a request
    exists. Otherwise the manifest is read from the vault (NoInputError: the
    vault does not have the backup) and every fragment is ``stat``-ed for the
    plan.
    """
    if in_restore_queue(spool, backup_id):
        return Preparation(local=True)
    if request_dir(spool, backup_id).exists():
        return Preparation(local=False)
    try:
        manifest, data = fetch_manifest(opened, backup_id, spool.queue_dir(Queue.THAW))
    except NoInputError as error:
        local = spool.backup_dir(Queue.RESTORE, backup_id)
        if local.exists():
            # Part of it is here: say what is missing, not just where it is not.
            raise DataError(f"{', '.join(_missing(local, backup_id))} missing from {local}, "
                            f"and {error}") from None
        raise
    infos = {f.index: opened.vault.stat(backup_id.object_key(f.index))
             for f in manifest.fragments}
    for info in infos.values():
        if info is not None and info.restore_state is RestoreState.COLD:
            check_tier(info.storage_class, tier)
    return Preparation(False, make_plan(backup_id, manifest, infos, tier, days), manifest,
                       data)


def finish_restore(spool: Spool, backup_id: BackupId) -> None:
    """Remove a restored backup from the restore queue (and any leftover request).

    A thaw daemon may still be finishing its pass on the request; it takes the
    request's disappearance as the end of the request (see ``Thawer._serve``).
    """
    for queue in (Queue.RESTORE, Queue.THAW):
        directory = spool.backup_dir(queue, backup_id)
        shutil.rmtree(directory, ignore_errors=True)
        remove_empty_dirs(directory.parent, spool.queue_dir(queue))

"""The thaw daemon: serve restore requests, bringing backups out of the vault into
``SPOOL/restore/``.

A request (:mod:`cryophile.thaw_request`) names a backup, a tier and days.
For each request, a pass:

1. downloads the manifest (always in STANDARD) and publishes it first, as
   ``SPOOL/restore/ID/chunk.0`` (its signature, if any, just before it);
2. for each fragment not yet in the restore queue: an object that needs no
   restore (or is restored and not about to expire) is downloaded at once to
   ``thaw/ID/chunk.N.part``, checked against the manifest's SHA-256, fsynced
   and linked into ``restore/ID/``; a cold one gets a RestoreObject with the
   request's tier and days ("already in progress" counts as progress); one
   being restored is polled again later, with back-off. Servers that store
   archive classes but have no restore operation answer NOT_NEEDED (the vault
   layer logs it once) and are downloaded directly;
3. a fragment missing from the vault, or whose bytes do not match the
   manifest, is tried again a few seconds later, a bounded number of times;
   then the request is marked failed, naming the fragment, and ``restore``
   stops with that message (a new restore retries the request).

A restore that stages a bounded window of fragments records how far it has
read in the request (:class:`~cryophile.thaw_request.ReadPosition`): the
Glacier restores of every cold fragment are still asked for in the first
pass (the charge does not depend on the order, and waiting hours per window
would be absurd), but a fragment is downloaded only once it is inside the
window, in the order the restore reads them (:func:`window_step`). Such a
request is never closed here: its restore closes it when it has read
everything (a fragment it consumed may be needed again by a rerun after a
crash, and is then downloaded again).

A full spool (ENOSPC, EDQUOT) while downloading is a wait, not an error:
the request records ``waiting_for_space`` (``status`` and the waiting restore
show it), is tried again after a short back-off (1 s doubling to 10 s, a
``statvfs`` each time, nothing downloaded until a fragment fits), logs the
wait at most once a minute, and goes on when space is back.

State is written atomically after every change, so a killed or rebooted thaw
loses nothing and never downloads again what is already in the restore
queue. A finished request is removed; a request its restore closed is simply
forgotten.

The daemon never spins: it wakes early only when a restore files a request
(a directory appears; its own writes are files), and a request whose pass
failed for any reason (the vault down, a full spool, another thaw holding
the request) waits out an exponential back-off before it is tried again.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryophile import presence, thaw_request
from cryophile.backoff import Backoff
from cryophile.backup_id import MANIFEST_NAME, SIGNATURE_NAME, BackupId, Selection, fragment_name
from cryophile.catalog import fetch_manifest, fetch_signature
from cryophile.durable import FILE_MODE, make_dirs
from cryophile.errors import (
    CryophileError,
    DataError,
    NoInputError,
    StorageIOError,
    TryLaterError,
    UsageError,
)
from cryophile.manifest import Fragment, Manifest, parse
from cryophile.pipeline.fragments import sha256_of_file
from cryophile.spool import Queue, Spool, publish, read_spool_file, write_file_durably
from cryophile.storage_classes import check_tier
from cryophile.thaw_plan import ThawPlan, make_plan
from cryophile.thaw_request import (
    POSITION_NAME,
    FragmentProgress,
    FragmentState,
    ReadPosition,
    SpaceWait,
    ThawRequest,
)
from cryophile.vault.base import ObjectInfo, RestoreState, SharedFiles
from cryophile.vault.factory import OpenedVault
from cryophile.watch import TreeWatcher

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
# A restored copy that expires sooner than this is asked for again before
# downloading it: a download of a large fragment must not race the expiry.
EXPIRY_MARGIN = timedelta(hours=1)
FIRST_POLL_SECONDS = 60.0
MAX_POLL_SECONDS = 15 * 60.0
RESCAN_SECONDS = 60.0
#: A fragment missing from the vault or arriving damaged is tried again this soon
#: (doubling): a directory vault that lacks it should say so in seconds, not minutes.
FIRST_RETRY_SECONDS = 2.0
#: A failed request is looked at this often, to serve it soon once a restore retries it.
FAILED_RECHECK_SECONDS = 5.0
#: Back-off of a request whose pass failed: 5 s, 10 s, … at most 5 minutes.
FIRST_ERROR_SECONDS = 5.0
MAX_ERROR_SECONDS = 300.0
#: Back-off while the spool is full: how soon thaw looks for room again.
FIRST_SPACE_SECONDS = 1.0
MAX_SPACE_SECONDS = 10.0
#: A wait for space is logged at most this often.
SPACE_LOG_SECONDS = 60.0
#: A request whose next download waits for its restore to read on is looked at
#: again this often even if no event says the restore moved (inotify is only a
#: wake-up).
WINDOW_RECHECK_SECONDS = 30.0


def _request_arrived(name: str, is_directory: bool) -> bool:
    """What wakes the daemon: a directory (a request renamed into the queue, or the
    prefix directories above it), or a restore recording that it read on (its
    ``position.json``). Everything thaw writes itself is another file."""
    return is_directory or name == POSITION_NAME


def free_space(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on ``directory``'s file system."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def no_space(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a full file system or quota."""
    seen: BaseException | None = error
    for _depth in range(5):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Step(enum.Enum):
    """What a pass does with one fragment of a request (:func:`window_step`)."""

    HAVE = "have"  # in the restore queue already
    CONSUMED = "consumed"  # read and removed by the restore: not needed again
    FETCH = "fetch"  # inside the window: restore if cold, download once readable
    REQUEST = "request"  # beyond the window, never asked for: ask for its restore only
    LATER = "later"  # beyond the window, already asked for: nothing until it is inside


def window_step(index: int, state: FragmentState, present: bool,
                position: ReadPosition | None, delivered_for: str | None = None) -> Step:
    """The window's decision for fragment ``index`` (pure).

    Without a position (no window) every missing fragment is fetched. With one,
    fragments up to ``released`` are consumed, and so is one already delivered
    to this run of the restore (``delivered_for``; it removes a fragment before
    it records the new position); those after it up to ``released + window``
    are fetched, and a later one only gets its Glacier restore asked for, once.
    """
    if present:
        return Step.HAVE
    if position is None:
        return Step.FETCH
    if position.consumed(index) or (state is FragmentState.DOWNLOADED and position.run
                                    and delivered_for == position.run):
        return Step.CONSUMED
    if position.allows(index):
        return Step.FETCH
    return Step.REQUEST if state is FragmentState.COLD else Step.LATER


class _Outcome(enum.Enum):
    """What one fragment's step came to."""

    DONE = "done"
    RESTORING = "restoring"  # a Glacier restore is under way: poll later
    RETRY = "retry"  # missing or damaged: look again in a few seconds
    WINDOW = "window"  # readable, but beyond the restore's window: download later
    NO_SPACE = "no space"  # the spool has no room for it: wait for space


@dataclass
class _Job:
    """One pass over one request: everything its steps share."""

    backup_id: BackupId
    opened: OpenedVault
    directory: Path  # SPOOL/thaw/ID
    target: Path  # SPOOL/restore/ID
    request: ThawRequest

    def key(self, index: int) -> str:
        return self.backup_id.object_key(index)


class Thawer:
    """Serves the thaw queue: restores, polls and downloads."""

    def __init__(self, spool: Spool, open_vault: Callable[[uuid.UUID], OpenedVault], *,
                 selection: Selection | None = None, first_poll: float = FIRST_POLL_SECONDS,
                 max_poll: float = MAX_POLL_SECONDS,
                 on_plan: Callable[[ThawPlan], None] | None = None,
                 on_pass: Callable[[list[BackupId], dict[BackupId, CryophileError]], None]
                 | None = None,
                 space: Callable[[Path], int] = free_space) -> None:
        self.spool = spool
        self.space = space  # free bytes where downloads go (injectable for tests)
        self.on_pass = on_pass  # told each pass's completed requests and errors (metrics)
        self.open_vault = open_vault
        self.selection = selection or Selection()
        self.first_poll = first_poll
        self.max_poll = max_poll
        self.on_plan = on_plan
        self._vaults: dict[uuid.UUID, OpenedVault] = {}
        # Glacier polling (not an error): the next look at a request's restores.
        self._poll_delay: dict[BackupId, float] = {}
        self._next_poll: dict[BackupId, float] = {}
        # Quick retries of missing or damaged fragments.
        self._retry_delay: dict[BackupId, float] = {}
        # Every failed pass of a request, whatever the reason.
        self._backoff: Backoff[BackupId] = Backoff(FIRST_ERROR_SECONDS, MAX_ERROR_SECONDS)
        # A full spool: its own short back-off, and when the wait was last logged.
        self._space_backoff: Backoff[BackupId] = Backoff(FIRST_SPACE_SECONDS,
                                                         MAX_SPACE_SECONDS)
        self._space_logged: dict[BackupId, float] = {}
        # The read position each windowed request had at its last pass: a restore
        # that read on makes its request due at once, whatever its poll time.
        self._released: dict[BackupId, tuple[int, int, str]] = {}
        # Fragments beyond the window already seen readable (not stat-ed again).
        self._readable: dict[BackupId, set[int]] = {}
        # Windowed requests whose every fragment was delivered (logged once).
        self._delivered: set[BackupId] = set()

    def _vault(self, vault_id: uuid.UUID) -> OpenedVault:
        if vault_id not in self._vaults:
            self._vaults[vault_id] = self.open_vault(vault_id)
        return self._vaults[vault_id]

    def pending(self) -> list[BackupId]:
        """The selected requests in the thaw queue."""
        return [backup_id for backup_id in sorted(self.spool.backups(Queue.THAW))
                if self.selection.matches(backup_id)]

    def run_pass(self, *, respect_backoff: bool = False) -> dict[BackupId, CryophileError]:
        """Work on every due request once; return the errors that stopped a request's pass.

        ``respect_backoff`` (the loops) skips requests whose last failure is too recent.
        """
        errors: dict[BackupId, CryophileError] = {}
        completed: list[BackupId] = []
        now = time.monotonic()
        pending = self.pending()
        for backup_id in pending:
            if self._next_poll.get(backup_id, 0.0) > now and not self._read_on(backup_id):
                continue
            if respect_backoff and not self._backoff.due(backup_id):
                continue
            try:
                if self._serve(backup_id):
                    completed.append(backup_id)
                self._backoff.succeeded(backup_id)
            except (CryophileError, OSError) as raised:
                error = (raised if isinstance(raised, CryophileError)
                         else StorageIOError(f"{raised.filename}: {raised.strerror}"))
                if not thaw_request.request_dir(self.spool, backup_id).exists():
                    # The restore it served finished and closed it meanwhile (or an
                    # operator removed it): nothing failed.
                    self._closed(backup_id)
                    completed.append(backup_id)
                    continue
                if no_space(raised):
                    # Even its state could not be written: wait for space, quietly.
                    self._wait_for_space(backup_id, f"waiting for space in the spool: {error}")
                    continue
                errors[backup_id] = error
                # The back-off decides when it is tried again: a poll or retry time
                # left from before the failure is past, and would wake the loop at once.
                self._next_poll.pop(backup_id, None)
                wait = self._backoff.failed(backup_id)
                logger.error("thaw of %s: %s", backup_id, error,
                             extra={"backup": str(backup_id), "event": "error",
                                    "transient": error.transient, "retry_in": round(wait, 1)})
        self._backoff.keep_only(set(pending))
        for gone in set(self._next_poll) - set(pending):
            if gone in self._released:
                # A windowed request ends when its restore has read everything.
                completed.append(gone)
                if gone in self._delivered:
                    self._forget(gone)  # its end was logged when all was delivered
                else:
                    self._closed(gone)
            else:
                self._forget(gone)  # removed meanwhile (its restore, an operator)
        if self.on_pass is not None:
            self.on_pass(completed, errors)
        return errors

    def next_wake(self) -> float:
        """Seconds until the earliest poll, retry or back-off is due (the rescan period
        if none)."""
        due = [self._backoff.next_due_in(RESCAN_SECONDS)]
        if self._next_poll:
            due.append(max(0.0, min(self._next_poll.values()) - time.monotonic()))
        return min(due)

    def run(self, stop: threading.Event, *, until_done: bool = False) -> None:
        """Pass after pass until ``stop`` is set.

        As the daemon (the default) it announces itself in the spool
        (:mod:`cryophile.presence`) so restores know their requests are served.
        With ``until_done`` (``restore --thaw``) it returns once no selected
        request is left that has not failed.
        """
        with contextlib.ExitStack() as stack:
            if not until_done:
                stack.enter_context(presence.announce(self.spool, presence.THAW))
            watcher = stack.enter_context(TreeWatcher(self.spool.queue_dir(Queue.THAW),
                                                      wake=_request_arrived))
            while not stop.is_set():
                watcher.refresh()
                self.run_pass(respect_backoff=True)
                if until_done and not [b for b in self.pending()
                                       if thaw_request.failure(self.spool, b) is None]:
                    return
                watcher.sleep(min(self.next_wake(), RESCAN_SECONDS), stop)

    # -- one request -------------------------------------------------------------

    def _closed(self, backup_id: BackupId) -> None:
        self._forget(backup_id)
        logger.info("thaw of %s complete: the request was closed by its restore",
                    backup_id, extra={"backup": str(backup_id), "event": "thawed"})

    def _forget(self, backup_id: BackupId) -> None:
        self._next_poll.pop(backup_id, None)
        self._poll_delay.pop(backup_id, None)
        self._retry_delay.pop(backup_id, None)
        self._released.pop(backup_id, None)
        self._readable.pop(backup_id, None)
        self._delivered.discard(backup_id)
        self._space_backoff.succeeded(backup_id)
        self._space_logged.pop(backup_id, None)

    def _read_on(self, backup_id: BackupId) -> bool:
        """Whether the restore a windowed request serves read on since the last pass."""
        if backup_id not in self._released:
            return False
        position = thaw_request.load_position(thaw_request.request_dir(self.spool, backup_id))
        # The window and run count too: a chain's later link opens from 0 when its turn
        # comes, and a rerun starts a new run.
        return position is not None and (position.released, position.window,
                                         position.run) != self._released[backup_id]

    def _wait_for_space(self, backup_id: BackupId, why: str) -> None:
        """Look for room again after the space back-off; log it at most once a minute."""
        wait = self._space_backoff.failed(backup_id)
        self._next_poll[backup_id] = time.monotonic() + wait
        now = time.monotonic()
        if now - self._space_logged.get(backup_id, -SPACE_LOG_SECONDS) >= SPACE_LOG_SECONDS:
            self._space_logged[backup_id] = now
            logger.warning("thaw of %s: %s (looking again every %.0f s at most; logged "
                           "once a minute)", backup_id, why,
                           MAX_SPACE_SECONDS,
                           extra={"backup": str(backup_id), "event": "waiting_for_space"})

    def _serve(self, backup_id: BackupId) -> bool:
        """Advance one request; True when it completed in this call.

        Raises TryLaterError when another thaw holds the request (a back-off, not
        a hot loop on its lock).
        """
        directory = thaw_request.request_dir(self.spool, backup_id)
        with thaw_request.lock(directory) as locked:
            if not locked:
                if not directory.exists():
                    raise FileNotFoundError(str(directory))  # closed: see run_pass
                raise TryLaterError(f"another thaw is serving the request in {directory}")
            request = thaw_request.load(directory)
            if request.failed:
                # Nothing to do until a restore retries it, which only rewrites its
                # state (a file: files do not wake the loop). Look again in a few
                # seconds, and never sooner: a stale poll time would spin the loop.
                self._forget(backup_id)
                self._next_poll[backup_id] = time.monotonic() + FAILED_RECHECK_SECONDS
                return False
            job = _Job(backup_id, self._vault(backup_id.vault), directory,
                       self.spool.backup_dir(Queue.RESTORE, backup_id), request)
            try:
                done = self._advance(job)
            except (DataError, NoInputError, UsageError) as error:
                # Permanent for this request: record it where restore looks.
                if directory.exists():
                    request.fail(str(error))
                    thaw_request.save(directory, request)
                raise
            finally:
                if not request.failed and directory.exists():
                    thaw_request.save(directory, request)
        if done:
            thaw_request.close(self.spool, backup_id)
            self._forget(backup_id)
            logger.info("thaw of %s complete: every fragment is in the restore queue",
                        backup_id, extra={"backup": str(backup_id), "event": "thawed"})
        return done

    def _advance(self, job: _Job) -> bool:
        """Move every fragment of one request forward; True when all are in the restore
        queue. A windowed request whose restore has consumed some is never done
        here: its restore closes it (a rerun may need what it consumed again)."""
        make_dirs(job.target)
        manifest = self._manifest(job)
        position = thaw_request.load_position(job.directory)
        backup_id = job.backup_id
        if position is not None:
            self._released[backup_id] = (position.released, position.window, position.run)
        infos: dict[int, ObjectInfo | None] = {}
        if not job.request.fragments:
            infos = {f.index: job.opened.vault.stat(job.key(f.index))
                     for f in manifest.fragments}
            plan = make_plan(job.backup_id, manifest, infos, job.request.tier,
                             job.request.days, job.opened.retrieval_prices)
            logger.info("%s", plan.describe(), extra={"event": "plan", **plan.as_dict()})
            if self.on_plan is not None:
                self.on_plan(plan)
            job.request.fragments = {f.index: FragmentProgress() for f in manifest.fragments}
        readable = self._readable.setdefault(backup_id, set())
        waiting = retrying = later = False
        everything_here = True  # every fragment in the restore queue at once
        for fragment in manifest.fragments:
            progress = job.request.fragments.setdefault(fragment.index, FragmentProgress())
            present = (job.target / fragment_name(fragment.index)).exists()
            step = window_step(fragment.index, progress.state, present, position,
                               progress.run)
            if step is Step.HAVE:
                progress.state = FragmentState.DOWNLOADED
                continue
            if step is Step.CONSUMED:
                everything_here = False
                continue
            if step is Step.LATER or (step is Step.REQUEST and fragment.index in readable):
                later = True
                everything_here = False
                continue
            info = (infos[fragment.index] if fragment.index in infos
                    else job.opened.vault.stat(job.key(fragment.index)))
            outcome = self._fragment(job, fragment, info, progress,
                                     download=step is Step.FETCH)
            if outcome is _Outcome.DONE:
                progress.run = position.run if position is not None else None
            if outcome is not _Outcome.DONE:
                everything_here = False
            if outcome is _Outcome.RESTORING:
                waiting = True
            elif outcome is _Outcome.RETRY:
                retrying = True
            elif outcome is _Outcome.WINDOW:
                readable.add(fragment.index)
                later = True
            elif outcome is _Outcome.NO_SPACE:
                thaw_request.save(job.directory, job.request)
                assert job.request.space_wait is not None
                self._wait_for_space(backup_id, job.request.space_wait.describe())
                return False
            thaw_request.save(job.directory, job.request)
        if job.request.space_wait is not None:
            job.request.space_wait = None  # nothing (more) to download for now
        if retrying:
            delay = self._retry_delay.get(backup_id, FIRST_RETRY_SECONDS / 2) * 2
            self._retry_delay[backup_id] = delay
            self._next_poll[backup_id] = time.monotonic() + delay
            return False
        self._retry_delay.pop(backup_id, None)
        if waiting:
            delay = self._poll_delay.get(backup_id, self.first_poll / 2) * 2
            self._poll_delay[backup_id] = min(delay, self.max_poll)
            self._next_poll[backup_id] = time.monotonic() + self._poll_delay[backup_id]
            return False
        if position is not None and not everything_here:
            # The restore reads on (position.json wakes this loop), or it is done
            # and closes the request; either way, nothing to do until then.
            self._next_poll[backup_id] = time.monotonic() + WINDOW_RECHECK_SECONDS
            if later:
                self._delivered.discard(backup_id)  # a rerun reads from the start again
            elif backup_id not in self._delivered:
                self._delivered.add(backup_id)
                logger.info("thaw of %s complete: every fragment was delivered to its "
                            "restore (which closes the request)", backup_id,
                            extra={"backup": str(backup_id), "event": "thawed"})
            return False
        return not later

    def _manifest(self, job: _Job) -> Manifest:
        published = job.target / MANIFEST_NAME
        if published.exists():
            return parse(read_spool_file(published), expected=job.backup_id)
        manifest, data = fetch_manifest(job.opened, job.backup_id, job.directory)
        # The signature goes into the restore queue before the manifest: a
        # restore that sees chunk.0 finds chunk.0.sig already (if signed).
        try:
            signature = fetch_signature(job.opened, job.backup_id, job.directory)
        except DataError as error:
            # Not this request's business to refuse: a restore that requires a
            # signature (--signed-by) finds none and refuses; others need none.
            logger.warning("thaw of %s: ignoring the manifest signature: %s", job.backup_id,
                           error)
            signature = None
        for name in (SIGNATURE_NAME, MANIFEST_NAME):
            with contextlib.suppress(FileNotFoundError):
                (job.directory / f"{name}.part").unlink()
        with contextlib.suppress(FileNotFoundError):
            (job.target / SIGNATURE_NAME).unlink()  # left by a pass killed before chunk.0
        if signature is not None:
            write_file_durably(job.directory / f"{SIGNATURE_NAME}.part",
                               job.target / SIGNATURE_NAME, signature)
        write_file_durably(job.directory / f"{MANIFEST_NAME}.part", published, data)
        return manifest

    def _fragment(self, job: _Job, fragment: Fragment, info: ObjectInfo | None,
                  progress: FragmentProgress, *, download: bool = True) -> _Outcome:
        """Advance one fragment: ask for its restore if it is cold, and download it
        once readable (only with ``download``: it is inside the window)."""
        key = job.key(fragment.index)
        if info is None:
            return self._retry(progress, f"fragment {fragment.index} ({key}) is missing from "
                                         f"vault {job.backup_id.vault}")
        if info.size != fragment.size or (info.sha256 is not None
                                          and info.sha256 != fragment.sha256):
            return self._retry(progress, f"fragment {fragment.index} ({key}) in the vault does "
                                         f"not match the manifest ({info.size} bytes, SHA-256 "
                                         f"{info.sha256})")
        readable = info.restore_state is RestoreState.NOT_NEEDED or (
            info.restore_state is RestoreState.RESTORED
            and (info.restore_expiry is None
                 or info.restore_expiry - datetime.now(UTC) > EXPIRY_MARGIN))
        if not readable and info.restore_state is not RestoreState.RESTORING:
            check_tier(info.storage_class, job.request.tier)
            answer = job.opened.vault.request_restore(key, days=job.request.days,
                                                      tier=job.request.tier)
            progress.requested_at = thaw_request.now_text()
            logger.info("restore of %s requested (%s, %s, %d days)", key, info.storage_class,
                        job.request.tier, job.request.days,
                        extra={"backup": str(job.backup_id), "event": "restore", "key": key})
            readable = answer in (RestoreState.NOT_NEEDED, RestoreState.RESTORED)
        if not readable:
            progress.state = FragmentState.RESTORING
            return _Outcome.RESTORING
        if info.restore_expiry is not None:
            progress.thawed_until = info.restore_expiry.isoformat()
        if not download:
            return _Outcome.WINDOW
        return self._download(job, fragment, progress)

    def _download(self, job: _Job, fragment: Fragment, progress: FragmentProgress) -> _Outcome:
        key = job.key(fragment.index)
        part = job.directory / f"{fragment_name(fragment.index)}.part"
        started = time.monotonic()
        # Whatever is at the .part name (a killed pass's leftover, a planted symlink)
        # goes first: the download must never be written through it.
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        free = self.space(job.directory)
        if free < fragment.size:
            # It cannot fit: do not even start (a partial download would only take
            # the last free bytes from everyone else on the disk).
            return self._no_room(job, fragment, free)
        vault = job.opened.vault
        try:
            # A directory vault hands its file over (a hard link, or a copy checked as
            # it is made): no second pass here. A link is checked by restore, which
            # verifies every fragment against the manifest before using it.
            shared = (vault.get_shared(key, part, sha256=fragment.sha256)
                      if isinstance(vault, SharedFiles) else None)
            if shared is None:
                vault.get(key, part)
        except TryLaterError:
            progress.state = FragmentState.RESTORING
            return _Outcome.RESTORING
        except DataError as error:
            return self._retry(progress, f"fragment {fragment.index}: {error}")
        except (StorageIOError, OSError) as error:
            if not no_space(error):
                raise
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            return self._no_room(job, fragment, self.space(job.directory))
        try:
            actual = fragment.sha256 if shared is not None else sha256_of_file(part)
            if actual != fragment.sha256:
                part.unlink()
                return self._retry(progress, f"fragment {fragment.index} ({key}) downloaded "
                                             f"with SHA-256 {actual}, the manifest says "
                                             f"{fragment.sha256}")
            if shared is None:
                os.chmod(part, FILE_MODE)  # never on a link: that is the vault's file
            size = part.stat().st_size
            publish(part, job.target / fragment_name(fragment.index))
        except OSError as error:
            if no_space(error):
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                return self._no_room(job, fragment, self.space(job.directory))
            raise StorageIOError(f"cannot place fragment {fragment.index} in {job.target}: "
                                 f"{error.strerror}") from None
        progress.state = FragmentState.DOWNLOADED
        if job.request.space_wait is not None:
            job.request.space_wait = None
            self._space_backoff.succeeded(job.backup_id)
            self._space_logged.pop(job.backup_id, None)
            logger.info("thaw of %s: space in the spool is back; downloading again",
                        job.backup_id, extra={"backup": str(job.backup_id),
                                              "event": "space_back"})
        seconds = max(time.monotonic() - started, 1e-6)
        logger.info("downloaded %s (%d bytes, %.1f MB/s)", key, size, size / seconds / 1e6,
                    extra={"backup": str(job.backup_id), "event": "downloaded", "key": key,
                           "bytes": size, "seconds": round(seconds, 3)})
        return _Outcome.DONE

    def _no_room(self, job: _Job, fragment: Fragment, free: int) -> _Outcome:
        """Record that ``fragment`` waits for room in the spool (since the wait began)."""
        since = (job.request.space_wait.since if job.request.space_wait is not None
                 else thaw_request.now_text())
        job.request.space_wait = SpaceWait(since, fragment.index, fragment.size, free)
        return _Outcome.NO_SPACE

    def _retry(self, progress: FragmentProgress, problem: str) -> _Outcome:
        progress.attempts += 1
        if progress.attempts >= MAX_ATTEMPTS:
            raise DataError(f"{problem}; gave up after {progress.attempts} attempts")
        logger.warning("%s; will try again (attempt %d of %d)", problem, progress.attempts,
                       MAX_ATTEMPTS)
        return _Outcome.RETRY

"""The freeze daemon: upload complete fragments from ``SPOOL/freeze/`` to their vault.

For each backup in the freeze queue:

1. every fragment file present is uploaded (several in parallel) with its
   SHA-256, which the vault verifies; the local file is deleted only after
   ``stat`` confirms the stored size and checksum;
2. once the manifest ``chunk.0`` exists and every fragment it lists is
   confirmed in the vault, its signature ``chunk.0.sig`` (if the backup was
   signed) and then the manifest are uploaded (always in STANDARD, so
   listing never needs a restore), confirmed and deleted, and the backup's
   queue directory removed.

A backup without a manifest whose writer still runs (its lock is held) has
its finished fragments uploaded but is never completed; one whose writer died
is left alone and reported: uploading it would only pay for storage.

Each backup is bound for the place it was queued for (its upload record,
:mod:`cryophile.uploads`): a freeze whose configuration would send it
elsewhere refuses, naming both (exit 78). Every upload is recorded before it
starts, so the freezer knows which objects under a backup's id are its own:

- a backup its writer withdrew (SIGTERM, an input error, a full spool) is
  removed from the vault again, so a retry under the same id lands;
- an object of an earlier attempt under the same id is replaced; objects this
  spool never uploaded (another host's backup with the same id) are never
  touched, and the first upload that meets one fails permanently, naming it.

Idempotent: killed at any instant and run again, it re-uploads what it had
not confirmed (a no-op for an identical object) and never deletes a local
file that the vault does not hold. The directory tree is the source of truth;
inotify only wakes the loop early, and only for what backups deliver
(``chunk.N`` files, new directories): the freezer's own writes never wake it.
A backup whose pass failed (for any reason) waits out an exponential back-off
before it is tried again; SIGTERM lets the uploads in flight finish and
starts no other.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from cryophile import presence
from cryophile.backoff import Backoff
from cryophile.backup_id import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    BackupId,
    Selection,
    parse_fragment_name,
)
from cryophile.durable import fsync_dir, remove_empty_dirs
from cryophile.errors import (
    AlreadyExistsError,
    ConfigError,
    CryophileError,
    DataError,
    ServiceError,
    StorageIOError,
    UploadStalledError,
)
from cryophile.in_flight import InFlight
from cryophile.manifest import Manifest, parse
from cryophile.pipeline.fragments import sha256_of_file
from cryophile.spool import LOCK_NAME, Queue, Spool, is_being_written, read_spool_file
from cryophile.storage_classes import MANIFEST_STORAGE_CLASS
from cryophile.uploads import (
    UploadRecord,
    UploadRecords,
    abort_incomplete,
    delete_own,
    describe_objects,
)
from cryophile.vault.factory import OpenedVault
from cryophile.watch import TreeWatcher

logger = logging.getLogger(__name__)

DEFAULT_PARALLEL = 4
#: ``backup --freeze``'s default: its fragments come one after another, and the
#: uploads share the CPU with the backup's own pipeline. Measured with 512 MiB
#: into SeaweedFS on two cores (backup --freeze -s 64M, 4 parts of each upload at
#: once): -j 1 3.5-3.8 s, -j 2 3.4-3.5 s, -j 4 4.2-4.3 s.
BACKUP_PARALLEL = 2
#: Most uploads at once (each holds a connection and up to a 16 MiB part).
MAX_PARALLEL = 64
RESCAN_SECONDS = 60.0
#: Back-off of a backup whose pass failed: 5 s, 10 s, 20 s, … at most 5 minutes.
FIRST_RETRY_SECONDS = 5.0
MAX_RETRY_SECONDS = 300.0


def _delivered(name: str, is_directory: bool) -> bool:
    """The events that wake the daemon: what a backup delivers (a fragment, the
    manifest, its signature, a new backup directory), never what freeze writes."""
    if is_directory:
        return True
    return name == SIGNATURE_NAME or parse_fragment_name(name) is not None


class _Stopped(Exception):  # noqa: N818 - a signal, not an error
    """SIGTERM arrived: start no other upload."""


@dataclass
class PassReport:
    """What one pass over the queue did."""

    uploaded: int = 0
    uploaded_bytes: int = 0
    completed: list[BackupId] = field(default_factory=list)
    waiting: list[BackupId] = field(default_factory=list)
    abandoned: list[BackupId] = field(default_factory=list)
    failed: dict[BackupId, CryophileError] = field(default_factory=dict)
    #: Backups withdrawn by their writer whose uploaded objects were removed again.
    withdrawn: list[BackupId] = field(default_factory=list)
    #: Backups skipped in this pass: still waiting out the back-off of a failure.
    deferred: list[BackupId] = field(default_factory=list)
    stopped: bool = False


class Freezer:
    """Uploads the freeze queue. Thread-safe uploads; one pass at a time."""

    def __init__(self, spool: Spool, open_vault: Callable[[uuid.UUID], OpenedVault], *,
                 parallel: int = DEFAULT_PARALLEL, selection: Selection | None = None,
                 on_pass: Callable[[PassReport], None] | None = None,
                 retarget: bool = False,
                 known_sha256: Callable[[BackupId, int], str | None] | None = None) -> None:
        self.spool = spool
        # The SHA-256 of a fragment whose backup has no manifest yet, from whoever
        # wrote it (``backup --freeze``: its writer hashed every byte as it wrote
        # it); else the file is read once more to hash it. The vault checks it.
        self.known_sha256 = known_sha256
        # Backups whose vault listing was checked for another host's objects while
        # their writer ran: once is enough (the uploads' own no-overwrite check
        # stays); listing again at every pass made a --freeze quadratic.
        self._checked_foreign: set[BackupId] = set()
        # --retarget: backups queued for another place go to the configured one
        # (after a bucket name was fixed, or the vault moved).
        self.retarget = retarget
        self.open_vault = open_vault
        self.parallel = parallel
        self.selection = selection or Selection()
        self.on_pass = on_pass  # told every pass's report (metrics)
        self.records = UploadRecords(spool)
        self._vaults: dict[uuid.UUID, OpenedVault] = {}
        self._in_flight = InFlight(spool.in_flight_path)
        self._backoff: Backoff[BackupId] = Backoff(FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS)

    def _vault(self, vault_id: uuid.UUID) -> OpenedVault:
        if vault_id not in self._vaults:
            self._vaults[vault_id] = self.open_vault(vault_id)
        return self._vaults[vault_id]

    def run_pass(self, stop: threading.Event | None = None, *,
                 respect_backoff: bool = False) -> PassReport:
        """Upload everything that can be uploaded now; never raises for one backup's failure.

        One pass at a time per spool: a second freezer (``--once`` from cron
        while the daemon runs) waits for the running pass, then finds little
        or nothing left, instead of deleting files from under it. With
        ``stop`` set, no further upload starts (the ones running finish).
        ``respect_backoff`` (the daemon) skips backups whose last failure is
        too recent.
        """
        with _pass_lock(self.spool.queue_dir(Queue.FREEZE)):
            self._in_flight.clear()  # what a killed freezer left; none runs now
            return self._run_pass(stop, respect_backoff)

    def _run_pass(self, stop: threading.Event | None, respect_backoff: bool) -> PassReport:
        report = PassReport()
        queued = sorted(self.spool.backups(Queue.FREEZE))
        with ThreadPoolExecutor(max_workers=self.parallel,
                                thread_name_prefix="freeze-upload") as pool:
            for backup_id in queued:
                if not self.selection.matches(backup_id):
                    continue
                if stop is not None and stop.is_set():
                    report.stopped = True
                    break
                self._attempt(backup_id, report, respect_backoff,
                              functools.partial(self._freeze, backup_id, pool, report, stop))
            if not report.stopped:
                waiting = set(queued)
                for backup_id in self.records.backup_ids():
                    if backup_id not in waiting and self.selection.matches(backup_id):
                        self._attempt(backup_id, report, respect_backoff,
                                      functools.partial(self._clean_withdrawn, backup_id,
                                                        report))
        self._backoff.keep_only(set(queued) | set(report.failed))
        if self.on_pass is not None:
            self.on_pass(report)
        return report

    def _attempt(self, backup_id: BackupId, report: PassReport, respect_backoff: bool,
                 work: Callable[[], None]) -> None:
        """Run one backup's work; record its failure (log, record, back-off) or success."""
        if respect_backoff and not self._backoff.due(backup_id):
            report.deferred.append(backup_id)
            return
        try:
            work()
        except _Stopped:
            report.stopped = True
            return
        except CryophileError as error:
            self._failed(backup_id, error, report)
            return
        except OSError as error:
            # Removed under our feet (a finished restore, an operator): one
            # backup's local trouble must not stop the others.
            self._failed(backup_id, StorageIOError(f"{error.filename}: {error.strerror}"),
                         report)
            return
        self._backoff.succeeded(backup_id)
        if backup_id not in report.completed and backup_id not in report.withdrawn:
            with contextlib.suppress(CryophileError, OSError):
                if (record := self.records.load(backup_id)) is not None and record.error:
                    self.records.set_error(backup_id, None)

    def _failed(self, backup_id: BackupId, error: CryophileError, report: PassReport) -> None:
        report.failed[backup_id] = error
        wait = self._backoff.failed(backup_id)
        logger.error("backup %s: %s", backup_id, error,
                     extra={"backup": str(backup_id), "event": "error",
                            "transient": error.transient, "retry_in": round(wait, 1)})
        with contextlib.suppress(CryophileError, OSError):
            # For `cryophile status`: why this backup does not move.
            self.records.set_error(backup_id, str(error))

    def run(self, stop: threading.Event, rescan: float = RESCAN_SECONDS, *,
            announce: bool = True) -> None:
        """Pass after pass until ``stop`` is set.

        Wakes early only when a backup delivers something; a backup whose pass
        failed is retried after its back-off, never sooner. ``announce``: publish
        the freeze daemon's presence (not for ``backup --freeze``, which serves
        its own backup only: other backups must not count on it).
        """
        announcing = (presence.announce(self.spool, presence.FREEZE) if announce
                      else contextlib.nullcontext())
        with announcing, \
                TreeWatcher(self.spool.queue_dir(Queue.FREEZE), wake=_delivered) as watcher:
            while not stop.is_set():
                watcher.refresh()
                self.run_pass(stop, respect_backoff=True)
                watcher.sleep(min(rescan, self._backoff.next_due_in(rescan)), stop)

    # -- one backup ----------------------------------------------------------

    def _freeze(self, backup_id: BackupId, pool: ThreadPoolExecutor, report: PassReport,
                stop: threading.Event | None) -> None:
        directory = self.spool.backup_dir(Queue.FREEZE, backup_id)
        _refuse_symlinked_entries(directory)
        opened = self._vault(backup_id.vault)
        self._check_destination(backup_id, opened)
        manifest_path = directory / MANIFEST_NAME
        manifest = self._read_manifest(manifest_path, backup_id)
        present = _fragments_in(directory)
        if manifest is None:
            writer_lock = self.spool.backup_dir(Queue.BACKUP, backup_id) / LOCK_NAME
            if not is_being_written(writer_lock):
                # Read the manifest again: the writer may have finished since.
                manifest = self._read_manifest(manifest_path, backup_id)
            if manifest is None:
                if is_being_written(writer_lock):
                    if present and backup_id not in self._checked_foreign:
                        self._refuse_foreign(opened, backup_id)
                        self._checked_foreign.add(backup_id)
                    self._upload_all(backup_id, opened, present, None, pool, report, stop,
                                     rescan=directory)
                    report.waiting.append(backup_id)
                else:
                    logger.warning("backup %s is incomplete (no manifest) and its writer is "
                                   "gone; not uploading it", backup_id,
                                   extra={"backup": str(backup_id), "event": "abandoned"})
                    report.abandoned.append(backup_id)
                return
        expected = {fragment.index: fragment.sha256 for fragment in manifest.fragments}
        strays = sorted(set(present) - set(expected))
        if strays:
            raise DataError(f"fragment(s) {', '.join(map(str, strays))} in {directory} are not "
                            "in the manifest; leaving the backup queued")
        self._refuse_foreign(opened, backup_id)
        self._upload_all(backup_id, opened, present, expected, pool, report, stop)
        for fragment in manifest.fragments:
            if fragment.index not in present:
                self._confirm(opened, backup_id.object_key(fragment.index), fragment.size,
                              fragment.sha256)
        self._remove_stale(opened, backup_id, manifest)
        signature_path = directory / SIGNATURE_NAME
        if signature_path.exists():
            # Before the manifest: in the vault too, chunk.0 marks "complete", and
            # a signed backup must never be seen complete without its signature.
            report.uploaded_bytes += self._upload_one(
                opened, backup_id.signature_key, signature_path,
                sha256_of_file(signature_path), MANIFEST_STORAGE_CLASS, backup_id, stop)
            report.uploaded += 1
        manifest_sha = sha256_of_file(manifest_path)
        key = backup_id.manifest_key
        report.uploaded_bytes += self._upload_one(opened, key, manifest_path, manifest_sha,
                                                  MANIFEST_STORAGE_CLASS, backup_id, stop)
        report.uploaded += 1
        remove_empty_dirs(directory, self.spool.queue_dir(Queue.FREEZE))
        self._remove_dead_writer(backup_id)
        # Complete in the vault: nothing of it is this spool's business any more.
        self.records.remove(backup_id)
        report.completed.append(backup_id)
        logger.info("backup %s frozen: %d fragment(s), %d bytes in %s", backup_id,
                    len(manifest.fragments), manifest.stored_bytes, opened.vault,
                    extra={"backup": str(backup_id), "event": "frozen",
                           "fragments": len(manifest.fragments),
                           "bytes": manifest.stored_bytes})

    def _check_destination(self, backup_id: BackupId, opened: OpenedVault) -> None:
        """ConfigError unless ``opened`` is the place the backup was queued for."""
        record = self.records.load(backup_id)
        if record is None or record.destination is None:
            return  # queued by a cryophile that recorded no destination
        if record.destination.same_place(opened.destination):
            return
        if self.retarget:
            logger.warning("backup %s was queued for %s; sending it to %s instead (--retarget)",
                           backup_id, record.destination.describe(),
                           opened.destination.describe(), extra={"backup": str(backup_id),
                                                                 "event": "retargeted"})
            self.records.retarget(backup_id, opened.destination)
            return
        raise ConfigError(
            f"backup {backup_id} was queued for {record.destination.describe()}, but this "
            f"freeze would send it to {opened.destination.describe()}; nothing was "
            "uploaded. Run freeze with the configuration the backup was made with (-c FILE, "
            "or the file the backup found: ~/.config/cryophile/cryophile.toml or "
            "/etc/cryophile/cryophile.toml); if the vault's bucket or directory really "
            "changed, 'cryophile freeze --retarget' sends it to the configured place")

    def _remove_stale(self, opened: OpenedVault, backup_id: BackupId,
                      manifest: Manifest) -> None:
        """Before the manifest goes up: delete what an earlier attempt under this id
        uploaded beyond this backup's fragments (it had more of them)."""
        record = self.records.load(backup_id)
        if record is None:
            return
        current = {backup_id.object_key(f.index) for f in manifest.fragments}
        current |= {backup_id.manifest_key, backup_id.signature_key}
        stale = {key: sha for key, sha in record.objects.items() if key not in current}
        removed = delete_own(opened.vault, stale)
        if removed:
            logger.info("backup %s: removed %s left in the vault by an earlier attempt "
                        "under this id", backup_id, describe_objects(removed),
                        extra={"backup": str(backup_id), "event": "stale-removed"})
        self.records.forget(backup_id, stale, drop_if_unused=False)

    def _clean_withdrawn(self, backup_id: BackupId, report: PassReport) -> None:
        """A record without a queued backup: its writer withdrew it (or it is complete)."""
        if self.spool.backup_dir(Queue.BACKUP, backup_id).exists():
            return  # being claimed now, or its writer was killed (prune --abandoned)
        record = self.records.load(backup_id)
        if record is None:
            return
        if record.objects:
            opened = self._vault(backup_id.vault)
            if record.destination is not None and not record.destination.same_place(
                    opened.destination):
                raise ConfigError(
                    f"backup {backup_id} was withdrawn by its writer, and what was uploaded "
                    f"of it is in {record.destination.describe()}, not in "
                    f"{opened.destination.describe()}: run freeze with the configuration "
                    "the backup was made with to remove it")
            if opened.vault.stat(backup_id.manifest_key) is None:
                deleted = delete_own(opened.vault, record.objects)
                logger.warning("backup %s was withdrawn by its writer; removed %s from %s",
                               backup_id, describe_objects(deleted) if deleted else "nothing",
                               opened.vault, extra={"backup": str(backup_id),
                                                    "event": "withdrawn"})
                report.withdrawn.append(backup_id)
        # Dropped only if the id is still free: a retry may have claimed it meanwhile.
        self.records.forget(backup_id, dict(record.objects), drop_if_unused=True)

    def _remove_dead_writer(self, backup_id: BackupId) -> None:
        """Remove the ``backup/ID`` of a frozen backup whose writer was killed after it
        published the manifest (its ``.lock``, perhaps a ``chunk.0.part`` linked to the
        manifest): nothing else would ever remove it, and ``status`` would call the
        frozen backup abandoned. A writer still holding its lock is left alone.
        """
        work = self.spool.backup_dir(Queue.BACKUP, backup_id)
        if is_being_written(work / LOCK_NAME):
            return
        try:
            leftovers = list(work.iterdir())
        except FileNotFoundError:
            return  # the usual case: the writer cleaned up after itself
        for path in leftovers:
            if path.name == LOCK_NAME or path.name.endswith(".part"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        remove_empty_dirs(work, self.spool.queue_dir(Queue.BACKUP))
        logger.info("backup %s: removed what its killed writer left in %s", backup_id, work)

    def _read_manifest(self, path: Path, backup_id: BackupId) -> Manifest | None:
        try:
            data = read_spool_file(path)
        except FileNotFoundError:
            return None
        return parse(data, expected=backup_id)

    def _upload_all(self, backup_id: BackupId, opened: OpenedVault, present: dict[int, Path],
                    expected: dict[int, str] | None, pool: ThreadPoolExecutor,
                    report: PassReport, stop: threading.Event | None, *,
                    rescan: Path | None = None) -> None:
        """Upload ``present``; with ``rescan`` (the directory of a backup still being
        written), also every fragment published there while these uploads run, so
        the uploads never wait for the slowest of a batch before taking the next."""
        submitted: dict[int, Future[int]] = {}

        def submit(index: int, path: Path) -> None:
            sha256 = expected[index] if expected is not None else None
            submitted[index] = pool.submit(self._upload_fragment, opened, backup_id, index,
                                           path, sha256, stop)

        for index in sorted(present):
            submit(index, present[index])
        running = set(submitted.values())
        while rescan is not None and running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            if any(future.exception() is not None for future in done) or (
                    stop is not None and stop.is_set()):
                break  # the pass ends: the ones still running finish below
            for index, path in sorted(_fragments_in(rescan).items()):
                if index not in submitted:
                    submit(index, path)
                    running.add(submitted[index])
        futures = [submitted[index] for index in sorted(submitted)]
        errors = list(_exceptions(futures))
        for future in futures:
            if future.exception() is None:
                report.uploaded += 1
                report.uploaded_bytes += future.result()
        if errors:
            # Permanent errors first: they need a person; transient ones only time.
            errors.sort(key=lambda error: error.transient)
            raise errors[0]
        if any(isinstance(future.exception(), _Stopped) for future in futures):
            raise _Stopped

    def _upload_fragment(self, opened: OpenedVault, backup_id: BackupId, index: int, path: Path,
                         sha256: str | None, stop: threading.Event | None) -> int:
        if stop is not None and stop.is_set():
            raise _Stopped
        if sha256 is None and self.known_sha256 is not None:
            sha256 = self.known_sha256(backup_id, index)
        if sha256 is None:
            sha256 = sha256_of_file(path)
        return self._upload_one(opened, backup_id.object_key(index), path, sha256,
                                opened.storage_class, backup_id, stop)

    def _upload_one(self, opened: OpenedVault, key: str, path: Path, sha256: str,
                    storage_class: str, backup_id: BackupId,
                    stop: threading.Event | None) -> int:
        """Upload, confirm, delete the local copy; return the size uploaded."""
        if stop is not None and stop.is_set():
            raise _Stopped
        size = path.stat().st_size
        started = time.monotonic()
        # Recorded before the upload starts: whatever happens next, this spool knows
        # the object under this key may be its own.
        previous = self.records.note_upload(backup_id, key, sha256)
        if previous is not None:
            # Sent before by this spool (a killed freezer; with other content, an
            # earlier attempt under this id): the parts of an unfinished upload linger.
            abort_incomplete(opened.vault, key)
        with self._in_flight.upload(key, size):
            try:
                opened.vault.put(key, path, sha256=sha256, storage_class=storage_class)
            except AlreadyExistsError:
                if previous is None or previous == sha256 or not delete_own(
                        opened.vault, {key: previous}):
                    raise self._foreign(opened, backup_id, key) from None
                logger.info("replaced %s, left by an earlier attempt under this id", key,
                            extra={"backup": str(backup_id), "event": "stale-replaced",
                                   "key": key})
                opened.vault.put(key, path, sha256=sha256, storage_class=storage_class)
            self._confirm(opened, key, size, sha256)
        seconds = max(time.monotonic() - started, 1e-6)
        # Only now, with the vault's word for size and checksum, may the local copy go.
        path.unlink()
        fsync_dir(path.parent)
        logger.info("uploaded %s (%d bytes, %.1f MB/s%s)", key, size, size / seconds / 1e6,
                    f", {storage_class}" if opened.has_storage_classes else "",
                    extra={"backup": str(backup_id), "event": "uploaded", "key": key,
                           "bytes": size, "seconds": round(seconds, 3)})
        return size

    def _refuse_foreign(self, opened: OpenedVault, backup_id: BackupId) -> None:
        """AlreadyExistsError (:meth:`_foreign`) if the vault holds a fragment, manifest or
        signature under ``backup_id`` that this spool did not upload.

        Checked before a pass uploads anything of the backup: the uploads' own
        check (a key that exists is never overwritten) comes too late for the
        fragments the other host does not have, which would otherwise land
        beside its backup (a parallel upload of chunk.4 succeeding while
        chunk.1 is refused).
        """
        record = self.records.load(backup_id)
        if record is None:
            return  # queued by a cryophile that kept no record: only the uploads' check
        base = f"{backup_id.key_prefix}/"
        try:
            keys = list(opened.vault.list(base))
        except CryophileError as error:
            if error.transient:
                raise  # the uploads would only meet it too
            # Credentials that may write but not list (no s3:ListBucket): the
            # uploads' own check is all there is; a refusal they meet too, they report.
            logger.debug("backup %s: cannot list its objects (%s); relying on the uploads' "
                         "own check", backup_id, error)
            return
        for key in keys:
            name = key[len(base):]
            if ((name == SIGNATURE_NAME or parse_fragment_name(name) is not None)
                    and key not in record.objects):
                raise self._foreign(opened, backup_id, key)

    def _foreign(self, opened: OpenedVault, backup_id: BackupId,
                 key: str) -> AlreadyExistsError:
        """The error for an object under ``backup_id`` that this spool did not upload."""
        record = self.records.load(backup_id) or UploadRecord(backup_id)
        try:
            theirs = [k for k in opened.vault.list(f"{backup_id.key_prefix}/")
                      if record.objects.get(k) is None or k == key]
        except CryophileError:
            theirs = [key]
        where = (f"vault {backup_id.vault} ({opened.destination.describe()}) already holds "
                 f"{describe_objects(theirs or [key])} under backup {backup_id}, which this "
                 "spool did not upload")
        if f"{backup_id.key_prefix}/{MANIFEST_NAME}" in theirs:
            # A complete backup of someone else's: no leftover to prune.
            return AlreadyExistsError(
                f"{where}, with its manifest: another host's complete backup has the same id "
                "(same -p and -t). Nothing was overwritten, and it must not be removed. Queue "
                "this backup again under another -t/-u (or another -p for this host)")
        return AlreadyExistsError(
            f"{where}: another host may be writing a backup with the same id (same -p "
            "and -t). Nothing was overwritten. Use another -t/-u for this backup; if those "
            "objects are leftovers nobody writes any more, remove them with 'cryophile prune "
            f"-v {backup_id.vault} --incomplete --older-than 1d' (or by hand), then run "
            "freeze again")

    def _confirm(self, opened: OpenedVault, key: str, size: int, sha256: str) -> None:
        info = opened.vault.stat(key)
        if info is None:
            raise ServiceError(f"{key} is not in vault {opened.vault_id} although it was "
                               "uploaded or its local copy is gone")
        if info.size != size or info.sha256 != sha256:
            raise DataError(f"{key} in vault {opened.vault_id} does not match: stored "
                            f"{info.size} bytes with SHA-256 {info.sha256}, expected {size} "
                            f"bytes with {sha256}")


class BackupFreezer:
    """``backup --freeze``: the freeze daemon's loop, in a thread of the backup, for
    that one backup only (the way ``restore --thaw`` thaws in-process).

    Same code, same guarantees as the daemon (:class:`Freezer`): uploads in
    parallel, verified before the local copy goes, manifest last, retries with
    back-off. A permanent error stops it (:attr:`error`): retrying cannot cure
    it, so the backup fails at once instead of waiting for the stall timeout.
    """

    #: Rescan period: inotify wakes the loop as fragments are published anyway.
    RESCAN_SECONDS = 5.0

    def __init__(self, spool: Spool, opened: OpenedVault, backup_id: BackupId, *,
                 parallel: int = BACKUP_PARALLEL) -> None:
        self.backup_id = backup_id
        #: Filled by the backup's writer (``run_backup(digests=…)``): fragment index →
        #: SHA-256 of what it wrote, so the uploads need not read a fragment to hash it.
        self.digests: dict[int, str] = {}
        self.freezer = Freezer(spool, lambda _vault: opened, parallel=parallel,
                               selection=Selection.only(backup_id), on_pass=self._on_pass,
                               known_sha256=self._known_sha256)
        self.stop = threading.Event()
        self.frozen = threading.Event()
        #: The permanent error that stopped it, if any.
        self.error: CryophileError | None = None
        #: The last error of any kind (for messages).
        self.last_error: CryophileError | None = None
        #: When an upload last completed (monotonic clock): the stall detector.
        self.progress_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="freeze", daemon=True)

    def _known_sha256(self, backup_id: BackupId, index: int) -> str | None:
        return self.digests.get(index) if backup_id == self.backup_id else None

    def start(self) -> BackupFreezer:
        """Start the uploading thread."""
        self.progress_at = time.monotonic()
        self._thread.start()
        return self

    def alive(self) -> bool:
        """True while the thread serves the backup (not stopped, not dead of a bug)."""
        return self._thread.is_alive() and not self.stop.is_set()

    def _run(self) -> None:
        self.freezer.run(self.stop, rescan=self.RESCAN_SECONDS, announce=False)

    def _on_pass(self, report: PassReport) -> None:
        if report.uploaded:
            self.progress_at = time.monotonic()
        if self.backup_id in report.completed:
            self.frozen.set()
            self.stop.set()
        error = report.failed.get(self.backup_id)
        if error is not None:
            self.last_error = error
            if not error.transient:
                self.error = error
                self.stop.set()

    def wait_frozen(self, stall_timeout: float) -> None:
        """Return once the backup is complete in the vault (manifest uploaded).

        Raises the freezer's permanent error, or UploadStalledError when no upload
        completed for ``stall_timeout`` seconds.
        """
        while not self.frozen.wait(0.2):
            if self.error is not None:
                raise self.error
            if not self._thread.is_alive():
                raise ServiceError(f"the uploads of backup {self.backup_id} stopped "
                                   "unexpectedly; run it again (see the log with -d)")
            stalled = time.monotonic() - self.progress_at
            if stalled >= stall_timeout:
                reason = f"; the last error: {self.last_error}" if self.last_error else ""
                raise UploadStalledError(
                    f"uploads of backup {self.backup_id} made no progress for {stalled:.0f} s "
                    f"(stall timeout {stall_timeout:g} s){reason}; the backup is complete in "
                    "the spool: 'cryophile freeze' uploads it, or run this backup again")

    def close(self) -> None:
        """Stop after the uploads in flight and wait for the thread."""
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def clean_up(self) -> None:
        """After the backup failed (its writer removed it from the spool): one pass that
        removes from the vault what was uploaded of it. Its failure is logged, never
        raised: the upload record keeps what is left for the next freeze."""
        self.close()
        report = self.freezer.run_pass()
        error = report.failed.get(self.backup_id)
        if error is not None:
            logger.warning("backup %s: could not remove what was uploaded of it yet (%s); "
                           "the next 'cryophile freeze' removes it", self.backup_id, error)


@contextlib.contextmanager
def _pass_lock(directory: Path) -> Iterator[None]:
    # flock on the queue directory itself: no lock file to leave behind.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another freeze pass is running on this spool; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _exceptions(futures: Iterable[Future[int]]) -> Iterable[CryophileError]:
    for future in futures:
        error = future.exception()
        if error is None:
            continue
        if isinstance(error, CryophileError):
            yield error
        elif isinstance(error, _Stopped):
            continue
        elif isinstance(error, OSError):
            yield StorageIOError(f"local I/O error: {error}")
        else:
            raise error


def _refuse_symlinked_entries(directory: Path) -> None:
    """DataError naming the first symlink in a queued backup: what it points to (outside
    the spool, perhaps) must never be uploaded as part of the backup."""
    with contextlib.suppress(FileNotFoundError):
        for path in sorted(directory.iterdir()):
            if path.is_symlink():
                raise DataError(f"{path} is a symbolic link; refusing to upload what it "
                                "points to (leaving the backup queued)")


def _fragments_in(directory: Path) -> dict[int, Path]:
    fragments: dict[int, Path] = {}
    with contextlib.suppress(FileNotFoundError):
        for path in directory.iterdir():
            index = parse_fragment_name(path.name)
            if index is not None and index > 0:
                fragments[index] = path
    return fragments


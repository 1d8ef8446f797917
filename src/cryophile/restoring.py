"""The restore use case: a backup id in, its plaintext out, wherever the fragments are.

``cryophile restore`` makes one call here (as ``backup`` calls
:func:`~cryophile.pipeline.backup.run_backup`). In order:

1. one restore of a backup at a time on a spool: a second one fails at once
   (two would fight over the restore queue, and the first to finish would
   remove it from under the other);
2. where the fragments come from (:func:`prepare`): all already in the
   restore queue; a thaw request that exists (a failed one is retried: the
   missing fragment may be back); or the vault, whose manifest is read now;
3. before anything is paid for or waited on: the manifest's signature
   (``--signed-by``) and whether a secret key here decrypts the backup (and
   its passphrase);
4. the request is filed and served: by this process (``--thaw``, or when no
   thaw daemon runs on the spool, which is then said), else by the daemon;
5. :func:`~cryophile.pipeline.restore.run_restore` streams the plaintext out
   as fragments arrive, saying every minute what it still waits for;
6. the restore queue and the request are removed (unless ``keep``).

A backup that comes from the vault goes through a bounded window
(:func:`restore_window`): at most W fragments are staged in the spool at
once, W being what the spool's budget holds (``spool_limit``, at least 2).
The restore records in the request how far it has read
(:class:`~cryophile.thaw_request.ReadPosition`), so whoever thaws (this
process or the daemon) downloads only inside the window, and removes each
fragment (unlink, fsync of the directory) as soon as its bytes went on to the
decryptor: the vault still has it, and a rerun after a crash downloads it
again. ``keep`` needs room for the whole backup, checked before anything is
filed (ConfigError, exit 78, with the numbers and the fix). While thaw waits
for space in the spool, the restore says so once, then at most every minute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryophile import presence, thaw_request
from cryophile.backup_id import (
    MANIFEST_NAME,
    BackupId,
    Selection,
    fragment_name,
    parse_fragment_name,
)
from cryophile.catalog import fetch_manifest, fetch_signature
from cryophile.daemons.thaw import FIRST_POLL_SECONDS, Thawer
from cryophile.durable import FILE_MODE, fsync_dir, make_dirs, remove_empty_dirs
from cryophile.errors import ConfigError, CryophileError, DataError, NoInputError, TryLaterError
from cryophile.manifest import Fragment, Manifest, parse
from cryophile.pipeline.engines import Engine
from cryophile.pipeline.keys import SecretKey
from cryophile.pipeline.restore import RestorePlan, RestoreResult, choose_key, run_restore
from cryophile.pipeline.stages import Counters
from cryophile.signing import TrustedSigners, check_manifest_signature, read_local_signature
from cryophile.spool import Queue, Spool, read_spool_file
from cryophile.spool_budget import SpoolLimit, spool_budget
from cryophile.storage_classes import check_tier
from cryophile.thaw_plan import ThawPlan, make_plan
from cryophile.thaw_request import ReadPosition, SpaceWait
from cryophile.units import human_bytes
from cryophile.vault.base import RestoreState
from cryophile.vault.factory import OpenedVault
from cryophile.watch import NOTICE_SECONDS

logger = logging.getLogger(__name__)

Notify = Callable[[str], None]


@dataclass(frozen=True)
class RestoreOptions:
    """What to restore and how (checked by the caller)."""

    backup_id: BackupId
    secret_keys: list[SecretKey]
    ask_passphrase: Callable[[SecretKey], str]
    engine: Engine
    tier: str
    days: int
    compression: str | None = None
    # Do the thaw work in this process: True always, False never, None (the
    # default) when no thaw daemon serves the spool.
    thaw: bool | None = None
    wait: bool = False  # wait for fragments someone else delivers
    timeout: float | None = None
    poll: float = FIRST_POLL_SECONDS
    keep: bool = False
    signers: TrustedSigners | None = None
    # The spool's budget (``--spool-limit`` / ``spool_limit``); None: the default.
    spool_limit: SpoolLimit | None = None


@dataclass(frozen=True)
class Preparation:
    """Where a restore's fragments will come from.

    ``local``: every fragment is already in the restore queue. ``manifest``,
    its bytes and ``plan`` are set when the backup must come from the vault and
    no thaw request exists yet. ``delivered``: someone else fills the restore
    queue (``--wait`` with fragments arriving and no request). ``retried`` is
    the error of a failed request this restore starts again.
    """

    local: bool
    plan: ThawPlan | None = None
    manifest: Manifest | None = None
    manifest_data: bytes | None = None
    delivered: bool = False
    retried: str | None = None

    def describe(self, backup_id: BackupId) -> str:
        """What ``restore --dry-run`` prints."""
        if self.plan is not None:
            return self.plan.describe()
        if self.local:
            return f"backup {backup_id}: already in the restore queue"
        if self.delivered:
            return f"backup {backup_id}: fragments are arriving in the restore queue"
        return f"backup {backup_id}: a thaw request is already in progress"


def in_restore_queue(spool: Spool, backup_id: BackupId) -> bool:
    """True when the manifest and every fragment it lists are in the restore queue."""
    directory = spool.backup_dir(Queue.RESTORE, backup_id)
    try:
        manifest = parse(read_spool_file(directory / MANIFEST_NAME), expected=backup_id)
    except FileNotFoundError:
        return False
    return all((directory / fragment_name(f.index)).exists() for f in manifest.fragments)


def _missing(directory: Path, backup_id: BackupId) -> list[str]:
    try:
        manifest = parse(read_spool_file(directory / MANIFEST_NAME), expected=backup_id)
    except FileNotFoundError:
        return [f"{MANIFEST_NAME} (the manifest)"]
    return [fragment_name(f.index) for f in manifest.fragments
            if not (directory / fragment_name(f.index)).exists()]


def prepare(spool: Spool, opened: OpenedVault, backup_id: BackupId, *, tier: str, days: int,
            wait: bool = False, dry_run: bool = False) -> Preparation:
    """Find out where the fragments of ``backup_id`` will come from.

    Changes nothing, except that a failed thaw request is made active again
    (not on a ``dry_run``). Otherwise the manifest is read from the vault
    (NoInputError: the vault does not have the backup) and every fragment is
    ``stat``-ed for the plan.
    """
    if wait and spool.backup_dir(Queue.RESTORE, backup_id).exists() and not (
            thaw_request.request_dir(spool, backup_id).exists()):
        # Someone else delivers the fragments (a copy, a thaw elsewhere): just wait.
        return Preparation(local=False, delivered=True)
    if in_restore_queue(spool, backup_id):
        return Preparation(local=True)
    if thaw_request.request_dir(spool, backup_id).exists():
        retried = None if dry_run else thaw_request.retry_failed(spool, backup_id)
        if thaw_request.request_dir(spool, backup_id).exists():
            return Preparation(local=False, retried=retried)
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
    return Preparation(False, make_plan(backup_id, manifest, infos, tier, days,
                                        opened.retrieval_prices), manifest, data)


def check_signature(spool: Spool, opened: OpenedVault, backup_id: BackupId,
                    signers: TrustedSigners, preparation: Preparation) -> None:
    """Before any Glacier restore is paid for: is it the signer's backup at all?"""
    if preparation.manifest_data is not None:
        check_manifest_signature(signers, backup_id, preparation.manifest_data,
                                 fetch_signature(opened, backup_id,
                                                 spool.queue_dir(Queue.THAW)))


def finish_restore(spool: Spool, backup_id: BackupId) -> None:
    """Remove a restored backup from the restore queue (and any leftover request).

    A thaw daemon may still be finishing its pass on the request; it takes the
    request's disappearance as the end of the request.
    """
    directory = spool.backup_dir(Queue.RESTORE, backup_id)
    shutil.rmtree(directory, ignore_errors=True)
    remove_empty_dirs(directory.parent, spool.queue_dir(Queue.RESTORE))
    thaw_request.close(spool, backup_id)


def restore(spool: Spool, opened: OpenedVault, options: RestoreOptions, output_fd: int, *,
            counters: Counters | None = None, notify: Notify | None = None) -> RestoreResult:
    """Restore ``options.backup_id`` into ``output_fd``; see the module docstring.

    ``notify`` receives what a person waiting should read (the plan, who thaws,
    what is still awaited); messages go nowhere without it. Raises what
    :func:`prepare` and :func:`~cryophile.pipeline.restore.run_restore` raise,
    and TryLaterError when another restore of the same backup runs.
    """
    say: Notify = notify if notify is not None else (lambda _message: None)
    backup_id = options.backup_id
    with _one_restore_at_a_time(spool, backup_id):
        preparation = prepare(spool, opened, backup_id, tier=options.tier, days=options.days,
                              wait=options.wait)
        if preparation.retried is not None:
            say(f"retrying the thaw request of {backup_id}, which had failed: "
                f"{preparation.retried}")
        if options.signers is not None:
            check_signature(spool, opened, backup_id, options.signers, preparation)
        if preparation.manifest is not None:
            # Before paying for a Glacier restore and waiting hours: can we decrypt it?
            choose_key(preparation.manifest, options.secret_keys, options.ask_passphrase)
        # Before anything is filed: does the spool have room for what this restore stages?
        window, fragment_count = restore_window(spool, opened, backup_id, options,
                                                preparation)
        if window is not None:
            # Before the window is announced: what an earlier, killed run left
            # beyond it would add to what this one stages.
            _drop_beyond(spool.backup_dir(Queue.RESTORE, backup_id), window)
            _drop_stale_downloads(thaw_request.request_dir(spool, backup_id), window)
        if preparation.manifest is not None:
            if preparation.plan is not None:
                say(preparation.plan.describe())
            filed = thaw_request.file_request(spool, backup_id, tier=options.tier,
                                              days=options.days, position=window)
            if not filed and window is not None:
                # Filed meanwhile by another process: this restore's window still holds.
                thaw_request.save_position(thaw_request.request_dir(spool, backup_id), window)
        elif window is not None:
            # A request left by an earlier run: this restore reads from the start again.
            thaw_request.save_position(thaw_request.request_dir(spool, backup_id), window)
        if window is not None:
            say(_window_line(window.window, fragment_count))
        served_here = _thaw_here(spool, options, preparation, say)
        signers = options.signers
        supplier = _Supplier(spool, backup_id, window, say)

        def authenticate(directory: Path, data: bytes) -> None:
            # The manifest actually used is checked again: the vault may have changed since.
            assert signers is not None
            check_manifest_signature(signers, backup_id, data, read_local_signature(directory))

        plan = RestorePlan(
            backup_id=backup_id,
            secret_keys=options.secret_keys,
            ask_passphrase=options.ask_passphrase,
            engine=options.engine,
            compression=options.compression,
            wait=options.wait or not preparation.local,
            timeout=options.timeout,
            supplier_failure=supplier.check,
            authenticate=None if signers is None else authenticate,
            still_waiting=lambda path, seconds: say(
                _waiting_for(spool, backup_id, path, seconds, served_here)),
            consumed=None if window is None else supplier.consumed,
        )
        with _thawing(served_here, spool, opened, backup_id, options.poll):
            result = run_restore(spool, plan, output_fd, counters)
        if not options.keep:
            finish_restore(spool, backup_id)
    return result


#: Bytes kept beside a window's fragments for the manifest's signature.
SIGNATURE_ALLOWANCE = 4096


def restore_window(spool: Spool, opened: OpenedVault, backup_id: BackupId,
                   options: RestoreOptions,
                   preparation: Preparation) -> tuple[ReadPosition | None, int]:
    """The window this restore stages fragments through (None when it needs none),
    and how many fragments the backup has (0 when the window was not needed).

    None when every fragment is local already (or someone else delivers
    them), and with ``keep``, after checking that the spool's budget holds
    the whole backup (ConfigError otherwise, naming both sizes and the fix).
    Raises ConfigError when the budget holds fewer than two fragments.
    """
    if preparation.local or preparation.delivered:
        return None, 0
    manifest, manifest_bytes = _known_manifest(spool, opened, backup_id, preparation)
    overhead = manifest_bytes + SIGNATURE_ALLOWANCE
    budget = spool_budget(spool.root, options.spool_limit, manifest.fragment_size)
    if options.keep:
        needed = manifest.stored_bytes + overhead
        if needed > budget.limit:
            raise ConfigError(
                f"restore --keep keeps the whole backup {backup_id} in the spool: it needs "
                f"{human_bytes(needed)}, and the spool's budget is {budget}; raise "
                "spool_limit (or --spool-limit, or free space on the spool's file system), "
                "or restore without --keep (fragments are then removed as they are read)")
        return None, len(manifest.fragments)
    return (ReadPosition(window=budget.restore_window(manifest.fragment_size, overhead),
                         released=0, pid=os.getpid(), run=f"{os.getpid()}.{time.time_ns()}"),
            len(manifest.fragments))


def _drop_beyond(directory: Path, window: ReadPosition) -> None:
    """Remove the fragments in the restore queue ``directory`` that lie beyond
    ``window`` (the vault still has them; thaw downloads them again in turn)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    dropped = []
    for name in names:
        index = parse_fragment_name(name)
        if index is not None and index > 0 and not window.allows(index):
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()
            dropped.append(index)
    if dropped:
        fsync_dir(directory)
        logger.info("removed fragment(s) %s from %s: beyond this restore's window of %d "
                    "(left by an earlier run; downloaded again in turn)",
                    ", ".join(map(str, sorted(dropped))), directory, window.window)


def _drop_stale_downloads(request: Path, window: ReadPosition) -> None:
    """Remove the partial downloads (``chunk.N.part``) a killed thaw left in the
    request beyond ``window``, unless a thaw is serving the request right now
    (it holds the lock, and removes its own leftovers as it goes)."""
    with thaw_request.lock(request) as held:
        if not held:
            return
        for part in request.glob("chunk.*.part"):
            index = parse_fragment_name(part.name.removesuffix(".part"))
            if index is not None and index > 0 and not window.allows(index):
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()


def _known_manifest(spool: Spool, opened: OpenedVault, backup_id: BackupId,
                    preparation: Preparation) -> tuple[Manifest, int]:
    """The manifest of a backup to thaw, and its size: from the preparation, else
    the one thaw published in the restore queue, else the vault's."""
    if preparation.manifest is not None and preparation.manifest_data is not None:
        return preparation.manifest, len(preparation.manifest_data)
    published = spool.backup_dir(Queue.RESTORE, backup_id) / MANIFEST_NAME
    try:
        data = read_spool_file(published)
    except FileNotFoundError:
        manifest, data = fetch_manifest(opened, backup_id, spool.queue_dir(Queue.THAW))
        return manifest, len(data)
    return parse(data, expected=backup_id), len(data)


class _Supplier:
    """What the restore tells the request that supplies it, and hears from it.

    :meth:`consumed` removes a fragment that has been read and records the new
    read position (retried at the next :meth:`check` if the spool was too full
    even for that); :meth:`check` returns why the request failed, if it did, and
    says once, then at most every minute, that thaw waits for space.
    """

    def __init__(self, spool: Spool, backup_id: BackupId, position: ReadPosition | None,
                 say: Notify) -> None:
        self.spool = spool
        self.backup_id = backup_id
        self.position = position
        self.say = say
        self.target = spool.backup_dir(Queue.RESTORE, backup_id)
        self.request = thaw_request.request_dir(spool, backup_id)
        self._unsaved = False
        self._space_said: float | None = None

    def consumed(self, fragment: Fragment) -> None:
        """Fragment ``fragment`` went on to the decryptor: remove it, move the window."""
        assert self.position is not None
        # Removed first, then the window moves: never more than W staged. A thaw
        # that finds it gone before the position moved knows from the run it
        # delivered it for that it was read.
        path = self.target / fragment_name(fragment.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fsync_dir(self.target)
        self.position = dataclasses.replace(self.position, released=fragment.index)
        self._unsaved = True
        self._save()

    def _save(self) -> None:
        if not self._unsaved or self.position is None:
            return
        try:
            thaw_request.save_position(self.request, self.position)
        except OSError as error:
            logger.warning("cannot record the read position of %s yet: %s", self.backup_id,
                           error.strerror)
            return
        self._unsaved = False

    def check(self) -> str | None:
        """Why the request failed (None: it did not); says when thaw waits for space."""
        self._save()
        try:
            request = thaw_request.load(self.request)
        except FileNotFoundError:
            return None
        except DataError as damaged:
            return str(damaged)
        self._tell_space(request.space_wait)
        return request.error if request.failed else None

    def _tell_space(self, wait: SpaceWait | None) -> None:
        now = time.monotonic()
        if wait is None:
            if self._space_said is not None:
                self._space_said = None
                self.say(f"space in the spool is back: thawing {self.backup_id} goes on")
            return
        if self._space_said is not None and now - self._space_said < NOTICE_SECONDS:
            return
        self._space_said = now
        self.say(f"{wait.describe()}; the restore goes on once there is room on the "
                 f"spool's file system ({self.spool.root})")


def _thaw_here(spool: Spool, options: RestoreOptions, preparation: Preparation,
               say: Notify) -> bool:
    """Whether this process does the thaw work: with ``--thaw``, or when a request
    exists and no thaw daemon serves the spool (a restore must never wait forever
    on a request nobody will serve)."""
    if preparation.local or preparation.delivered or options.thaw is False:
        return False
    if options.thaw:
        return True
    daemon = presence.alive(spool, presence.THAW)
    if daemon is not None:
        say(f"the thaw daemon (pid {daemon}) serves this request")
        return False
    say("no thaw daemon is running on this spool: thawing in this process (a Glacier "
        "restore takes hours; keep it running, or start 'cryophile thaw' and run restore "
        "again)")
    return True


def _waiting_for(spool: Spool, backup_id: BackupId, path: Path, seconds: float,
                 served_here: bool) -> str:
    """A line saying what the restore still waits for, and who is to deliver it."""
    minutes = int(seconds // 60)
    line = f"still waiting for {path.name} of {backup_id} ({minutes} min)"
    try:
        request = thaw_request.load(thaw_request.request_dir(spool, backup_id))
    except (FileNotFoundError, DataError):
        return line + ": no thaw request; waiting for the fragment to be delivered"
    counts = request.counts()
    states = ", ".join(f"{counts[state]} {state.value}" for state in counts)
    if request.space_wait is not None:
        states += f"; {request.space_wait.describe()}"
    if served_here:
        who = "thawed by this process"
    elif (pid := presence.alive(spool, presence.THAW)) is not None:
        who = f"served by the thaw daemon (pid {pid})"
    else:
        who = "no thaw daemon runs any more: start 'cryophile thaw' or restore with --thaw"
    return f"{line}: thaw request ({request.tier} tier) {states}; {who}"


@contextlib.contextmanager
def _one_restore_at_a_time(spool: Spool, backup_id: BackupId) -> Iterator[None]:
    """Hold this backup's restore lock; TryLaterError when another restore has it.

    The lock file goes when the restore ends (a refused restore leaves the
    spool as it was). So a lock taken on a file that was unlinked meanwhile
    is worth nothing: it is taken again on the file the path names now.
    """
    path = spool.restore_lock_path(backup_id)
    # What this restore creates, it removes: SPOOL/run too, unless it was there.
    keep = spool.run_dir if spool.run_dir.exists() else spool.root
    fd = _locked_file(path, backup_id)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            remove_empty_dirs(path.parent, keep)
    finally:
        os.close(fd)


#: Tries to take a restore lock that other restores keep removing (see _locked_file).
_LOCK_ATTEMPTS = 20


def _locked_file(path: Path, backup_id: BackupId) -> int:
    """An fd of ``path`` holding its exclusive lock, the file still linked there.

    Each retry is a race lost to a restore of the same backup that just ended,
    so a few suffice; TryLaterError if they do not (the loop never spins).
    """
    for _attempt in range(_LOCK_ATTEMPTS):
        make_dirs(path.parent)
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC,
                         FILE_MODE)
        except FileNotFoundError:
            continue  # the directory went with the last restore's lock: make it again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise TryLaterError(f"another restore of {backup_id} is running (pid {other}); "
                                "wait for it to finish, then run restore again") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the restore that held it finished and removed it: start over
    raise TryLaterError(f"the restore lock of {backup_id} ({path}) kept being replaced by "
                        "other restores of it; run restore again")


@contextlib.contextmanager
def _thawing(enabled: bool, spool: Spool, opened: OpenedVault, backup_id: BackupId,
             poll: float) -> Iterator[None]:
    """With ``enabled``, serve this backup's thaw request in a background thread."""
    if not enabled:
        yield
        return
    stop = threading.Event()

    def on_pass(_completed: list[BackupId], errors: dict[BackupId, CryophileError]) -> None:
        if backup_id in errors and thaw_request.failure(spool, backup_id) is not None:
            _wake_waiter(spool.backup_dir(Queue.RESTORE, backup_id))

    thawer = Thawer(spool, lambda _: opened, first_poll=poll, on_pass=on_pass,
                    selection=Selection.only(backup_id))
    worker = threading.Thread(target=thawer.run, args=(stop,), kwargs={"until_done": True},
                              name="thaw", daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()


def _wake_waiter(directory: Path) -> None:
    """Make the restore waiting on ``directory`` look again now, not at its next rescan
    (up to 5 s later): the thaw request it waits on has failed, so it can stop."""
    marker = directory / f".thaw-failed.{os.getpid()}"
    with contextlib.suppress(OSError):
        marker.touch()
        marker.unlink()


def hold_restore_lock(spool: Spool, backup_id: BackupId) -> contextlib.AbstractContextManager[None]:
    """Hold ``backup_id``'s restore lock as a restore does, so that none starts
    meanwhile (``restore --cancel``); TryLaterError when a restore of it runs."""
    return _one_restore_at_a_time(spool, backup_id)


def _window_line(window: int, fragments: int) -> str:
    """What the restore says of its window (never a window larger than the backup)."""
    if window >= fragments:
        return f"restoring {fragments} fragment(s): the spool's budget holds them all at once"
    return f"restoring through a window of {window} fragment(s) in the spool (of {fragments})"

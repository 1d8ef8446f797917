"""Restoring an incremental chain, and feeding restored streams to a command.

``cryophile restore --chain`` restores the full backup and every incremental
up to the one named, oldest first, each exactly as a single restore does
(:func:`cryophile.restoring.restore`: verified, decrypted, decompressed). In
order:

1. :func:`resolve_chain`: the links, from the manifests of the backup's series
   (same vault and prefix), as :func:`cryophile.chains.chain_of` follows them;
   a link that is not there (deleted, incomplete) or parents that loop is a
   DataError (65) naming the broken link;
2. :func:`check_links`: before anything is thawed, waited for or written,
   every link is checked in the vault as ``verify`` checks it without
   downloading (manifest, every fragment present with the manifest's size and
   SHA-256; with ``--signed-by`` its signature): a damaged link is a DataError
   (65) naming it, and no command has run;
3. :func:`restore_chain`: every link's manifest is read and the key checked,
   then the thaw requests of *all* links are filed and their Glacier restores
   asked for at once, so a chain costs one wait, not one per link; then the
   links are restored one after the other into a :class:`Sink`.

A :class:`Sink` is where the streams go: :class:`StreamSink` writes them one
after the other to one file descriptor (stdout or ``-o``), for tools that read
concatenated streams; :class:`CommandSink` (``--exec CMD``) starts a fresh
``sh -c CMD`` per link and writes that link's stream to its standard input. A
command that fails stops the chain with a CommandFailedError (69) naming the
link and the command's exit status; a link damaged inside an object stops the
chain at that link with its own error (65), the command's input marked
incomplete and the command stopped; the links before it were applied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryophile import presence, thaw_request
from cryophile.backup_id import BackupId, Selection
from cryophile.chains import Chain, chain_of
from cryophile.daemons.thaw import Thawer
from cryophile.errors import (
    CommandFailedError,
    CryophileError,
    DataError,
    NoInputError,
    StorageIOError,
)
from cryophile.inventory import take_inventory
from cryophile.pipeline.restore import RestoreResult, choose_key
from cryophile.pipeline.stages import Counters
from cryophile.restoring import (
    Preparation,
    RestoreOptions,
    check_signature,
    in_restore_queue,
    prepare,
    restore,
)
from cryophile.signing import TrustedSigners
from cryophile.spool import Queue, Spool
from cryophile.storage_classes import PRICES_AS_OF, check_tier, expected_wait, needs_restore
from cryophile.vault.base import RestoreState
from cryophile.vault.factory import OpenedVault
from cryophile.verification import Verifier

logger = logging.getLogger(__name__)

Notify = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


# -- which links ---------------------------------------------------------------------


def find_chain(spool: Spool, opened: OpenedVault, target: BackupId) -> Chain:
    """The chain of ``target`` (:func:`cryophile.chains.chain_of`), whole or not.

    The parents come from the manifests of every backup of ``target``'s
    vault and prefix, in the spool or the vault. NoInputError when
    ``target`` has no manifest anywhere; the vault's own error when it
    cannot be listed.
    """
    inventory = take_inventory(spool, lambda _vault: opened, [target.vault],
                               prefix=target.prefix or None, only_vault=target.vault)
    if target.vault in inventory.failures:
        raise inventory.failures[target.vault]
    parents = {entry.backup_id: entry.manifest.parent_id
               for entry in inventory.entries
               if entry.manifest is not None and entry.backup_id.prefix == target.prefix}
    if target not in parents:
        raise NoInputError(f"backup {target} is not in vault {target.vault} (no manifest "
                           "there nor in the spool)")
    return chain_of(target, parents)


def missing_link(chain: Chain) -> str | None:
    """Why ``chain`` is broken, naming the missing link; None when it is whole."""
    if chain.loop:
        return chain.problem()
    if chain.missing is not None:
        return (f"link {chain.missing} is missing (deleted, or never completed): "
                f"{chain.links[0].ulid} names it as its parent")
    return None


def resolve_chain(spool: Spool, opened: OpenedVault, target: BackupId) -> tuple[BackupId, ...]:
    """The links of ``target``'s chain, its full backup first and ``target`` last
    (:func:`find_chain`); DataError naming the broken link when one is missing
    or the parents loop."""
    chain = find_chain(spool, opened, target)
    problem = missing_link(chain)
    if problem is not None:
        raise DataError(f"cannot restore the chain of {target}: {problem}; nothing was "
                        "restored")
    return chain.links


def check_links(spool: Spool, opened: OpenedVault, links: Sequence[BackupId],
                signers: TrustedSigners | None = None) -> None:
    """Check every link as ``verify`` does without downloading; raise for the first
    broken one, naming it (DataError, 65; NoInputError, 66, when its manifest is
    gone; the error that kept it from being read, such as 75). A link already
    whole in the restore queue is checked when it is restored."""
    with spool.scratch("chain") as scratch:
        verifier = Verifier(opened, scratch, download=False, signers=signers)
        for number, link in enumerate(links, start=1):
            if in_restore_queue(spool, link):
                continue
            where = f"link {number} of {len(links)}, {link}"
            try:
                report = verifier.verify(link)
            except NoInputError as error:
                raise NoInputError(f"cannot restore the chain of {links[-1]}: {where}: "
                                   f"{error}; nothing was restored") from None
            damaged = [finding.message for finding in report.findings if finding.damaged]
            if damaged:
                raise DataError(f"cannot restore the chain of {links[-1]}: {where}, is "
                                f"damaged: {'; '.join(damaged)}; nothing was restored")
            unreadable = report.unreadable
            if unreadable is not None:
                raise type(unreadable)(f"cannot restore the chain of {links[-1]}: {where}: "
                                       f"{unreadable}; nothing was restored")


# -- the plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainPlan:
    """What restoring a chain involves: each link's preparation, oldest first."""

    links: tuple[BackupId, ...]
    preparations: tuple[Preparation, ...]

    @property
    def retrieval_usd(self) -> float:
        """The estimated charge of every link's Glacier restores."""
        return sum(p.plan.retrieval_usd for p in self.preparations if p.plan is not None)

    @property
    def egress_usd(self) -> float:
        """The estimated charge of downloading every link out of AWS."""
        return sum(p.plan.egress_usd for p in self.preparations if p.plan is not None)

    def describe(self) -> str:
        """What ``restore --chain --dry-run`` prints: each link, then the whole chain."""
        lines = [f"chain of {self.links[-1]}: {len(self.links)} backup(s), restored oldest "
                 "first"]
        for number, (link, preparation) in enumerate(zip(self.links, self.preparations,
                                                         strict=True), start=1):
            text = preparation.describe(link).replace("\n", "\n  ")
            lines.append(f"link {number}: {text}")
        plans = [p.plan for p in self.preparations if p.plan is not None]
        cold = sum(plan.cold_fragments for plan in plans)
        total = sum(plan.total_bytes for plan in plans)
        if not cold:
            lines.append(f"whole chain: {total} bytes from the vault, no restore needed")
            return "\n".join(lines)
        waits = sorted({expected_wait(name, plan.tier) for plan in plans
                        for name in plan.classes if needs_restore(name)})
        charge = self.retrieval_usd + self.egress_usd
        lines.append(f"whole chain: {cold} fragment(s) need a restore, all requested at once "
                     f"(one wait, not one per link); {total} bytes to download")
        lines.append(f"whole chain ≈ ${charge:.2f} (${self.retrieval_usd:.2f} restores + "
                     f"${self.egress_usd:.2f} download), {' / '.join(waits)} "
                     f"({PRICES_AS_OF}, or the vault's retrieval_prices)")
        return "\n".join(lines)


def plan_chain(spool: Spool, opened: OpenedVault, links: Sequence[BackupId], *, tier: str,
               days: int, dry_run: bool = True) -> ChainPlan:
    """Each link's :func:`~cryophile.restoring.prepare` (``dry_run``: changing nothing)."""
    return ChainPlan(tuple(links), tuple(prepare(spool, opened, link, tier=tier, days=days,
                                                 dry_run=dry_run) for link in links))


# -- where the streams go ------------------------------------------------------------


class Sink(Protocol):
    """Where restored streams go, one link at a time."""

    def open(self, link: BackupId, number: int, count: int) -> int:
        """The file descriptor link ``number`` (of ``count``) is written to."""

    def close(self, link: BackupId) -> None:
        """The link's stream is complete; raise when its consumer failed."""

    def abort(self, link: BackupId, error: CryophileError) -> CryophileError:
        """The link's restore failed with ``error``: stop its consumer; the error to
        report (``error``, its message completed, or the consumer's own failure)."""


class StreamSink:
    """Every stream into one file descriptor, one after the other."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def open(self, link: BackupId, number: int, count: int) -> int:
        """The one file descriptor."""
        return self.fd

    def close(self, link: BackupId) -> None:
        """Nothing to finish: the next stream follows."""

    def abort(self, link: BackupId, error: CryophileError) -> CryophileError:
        """Nothing to stop: the restore's error already says the output is incomplete."""
        return error


#: Seconds a command that closed its input may take to exit before it is stopped.
EXIT_GRACE_SECONDS = 10.0


class CommandSink:
    """A fresh ``sh -c COMMAND`` per stream, the stream on its standard input.

    The command inherits stdout and stderr. It runs in a process group of its
    own, so that a failed link stops the whole pipeline the command may be
    (SIGTERM to the group), not only the shell.
    """

    def __init__(self, command: str) -> None:
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None

    def open(self, link: BackupId, number: int, count: int) -> int:
        """Start the command for ``link``; the write end of its standard input."""
        try:
            self.process = subprocess.Popen(["sh", "-c", self.command], stdin=subprocess.PIPE,
                                            process_group=0)
        except OSError as error:
            raise CommandFailedError(f"cannot run --exec {self.command!r}: "
                                     f"{error.strerror}") from None
        assert self.process.stdin is not None
        logger.info("backup %s (%d of %d) goes to --exec %r (pid %d)", link, number, count,
                    self.command, self.process.pid)
        return self.process.stdin.fileno()

    def _end_input(self) -> subprocess.Popen[bytes]:
        process = self.process
        assert process is not None
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        self.process = None
        return process

    def _failed(self, link: BackupId, status: int) -> CommandFailedError:
        return CommandFailedError(f"--exec {self.command!r} failed on backup {link}: "
                                  f"{_status_text(status)}")

    def close(self, link: BackupId) -> None:
        """End the command's input, wait for it; CommandFailedError unless it exits 0."""
        status = self._end_input().wait()
        if status != 0:
            raise self._failed(link, status)

    def abort(self, link: BackupId, error: CryophileError) -> CryophileError:
        """Stop the command, whose input is incomplete; when the command itself
        failed (it stopped reading: the restore's output closed), its failure."""
        process = self.process
        assert process is not None
        if isinstance(error, StorageIOError):
            # The output closed under the restore: the command is exiting on its own.
            self._end_input()
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = process.wait(timeout=EXIT_GRACE_SECONDS)
                if status != 0:
                    return self._failed(link, status)
                # It exited 0 before reading its whole input: it failed all the same.
                return CommandFailedError(
                    f"--exec {self.command!r} exited with status 0 on backup {link} before "
                    "it read its whole input: the restore is incomplete")
        if process.poll() is None:
            # Stopped before its input ends: an end of input first would let a command
            # that takes EOF as "done" (cat > file) commit the truncated stream.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        if self.process is not None:
            self._end_input()
        status = process.wait()
        return type(error)(f"{error}; the input of --exec {self.command!r} was incomplete, "
                           f"so it was stopped ({_status_text(status)})")


def _status_text(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"killed by {name}"
    return f"exit status {status}"


# -- restoring ---------------------------------------------------------------------


def restore_into(spool: Spool, opened: OpenedVault, options: RestoreOptions, sink: Sink, *,
                 counters: Counters | None = None,
                 notify: Notify | None = None) -> RestoreResult:
    """Restore ``options.backup_id`` alone into ``sink`` (``--exec`` without
    ``--chain``): the command runs once."""
    return _restore_link(spool, opened, options, sink, 1, 1, None, counters, notify)


def restore_chain(spool: Spool, opened: OpenedVault, links: Sequence[BackupId],
                  options: RestoreOptions, sink: Sink, *, counters: Counters | None = None,
                  notify: Notify | None = None) -> list[RestoreResult]:
    """Restore ``links`` (from :func:`resolve_chain`, checked by :func:`check_links`)
    oldest first into ``sink``; see the module docstring.

    Every link's manifest is read, its signature (``options.signers``) and the
    key checked, and then every thaw request is filed and every archived
    fragment's restore asked for, before the first link is waited for. An
    error of link N is raised as its own class, its message naming the link and
    saying that links 1 to N-1 were restored.
    """
    say: Notify = notify if notify is not None else _quiet
    chain = tuple(links)
    preparations = []
    for link in chain:
        preparation = prepare(spool, opened, link, tier=options.tier, days=options.days,
                              wait=options.wait)
        if options.signers is not None:
            check_signature(spool, opened, link, options.signers, preparation)
        if preparation.manifest is not None:
            choose_key(preparation.manifest, options.secret_keys, options.ask_passphrase)
        preparations.append(preparation)
    plan = ChainPlan(chain, tuple(preparations))
    if any(p.plan is not None for p in preparations):
        say(plan.describe())
    for link, preparation in zip(chain, preparations, strict=True):
        if preparation.manifest is not None:
            # Window 0 until its link's turn: every Glacier restore is asked for now,
            # but nothing is downloaded, so the spool holds one link's window at a
            # time; and the request is claimed by this process (status does not call
            # it a leftover, cancel refuses it) until that link's restore takes over.
            # Written with the request, never after it (a thaw pass in between would
            # see no window and download the whole link), and only for a new request
            # (an existing one may be a running restore's) whose restore will write
            # its own window (not --keep, not one already delivered).
            windowed = not options.keep and not preparation.local and not (
                preparation.delivered)
            thaw_request.file_request(
                spool, link, tier=options.tier, days=options.days,
                position=thaw_request.ReadPosition(window=0) if windowed else None)
    served_here = _thaw_here(spool, options, preparations, say)
    if served_here:
        _request_restores(opened, chain, preparations, options)
    results = []
    per_link = dataclasses.replace(options, thaw=False)
    with _thawing(served_here, spool, opened, chain, options.poll):
        for number, link in enumerate(chain, start=1):
            results.append(_restore_link(spool, opened, dataclasses.replace(
                per_link, backup_id=link), sink, number, len(chain), chain, counters, say))
    return results


def _restore_link(spool: Spool, opened: OpenedVault, options: RestoreOptions, sink: Sink,
                  number: int, count: int, chain: tuple[BackupId, ...] | None,
                  counters: Counters | None, notify: Notify | None) -> RestoreResult:
    link = options.backup_id
    fd = sink.open(link, number, count)
    try:
        result = restore(spool, opened, options, fd, counters=counters, notify=notify)
    except CryophileError as error:
        raise _in_chain(sink.abort(link, error), link, number, count, chain) from None
    except BaseException as interrupted:
        sink.abort(link, CryophileError(f"interrupted: {interrupted!r}"))
        raise
    try:
        sink.close(link)
    except CryophileError as error:
        raise _in_chain(error, link, number, count, chain) from None
    if chain is not None:
        logger.info("chain of %s: link %d of %d (%s) restored", chain[-1], number, count, link)
    return result


def _in_chain(error: CryophileError, link: BackupId, number: int, count: int,
              chain: tuple[BackupId, ...] | None) -> CryophileError:
    """``error`` of link ``number``, its message saying where the chain stopped."""
    if chain is None:
        return error
    before = {1: "no link was restored before it",
              2: "link 1 was restored"}.get(number, f"links 1 to {number - 1} were restored")
    return type(error)(f"chain of {chain[-1]} stopped at link {number} of {count} ({link}): "
                       f"{error}; {before}")


def _thaw_here(spool: Spool, options: RestoreOptions, preparations: Sequence[Preparation],
               say: Notify) -> bool:
    """Whether this process serves the chain's thaw requests (as a single restore
    decides: ``--thaw``, or no thaw daemon on the spool)."""
    if options.thaw is False or all(p.local or p.delivered for p in preparations):
        return False
    if options.thaw:
        return True
    daemon = presence.alive(spool, presence.THAW)
    if daemon is not None:
        say(f"the thaw daemon (pid {daemon}) serves the chain's requests")
        return False
    say("no thaw daemon is running on this spool: thawing the whole chain in this process "
        "(a Glacier restore takes hours; keep it running)")
    return True


def _request_restores(opened: OpenedVault, links: Sequence[BackupId],
                      preparations: Sequence[Preparation], options: RestoreOptions) -> None:
    """Ask for the Glacier restore of every archived fragment of every link now,
    before any link is waited for (the thaw requests then find them restoring)."""
    for link, preparation in zip(links, preparations, strict=True):
        if preparation.manifest is None or preparation.plan is None:
            continue
        if not preparation.plan.cold_fragments:
            continue
        for fragment in preparation.manifest.fragments:
            key = link.object_key(fragment.index)
            info = opened.vault.stat(key)
            if info is None or info.restore_state is not RestoreState.COLD:
                continue
            check_tier(info.storage_class, options.tier)
            opened.vault.request_restore(key, days=options.days, tier=options.tier)
            logger.info("restore of %s requested (%s, %s, %d days)", key, info.storage_class,
                        options.tier, options.days,
                        extra={"backup": str(link), "event": "restore", "key": key})


@contextlib.contextmanager
def _thawing(enabled: bool, spool: Spool, opened: OpenedVault, links: Sequence[BackupId],
             poll: float) -> Iterator[None]:
    """With ``enabled``, serve the thaw requests of every link in one background thread."""
    if not enabled:
        yield
        return
    stop = threading.Event()
    wanted = set(links)

    def on_pass(_completed: list[BackupId], errors: dict[BackupId, CryophileError]) -> None:
        for link in wanted & set(errors):
            if thaw_request.failure(spool, link) is not None:
                _wake_waiter(spool, link)

    # One Thawer over the series: every link's request advances in every pass.
    thawer = Thawer(spool, lambda _: opened, first_poll=poll, on_pass=on_pass,
                    selection=Selection(links[-1].vault, links[-1].prefix))
    worker = threading.Thread(target=thawer.run, args=(stop,), kwargs={"until_done": True},
                              name="thaw-chain", daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()


def _wake_waiter(spool: Spool, link: BackupId) -> None:
    """Make the restore waiting on ``link`` look again now (its request failed)."""
    marker = spool.backup_dir(Queue.RESTORE, link) / f".thaw-failed.{os.getpid()}"
    with contextlib.suppress(OSError):
        marker.touch()
        marker.unlink()

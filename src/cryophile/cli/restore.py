"""``cryophile restore``: verify, join, decrypt and decompress a backup from the restore queue."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cryophile import backup_choice
from cryophile.backup_id import BackupId, normalize_prefix, parse_vault
from cryophile.chain_restore import (
    CommandSink,
    Sink,
    StreamSink,
    check_links,
    plan_chain,
    resolve_chain,
    restore_chain,
    restore_into,
)
from cryophile.cli.arguments import backup_id_from
from cryophile.cli.cancelling import run_cancel
from cryophile.cli.progress import progress_line
from cryophile.cli.resources import CommandContext
from cryophile.errors import AlreadyExistsError, StorageIOError, UsageError
from cryophile.inventory import take_inventory
from cryophile.passphrase import passphrase_source
from cryophile.pipeline.engines import engine_for
from cryophile.pipeline.keys import load_secret_keys
from cryophile.pipeline.restore import RestoreResult
from cryophile.pipeline.stages import Counters
from cryophile.presence import pid_alive
from cryophile.restoring import RestoreOptions, check_signature, prepare, restore
from cryophile.signing import load_trusted_signers
from cryophile.spool import Spool
from cryophile.vault.factory import OpenedVault

if TYPE_CHECKING:
    from cryophile.cli.main import Environment


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Check the options, keys and spool, then restore (one call into the use case)."""
    if args.cancel:
        return run_cancel(args, environment)
    if args.exec is not None and args.output is not None:
        raise UsageError("--exec CMD gets the restored data on its standard input: -o FILE "
                         "does not go with it")
    if args.latest or args.label:
        backup_id = _chosen_backup(args, environment)
    else:
        backup_id = backup_id_from(args, new=False)
    if args.output is not None and os.path.lexists(args.output):
        raise AlreadyExistsError(f"output file {str(args.output)!r} already exists; "
                                 "refusing to overwrite it")
    if not args.keyring and not args.dry_run:
        raise UsageError("restore needs the secret key: give -k/--keyring FILE")
    context = CommandContext(args, environment.env)
    config = context.config
    secret_keys = [] if args.dry_run else load_secret_keys(args.keyring)
    signed_by = args.signed_by or config.signed_by
    signers = None if signed_by is None else load_trusted_signers(signed_by)
    spool = context.spool
    opened = context.vault(backup_id.vault)
    tier = args.tier or opened.restore_tier
    days = args.days or opened.restore_days

    def notify(message: str) -> None:
        if not args.quiet:
            print(f"cryophile: {message}", file=environment.stderr, flush=True)

    links: tuple[BackupId, ...] = (backup_id,)
    if args.chain:
        # Every link found and checked before anything is thawed, run or written.
        links = resolve_chain(spool, opened, backup_id)
        check_links(spool, opened, links, signers)
        notify(f"chain of {backup_id}: {len(links)} backup(s), full backup first: "
               + ", ".join(str(link.ulid) for link in links))
    if args.dry_run and args.chain:
        chain_plan = plan_chain(spool, opened, links, tier=tier, days=days)
        os.write(environment.stdout_fd, (chain_plan.describe() + "\n").encode())
        return 0
    if args.dry_run:
        preparation = prepare(spool, opened, backup_id, tier=tier, days=days, wait=args.wait,
                              dry_run=True)
        if signers is not None:
            check_signature(spool, opened, backup_id, signers, preparation)
        os.write(environment.stdout_fd, (preparation.describe(backup_id) + "\n").encode())
        return 0
    options = RestoreOptions(
        backup_id=backup_id, secret_keys=secret_keys,
        ask_passphrase=passphrase_source(args.pass_fd, environment.env, timeout=args.timeout),
        engine=engine_for(args.engine), tier=tier, days=days, compression=args.compression,
        thaw=args.thaw, wait=args.wait, timeout=args.timeout, poll=args.poll, keep=args.keep,
        signers=signers, spool_limit=args.spool_limit or config.spool_limit)
    counters = Counters()
    show = args.progress and not args.quiet
    if args.chain or args.exec is not None:
        with progress_line(counters, environment.stderr, show, kind="restore"):
            results = _restore_streams(args, environment, spool, opened, links, options,
                                       counters, notify)
        total = sum(result.output_bytes for result in results)
        what = f"the chain of {backup_id} ({len(links)} backups)" if args.chain else backup_id
        into = f" into --exec {args.exec!r}" if args.exec is not None else ""
        notify(f"restored {what}{into}: {total} bytes, "
               f"{sum(result.seconds for result in results):.1f} s")
        return 0
    with progress_line(counters, environment.stderr, show, kind="restore"):
        if args.output is None:
            result = restore(spool, opened, options, environment.stdout_fd,
                             counters=counters, notify=notify)
        else:
            with _output_file(args.output, notify) as fd:
                result = restore(spool, opened, options, fd, counters=counters, notify=notify)
    notify(f"restored {result.manifest.backup_id}: {result.output_bytes} bytes, "
           f"{result.seconds:.1f} s")
    return 0


def _chosen_backup(args: argparse.Namespace, environment: Environment) -> BackupId:
    """The backup ``--latest`` or ``--label`` names (:mod:`cryophile.backup_choice`)."""
    vault = parse_vault(args.vault)
    prefix = normalize_prefix(args.prefix)
    context = CommandContext(args, environment.env)
    inventory = take_inventory(context.spool, context.vault, [vault], prefix=prefix or None,
                               only_vault=vault)

    def notify(message: str) -> None:
        if not args.quiet:
            print(f"cryophile: {message}", file=environment.stderr, flush=True)

    if args.latest:
        chosen = backup_choice.latest(inventory, vault, prefix, notify)
    else:
        chosen = backup_choice.labelled(inventory, vault, prefix, args.label)
    notify(f"{'--latest' if args.latest else '--label'}: backup {chosen}")
    return chosen


def _restore_streams(args: argparse.Namespace, environment: Environment, spool: Spool,
                     opened: OpenedVault, links: tuple[BackupId, ...], options: RestoreOptions,
                     counters: Counters, notify: Callable[[str], None]) -> list[RestoreResult]:
    """``--chain`` and/or ``--exec``: every link into one output, or each into CMD."""
    if args.exec is not None:
        sink: Sink = CommandSink(args.exec)
        if not args.chain:
            return [restore_into(spool, opened, options, sink, counters=counters,
                                 notify=notify)]
        return restore_chain(spool, opened, links, options, sink, counters=counters,
                             notify=notify)
    if args.output is None:
        return restore_chain(spool, opened, links, options, StreamSink(environment.stdout_fd),
                             counters=counters, notify=notify)
    with _output_file(args.output, notify) as fd:
        return restore_chain(spool, opened, links, options, StreamSink(fd), counters=counters,
                             notify=notify)


@contextlib.contextmanager
def _output_file(path: Path, notify: Callable[[str], None]) -> Iterator[int]:
    """A new file in ``path``'s directory that becomes ``path`` only on success.

    What a restore killed outright (kill -9, a power cut) left under the same
    scheme is removed first, and said: it holds plaintext, and nobody else
    would ever remove it.
    """
    _remove_dead_leftovers(path, notify)
    temporary = path.parent / f".{path.name}{_PART_INFIX}{os.getpid()}.part"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StorageIOError(f"cannot create output file in {str(path.parent)!r}: "
                             f"{error.strerror}") from None
    try:
        yield fd
        os.fsync(fd)
        try:
            os.link(temporary, path)  # never clobbers a file created meanwhile
        except FileExistsError:
            raise AlreadyExistsError(f"output file {str(path)!r} appeared during the restore; "
                                     "refusing to overwrite it") from None
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


_PART_INFIX = ".cryophile-"


def _remove_dead_leftovers(path: Path, notify: Callable[[str], None]) -> None:
    """Remove ``.NAME.cryophile-PID.part`` files in ``path``'s directory whose restore
    (PID) is no longer alive."""
    stem = f".{path.name}{_PART_INFIX}"
    with contextlib.suppress(OSError):
        for leftover in path.parent.iterdir():
            name = leftover.name
            pid_text = name[len(stem):-len(".part")] if (
                name.startswith(stem) and name.endswith(".part")) else ""
            if not (pid_text.isascii() and pid_text.isdigit()):
                continue
            if pid_alive(int(pid_text)):
                continue
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
            notify(f"removed {leftover}: the partial output of an earlier restore that was "
                   f"killed (pid {pid_text})")



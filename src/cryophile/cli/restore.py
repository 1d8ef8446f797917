"""``cryophile restore``: verify, join, decrypt and decompress a backup from the restore queue."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cryophile.cli.arguments import backup_id_from
from cryophile.cli.progress import progress_line
from cryophile.cli.resources import CommandContext
from cryophile.errors import AlreadyExistsError, StorageIOError, UsageError
from cryophile.passphrase import passphrase_source
from cryophile.pipeline.engines import engine_for
from cryophile.pipeline.keys import load_secret_keys
from cryophile.pipeline.stages import Counters
from cryophile.restoring import RestoreOptions, check_signature, prepare, restore
from cryophile.signing import load_trusted_signers

if TYPE_CHECKING:
    from cryophile.cli.main import Environment


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Check the options, keys and spool, then restore (one call into the use case)."""
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
            if _alive(int(pid_text)):
                continue
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
            notify(f"removed {leftover}: the partial output of an earlier restore that was "
                   f"killed (pid {pid_text})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""``cryophile restore``: verify, join, decrypt and decompress a backup from the restore queue."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryophile.cli.arguments import (
    add_backup_id_options,
    add_keyring_option,
    backup_id_from,
    file_descriptor,
    non_negative_seconds,
    whole_number_up_to,
)
from cryophile.cli.progress import add_progress_option, progress_line
from cryophile.cli.resources import open_config, open_spool
from cryophile.config import MAX_DAYS
from cryophile.daemons.thaw import FIRST_POLL_SECONDS
from cryophile.errors import AlreadyExistsError, StorageIOError, UsageError
from cryophile.passphrase import passphrase_source
from cryophile.pipeline.compress import NAMES
from cryophile.pipeline.keys import load_secret_keys
from cryophile.pipeline.openpgp import ENGINES, engine_for
from cryophile.pipeline.restore import AUTO
from cryophile.pipeline.stages import Counters
from cryophile.restoring import RestoreOptions, check_signature, prepare, restore
from cryophile.signing import load_trusted_signers
from cryophile.storage_classes import RESTORE_TIERS
from cryophile.vault.factory import open_vault

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

DESCRIPTION = """\
Restore a backup from the spool's restore queue (SPOOL/restore/VAULT/PREFIX/ULID):
read the manifest chunk.0, check every fragment's size and SHA-256 against it,
join the fragments in order, decrypt with a secret key from the keyrings and
decompress as the manifest says, to stdout or to -o FILE. With --wait, fragments
that are not there yet are waited for, in any order they arrive.
"""

EXAMPLES = """\
examples:
  cryophile restore -v VAULT -p hosts/db1 -u 01JDX… -k key.pgp --pass-fd 4 4<pass | zfs recv …
  cryophile restore -v VAULT -p etc -t 2026-11-26T03:00:00Z -k key.pgp -o etc.tar
  cryophile restore -v VAULT -p etc -u 01JDX… -k key.pgp --signed-by host-sign.cert --thaw
"""


def register(commands: Any) -> argparse.ArgumentParser:
    """Add the ``restore`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "restore", help="restore a backup from the restore queue", description=DESCRIPTION,
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backup_id_options(parser, ulid_required=True)
    add_keyring_option(parser, "secret key file (armored or binary; repeatable); expired and "
                               "revoked keys still decrypt old backups; not needed with "
                               "--dry-run", required=False)
    parser.add_argument("-P", "--pass-fd", type=file_descriptor, default=None, metavar="N",
                        help="read the passphrase's first line from file descriptor N (else "
                             "$CRYOPHILE_ASKPASS, else the terminal)")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                        help="write to FILE, which must not exist (default: stdout); on "
                             "failure no partial file is left")
    parser.add_argument("-C", "--compression", choices=(*NAMES, AUTO), default=None,
                        help="decompress as this instead of what the manifest says; 'auto' "
                             "detects it from the data")
    thawing = parser.add_mutually_exclusive_group()
    thawing.add_argument("--thaw", action="store_true", default=None,
                         help="do the thaw work in this process (no thaw daemon needed); "
                              "default: when no thaw daemon runs on the spool")
    thawing.add_argument("--no-thaw", dest="thaw", action="store_false",
                         help="never thaw in this process: file the request and leave it to "
                              "the thaw daemon (with --timeout 0: file it and exit 75)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be thawed (fragments, bytes, storage classes, "
                             "tier, expected wait) and exit")
    parser.add_argument("--tier", choices=sorted(RESTORE_TIERS), default=None,
                        help="Glacier retrieval tier (default: the vault's, else Bulk)")
    parser.add_argument("--days", type=whole_number_up_to(MAX_DAYS), default=None, metavar="N",
                        help=f"keep restored copies this many days, 1 to {MAX_DAYS} (default: "
                             "the vault's)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the fragments in the restore queue after a successful "
                             "restore")
    parser.add_argument("--wait", action="store_true",
                        help="wait for fragments that are not in the restore queue yet (implied "
                             "when a thaw request serves this restore)")
    parser.add_argument("--timeout", type=non_negative_seconds, default=None,
                        metavar="SECONDS", help="give up waiting (exit 75) after this long")
    parser.add_argument("--poll", type=non_negative_seconds, default=FIRST_POLL_SECONDS,
                        metavar="SECONDS",
                        help="with --thaw: first poll interval for restores in progress "
                             "(doubles up to 15 minutes; default 60)")
    parser.add_argument("--signed-by", type=Path, default=None, metavar="CERT",
                        help="require the manifest to be signed by a key in this certificate "
                             "file (backup --sign-key); refuse unsigned or badly signed backups "
                             "(exit 65) before any thaw or output (default: signed_by in the "
                             "config)")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="fast",
                        help="OpenPGP engine: fast (default; our streaming SEIPD v1 on OpenSSL, "
                             "falls back to reference for keys it does not handle) or "
                             "reference (pysequoia)")
    add_progress_option(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Check the options, keys and spool, then restore (one call into the use case)."""
    backup_id = backup_id_from(args, new=False)
    if args.output is not None and os.path.lexists(args.output):
        raise AlreadyExistsError(f"output file {str(args.output)!r} already exists; "
                                 "refusing to overwrite it")
    if not args.keyring and not args.dry_run:
        raise UsageError("restore needs the secret key: give -k/--keyring FILE")
    config = open_config(args)
    secret_keys = [] if args.dry_run else load_secret_keys(args.keyring)
    signed_by = args.signed_by or config.signed_by
    signers = None if signed_by is None else load_trusted_signers(signed_by)
    spool = open_spool(args, environment.env, config)
    opened = open_vault(backup_id.vault, config, spool.root)
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
        signers=signers)
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

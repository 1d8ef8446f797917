"""``cryophile restore``: verify, join, decrypt and decompress a backup from the restore queue."""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryophile.backup_id import BackupId
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
from cryophile.daemons.freeze import Selection
from cryophile.daemons.thaw import (
    FIRST_POLL_SECONDS,
    Preparation,
    Thawer,
    fetch_signature,
    file_request,
    finish_restore,
    prepare_restore,
    request_failure,
)
from cryophile.errors import AlreadyExistsError, CryophileError, StorageIOError, UsageError
from cryophile.passphrase import passphrase_source
from cryophile.pipeline.compress import NAMES
from cryophile.pipeline.keys import load_secret_keys
from cryophile.pipeline.openpgp import ENGINES, engine_for
from cryophile.pipeline.restore import AUTO, RestorePlan, choose_key, run_restore
from cryophile.pipeline.stages import Counters
from cryophile.signing import (
    TrustedSigners,
    check_manifest_signature,
    load_trusted_signers,
    read_local_signature,
)
from cryophile.spool import Queue, Spool
from cryophile.vault.base import RESTORE_TIERS
from cryophile.vault.factory import OpenedVault, open_vault

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
    parser.add_argument("--thaw", action="store_true",
                        help="do the thaw work in this process (no thaw daemon needed)")
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
    """Check the options, keys and spool, then restore."""
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
    if args.wait and spool.backup_dir(Queue.RESTORE, backup_id).exists():
        # Someone else delivers the fragments (a copy, a thaw elsewhere): just wait.
        preparation = Preparation(local=False)
    else:
        preparation = prepare_restore(spool, backup_id, opened, tier=tier, days=days)
    if signers is not None and preparation.manifest_data is not None:
        # Before any Glacier restore is paid for: is it the signer's backup at all?
        check_manifest_signature(signers, backup_id, preparation.manifest_data,
                                 fetch_signature(opened, backup_id, spool.queue_dir(Queue.THAW)))
    if args.dry_run:
        message = (preparation.plan.describe() if preparation.plan is not None else
                   f"backup {backup_id}: already in the restore queue" if preparation.local
                   else f"backup {backup_id}: a thaw request is already in progress")
        os.write(environment.stdout_fd, (message + "\n").encode())
        return 0
    ask_passphrase = passphrase_source(args.pass_fd, environment.env)
    if preparation.manifest is not None:
        # Before paying for a Glacier restore and waiting hours: can we decrypt it?
        choose_key(preparation.manifest, secret_keys, ask_passphrase)
        if preparation.plan is not None and not args.quiet:
            print(f"cryophile: {preparation.plan.describe()}", file=environment.stderr)
        file_request(spool, backup_id, tier=tier, days=days)
    plan = RestorePlan(
        backup_id=backup_id,
        secret_keys=secret_keys,
        ask_passphrase=ask_passphrase,
        engine=engine_for(args.engine),
        compression=args.compression,
        wait=args.wait or not preparation.local,
        timeout=args.timeout,
        supplier_failure=lambda: request_failure(spool, backup_id),
        # The manifest actually used is checked again: the vault may have changed since.
        authenticate=None if signers is None else (
            lambda directory, data: _authenticate(signers, backup_id, directory, data)),
    )
    counters = Counters()
    show = args.progress and not args.quiet
    with _thawing(args.thaw and not preparation.local, spool, opened, backup_id, args.poll), \
            progress_line(counters, environment.stderr, show, kind="restore"):
        if args.output is None:
            result = run_restore(spool, plan, environment.stdout_fd, counters)
        else:
            with _output_file(args.output) as fd:
                result = run_restore(spool, plan, fd, counters)
    if not args.keep:
        finish_restore(spool, backup_id)
    if not args.quiet:
        print(f"cryophile: restored {result.manifest.backup_id}: {result.output_bytes} bytes, "
              f"{result.seconds:.1f} s", file=environment.stderr)
    return 0


def _authenticate(signers: TrustedSigners, backup_id: BackupId, directory: Path,
                  data: bytes) -> None:
    """Refuse the manifest ``data`` read from ``directory`` unless ``signers`` signed it."""
    check_manifest_signature(signers, backup_id, data, read_local_signature(directory))


@contextlib.contextmanager
def _thawing(enabled: bool, spool: Spool, opened: OpenedVault, backup_id: BackupId,
             poll: float) -> Iterator[None]:
    """With ``enabled``, serve this backup's thaw request in a background thread."""
    if not enabled:
        yield
        return
    stop = threading.Event()

    def on_pass(_completed: list[BackupId], errors: dict[BackupId, CryophileError]) -> None:
        if backup_id in errors and request_failure(spool, backup_id) is not None:
            _wake_waiter(spool.backup_dir(Queue.RESTORE, backup_id))

    thawer = Thawer(spool, lambda _: opened, first_poll=poll, on_pass=on_pass,
                    selection=Selection(backup_id.vault, backup_id.prefix, backup_id.ulid))
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


@contextlib.contextmanager
def _output_file(path: Path) -> Iterator[int]:
    """A new file in ``path``'s directory that becomes ``path`` only on success."""
    temporary = path.parent / f".{path.name}.cryophile-{os.getpid()}.part"
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

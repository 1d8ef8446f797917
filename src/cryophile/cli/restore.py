"""``cryophile restore``: verify, join, decrypt and decompress a backup from the restore queue."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryophile.cli.arguments import (
    add_backup_id_options,
    add_keyring_option,
    backup_id_from,
    file_descriptor,
    non_negative_seconds,
)
from cryophile.cli.resources import open_config, open_spool
from cryophile.errors import AlreadyExistsError, StorageIOError
from cryophile.passphrase import passphrase_source
from cryophile.pipeline.compress import NAMES
from cryophile.pipeline.keys import load_secret_keys
from cryophile.pipeline.openpgp import ENGINES, engine_for
from cryophile.pipeline.restore import AUTO, RestorePlan, run_restore

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
"""


def register(commands: Any) -> argparse.ArgumentParser:
    """Add the ``restore`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "restore", help="restore a backup from the restore queue", description=DESCRIPTION,
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backup_id_options(parser, ulid_required=True)
    add_keyring_option(parser, "secret key file (armored or binary; repeatable); expired and "
                               "revoked keys still decrypt old backups")
    parser.add_argument("-P", "--pass-fd", type=file_descriptor, default=None, metavar="N",
                        help="read the passphrase's first line from file descriptor N (else "
                             "$CRYOPHILE_ASKPASS, else the terminal)")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                        help="write to FILE, which must not exist (default: stdout); on "
                             "failure no partial file is left")
    parser.add_argument("-C", "--compression", choices=(*NAMES, AUTO), default=None,
                        help="decompress as this instead of what the manifest says; 'auto' "
                             "detects it from the data")
    parser.add_argument("--wait", action="store_true",
                        help="wait for fragments that are not in the restore queue yet")
    parser.add_argument("--timeout", type=non_negative_seconds, default=None,
                        metavar="SECONDS", help="with --wait: give up (exit 75) after this long")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="reference",
                        help="OpenPGP engine (default: reference, pysequoia)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Check the options, keys and spool, then restore."""
    backup_id = backup_id_from(args, new=False)
    if args.output is not None and os.path.lexists(args.output):
        raise AlreadyExistsError(f"output file {str(args.output)!r} already exists; "
                                 "refusing to overwrite it")
    config = open_config(args)
    secret_keys = load_secret_keys(args.keyring)
    spool = open_spool(args, environment.env, config)
    plan = RestorePlan(
        backup_id=backup_id,
        secret_keys=secret_keys,
        ask_passphrase=passphrase_source(args.pass_fd, environment.env),
        engine=engine_for(args.engine),
        compression=args.compression,
        wait=args.wait,
        timeout=args.timeout,
    )
    if args.output is None:
        result = run_restore(spool, plan, environment.stdout_fd)
    else:
        with _output_file(args.output) as fd:
            result = run_restore(spool, plan, fd)
    if not args.quiet:
        print(f"cryophile: restored {result.manifest.backup_id}: {result.output_bytes} bytes, "
              f"{result.seconds:.1f} s", file=environment.stderr)
    return 0


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

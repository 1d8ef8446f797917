"""``cryophile backup``: read a stream, compress, encrypt, split into the spool's freeze queue."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryophile.backup_id import BackupId
from cryophile.cli.arguments import (
    DEFAULT_FRAGMENT_SIZE,
    add_backup_id_options,
    add_keyring_option,
    backup_id_from,
    file_descriptor,
    fragment_size,
)
from cryophile.cli.progress import add_progress_option, progress_line
from cryophile.cli.resources import open_config, open_spool
from cryophile.errors import NoInputError, StorageIOError, UsageError
from cryophile.passphrase import passphrase_source
from cryophile.pipeline.backup import BackupPlan, BackupResult, run_backup
from cryophile.pipeline.compress import NAMES, codec_for
from cryophile.pipeline.keys import load_recipients
from cryophile.pipeline.openpgp import ENGINES, engine_for
from cryophile.pipeline.stages import Counters
from cryophile.signing import load_signing_key
from cryophile.vault.factory import announce_embedded, destination_for

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

DESCRIPTION = """\
Read a stream (stdin, a FIFO or a file), compress it, encrypt it to the OpenPGP
certificates in the keyrings, and cut it into fragments in the spool's freeze
queue: SPOOL/freeze/VAULT/PREFIX/ULID/chunk.1 … chunk.N, then the manifest
chunk.0, written last. Never talks to the network; `cryophile freeze` uploads.
"""

EXAMPLES = """\
examples:
  zfs send -R tank/data@today | cryophile backup -v 6f1c…-… -p hosts/db1 -k backup.cert
  tar -C /etc -c . | cryophile backup -v VAULT -p etc -k a.cert -k b.cert -C lz4
  cryophile backup -v VAULT -p pg -t 2026-11-26T03:00:00Z -i /var/backups/dump.fifo -k k.pgp
  tar -C /etc -c . | cryophile backup -v VAULT -p etc -k backup.cert --sign-key host-sign.key
"""


def register(commands: Any) -> argparse.ArgumentParser:
    """Add the ``backup`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "backup", help="back up a stream into the spool", description=DESCRIPTION,
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backup_id_options(parser, ulid_required=False)
    add_keyring_option(parser, "certificate file (armored or binary; repeat for several "
                               "recipients); every valid storage-encryption subkey is used")
    parser.add_argument("-i", "--input", default="-", metavar="FILE",
                        help="file or FIFO to read (default: - for stdin)")
    parser.add_argument("-C", "--compression", choices=NAMES, default=None,
                        help="compression (default: the vault's configured one, else zstd)")
    parser.add_argument("-L", "--level", type=int, default=None, metavar="N",
                        help="zstd level, 1-22 (default 3)")
    parser.add_argument("-s", "--size", type=fragment_size, default=DEFAULT_FRAGMENT_SIZE,
                        metavar="SIZE", help="fragment size, binary units: 64M, 1G "
                                             "(default 256M; at least 5M)")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="fast",
                        help="OpenPGP engine: fast (default; our streaming SEIPD v1 on OpenSSL, "
                             "falls back to reference for keys it does not handle) or "
                             "reference (pysequoia)")
    parser.add_argument("--sign-key", type=Path, default=None, metavar="FILE",
                        help="sign the manifest with this signing-only secret key (detached "
                             "OpenPGP signature chunk.0.sig; default: sign_key in the config)")
    parser.add_argument("--sign-pass-fd", type=file_descriptor, default=None, metavar="N",
                        help="read the signing key's passphrase from file descriptor N (else "
                             "$CRYOPHILE_ASKPASS, else the terminal)")
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON object on stdout")
    add_progress_option(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Check everything, then back up. The input is opened last."""
    backup_id = backup_id_from(args, new=True)
    config = open_config(args)
    if config.vault(backup_id.vault) is None and config.vaults:
        # A typo in -v: refused before anything else is looked at.
        destination_for(backup_id.vault, config, Path())
    vault = config.vault(backup_id.vault)
    compression = args.compression or (vault.compression if vault else None) or "zstd"
    codec = codec_for(compression, args.level)
    input_path = _check_input(args.input, environment)
    recipients = load_recipients(args.keyring)
    sign_key_path = args.sign_key or config.sign_key
    signing_key = None if sign_key_path is None else load_signing_key(
        sign_key_path, passphrase_source(args.sign_pass_fd, environment.env),
        recipients.subkeys)
    spool = open_spool(args, environment.env, config)
    destination = destination_for(backup_id.vault, config, spool.root)
    plan = BackupPlan(backup_id, codec, args.size, recipients, engine_for(args.engine),
                      sign=None if signing_key is None else signing_key.sign,
                      destination=destination)
    counters = Counters()
    with progress_line(counters, environment.stderr, args.progress and not args.quiet,
                       kind="backup"):
        result = run_backup(spool, plan, lambda: _open_input(input_path, environment),
                            counters)
    announce_embedded(backup_id.vault, destination)
    if args.json or not args.quiet:
        _report(result, args.json, environment)
    return 0


def _check_input(name: str, environment: Environment) -> Path | None:
    """Validate ``-i`` without opening it (opening a FIFO would block its writer)."""
    if name == "-":
        # fstat, not open: a closed stdin (`<&-`) would otherwise be whatever
        # file we open next (the backup's own lock: an "empty" backup).
        try:
            stdin_mode = os.fstat(environment.stdin_fd).st_mode
        except OSError:
            raise UsageError("standard input is closed: pipe a stream in or use "
                             "-i FILE") from None
        if stat.S_ISDIR(stdin_mode):
            raise UsageError("standard input is a directory: pipe it through tar, e.g. "
                             "tar -C DIR -c . | cryophile backup …")
        if os.isatty(environment.stdin_fd):
            raise UsageError("refusing to read backup data from a terminal: pipe a stream in "
                             "or use -i FILE")
        return None
    path = Path(name)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NoInputError(f"input {name!r} does not exist") from None
    except OSError as error:
        raise StorageIOError(f"cannot access input {name!r}: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"input {name!r} is a directory: pipe it through tar, e.g. "
                         f"tar -C {name} -c . | cryophile backup …")
    return path


def _open_input(path: Path | None, environment: Environment) -> int:
    if path is None:
        return os.dup(environment.stdin_fd)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise StorageIOError(f"cannot open input {str(path)!r}: {error.strerror}") from None


def describe(backup_id: BackupId) -> dict[str, str]:
    """The id fields as scripts see them."""
    return {"vault": str(backup_id.vault), "prefix": backup_id.prefix,
            "ulid": str(backup_id.ulid), "id": str(backup_id)}


def _report(result: BackupResult, as_json: bool, environment: Environment) -> None:
    manifest = result.manifest
    stored = manifest.stored_bytes
    ratio = result.input_bytes / stored if stored else 0.0
    if as_json:
        document = {**describe(manifest.backup_id),
                    "created": manifest.created.isoformat().replace("+00:00", "Z"),
                    "input_bytes": result.input_bytes, "stored_bytes": stored,
                    "ratio": round(ratio, 3), "fragments": len(manifest.fragments),
                    "compression": manifest.compression, "seconds": round(result.seconds, 3)}
        os.write(environment.stdout_fd, (json.dumps(document) + "\n").encode())
        return
    speed = result.input_bytes / result.seconds / 1e6 if result.seconds else 0.0
    print(f"cryophile: backup {manifest.backup_id}: {result.input_bytes} bytes in, {stored} "
          f"stored in {len(manifest.fragments)} fragment(s), ratio {ratio:.2f}, "
          f"{result.seconds:.1f} s ({speed:.0f} MB/s)", file=environment.stderr)

"""``cryophile backup``: read a stream, compress, encrypt, split into the spool's freeze queue."""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from cryophile.backup_id import BackupId
from cryophile.chains import pick_parent
from cryophile.cli.arguments import backup_id_from
from cryophile.cli.progress import progress_line
from cryophile.cli.resources import CommandContext
from cryophile.errors import NoInputError, StorageIOError, UsageError
from cryophile.inventory import take_inventory
from cryophile.passphrase import passphrase_source
from cryophile.pipeline.backup import BackupPlan, BackupResult, run_backup
from cryophile.pipeline.compress import codec_for
from cryophile.pipeline.engines import engine_for
from cryophile.pipeline.keys import load_recipients
from cryophile.pipeline.stages import Counters
from cryophile.signing import load_signing_key
from cryophile.vault.factory import announce_embedded, destination_for

if TYPE_CHECKING:
    from ulid import ULID

    from cryophile.cli.main import Environment

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Check everything, then back up. The input is opened last."""
    backup_id = backup_id_from(args, new=True)
    context = CommandContext(args, environment.env)
    config = context.config
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
    spool = context.spool
    destination = destination_for(backup_id.vault, config, spool.root)
    labels = _labels(args.label)
    parent = None if args.parent is None else _parent(args.parent, backup_id, context)
    plan = BackupPlan(backup_id, codec, args.size, recipients, engine_for(args.engine),
                      sign=None if signing_key is None else signing_key.sign,
                      destination=destination, parent=parent, labels=labels)
    counters = Counters()
    with progress_line(counters, environment.stderr, args.progress and not args.quiet,
                       kind="backup"):
        result = run_backup(spool, plan, lambda: _open_input(input_path, environment),
                            counters)
    announce_embedded(backup_id.vault, destination)
    if args.json or not args.quiet:
        _report(result, args.json, environment)
    return 0


def _labels(pairs: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``--label`` pairs, each key once."""
    labels: dict[str, str] = {}
    for key, value in pairs:
        if key in labels and labels[key] != value:
            raise UsageError(f"--label {key} given twice ({labels[key]!r} and {value!r})")
        labels[key] = value
    return tuple(sorted(labels.items()))


def _parent(spec: str, backup_id: BackupId, context: CommandContext) -> ULID:
    """The ``--parent`` backup, checked complete in the spool or the vault (before the
    input is read: a bad parent must not cost the stream)."""
    inventory = take_inventory(context.spool, context.vault, [backup_id.vault],
                               prefix=backup_id.prefix or None, only_vault=backup_id.vault)
    parent = pick_parent(spec, backup_id, inventory)
    logger.info("backup %s: an increment of %s", backup_id, parent)
    return parent.ulid


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
                    "compression": manifest.compression, "seconds": round(result.seconds, 3),
                    "parent": None if manifest.parent is None else str(manifest.parent),
                    "labels": dict(manifest.labels)}
        os.write(environment.stdout_fd, (json.dumps(document) + "\n").encode())
        return
    speed = result.input_bytes / result.seconds / 1e6 if result.seconds else 0.0
    print(f"cryophile: backup {manifest.backup_id}: {result.input_bytes} bytes in, {stored} "
          f"stored in {len(manifest.fragments)} fragment(s), ratio {ratio:.2f}, "
          f"{result.seconds:.1f} s ({speed:.0f} MB/s)", file=environment.stderr)

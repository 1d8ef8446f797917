"""``cryophile backup``: read a stream, compress, encrypt, split into the spool's freeze queue."""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cryophile import abandoned, presence
from cryophile.backpressure import DEFAULT_STALL_SECONDS, SpoolGate, WaitState
from cryophile.backup_id import MANIFEST_NAME, BackupId
from cryophile.chains import pick_parent
from cryophile.cli.arguments import backup_id_from
from cryophile.cli.progress import progress_line
from cryophile.cli.resources import CommandContext
from cryophile.daemons.freeze import BackupFreezer
from cryophile.errors import AlreadyExistsError, NoInputError, StorageIOError, UsageError
from cryophile.in_flight import uploads_in_flight
from cryophile.inventory import take_inventory
from cryophile.manifest import Manifest, parse
from cryophile.metrics import MetricsFile
from cryophile.passphrase import passphrase_source
from cryophile.pipeline.backup import BackupPlan, BackupResult, run_backup
from cryophile.pipeline.compress import codec_for
from cryophile.pipeline.engines import engine_for
from cryophile.pipeline.keys import load_recipients
from cryophile.pipeline.stages import Counters
from cryophile.signing import load_signing_key
from cryophile.spool import LOCK_NAME, Queue, Spool, is_being_written, read_spool_file
from cryophile.spool_budget import Budget, spool_budget
from cryophile.units import human_bytes
from cryophile.vault.factory import OpenedVault, announce_embedded, destination_for

if TYPE_CHECKING:
    from ulid import ULID

    from cryophile.cli.main import Environment
    from cryophile.config import VaultConfig

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
    if vault is not None and vault.provider == "s3":
        _check_parts(vault, args.size)
    compression = args.compression or (vault.compression if vault else None) or "zstd"
    codec = codec_for(compression, args.level)
    input_path = _check_input(args.input, environment)
    recipients = load_recipients(args.keyring)
    sign_key_path = args.sign_key or config.sign_key
    signing_key = None if sign_key_path is None else load_signing_key(
        sign_key_path, passphrase_source(args.sign_pass_fd, environment.env),
        recipients.subkeys)
    spool = context.spool
    # Before the input is read: a budget below two fragments can move no backup.
    budget = spool_budget(spool.root, args.spool_limit or config.spool_limit, args.size)
    stall_timeout = args.stall_timeout or config.stall_timeout or DEFAULT_STALL_SECONDS
    destination = destination_for(backup_id.vault, config, spool.root)
    labels = _labels(args.label)
    parent = None if args.parent is None else _parent(args.parent, backup_id, context)
    plan = BackupPlan(backup_id, codec, args.size, recipients, engine_for(args.engine),
                      sign=None if signing_key is None else signing_key.sign,
                      destination=destination, parent=parent, labels=labels)
    counters = Counters()

    def notify(message: str) -> None:
        if not args.quiet:
            print(f"cryophile: {message}", file=environment.stderr, flush=True)

    freezer: BackupFreezer | None = None
    if args.freeze:
        opened = context.vault(backup_id.vault)
        resumed = _resume_interrupted(spool, opened, backup_id, notify)
        freezer = BackupFreezer(spool, opened, backup_id, parallel=args.parallel)
        if resumed is not None:
            # Complete in the spool already: only its upload is left to do.
            try:
                freezer.start()
                freezer.wait_frozen(stall_timeout)
            finally:
                freezer.close()
            if args.json or not args.quiet:
                _report(BackupResult(resumed, 0, 0.0), args.json, environment, None)
            return 0
    gate = SpoolGate(
        spool, budget, backup_id, stall_timeout=stall_timeout, counters=counters,
        freezer_alive=(freezer.alive if freezer is not None
                       else lambda: _freezer_serves(spool)),
        failure=(lambda: freezer.error) if freezer is not None else lambda: None,
        freezer_name="in-process freezer" if freezer is not None else "freeze daemon",
        on_wait=_metrics_on_wait(config.metrics_file, backup_id, budget))
    with progress_line(counters, environment.stderr, args.progress and not args.quiet,
                       kind="backup"):
        if freezer is None:
            result = run_backup(spool, plan, lambda: _open_input(input_path, environment),
                                counters, reserve=gate.reserve)
        else:
            result = _backup_and_freeze(spool, plan, freezer, gate, stall_timeout, counters,
                                        lambda: _open_input(input_path, environment))
    announce_embedded(backup_id.vault, destination)
    if args.json or not args.quiet:
        _report(result, args.json, environment, gate)
    return 0


def _check_parts(vault: VaultConfig, fragment_size: int) -> None:
    """Refuse (78) fragments the S3 vault could not take within its ``max_parts``,
    before any input is read: the freezer would refuse every one of them."""
    # Imported here: boto3 costs a dir-vault backup nothing.
    from cryophile.vault import s3  # noqa: PLC0415

    if fragment_size >= s3.DEFAULT_MULTIPART_THRESHOLD:
        s3.part_size_for(vault, fragment_size, f"fragments of {human_bytes(fragment_size)} (-s)")


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
def _backup_and_freeze(spool: Spool, plan: BackupPlan, freezer: BackupFreezer, gate: SpoolGate,
                       stall_timeout: float, counters: Counters,
                       open_input: Callable[[], int]) -> BackupResult:
    """``--freeze``: write the backup while its own freezer uploads it; return once the
    manifest is in the vault. A backup that fails before its manifest leaves nothing
    in the spool (run_backup) nor in the vault (the freezer's clean-up pass)."""
    freezer.start()
    try:
        result = run_backup(spool, plan, open_input, counters, reserve=gate.reserve,
                            digests=freezer.digests)
    except BaseException:
        freezer.clean_up()
        raise
    try:
        counters.waiting_for = "waiting for the last uploads"
        freezer.wait_frozen(stall_timeout)
        counters.waiting_for = None
    finally:
        freezer.close()
    return result


def _freezer_serves(spool: Spool) -> bool:
    """A freeze daemon runs on the spool, or a ``freeze --once`` is uploading now."""
    return presence.alive(spool, presence.FREEZE) is not None or bool(uploads_in_flight(spool))


def _resume_interrupted(spool: Spool, opened: OpenedVault, backup_id: BackupId,
                        notify: Callable[[str], None]) -> Manifest | None:
    """What ``backup --freeze`` does with what an interrupted run of the same id left.

    Complete in the vault already (its manifest there): AlreadyExistsError.
    Complete in the spool (manifest there, writer gone): its manifest, so that
    only the upload is done (the input is not read). Abandoned (no manifest,
    writer gone): removed from the vault and the spool (:mod:`cryophile.abandoned`),
    so this run starts again; None. Anything else (a live writer): None, and the
    claim then refuses the id as usual.
    """
    work = spool.backup_dir(Queue.BACKUP, backup_id)
    queued = spool.backup_dir(Queue.FREEZE, backup_id)
    if is_being_written(work / LOCK_NAME):
        return None
    if opened.vault.stat(backup_id.manifest_key) is not None:
        # Before the input is read: an earlier run finished (it was killed after the
        # upload, before it could exit), or another host used the id.
        raise AlreadyExistsError(
            f"backup {backup_id} is already complete in vault {backup_id.vault} "
            f"({opened.destination.describe()}); nothing was read or uploaded. Use another "
            "-t/-u for a new backup")
    if (queued / MANIFEST_NAME).exists():
        manifest = parse(read_spool_file(queued / MANIFEST_NAME), expected=backup_id)
        notify(f"backup {backup_id} is complete in the spool (an earlier run was "
               "interrupted before its upload finished): uploading it; the input is not read")
        return manifest
    if not work.is_dir():
        return None
    item = abandoned.Abandoned(backup_id, 0, 0)
    abandoned.remove(spool, opened.vault, opened.destination, item, dry_run=False)
    if item.action == abandoned.REMOVED:
        notify(f"backup {backup_id}: removed what an interrupted earlier run left "
               f"({item.vault_objects} object(s) in the vault); starting again")
    return None


def _metrics_on_wait(path: Path | None, backup_id: BackupId,
                     budget: Budget) -> Callable[[WaitState | None], None] | None:
    """Tell the metrics file (if one is configured) when the backup waits for uploads."""
    if path is None:
        return None
    metrics_file = MetricsFile(path)

    def record(state: WaitState | None) -> None:
        try:
            metrics_file.record_backup_wait(backup_id, state is not None,
                                            state.queued if state is not None else None,
                                            budget.limit)
        except OSError as error:
            logger.error("cannot write metrics to %s: %s", path, error.strerror or error)

    return record


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


def _report(result: BackupResult, as_json: bool, environment: Environment,
            gate: SpoolGate | None) -> None:
    manifest = result.manifest
    stored = manifest.stored_bytes
    ratio = result.input_bytes / stored if stored else 0.0
    waited = gate.waited_seconds if gate is not None else 0.0
    if as_json:
        document = {**describe(manifest.backup_id),
                    "created": manifest.created.isoformat().replace("+00:00", "Z"),
                    "input_bytes": result.input_bytes, "stored_bytes": stored,
                    "ratio": round(ratio, 3), "fragments": len(manifest.fragments),
                    "compression": manifest.compression, "seconds": round(result.seconds, 3),
                    "parent": None if manifest.parent is None else str(manifest.parent),
                    "labels": dict(manifest.labels),
                    "waited_for_upload_seconds": round(waited, 3),
                    "waits_for_upload": gate.waits if gate is not None else 0,
                    "spool_budget_bytes": gate.budget.limit if gate is not None else None,
                    "resumed": gate is None}
        os.write(environment.stdout_fd, (json.dumps(document) + "\n").encode())
        return
    if gate is None:
        print(f"cryophile: backup {manifest.backup_id}: uploaded what an earlier run left "
              f"complete in the spool: {stored} bytes in {len(manifest.fragments)} "
              "fragment(s)", file=environment.stderr)
        return
    speed = result.input_bytes / result.seconds / 1e6 if result.seconds else 0.0
    waits = (f"; waited {waited:.1f} s for uploads to free spool space ({gate.waits} time(s))"
             if gate.waits else "")
    print(f"cryophile: backup {manifest.backup_id}: {result.input_bytes} bytes in, {stored} "
          f"stored in {len(manifest.fragments)} fragment(s), ratio {ratio:.2f}, "
          f"{result.seconds:.1f} s ({speed:.0f} MB/s){waits}", file=environment.stderr)

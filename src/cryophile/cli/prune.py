"""``cryophile prune``: delete whole backups from a vault by a retention policy.

The policy is :mod:`cryophile.retention`'s; this module finds the candidates
(backups whose manifest is in the vault), checks each against its storage
class's minimum duration, and deletes.

A backup is deleted manifest first: once ``chunk.0`` is gone no listing calls
the backup complete, so an interrupted prune can never leave something that
looks restorable but is not. Before the manifest goes, the backup is written
to a journal in the spool (``SPOOL/prune/VAULT.json``); the next prune finishes
the backups it names (their fragments without a manifest would otherwise look
like an abandoned upload, which prune leaves alone).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryophile import abandoned
from cryophile.backup_id import BackupId, normalize_prefix, parse_ulid, parse_vault
from cryophile.catalog import fetch_manifest
from cryophile.cli.list import format_table
from cryophile.cli.resources import open_config, open_spool
from cryophile.durable import make_dirs, replace_file
from cryophile.errors import CryophileError, DataError, ExitCode, UsageError
from cryophile.inventory import VaultListing, list_vault, rfc3339, within
from cryophile.manifest import Manifest
from cryophile.pipeline.stages import write_all
from cryophile.retention import Backup, EarlyDeletion, Policy, early_deletion, plan_retention
from cryophile.spool import Queue, Spool
from cryophile.units import human_bytes
from cryophile.vault.factory import OpenedVault, open_vault

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Delete whole backups from a vault by a retention policy, in the spirit of
restic's `forget`. Per series (each prefix separately), newest first:

  --keep-last N      the N newest backups
  --keep-daily N     the newest backup of each of the N latest days with one
  --keep-weekly N    ... of each of the N latest ISO weeks with one
  --keep-monthly N   ... of each of the N latest months with one

A backup kept by any rule stays. Days, weeks and months are UTC periods of the
backup's time (its ULID's: the -t time it was named by, else when it was made).
Only complete backups (manifest in the vault) are candidates; uploads without a
manifest are reported and left alone. A backup being restored (in SPOOL/thaw/
or SPOOL/restore/) is kept.

Deletion is manifest first, then the fragments: an interrupted prune leaves a
backup that lists as incomplete, never as complete, and the next prune finishes
it (the spool keeps a journal in SPOOL/prune/). Backups younger than their
storage class's minimum duration (GLACIER, GLACIER_IR 90 days, DEEP_ARCHIVE 180,
STANDARD_IA, ONEZONE_IA 30; counted from when the backup was written) are kept
for now unless --allow-early-deletion. A delete the vault refuses (object lock,
permissions) is reported and the others go on.

With --abandoned (instead of a policy): remove the backups this spool lists as
abandoned (their writer died before the manifest; see `cryophile status`): the
fragments a freezer uploaded of them, then SPOOL/freeze/ID and SPOOL/backup/ID,
holding the backup's lock, so a live writer is never touched.
"""

EXAMPLES = """\
examples:
  cryophile prune -v VAULT --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --dry-run
  cryophile prune -v VAULT -p hosts/db1 --keep-last 3
  cryophile prune -v VAULT --keep-monthly 6 -n --json | jq '.backups[] | select(.action=="remove")'
  cryophile prune -v VAULT --abandoned --dry-run
exit status: 0 done (backups too young to delete are kept and named on stderr);
69 the vault refused a delete (object lock, permissions), 75 it was unreachable
(what could be deleted was); 65 a manifest in the vault is unreadable (that
backup is left alone).
"""

COLUMNS = ("ACTION", "KEPT BY", "TIME", "SIZE", "CLASS", "BACKUP")


def non_negative_count(text: str) -> int:
    """A whole number ≥ 0, in ASCII digits (str.isdigit() also takes "²" and "٣")."""
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"invalid number {text!r}: expected a whole number of 0 or more")
    return int(text)


def register(commands: Any) -> argparse.ArgumentParser:
    """Add the ``prune`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "prune", help="delete old backups from a vault by a retention policy",
        description=DESCRIPTION, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--vault", required=True, metavar="UUID", help="the vault")
    parser.add_argument("-p", "--prefix", metavar="PREFIX",
                        help="only backups with this prefix or one below it (each prefix is "
                             "its own series)")
    for rule, period in (("last", "newest backups"), ("daily", "days"), ("weekly", "ISO weeks"),
                         ("monthly", "months")):
        parser.add_argument(f"--keep-{rule}", type=non_negative_count, default=0, metavar="N",
                            help=f"keep the latest backup of N {period}" if rule != "last"
                            else "keep the N newest backups")
    parser.add_argument("-n", "--dry-run", action="store_true",
                        help="print the plan, delete nothing")
    parser.add_argument("--allow-early-deletion", action="store_true",
                        help="also delete backups younger than their storage class's minimum "
                             "duration (billed as if stored that long)")
    parser.add_argument("--abandoned", action="store_true",
                        help="instead of a retention policy: remove the backups in this spool "
                             "whose writer died before the manifest (status lists them as "
                             "abandoned), with what a freezer uploaded of them")
    parser.add_argument("--json", action="store_true",
                        help="print the plan or result as one JSON object (schema in the README)")
    parser.set_defaults(run=run)
    return parser


@dataclass
class Candidate:
    """A complete backup in the vault and what prune decided for it."""

    backup_id: BackupId
    listing: VaultListing
    manifest: Manifest
    storage_class: str | None
    action: str = "keep"
    kept_by: tuple[str, ...] = ()
    early: EarlyDeletion | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """One entry of ``backups`` in ``prune --json``."""
        early = self.early
        return {
            "id": str(self.backup_id), "vault": str(self.backup_id.vault),
            "prefix": self.backup_id.prefix, "ulid": str(self.backup_id.ulid),
            "time": rfc3339(self.backup_id.created), "created": rfc3339(self.manifest.created),
            "action": self.action, "kept_by": list(self.kept_by),
            "stored_bytes": self.manifest.stored_bytes,
            "fragments": len(self.manifest.fragments),
            "storage_class": self.storage_class,
            "early_deletion": None if early is None else {
                "storage_class": early.storage_class, "minimum_days": early.minimum_days,
                "remaining_days": early.remaining_days,
                "message": early.describe(human_bytes(early.stored_bytes))},
            "error": self.error,
        }


@dataclass
class Outcome:
    """Everything prune found and did in one vault."""

    candidates: list[Candidate] = field(default_factory=list)
    incomplete: list[BackupId] = field(default_factory=list)
    finished: list[BackupId] = field(default_factory=list)
    unreadable: dict[BackupId, str] = field(default_factory=dict)
    errors: list[CryophileError] = field(default_factory=list)


# -- the journal of deletions under way ----------------------------------------------


class Journal:
    """``SPOOL/prune/VAULT.json``: backups whose deletion has begun (manifest may be gone)."""

    def __init__(self, spool: Spool, vault_id: uuid.UUID) -> None:
        self.vault_id = vault_id
        self.path = spool.root / "prune" / f"{vault_id}.json"

    def load(self) -> set[BackupId]:
        """The backups named; a missing journal names none."""
        try:
            document = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as error:
            raise DataError(f"{self.path}: unreadable prune journal: {error}") from None
        found = set()
        for entry in document.get("deleting", []):
            with contextlib.suppress(UsageError, KeyError, TypeError):
                found.add(BackupId(self.vault_id, entry["prefix"], parse_ulid(entry["ulid"])))
        return found

    def save(self, backups: set[BackupId]) -> None:
        """Record ``backups`` durably (removing the file when there are none)."""
        if not backups:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        make_dirs(self.path.parent)
        entries = [{"prefix": b.prefix, "ulid": str(b.ulid)} for b in sorted(backups, key=str)]
        replace_file(self.path, json.dumps({"deleting": entries}, indent=1).encode())


# -- the work ---------------------------------------------------------------------------


def _delete_backup(opened: OpenedVault, listing: VaultListing, journal: Journal,
                   underway: set[BackupId]) -> None:
    """Manifest first (so the backup never lists as complete again), then every fragment."""
    backup_id = listing.backup_id
    underway.add(backup_id)
    journal.save(underway)
    for key in listing.object_keys():  # the manifest first, then chunk.0.sig, fragments
        opened.vault.delete(key)
    underway.discard(backup_id)
    journal.save(underway)


def _in_restore(spool: Spool, backup_id: BackupId) -> bool:
    return any(spool.backup_dir(queue, backup_id).exists()
               for queue in (Queue.THAW, Queue.RESTORE))


def gather(opened: OpenedVault, spool: Spool, prefix: str | None,
           journal_entries: set[BackupId]) -> tuple[Outcome, dict[BackupId, VaultListing]]:
    """Read the vault: candidates (with manifest), incomplete uploads, interrupted prunes."""
    outcome = Outcome()
    listings = list_vault(opened.vault, opened.vault_id, prefix)
    unfinished: dict[BackupId, VaultListing] = {}
    with tempfile.TemporaryDirectory(prefix=".cryophile-prune-", dir=spool.root) as scratch:
        for backup_id, listing in sorted(listings.items(), key=lambda item: str(item[0])):
            if not within(backup_id.prefix, prefix):
                continue
            if not listing.has_manifest:
                if backup_id in journal_entries:
                    unfinished[backup_id] = listing
                else:
                    outcome.incomplete.append(backup_id)
                continue
            try:
                manifest, _ = fetch_manifest(opened, backup_id, Path(scratch))
            except DataError as error:
                outcome.unreadable[backup_id] = str(error)
                outcome.errors.append(error)
                continue
            storage_class = None
            if 1 in listing.indices:
                info = opened.vault.stat(backup_id.object_key(1))
                storage_class = info.storage_class if info is not None else None
            outcome.candidates.append(Candidate(backup_id, listing, manifest, storage_class))
    return outcome, unfinished


def decide(outcome: Outcome, policy: Policy, spool: Spool, now: datetime, *,
           allow_early: bool) -> None:
    """Set every candidate's action: keep (and why), remove, or too_young."""
    by_id = {candidate.backup_id: candidate for candidate in outcome.candidates}
    plan = plan_retention([Backup(c.backup_id, c.backup_id.prefix, c.backup_id.created)
                           for c in outcome.candidates], policy)
    for backup_id, rules in plan.keep.items():
        by_id[backup_id].kept_by = rules
    for backup_id in plan.remove:
        candidate = by_id[backup_id]
        candidate.early = early_deletion(candidate.storage_class, candidate.manifest.created,
                                         now, candidate.manifest.stored_bytes)
        if _in_restore(spool, backup_id):
            candidate.kept_by = ("restore",)
        elif candidate.early is not None and not allow_early:
            candidate.action = "too_young"
        else:
            candidate.action = "remove"
    outcome.candidates.sort(key=lambda c: (c.backup_id.prefix, c.backup_id.created,
                                           str(c.backup_id.ulid)), reverse=True)


def execute(opened: OpenedVault, outcome: Outcome, unfinished: dict[BackupId, VaultListing],
            journal: Journal, underway: set[BackupId]) -> None:
    """Finish interrupted deletions, then delete what the plan removes."""
    for backup_id, listing in unfinished.items():
        try:
            _delete_backup(opened, listing, journal, underway)
            outcome.finished.append(backup_id)
            logger.info("finished the interrupted deletion of %s", backup_id)
        except CryophileError as error:
            outcome.errors.append(error)
            logger.error("cannot finish deleting %s: %s", backup_id, error)
    for candidate in outcome.candidates:
        if candidate.action != "remove":
            continue
        try:
            _delete_backup(opened, candidate.listing, journal, underway)
        except CryophileError as error:
            candidate.action = "refused" if not error.transient else "failed"
            candidate.error = str(error)
            outcome.errors.append(error)
            continue
        candidate.action = "removed"
        logger.info("deleted %s (%d fragment(s), %d bytes)", candidate.backup_id,
                    len(candidate.manifest.fragments), candidate.manifest.stored_bytes)


# -- output -------------------------------------------------------------------------


def _row(candidate: Candidate) -> tuple[str, ...]:
    return (candidate.action, ",".join(candidate.kept_by) or "-",
            rfc3339(candidate.backup_id.created.replace(microsecond=0)),
            human_bytes(candidate.manifest.stored_bytes), candidate.storage_class or "-",
            str(candidate.backup_id))


def _bytes_of(outcome: Outcome, *actions: str) -> tuple[int, int]:
    chosen = [c for c in outcome.candidates if c.action in actions]
    return len(chosen), sum(c.manifest.stored_bytes for c in chosen)


def _report_lines(outcome: Outcome, *, dry_run: bool) -> list[str]:
    """The lines after the table: charges, refusals, incomplete uploads, totals."""
    lines = []
    for candidate in outcome.candidates:
        early = candidate.early
        if early is not None:
            statement = early.describe(human_bytes(early.stored_bytes))
            if candidate.action == "too_young":
                lines.append(f"{candidate.backup_id}: kept for now, avoiding an early-deletion "
                             f"charge: {statement}; --allow-early-deletion deletes it anyway")
            elif candidate.action in ("remove", "removed"):
                lines.append(f"{candidate.backup_id}: early-deletion charge: {statement}")
        if candidate.error is not None:
            lines.append(f"{candidate.backup_id}: {candidate.action}: {candidate.error}")
    for backup_id in outcome.incomplete:
        lines.append(f"{backup_id}: incomplete (fragments without a manifest): left alone")
    for backup_id, problem in outcome.unreadable.items():
        lines.append(f"{backup_id}: left alone: {problem}")
    for backup_id in outcome.finished:
        lines.append(f"{backup_id}: finished an interrupted deletion")
    kept, kept_bytes = _bytes_of(outcome, "keep", "too_young", "refused", "failed")
    if dry_run:
        gone, gone_bytes = _bytes_of(outcome, "remove")
        lines.append(f"would remove {gone} backup(s), {human_bytes(gone_bytes)}; keep {kept}, "
                     f"{human_bytes(kept_bytes)} (dry run: nothing deleted)")
    else:
        gone, gone_bytes = _bytes_of(outcome, "removed")
        lines.append(f"removed {gone} backup(s), {human_bytes(gone_bytes)}; kept {kept}, "
                     f"{human_bytes(kept_bytes)}")
    return lines


def _document(outcome: Outcome, opened: OpenedVault, policy: Policy,
              *, dry_run: bool) -> dict[str, Any]:
    removed = "remove" if dry_run else "removed"
    gone, gone_bytes = _bytes_of(outcome, removed)
    kept, kept_bytes = _bytes_of(outcome, "keep", "too_young", "refused", "failed")
    return {
        "vault": str(opened.vault_id), "dry_run": dry_run, "policy": policy.as_dict(),
        "backups": [candidate.as_json() for candidate in outcome.candidates],
        "incomplete": [str(backup_id) for backup_id in outcome.incomplete],
        "finished": [str(backup_id) for backup_id in outcome.finished],
        "unreadable": {str(backup_id): problem
                       for backup_id, problem in outcome.unreadable.items()},
        "totals": {"removed": gone, "removed_bytes": gone_bytes,
                   "kept": kept, "kept_bytes": kept_bytes},
    }


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Plan, then (unless ``--dry-run``) delete; print the plan or the result."""
    vault_id = parse_vault(args.vault)
    prefix = normalize_prefix(args.prefix) if args.prefix is not None else None
    policy = Policy(args.keep_last, args.keep_daily, args.keep_weekly, args.keep_monthly)
    if args.abandoned:
        if not policy.empty or args.allow_early_deletion:
            raise UsageError("--abandoned takes no retention policy (--keep-*, "
                             "--allow-early-deletion): run prune once for each")
        return _prune_abandoned(args, environment, vault_id, prefix)
    if policy.empty:
        raise UsageError("give at least one of --keep-last, --keep-daily, --keep-weekly, "
                         "--keep-monthly (with none, every backup would be deleted)")
    config = open_config(args)
    spool = open_spool(args, environment.env, config)
    opened = open_vault(vault_id, config, spool.root)
    journal = Journal(spool, vault_id)
    underway = journal.load()
    outcome, unfinished = gather(opened, spool, prefix, underway)
    decide(outcome, policy, spool, datetime.now(UTC), allow_early=args.allow_early_deletion)
    if not args.dry_run:
        execute(opened, outcome, unfinished, journal, underway)
    if args.json:
        output = json.dumps(_document(outcome, opened, policy, dry_run=args.dry_run),
                            indent=1) + "\n"
        write_all(environment.stdout_fd, output.encode())
    else:
        table = (format_table([_row(c) for c in outcome.candidates], COLUMNS)
                 if outcome.candidates else "")
        lines = _report_lines(outcome, dry_run=args.dry_run)
        write_all(environment.stdout_fd, (table + "\n".join(lines) + "\n").encode())
    refused = [error for error in outcome.errors if not error.transient]
    young = [c for c in outcome.candidates if c.action == "too_young"]
    if young and not args.quiet:
        print(f"cryophile: {len(young)} backup(s) not deleted: younger than their storage "
              "class's minimum duration (named above; --allow-early-deletion deletes them)",
              file=environment.stderr)
    for candidate in outcome.candidates:
        if candidate.error is not None:
            print(f"cryophile: error: {candidate.backup_id}: {candidate.error}",
                  file=environment.stderr)
    if not outcome.errors:
        return 0
    return int(refused[0].exit_code if refused else ExitCode.TEMPFAIL)


def _prune_abandoned(args: argparse.Namespace, environment: Environment, vault_id: uuid.UUID,
                     prefix: str | None) -> int:
    """``prune --abandoned``: remove the spool's abandoned backups, vault objects first."""
    config = open_config(args)
    spool = open_spool(args, environment.env, config)
    opened = open_vault(vault_id, config, spool.root)
    items = abandoned.find(spool, vault_id, prefix)
    errors: list[CryophileError] = []
    for item in items:
        try:
            abandoned.remove(spool, opened.vault, item, dry_run=args.dry_run)
        except CryophileError as error:
            item.action, item.reason = abandoned.LEFT, str(error)
            errors.append(error)
            continue
        if item.action == abandoned.REMOVED:
            logger.info("removed abandoned backup %s: %d fragment(s) from the spool, "
                        "%d object(s) from the vault", item.backup_id, item.spool_fragments,
                        item.vault_objects)
    gone = [item for item in items if item.action in (abandoned.REMOVE, abandoned.REMOVED)]
    if args.json:
        document = {"vault": str(vault_id), "dry_run": args.dry_run,
                    "abandoned": [item.as_json() for item in items],
                    "totals": {"removed": len(gone), "left": len(items) - len(gone)}}
        write_all(environment.stdout_fd, (json.dumps(document, indent=1) + "\n").encode())
    else:
        lines = []
        for item in items:
            what = (f"{item.spool_fragments} fragment(s), {human_bytes(item.spool_bytes)} in the "
                    f"spool, {item.vault_objects} object(s) in the vault")
            if item.action == abandoned.LEFT:
                lines.append(f"{item.backup_id}: left alone: {item.reason}")
            else:
                verb = "would remove" if args.dry_run else "removed"
                lines.append(f"{item.backup_id}: {verb} ({what})")
        verb = "would remove" if args.dry_run else "removed"
        lines.append(f"{verb} {len(gone)} abandoned backup(s)"
                     + (" (dry run: nothing deleted)" if args.dry_run else "")
                     + (f"; left {len(items) - len(gone)}" if len(gone) < len(items) else ""))
        write_all(environment.stdout_fd, ("\n".join(lines) + "\n").encode())
    if not errors:
        return 0
    refused = [error for error in errors if not error.transient]
    return int(refused[0].exit_code if refused else ExitCode.TEMPFAIL)

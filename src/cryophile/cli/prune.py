"""``cryophile prune``: arguments, output and exit codes; the work is :mod:`cryophile.prune`."""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryophile import abandoned
from cryophile.backup_id import normalize_prefix, parse_vault, rfc3339
from cryophile.cli.arguments import duration
from cryophile.cli.list import format_table
from cryophile.cli.resources import open_config, open_spool
from cryophile.errors import CryophileError, ExitCode, UsageError, exit_code_of
from cryophile.pipeline.stages import write_all
from cryophile.prune import (
    KEPT_ACTIONS,
    Action,
    Candidate,
    Outcome,
    PruneRequest,
    prune_abandoned,
    prune_incomplete,
    removal_hint,
    run_prune,
)
from cryophile.retention import FUTURE_SKEW, Policy, Uncounted
from cryophile.signing import load_trusted_signers
from cryophile.units import human_bytes
from cryophile.vault.factory import OpenedVault, open_vault

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

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

Backups that must not decide anything are never counted by the rules, and
never deleted: with --signed-by (or signed_by in the config), a backup whose
manifest is not validly signed by that key is "untrusted" (forged, or from a
host that does not sign); a backup dated more than 1 hour after now (a wrong
clock, a typo in -t) is "future_dated". Both are reported and left for you.
When the listing, or the manifest (with --signed-by, the signature) of any
backup in the selection cannot be read, prune deletes nothing: a partial view
never decides deletions.

Deletion is manifest first, then the fragments: an interrupted prune leaves a
backup that lists as incomplete, never as complete, and the next prune finishes
it (the spool keeps a journal in SPOOL/prune/). Backups younger than their
storage class's minimum duration (GLACIER, GLACIER_IR 90 days, DEEP_ARCHIVE 180,
STANDARD_IA, ONEZONE_IA 30; counted from when the backup was written) are kept
for now unless --allow-early-deletion. A delete the vault refuses (object lock,
permissions) is reported and the others go on.

With --abandoned (instead of a policy): remove the backups this spool lists as
abandoned (their writer died before the manifest; see `cryophile status`): the
objects this spool's upload record says a freezer uploaded of them (objects
under the same id that this spool did not upload, another host's, are counted
and left alone), then SPOOL/freeze/ID, SPOOL/backup/ID and the record, holding
the backup's lock, so a live writer is never touched.

With --incomplete --older-than DURATION (instead of a policy): remove the
vault's objects of backups without a manifest that no spool here claims (left
by a host that lost its spool mid-backup), once their newest object is older
than DURATION (7d, 36h, 1w2d), so that no upload can still be running.
"""

EXAMPLES = """\
examples:
  cryophile prune -v VAULT --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --dry-run
  cryophile prune -v VAULT -p hosts/db1 --keep-last 3 --signed-by host-sign.cert
  cryophile prune -v VAULT --keep-monthly 6 -n --json | jq '.backups[] | select(.action=="remove")'
  cryophile prune -v VAULT --abandoned --dry-run
  cryophile prune -v VAULT --incomplete --older-than 7d
exit status: 0 done (backups too young to delete, and future-dated ones, are kept
and named); 65 a manifest or signature in the vault is unreadable, 75 the vault
was unreachable while reading it (in both cases nothing is deleted); 65 untrusted
backups were found (the others were pruned); 69 the vault refused a delete
(object lock, permissions), 75 it became unreachable (what could be deleted was).
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
    parser.add_argument("--signed-by", type=Path, default=None, metavar="CERT",
                        help="count only backups whose manifest carries a valid signature "
                             "from a key in this certificate file; others are reported as "
                             "untrusted and never deleted (default: signed_by in the config)")
    parser.add_argument("--abandoned", action="store_true",
                        help="instead of a retention policy: remove the backups in this spool "
                             "whose writer died before the manifest (status lists them as "
                             "abandoned), with what a freezer uploaded of them")
    parser.add_argument("--incomplete", action="store_true",
                        help="instead of a retention policy: remove fragments in the vault of "
                             "backups without a manifest that no spool here claims (left by a "
                             "host that lost its spool); needs --older-than")
    parser.add_argument("--older-than", type=duration, default=None, metavar="DURATION",
                        help="with --incomplete: only backups whose newest object was stored "
                             "longer ago than this (e.g. 7d, 36h), so that no upload can "
                             "still be running")
    parser.add_argument("--json", action="store_true",
                        help="print the plan or result as one JSON object (schema in the README)")
    parser.set_defaults(run=run)
    return parser


# -- output -------------------------------------------------------------------------


def _row(candidate: Candidate) -> tuple[str, ...]:
    kept_by = ",".join(candidate.kept_by) or ("not counted" if candidate.uncounted else "-")
    return (candidate.action, kept_by,
            rfc3339(candidate.backup_id.created.replace(microsecond=0)),
            human_bytes(candidate.manifest.stored_bytes), candidate.storage_class or "-",
            str(candidate.backup_id))


def _bytes_of(outcome: Outcome, *actions: Action) -> tuple[int, int]:
    chosen = outcome.with_action(*actions)
    return len(chosen), sum(c.manifest.stored_bytes for c in chosen)


def _skew() -> str:
    hours = FUTURE_SKEW.total_seconds() / 3600
    return f"{hours:g} hour" + ("" if hours == 1 else "s")


def _uncounted_lines(outcome: Outcome, opened: OpenedVault, now: datetime) -> list[str]:
    lines = []
    for candidate in outcome.with_action(Action.UNTRUSTED, Action.FUTURE_DATED):
        backup_id = candidate.backup_id
        why = []
        if candidate.untrusted is not None:
            why.append(f"untrusted: {candidate.untrusted}")
        if Uncounted.FUTURE_DATED in candidate.uncounted:
            why.append(f"future-dated: its time {rfc3339(backup_id.created)} is more than "
                       f"{_skew()} after now ({rfc3339(now.replace(microsecond=0))}): a wrong "
                       "clock or a typo in -t made it (or a forger picked it to look newest)")
        lines.append(f"{backup_id}: {'; '.join(why)}; kept, not counted by the keep rules, "
                     "never deleted by prune: if it is not wanted, remove it by hand: "
                     f"{removal_hint(opened, backup_id)}")
    return lines


def _report_lines(outcome: Outcome, opened: OpenedVault, request: PruneRequest) -> list[str]:
    """The lines after the table: charges, refusals, untrusted and future-dated backups,
    incomplete uploads, unreadable manifests, totals."""
    lines = []
    for candidate in outcome.candidates:
        early = candidate.early
        if early is not None:
            statement = early.describe(human_bytes(early.stored_bytes))
            if candidate.action is Action.TOO_YOUNG:
                lines.append(f"{candidate.backup_id}: kept for now, avoiding an early-deletion "
                             f"charge: {statement}; --allow-early-deletion deletes it anyway")
            elif candidate.action in (Action.REMOVE, Action.REMOVED):
                lines.append(f"{candidate.backup_id}: early-deletion charge: {statement}")
        if candidate.error is not None:
            lines.append(f"{candidate.backup_id}: {candidate.action}: {candidate.error}")
    lines += _uncounted_lines(outcome, opened, request.now)
    for backup_id in outcome.incomplete:
        lines.append(f"{backup_id}: incomplete (fragments without a manifest): left alone")
    for backup_id, problem in outcome.unreadable.items():
        lines.append(f"{backup_id}: unreadable (so prune deletes nothing): {problem}")
    for backup_id in outcome.finished:
        lines.append(f"{backup_id}: finished an interrupted deletion")
    kept, kept_bytes = _bytes_of(outcome, *KEPT_ACTIONS)
    if outcome.blocked:
        blocked, _ = _bytes_of(outcome, Action.BLOCKED)
        lines.append(f"deleted nothing: {len(outcome.unreadable)} backup(s) could not be read "
                     f"(named above), and a partial view never decides deletions; the plan "
                     f"would remove {blocked} backup(s); keep {kept}, {human_bytes(kept_bytes)}")
    elif request.dry_run:
        gone, gone_bytes = _bytes_of(outcome, Action.REMOVE)
        lines.append(f"would remove {gone} backup(s), {human_bytes(gone_bytes)}; keep {kept}, "
                     f"{human_bytes(kept_bytes)} (dry run: nothing deleted)")
    else:
        gone, gone_bytes = _bytes_of(outcome, Action.REMOVED)
        lines.append(f"removed {gone} backup(s), {human_bytes(gone_bytes)}; kept {kept}, "
                     f"{human_bytes(kept_bytes)}")
    return lines


def _document(outcome: Outcome, opened: OpenedVault, request: PruneRequest) -> dict[str, Any]:
    gone, gone_bytes = _bytes_of(outcome, Action.REMOVE if request.dry_run else Action.REMOVED)
    kept, kept_bytes = _bytes_of(outcome, *KEPT_ACTIONS)
    signers = request.signers
    return {
        "vault": str(opened.vault_id), "dry_run": request.dry_run,
        "policy": request.policy.as_dict(),
        "signed_by": None if signers is None else signers.fingerprints,
        "future_skew_seconds": int(FUTURE_SKEW.total_seconds()),
        "blocked": outcome.blocked,
        "backups": [candidate.as_json() for candidate in outcome.candidates],
        "incomplete": [str(backup_id) for backup_id in outcome.incomplete],
        "finished": [str(backup_id) for backup_id in outcome.finished],
        "unreadable": {str(backup_id): str(problem)
                       for backup_id, problem in outcome.unreadable.items()},
        "totals": {"removed": gone, "removed_bytes": gone_bytes,
                   "kept": kept, "kept_bytes": kept_bytes,
                   "untrusted": len(outcome.with_action(Action.UNTRUSTED)),
                   "future_dated": sum(1 for c in outcome.candidates
                                       if Uncounted.FUTURE_DATED in c.uncounted),
                   "blocked": len(outcome.with_action(Action.BLOCKED))},
    }


def _exit_code(outcome: Outcome) -> int:
    """Unreadable (nothing deleted) first, then failed deletions, then untrusted backups."""
    for errors in (list(outcome.unreadable.values()), outcome.errors):
        if errors:
            refused = [error for error in errors if not error.transient]
            return int(refused[0].exit_code if refused else ExitCode.TEMPFAIL)
    if outcome.with_action(Action.UNTRUSTED):
        return int(ExitCode.DATAERR)
    return 0


def _warn(outcome: Outcome, request: PruneRequest, *, quiet: bool,
          environment: Environment) -> None:
    def say(text: str) -> None:
        print(f"cryophile: {text}", file=environment.stderr)

    if outcome.blocked:
        first, problem = next(iter(outcome.unreadable.items()))
        say(f"error: deleted nothing: {len(outcome.unreadable)} backup(s) in the selection "
            f"could not be read, first {first}: {problem}; prune decides only on a complete "
            "view of the vault: run it again once the vault answers, or repair or remove "
            "that backup by hand")
    untrusted = outcome.with_action(Action.UNTRUSTED)
    if untrusted and request.signers is not None:
        say(f"error: {len(untrusted)} backup(s) not signed by "
            f"{request.signers.describe()}: untrusted, not counted by the keep rules and not "
            "deleted (named above); if they are not yours, someone else can write to the "
            "vault: remove them by hand")
    future = [c for c in outcome.candidates if Uncounted.FUTURE_DATED in c.uncounted]
    if future and not quiet:
        say(f"warning: {len(future)} backup(s) dated more than {_skew()} after now: kept, not "
            "counted by the keep rules (named above); check the clock and the -t of the job "
            "that made them")
    young = outcome.with_action(Action.TOO_YOUNG)
    if young and not quiet:
        say(f"{len(young)} backup(s) not deleted: younger than their storage "
            "class's minimum duration (named above; --allow-early-deletion deletes them)")
    for candidate in outcome.candidates:
        if candidate.error is not None:
            say(f"error: {candidate.backup_id}: {candidate.error}")


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Plan, then (unless ``--dry-run``) delete; print the plan or the result."""
    vault_id = parse_vault(args.vault)
    prefix = normalize_prefix(args.prefix) if args.prefix is not None else None
    policy = Policy(args.keep_last, args.keep_daily, args.keep_weekly, args.keep_monthly)
    if args.abandoned and args.incomplete:
        raise UsageError("--abandoned and --incomplete clean up different things: run prune "
                         "once for each")
    if args.older_than is not None and not args.incomplete:
        raise UsageError("--older-than goes with --incomplete")
    if args.abandoned or args.incomplete:
        option = "--abandoned" if args.abandoned else "--incomplete"
        if not policy.empty or args.allow_early_deletion or args.signed_by is not None:
            raise UsageError(f"{option} takes no retention policy (--keep-*, "
                             "--allow-early-deletion, --signed-by): run prune once for each")
        if args.abandoned:
            return _prune_abandoned(args, environment, vault_id, prefix)
        if args.older_than is None:
            raise UsageError("--incomplete needs --older-than DURATION (e.g. 7d): objects "
                             "younger than that may belong to an upload still running")
        return _prune_incomplete(args, environment, vault_id, prefix)
    if policy.empty:
        raise UsageError("give at least one of --keep-last, --keep-daily, --keep-weekly, "
                         "--keep-monthly (with none, every backup would be deleted)")
    config = open_config(args)
    signed_by = args.signed_by or config.signed_by
    signers = None if signed_by is None else load_trusted_signers(signed_by)
    spool = open_spool(args, environment.env, config)
    opened = open_vault(vault_id, config, spool.root)
    request = PruneRequest(policy, datetime.now(UTC), prefix, signers,
                           allow_early_deletion=args.allow_early_deletion,
                           dry_run=args.dry_run)
    outcome = run_prune(opened, spool, request)
    if args.json:
        output = json.dumps(_document(outcome, opened, request), indent=1) + "\n"
        write_all(environment.stdout_fd, output.encode())
    else:
        table = (format_table([_row(c) for c in outcome.candidates], COLUMNS)
                 if outcome.candidates else "")
        lines = _report_lines(outcome, opened, request)
        write_all(environment.stdout_fd, (table + "\n".join(lines) + "\n").encode())
    _warn(outcome, request, quiet=args.quiet, environment=environment)
    return _exit_code(outcome)


def _prune_abandoned(args: argparse.Namespace, environment: Environment, vault_id: uuid.UUID,
                     prefix: str | None) -> int:
    """``prune --abandoned``: remove the spool's abandoned backups, vault objects first."""
    config = open_config(args)
    spool = open_spool(args, environment.env, config)
    opened = open_vault(vault_id, config, spool.root)
    outcome = prune_abandoned(opened, spool, prefix, dry_run=args.dry_run)
    items, gone = outcome.items, outcome.gone
    if args.json:
        document = {"vault": str(vault_id), "dry_run": args.dry_run,
                    "abandoned": [item.as_json() for item in items],
                    "totals": {"removed": len(gone), "left": len(items) - len(gone)}}
        write_all(environment.stdout_fd, (json.dumps(document, indent=1) + "\n").encode())
    else:
        lines = []
        for item in items:
            what = (f"{item.spool_fragments} fragment(s), {human_bytes(item.spool_bytes)} in the "
                    f"spool, {item.vault_objects} object(s) it uploaded to the vault")
            if item.foreign_objects:
                what += (f"; {item.foreign_objects} other object(s) under its id, not uploaded "
                         "from this spool (another host's?), left alone")
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
    errors: list[CryophileError] = outcome.errors
    if not errors:
        return 0
    refused = [error for error in errors if not error.transient]
    return int(refused[0].exit_code if refused else ExitCode.TEMPFAIL)


def _prune_incomplete(args: argparse.Namespace, environment: Environment, vault_id: uuid.UUID,
                      prefix: str | None) -> int:
    """``prune --incomplete --older-than D``: remove old fragments nobody will complete."""
    config = open_config(args)
    spool = open_spool(args, environment.env, config)
    opened = open_vault(vault_id, config, spool.root)
    outcome = prune_incomplete(opened, spool, prefix, older_than=args.older_than,
                               now=datetime.now(UTC), dry_run=args.dry_run)
    gone = [item for item in outcome.items if item.action in (Action.REMOVE, Action.REMOVED)]
    verb = "would remove" if args.dry_run else "removed"
    if args.json:
        document = {"vault": str(vault_id), "dry_run": args.dry_run,
                    "incomplete": [item.as_json() for item in outcome.items],
                    "totals": {"removed": len(gone), "left": len(outcome.items) - len(gone)}}
        write_all(environment.stdout_fd, (json.dumps(document, indent=1) + "\n").encode())
    else:
        lines = []
        for item in outcome.items:
            if item in gone:
                lines.append(f"{item.backup_id}: {verb} {item.objects} object(s) without a "
                             "manifest")
            else:
                lines.append(f"{item.backup_id}: left alone: {item.reason}")
        lines.append(f"{verb} {len(gone)} incomplete backup(s)"
                     + (" (dry run: nothing deleted)" if args.dry_run else "")
                     + (f"; left {len(outcome.items) - len(gone)}"
                        if len(gone) < len(outcome.items) else ""))
        write_all(environment.stdout_fd, ("\n".join(lines) + "\n").encode())
    return int(exit_code_of(outcome.errors))

"""The prune use case: delete whole backups from a vault by a retention policy.

:func:`run_prune` reads the vault (:func:`gather`), asks
:mod:`cryophile.retention` which backups the policy keeps (:func:`decide`),
and deletes the others (:func:`execute`). ``cryophile prune`` parses its
arguments, makes one call to it and prints the :class:`Outcome`.

What may never happen is that a backup nobody can vouch for decides which
genuine backups go. So:

- With ``signers`` (``--signed-by``/``signed_by``), only backups whose manifest
  carries a valid signature by them count for the keep rules. The others are
  *untrusted*: reported, never counted, never deleted by the policy (they are
  left for a person; :func:`removal_hint` says how to remove one by hand).
- A backup whose time (its ULID's) is more than
  :data:`cryophile.retention.FUTURE_SKEW` (1 hour) after now
  is *future-dated*: reported and kept, never counted, so it cannot be the
  "newest" that pushes a genuine backup out of ``--keep-last``.
- A partial view never decides deletions: when the listing of the vault, or
  the manifest (with ``signers``, the signature) of any backup in the selected
  prefix, cannot be read, the plan is still shown but nothing is deleted
  (:attr:`Outcome.blocked`).

A backup is deleted manifest first: once ``chunk.0`` is gone no listing calls
the backup complete, so an interrupted prune can never leave something that
looks restorable but is not. Before the manifest goes, the backup is written
to a :class:`Journal` in the spool; the next prune finishes the backups it
names (their fragments without a manifest would otherwise look like an
abandoned upload, which prune leaves alone).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryophile import abandoned
from cryophile.backup_id import SIGNATURE_NAME, BackupId, parse_ulid, rfc3339
from cryophile.catalog import fetch_manifest, fetch_signature
from cryophile.chains import needed_by
from cryophile.durable import make_dirs, replace_file
from cryophile.errors import CryophileError, DataError, UsageError
from cryophile.inventory import VaultListing, list_vault, within
from cryophile.manifest import Manifest
from cryophile.retention import (
    Backup,
    EarlyDeletion,
    Policy,
    Uncounted,
    early_deletion,
    plan_retention,
)
from cryophile.signing import TrustedSigners, signature_problem
from cryophile.spool import Queue, Spool
from cryophile.units import human_bytes
from cryophile.uploads import UploadRecords
from cryophile.vault.factory import OpenedVault

logger = logging.getLogger(__name__)


class Action(StrEnum):
    """What prune decided, or did, for one complete backup."""

    #: A keep rule keeps it (``kept_by`` names them), or a restore of it is under way.
    KEEP = "keep"
    #: Dry run: the plan deletes it.
    REMOVE = "remove"
    #: Deleted.
    REMOVED = "removed"
    #: The plan deletes it, but it is younger than its storage class's minimum duration.
    TOO_YOUNG = "too_young"
    #: The plan deletes it, but prune deleted nothing: its view of the vault is partial.
    BLOCKED = "blocked"
    #: Not validly signed by the required signer: not counted, never deleted by prune.
    UNTRUSTED = "untrusted"
    #: Dated more than FUTURE_SKEW after now: not counted, kept.
    FUTURE_DATED = "future_dated"
    #: The vault refused the delete (object lock, permissions).
    REFUSED = "refused"
    #: The delete failed transiently (vault unreachable).
    FAILED = "failed"


#: The actions after which the backup is still in the vault.
KEPT_ACTIONS = frozenset({Action.KEEP, Action.TOO_YOUNG, Action.BLOCKED, Action.UNTRUSTED,
                          Action.FUTURE_DATED, Action.REFUSED, Action.FAILED})


@dataclass(frozen=True)
class PruneRequest:
    """What to prune: the policy, the series (``prefix``: that one and those below
    it; None: all), the required signers, and when "now" is."""

    policy: Policy
    now: datetime
    prefix: str | None = None
    signers: TrustedSigners | None = None
    allow_early_deletion: bool = False
    dry_run: bool = False


@dataclass
class Candidate:
    """A complete backup in the vault and what prune decided for it."""

    backup_id: BackupId
    listing: VaultListing
    manifest: Manifest
    storage_class: str | None
    action: Action = Action.KEEP
    kept_by: tuple[str, ...] = ()
    early: EarlyDeletion | None = None
    error: str | None = None
    #: With signers: the fingerprint of the key whose signature verified.
    signed_by: str | None = None
    #: With signers: why the backup is not trusted (no signature, a bad one).
    untrusted: str | None = None
    #: Why the keep rules did not count it (empty: counted).
    uncounted: tuple[Uncounted, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """One entry of ``backups`` in ``prune --json``."""
        early = self.early
        return {
            "id": str(self.backup_id), "vault": str(self.backup_id.vault),
            "prefix": self.backup_id.prefix, "ulid": str(self.backup_id.ulid),
            "time": rfc3339(self.backup_id.created), "created": rfc3339(self.manifest.created),
            "action": str(self.action), "kept_by": list(self.kept_by),
            "uncounted": [str(reason) for reason in self.uncounted],
            "signed_by": self.signed_by, "untrusted": self.untrusted,
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
    #: Backups whose manifest (or, with signers, signature) could not be read.
    unreadable: dict[BackupId, CryophileError] = field(default_factory=dict)
    #: Deletions that failed (the vault refused, or was unreachable).
    errors: list[CryophileError] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        """Prune's view of the selected backups is partial, so it deletes nothing."""
        return bool(self.unreadable)

    def with_action(self, *actions: Action) -> list[Candidate]:
        """The candidates whose action is one of ``actions``."""
        return [candidate for candidate in self.candidates if candidate.action in actions]


# -- the journal of deletions under way ----------------------------------------------


class Journal:
    """``SPOOL/prune/VAULT.json``: backups whose deletion has begun (manifest may be gone).

    The format: ``{"deleting": [{"prefix": P, "ulid": U}, ...]}``.
    """

    def __init__(self, spool: Spool, vault_id: uuid.UUID) -> None:
        self.vault_id = vault_id
        self.path = spool.prune_journal(vault_id)

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


def removal_hint(opened: OpenedVault, backup_id: BackupId) -> str:
    """A command that removes every object of ``backup_id`` by hand, for messages about
    backups prune will not delete itself."""
    key_prefix = f"{backup_id.key_prefix}/"
    place = opened.destination
    if place.bucket is not None:
        where = f" --endpoint-url {shlex.quote(place.endpoint)}" if place.endpoint else ""
        return f"aws s3 rm --recursive{where} {shlex.quote(f's3://{place.bucket}/{key_prefix}')}"
    if place.path is not None:
        return f"rm -r {shlex.quote(str(Path(place.path) / backup_id.key_prefix))}"
    return f"delete every object below {key_prefix} in {opened.vault!r}"


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


def _read_candidate(opened: OpenedVault, listing: VaultListing, scratch: Path,
                    signers: TrustedSigners | None) -> Candidate:
    """The manifest, storage class and (with ``signers``) signature verdict of one
    backup; raises the vault's CryophileError when any of them cannot be read."""
    backup_id = listing.backup_id
    manifest, data = fetch_manifest(opened, backup_id, scratch)
    storage_class = None
    # A directory has no classes: what older versions recorded there (GLACIER
    # by default) bills nothing, so it never keeps a backup from deletion.
    if 1 in listing.indices and opened.has_storage_classes:
        info = opened.vault.stat(backup_id.object_key(1))
        storage_class = info.storage_class if info is not None else None
    candidate = Candidate(backup_id, listing, manifest, storage_class)
    if signers is not None:
        # The listing is complete (or prune stops): without chunk.0.sig in it the
        # backup is unsigned, and there is nothing to download.
        signature = fetch_signature(opened, backup_id, scratch) if listing.signed else None
        candidate.untrusted, candidate.signed_by = _trust(signers, data, signature)
    return candidate


def _trust(signers: TrustedSigners, manifest: bytes,
           signature: bytes | None) -> tuple[str | None, str | None]:
    """``(None, signing key fingerprint)`` for a manifest validly signed by ``signers``;
    else ``(why it is untrusted, None)``."""
    problem, signing_key = signature_problem(signers, manifest, signature)
    if problem is None and signing_key is not None:
        return None, signing_key
    why = (f"it has no manifest signature ({SIGNATURE_NAME})" if signature is None else
           f"its manifest signature ({SIGNATURE_NAME}) does not verify: the manifest was "
           "changed after signing, or signed by another key")
    return f"not signed by {signers.describe()}: {why}", None


def gather(opened: OpenedVault, spool: Spool, prefix: str | None,
           journal_entries: set[BackupId], signers: TrustedSigners | None = None,
           ) -> tuple[Outcome, dict[BackupId, VaultListing]]:
    """Read the vault: candidates (with manifest), incomplete uploads, interrupted prunes.

    A backup whose manifest, storage class or (with ``signers``) signature cannot
    be read, for whatever reason (damaged, gone since the listing, vault
    unreachable), goes to ``unreadable``, which blocks every deletion. A listing
    that cannot be read raises (the same error class, saying nothing was deleted).
    """
    outcome = Outcome()
    try:
        listings = list_vault(opened.vault, opened.vault_id, prefix)
    except CryophileError as error:
        raise type(error)(f"cannot list vault {opened.vault_id}: {error}; prune deleted "
                          "nothing (it decides only on a complete listing)") from error
    unfinished: dict[BackupId, VaultListing] = {}
    with spool.scratch("prune") as scratch:
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
                candidate = _read_candidate(opened, listing, scratch, signers)
            except CryophileError as error:
                logger.error("cannot read backup %s: %s", backup_id, error)
                outcome.unreadable[backup_id] = error
                continue
            outcome.candidates.append(candidate)
    return outcome, unfinished


def decide(outcome: Outcome, policy: Policy, spool: Spool, now: datetime, *,
           allow_early: bool) -> None:
    """Set every candidate's action: keep (and why), remove, too_young, blocked
    (the plan removes it, but ``outcome`` is blocked), untrusted or future_dated."""
    by_id = {candidate.backup_id: candidate for candidate in outcome.candidates}
    plan = plan_retention([Backup(c.backup_id, c.backup_id.prefix, c.backup_id.created,
                                  trusted=c.untrusted is None)
                           for c in outcome.candidates], policy, now=now)
    for backup_id, reasons in plan.uncounted.items():
        candidate = by_id[backup_id]
        candidate.uncounted = reasons
        candidate.action = (Action.UNTRUSTED if Uncounted.UNTRUSTED in reasons
                            else Action.FUTURE_DATED)
    for backup_id, rules in plan.keep.items():
        by_id[backup_id].kept_by = rules
    for backup_id in plan.remove:
        candidate = by_id[backup_id]
        candidate.early = early_deletion(candidate.storage_class, candidate.manifest.created,
                                         now, candidate.manifest.stored_bytes)
        if _in_restore(spool, backup_id):
            candidate.kept_by = ("restore",)
        elif candidate.early is not None and not allow_early:
            candidate.action = Action.TOO_YOUNG
        elif outcome.blocked:
            candidate.action = Action.BLOCKED
        else:
            candidate.action = Action.REMOVE
    _keep_chains_whole(outcome)
    outcome.candidates.sort(key=lambda c: (c.backup_id.prefix, c.backup_id.created,
                                           str(c.backup_id.ulid)), reverse=True)


def _keep_chains_whole(outcome: Outcome) -> None:
    """Keep every ancestor of a backup that stays: an incremental is worthless
    without its parents. ``kept_by`` says "parent of <ULID>" for each backup that
    needs it; the storage classes' minimum durations apply to the chain as a whole
    (a parent stays while a too-young incremental of it stays)."""
    parents = {c.backup_id: c.manifest.parent_id for c in outcome.candidates}
    by_id = {candidate.backup_id: candidate for candidate in outcome.candidates}
    staying = [c.backup_id for c in outcome.candidates if c.action in KEPT_ACTIONS]
    for ancestor, users in needed_by(staying, parents).items():
        candidate = by_id[ancestor]
        reason = tuple(f"parent of {user.ulid}" for user in users)
        if candidate.action in (Action.REMOVE, Action.BLOCKED):
            candidate.action = Action.KEEP
            candidate.early = None
            candidate.kept_by = reason
        elif candidate.action is Action.KEEP and candidate.kept_by != ("restore",):
            candidate.kept_by = (*candidate.kept_by, *reason)


def execute(opened: OpenedVault, outcome: Outcome, unfinished: dict[BackupId, VaultListing],
            journal: Journal, underway: set[BackupId]) -> None:
    """Finish interrupted deletions, then delete what the plan removes.

    Deletes nothing at all when ``outcome`` is blocked.
    """
    if outcome.blocked:
        return
    for backup_id, listing in unfinished.items():
        try:
            _delete_backup(opened, listing, journal, underway)
            outcome.finished.append(backup_id)
            logger.info("finished the interrupted deletion of %s", backup_id)
        except CryophileError as error:
            outcome.errors.append(error)
            logger.error("cannot finish deleting %s: %s", backup_id, error)
    for candidate in outcome.with_action(Action.REMOVE):
        try:
            _delete_backup(opened, candidate.listing, journal, underway)
        except CryophileError as error:
            candidate.action = Action.REFUSED if not error.transient else Action.FAILED
            candidate.error = str(error)
            outcome.errors.append(error)
            continue
        candidate.action = Action.REMOVED
        logger.info("deleted %s (%d fragment(s), %d bytes)", candidate.backup_id,
                    len(candidate.manifest.fragments), candidate.manifest.stored_bytes)


def run_prune(opened: OpenedVault, spool: Spool, request: PruneRequest) -> Outcome:
    """Plan the pruning of ``opened`` by ``request``; unless it is a dry run (or the
    view is partial), finish interrupted deletions and delete what the plan removes.

    Raises when the listing cannot be read, and DataError for an unreadable
    journal or a symlink planted in the spool; deletion errors are in the outcome.
    """
    journal = Journal(spool, opened.vault_id)
    underway = journal.load()
    outcome, unfinished = gather(opened, spool, request.prefix, underway, request.signers)
    decide(outcome, request.policy, spool, request.now,
           allow_early=request.allow_early_deletion)
    if not request.dry_run:
        execute(opened, outcome, unfinished, journal, underway)
    return outcome


# -- --abandoned --------------------------------------------------------------------------


@dataclass
class AbandonedOutcome:
    """What ``prune --abandoned`` found and did."""

    items: list[abandoned.Abandoned]
    errors: list[CryophileError] = field(default_factory=list)

    @property
    def gone(self) -> list[abandoned.Abandoned]:
        """The items removed (or, in a dry run, to be removed)."""
        return [item for item in self.items
                if item.action in (abandoned.REMOVE, abandoned.REMOVED)]


def prune_abandoned(opened: OpenedVault, spool: Spool, prefix: str | None, *,
                    dry_run: bool) -> AbandonedOutcome:
    """Remove the spool's abandoned backups of ``opened`` (below ``prefix``), vault
    objects first; an item that cannot be removed is left, with the reason."""
    outcome = AbandonedOutcome(abandoned.find(spool, opened.vault_id, prefix))
    for item in outcome.items:
        try:
            abandoned.remove(spool, opened.vault, opened.destination, item, dry_run=dry_run)
        except CryophileError as error:
            item.action, item.reason = abandoned.LEFT, str(error)
            outcome.errors.append(error)
            continue
        if item.action == abandoned.REMOVED:
            logger.info("removed abandoned backup %s: %d fragment(s) from the spool, "
                        "%d object(s) from the vault", item.backup_id, item.spool_fragments,
                        item.vault_objects)
    return outcome


# -- prune --incomplete -------------------------------------------------------------------


@dataclass
class Incomplete:
    """Objects of a backup without a manifest in the vault, and what became of them."""

    backup_id: BackupId
    objects: int
    #: When its newest object was stored (None: unknown, or it could not be read).
    newest: datetime | None = None
    action: Action = Action.REMOVE
    reason: str | None = None  # why it was left alone

    def as_json(self) -> dict[str, Any]:
        """One entry of ``prune --incomplete --json``."""
        return {**self.backup_id.as_json(), "objects": self.objects,
                "newest": rfc3339(self.newest) if self.newest is not None else None,
                "action": self.action.value, "reason": self.reason}


@dataclass
class IncompleteOutcome:
    """What ``prune --incomplete`` found and did."""

    items: list[Incomplete] = field(default_factory=list)
    errors: list[CryophileError] = field(default_factory=list)


def prune_incomplete(opened: OpenedVault, spool: Spool, prefix: str | None, *,
                     older_than: timedelta, now: datetime,
                     dry_run: bool) -> IncompleteOutcome:
    """Remove the vault's fragments of backups without a manifest (below ``prefix``)
    that no spool here claims and whose newest object is older than ``older_than``.

    Such objects are left by a host whose spool was lost mid-backup: nothing
    else will ever complete or remove them. A backup this spool still holds
    (queued, abandoned, or with an upload record) is left alone (``freeze`` or
    ``prune --abandoned`` deal with it); so is one whose newest object is
    younger than ``older_than``, which another host may still be uploading,
    and one whose objects' ages the vault does not tell. A listing that cannot
    be read raises, with nothing deleted.
    """
    try:
        listings = list_vault(opened.vault, opened.vault_id, prefix)
    except CryophileError as error:
        raise type(error)(f"cannot list vault {opened.vault_id}: {error}; prune deleted "
                          "nothing") from error
    records = UploadRecords(spool)
    outcome = IncompleteOutcome()
    for backup_id, listing in sorted(listings.items(), key=lambda item: str(item[0])):
        if listing.has_manifest or not within(backup_id.prefix, prefix):
            continue
        keys = listing.object_keys()
        item = Incomplete(backup_id, len(keys))
        outcome.items.append(item)
        try:
            _judge_incomplete(opened, spool, records, item, keys, older_than, now)
            if item.action is Action.REMOVE and not dry_run:
                if opened.vault.stat(backup_id.manifest_key) is not None:
                    item.action, item.reason = Action.KEEP, "its manifest arrived meanwhile"
                    continue
                for key in keys:
                    opened.vault.delete(key)
                item.action = Action.REMOVED
                logger.info("removed %d object(s) of incomplete backup %s", len(keys),
                            backup_id)
        except CryophileError as error:
            item.action, item.reason = Action.KEEP, str(error)
            outcome.errors.append(error)
    return outcome


def _judge_incomplete(opened: OpenedVault, spool: Spool, records: UploadRecords,
                      item: Incomplete, keys: list[str], older_than: timedelta,
                      now: datetime) -> None:
    backup_id = item.backup_id
    if (spool.backup_dir(Queue.BACKUP, backup_id).exists()
            or spool.backup_dir(Queue.FREEZE, backup_id).exists()
            or records.load(backup_id) is not None):
        item.action = Action.KEEP
        item.reason = ("this spool is still working on it (see 'cryophile status'; "
                       "'prune --abandoned' removes it if its writer died)")
        return
    stamps = []
    for key in keys:
        info = opened.vault.stat(key)
        if info is None:
            continue  # gone since the listing
        if info.modified is None:
            item.action, item.reason = Action.KEEP, f"the vault does not say when {key} was stored"
            return
        stamps.append(info.modified)
    item.newest = max(stamps, default=None)
    if item.newest is not None and now - item.newest < older_than:
        item.action = Action.KEEP
        item.reason = (f"its newest object was stored {rfc3339(item.newest)}, less than "
                       f"--older-than ago: an upload may still be running")

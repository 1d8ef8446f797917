"""Incremental chains: which backups an incremental stream needs, back to its full one.

A backup made with ``backup --parent`` records its parent's ULID in its
manifest (:attr:`cryophile.manifest.Manifest.parent`; same vault and prefix).
Its stream is worthless without every stream before it, so ``prune`` keeps the
ancestors of every backup it keeps, ``list`` shows each chain, and ``restore
--chain`` replays it oldest first.

The functions here are pure: they take ``parents``, a mapping from each known
backup to its parent (None for a full backup), as read from the manifests. A
manifest is data from storage we do not trust, so a chain that loops or names
a parent that is not there is reported, never followed forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryophile.backup_id import BackupId, parse_timestamp, parse_ulid, ulid_for_timestamp
from cryophile.errors import DataError, TryLaterError, UsageError
from cryophile.inventory import BackupState, Entry, Inventory

#: A backup in these states was completed: it can be a parent.
COMPLETE_STATES = frozenset({BackupState.QUEUED, BackupState.PARTLY_FROZEN,
                             BackupState.FROZEN, BackupState.RESTORED,
                             BackupState.THAW_REQUESTED, BackupState.THAWING})
#: A backup in these states never finished: ``latest`` passes over it.
UNFINISHED_STATES = frozenset({BackupState.WRITING, BackupState.INCOMPLETE})
LATEST = "latest"

Parents = Mapping[BackupId, BackupId | None]


@dataclass(frozen=True)
class Chain:
    """The backups one backup needs, oldest (the full one) first, ending with it.

    ``missing`` is the first ancestor that is not among the known backups (deleted,
    incomplete, unreadable): then ``links`` starts at the backup that names it, and
    the chain cannot be restored. ``loop`` is True when the parents loop back (a
    damaged or forged manifest).
    """

    links: tuple[BackupId, ...]
    missing: BackupId | None = None
    loop: bool = False

    @property
    def whole(self) -> bool:
        """Every link back to a full backup is there."""
        return self.missing is None and not self.loop

    @property
    def depth(self) -> int:
        """0 for a full backup, 1 for its first incremental, …"""
        return len(self.links) - 1

    def problem(self) -> str | None:
        """Why the chain cannot be restored, in words, or None."""
        if self.loop:
            return f"the parents of {self.links[-1]} loop back on themselves"
        if self.missing is not None:
            return (f"{self.links[0]} needs its parent {self.missing.ulid}, which is not a "
                    "complete backup in the vault")
        return None


def chain_of(backup_id: BackupId, parents: Parents) -> Chain:
    """The chain of ``backup_id`` (which must be in ``parents``)."""
    links = [backup_id]
    seen = {backup_id}
    current = parents[backup_id]
    while current is not None:
        if current in seen:
            return Chain(tuple(reversed(links)), loop=True)
        if current not in parents:
            return Chain(tuple(reversed(links)), missing=current)
        links.append(current)
        seen.add(current)
        current = parents[current]
    return Chain(tuple(reversed(links)))


def whole_chain(backup_id: BackupId, parents: Parents) -> tuple[BackupId, ...]:
    """The links of a chain that can be restored; DataError saying why it cannot."""
    chain = chain_of(backup_id, parents)
    problem = chain.problem()
    if problem is not None:
        raise DataError(f"cannot restore the chain of {backup_id}: {problem}")
    return chain.links


def needed_by(kept: Iterable[BackupId], parents: Parents) -> dict[BackupId, tuple[BackupId, ...]]:
    """Every ancestor of a ``kept`` backup, with the kept backups that need it
    (sorted by id): what prune must keep so that no kept chain breaks."""
    needs: dict[BackupId, set[BackupId]] = {}
    for backup_id in kept:
        for ancestor in chain_of(backup_id, parents).links[:-1]:
            needs.setdefault(ancestor, set()).add(backup_id)
    return {ancestor: tuple(sorted(users, key=str)) for ancestor, users in needs.items()}


def children_of(parents: Parents) -> dict[BackupId, list[BackupId]]:
    """Each backup's direct incrementals, oldest first (for ``list --tree``)."""
    children: dict[BackupId, list[BackupId]] = {}
    for backup_id, parent in parents.items():
        if parent is not None:
            children.setdefault(parent, []).append(backup_id)
    for found in children.values():
        found.sort(key=lambda backup: (backup.created, str(backup.ulid)))
    return children


def pick_parent(spec: str, child: BackupId, inventory: Inventory) -> BackupId:
    """The parent ``backup --parent SPEC`` names for the new backup ``child``.

    ``spec`` is a ULID, a time as ``-t`` takes it, or ``latest`` (the newest
    backup of the same vault and prefix that was completed, older than
    ``child``). The parent must be in the same vault and prefix, older than the
    child, complete and undamaged: else UsageError saying what is wrong with it.
    When the vault could not be read, or (for ``latest``) one of the series'
    backups could not, TryLaterError: the parent cannot be checked now.
    """
    if child.vault in inventory.failures:
        raise TryLaterError(f"cannot check the parent of {child}: vault {child.vault} "
                            f"cannot be read: {inventory.failures[child.vault]}")
    series = [entry for entry in inventory.entries
              if entry.backup_id.vault == child.vault
              and entry.backup_id.prefix == child.prefix and entry.backup_id != child]
    if spec == LATEST:
        return _latest(child, series)
    try:
        ulid = parse_ulid(spec)
    except UsageError:
        try:
            ulid = ulid_for_timestamp(parse_timestamp(spec))
        except UsageError:
            raise UsageError(f"--parent {spec!r} is neither a ULID, a time (as -t takes "
                             "it) nor 'latest'") from None
    wanted = BackupId(child.vault, child.prefix, ulid)
    found = next((entry for entry in series if entry.backup_id == wanted), None)
    if found is None:
        raise UsageError(f"--parent: no backup {wanted} in the spool or the vault (a chain "
                         "stays in one vault and prefix; `cryophile list` shows them)")
    _check_usable(found, child)
    return wanted


def _latest(child: BackupId, series: list[Entry]) -> BackupId:
    older = sorted((entry for entry in series
                    if (entry.backup_id.created, str(entry.backup_id.ulid))
                    < (child.created, str(child.ulid))),
                   key=lambda entry: (entry.backup_id.created, str(entry.backup_id.ulid)))
    unreadable = [entry for entry in older if entry.state is BackupState.UNREADABLE]
    if unreadable:
        raise TryLaterError(f"--parent latest: cannot tell which backup of "
                            f"{child.vault}/{child.prefix} is the latest: "
                            f"{unreadable[-1].backup_id} cannot be read now "
                            f"({unreadable[-1].error})")
    finished = [entry for entry in older if entry.state not in UNFINISHED_STATES]
    if not finished:
        raise UsageError(f"--parent latest: {child.vault}/{child.prefix or '(no prefix)'} has "
                         "no complete backup older than this one; make a full backup first "
                         "(without --parent)")
    _check_usable(finished[-1], child)
    return finished[-1].backup_id


def _check_usable(entry: Entry, child: BackupId) -> None:
    parent = entry.backup_id
    if (parent.created, str(parent.ulid)) >= (child.created, str(child.ulid)):
        raise UsageError(f"--parent {parent.ulid} is not older than the new backup "
                         f"{child.ulid}: a parent comes first")
    if entry.state not in COMPLETE_STATES:
        why = f": {entry.error}" if entry.error else ""
        raise UsageError(f"--parent {parent} is {entry.state.value}{why}; only a complete, "
                         "undamaged backup can be a parent (cryophile verify checks one)")

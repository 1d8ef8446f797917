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

from cryophile.backup_id import BackupId
from cryophile.errors import DataError

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

"""Which backup ``restore --latest`` and ``restore --label KEY=VALUE`` name.

Both look at the inventory (:mod:`cryophile.inventory`: the spool and the
vault, manifests only) of one vault:

- ``--latest``: the newest backup of exactly ``-p PREFIX`` (by its own time,
  as ``list`` and ``prune`` order them) that can be restored: complete, in
  the vault or already whole in the restore queue, not damaged. A newer one
  that is passed over (still being written, only queued for upload, damaged)
  is said, never silently skipped; a newer one whose manifest cannot be read
  now makes it impossible to tell which is the latest: TryLaterError.
- ``--label``: the one backup below ``-p PREFIX`` carrying every label given.
  More than one is a usage error listing them (newest first): a label is meant
  to name one backup (``snapshot=tank/data@tue``), and restoring another one
  than the user thought is worse than asking for ``-u``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from cryophile.backup_id import BackupId
from cryophile.errors import NoInputError, TryLaterError, UsageError
from cryophile.inventory import BackupState, Entry, Inventory

#: States in which a backup restores from the vault or the restore queue.
RESTORABLE_STATES = frozenset({BackupState.FROZEN, BackupState.RESTORED,
                               BackupState.THAW_REQUESTED, BackupState.THAWING,
                               BackupState.THAW_FAILED})

#: States that say a thaw request exists: they outrank what the vault holds, so
#: the backup must still be in the vault, undamaged, to count.
THAW_STATES = frozenset({BackupState.THAW_REQUESTED, BackupState.THAWING,
                         BackupState.THAW_FAILED})

Notify = Callable[[str], None]


def _checked(inventory: Inventory, vault: uuid.UUID) -> None:
    if vault in inventory.failures:
        raise inventory.failures[vault]  # its own class: 75 when transient


def latest(inventory: Inventory, vault: uuid.UUID, prefix: str, notify: Notify) -> BackupId:
    """The backup ``--latest`` names (see the module docstring)."""
    _checked(inventory, vault)
    series = [entry for entry in inventory.entries
              if entry.backup_id.vault == vault and entry.backup_id.prefix == prefix]
    for entry in series:  # newest first
        if entry.state is BackupState.UNREADABLE:
            raise TryLaterError(f"--latest: cannot tell which backup of {vault}/"
                                f"{prefix or '(no prefix)'} is the latest: {entry.backup_id} "
                                f"cannot be read now ({entry.error})")
        if entry.state in RESTORABLE_STATES and (
                entry.state not in THAW_STATES or (entry.in_vault and entry.error is None)):
            return entry.backup_id
        notify(f"--latest passes over {entry.backup_id}: {_why_not(entry)}")
    where = f"{vault}/{prefix}" if prefix else f"{vault} (no prefix)"
    raise NoInputError(f"--latest: no backup of {where} can be restored (`cryophile list -v "
                       f"{vault}` shows them; -p names the series exactly)")


def _why_not(entry: Entry) -> str:
    if entry.state in (BackupState.QUEUED, BackupState.PARTLY_FROZEN):
        return "it is not in the vault yet (still queued for upload)"
    if entry.state in THAW_STATES and not entry.in_vault:
        return f"it is {entry.state.value} but no longer in the vault"
    why = f": {entry.error}" if entry.error else ""
    return f"it is {entry.state.value}{why}"


def labelled(inventory: Inventory, vault: uuid.UUID, prefix: str,
             labels: Sequence[tuple[str, str]]) -> BackupId:
    """The one backup ``--label`` names (see the module docstring)."""
    _checked(inventory, vault)
    wanted = dict(labels)
    found = [entry for entry in inventory.entries
             if entry.backup_id.vault == vault and entry.manifest is not None
             and all(dict(entry.manifest.labels).get(key) == value
                     for key, value in wanted.items())]
    text = " ".join(f"--label {key}={value}" for key, value in labels)
    unreadable = [entry for entry in inventory.entries
                  if entry.backup_id.vault == vault and entry.state is BackupState.UNREADABLE]
    if unreadable:
        # It might carry the label too: "one match" cannot be told now.
        raise TryLaterError(f"{text}: cannot tell which backup carries it: "
                            f"{unreadable[0].backup_id} cannot be read now "
                            f"({unreadable[0].error})")
    if not found:
        below = f" below prefix {prefix!r}" if prefix else ""
        raise NoInputError(f"{text}: no backup of vault {vault}{below} carries it (`cryophile "
                           f"list -v {vault} {text}` shows labelled backups)")
    if len(found) > 1:
        listed = ", ".join(str(entry.backup_id) for entry in found)
        raise UsageError(f"{text}: {len(found)} backups carry it ({listed}); name one with "
                         "--id, or add a label that tells them apart")
    return found[0].backup_id

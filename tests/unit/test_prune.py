"""prune.py in process: gather → decide → execute on the memory vault."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cryophile.errors import ServiceError, VaultUnavailableError
from cryophile.inventory import list_vault
from cryophile.prune import Action, Journal, PruneRequest, decide, gather, run_prune
from cryophile.retention import Policy
from cryophile.spool import Queue, Spool
from support.backups import VAULT_ID, StoredBackup, opened, store_backup
from support.memory_vault import MemoryVault

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool.open(tmp_path / "spool", create_root=True)


def three_days(vault: MemoryVault, scratch: Path) -> list[StoredBackup]:
    """One backup a day for the three days before NOW, oldest first."""
    return [store_backup(vault, scratch, NOW - timedelta(days=days)) for days in (3, 2, 1)]


def keys_of(vault: MemoryVault, stored: StoredBackup) -> list[str]:
    return list(vault.list(f"{stored.backup_id.key_prefix}/"))


def test_keep_last_removes_the_older_backups_manifest_first(spool: Spool, tmp_path: Path) -> None:
    vault = MemoryVault()
    oldest, middle, newest = three_days(vault, tmp_path / "scratch")

    outcome = run_prune(opened(vault), spool, PruneRequest(Policy(last=1), NOW))

    actions = {c.backup_id: (c.action, c.kept_by) for c in outcome.candidates}
    assert actions == {newest.backup_id: (Action.KEEP, ("last",)),
                       middle.backup_id: (Action.REMOVED, ()),
                       oldest.backup_id: (Action.REMOVED, ())}
    assert keys_of(vault, oldest) == keys_of(vault, middle) == []
    assert len(keys_of(vault, newest)) == 4
    assert not outcome.errors
    assert not Journal(spool, VAULT_ID).path.exists()


def test_a_dry_run_plans_and_deletes_nothing(spool: Spool, tmp_path: Path) -> None:
    vault = MemoryVault()
    backups = three_days(vault, tmp_path / "scratch")
    before = list(vault.list(""))

    outcome = run_prune(opened(vault), spool, PruneRequest(Policy(last=2), NOW, dry_run=True))

    assert [c.action for c in outcome.candidates] == [Action.KEEP, Action.KEEP, Action.REMOVE]
    assert outcome.candidates[-1].backup_id == backups[0].backup_id
    assert list(vault.list("")) == before


def test_an_unreadable_manifest_blocks_every_deletion(spool: Spool, tmp_path: Path) -> None:
    vault = MemoryVault()
    oldest, middle, newest = three_days(vault, tmp_path / "scratch")
    vault.damage(middle.backup_id.manifest_key, b"{not json")
    before = list(vault.list(""))

    outcome = run_prune(opened(vault), spool, PruneRequest(Policy(last=1), NOW))

    assert outcome.blocked
    assert set(outcome.unreadable) == {middle.backup_id}
    actions = {c.backup_id: c.action for c in outcome.candidates}
    assert actions == {newest.backup_id: Action.KEEP, oldest.backup_id: Action.BLOCKED}
    assert list(vault.list("")) == before


def test_a_backup_being_restored_is_kept(spool: Spool, tmp_path: Path) -> None:
    vault = MemoryVault()
    oldest, _, _ = three_days(vault, tmp_path / "scratch")
    spool.backup_dir(Queue.THAW, oldest.backup_id).mkdir(parents=True)

    outcome, _ = gather(opened(vault), spool, None, set())
    decide(outcome, Policy(last=1), spool, NOW, allow_early=False)

    kept = {c.backup_id: c.kept_by for c in outcome.candidates if c.action is Action.KEEP}
    assert kept[oldest.backup_id] == ("restore",)


def test_glacier_backups_younger_than_90_days_are_too_young(spool: Spool,
                                                             tmp_path: Path) -> None:
    vault = MemoryVault()
    for days in (2, 1):
        store_backup(vault, tmp_path / "scratch", NOW - timedelta(days=days),
                     storage_class="GLACIER")

    outcome = run_prune(opened(vault), spool, PruneRequest(Policy(last=1), NOW))
    [older] = outcome.with_action(Action.TOO_YOUNG)
    assert older.early is not None
    assert older.early.minimum_days == 90
    assert len(list(vault.list(""))) == 8  # nothing deleted

    allowed = run_prune(opened(vault), spool,
                        PruneRequest(Policy(last=1), NOW, allow_early_deletion=True))
    assert [c.backup_id for c in allowed.with_action(Action.REMOVED)] == [older.backup_id]


class RefusingVault(MemoryVault):
    """Deletes nothing: object lock (permanent) or an outage (transient)."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__()
        self.error = error

    def delete(self, key: str) -> None:
        raise self.error


@pytest.mark.parametrize(("error", "action"), [
    (ServiceError("AccessDenied: object lock"), Action.REFUSED),
    (VaultUnavailableError("connection refused"), Action.FAILED),
])
def test_a_refused_delete_is_reported_and_the_journal_remembers_it(
        spool: Spool, tmp_path: Path, error: ServiceError, action: Action) -> None:
    vault = RefusingVault(error)
    oldest, _ = (store_backup(vault, tmp_path / "scratch", NOW - timedelta(days=d))
                 for d in (2, 1))

    outcome = run_prune(opened(vault), spool, PruneRequest(Policy(last=1), NOW))

    [failed] = outcome.with_action(action)
    assert failed.backup_id == oldest.backup_id
    assert failed.error is not None
    assert str(error) in failed.error
    assert outcome.errors == [error]
    assert len(keys_of(vault, oldest)) == 4
    # The deletion had begun: the next prune finishes it even if the manifest went.
    assert Journal(spool, VAULT_ID).load() == {oldest.backup_id}


def test_the_next_prune_finishes_an_interrupted_deletion(spool: Spool, tmp_path: Path) -> None:
    vault = MemoryVault()
    interrupted = store_backup(vault, tmp_path / "scratch", NOW - timedelta(days=5),
                               with_manifest=False)
    abandoned = store_backup(vault, tmp_path / "scratch", NOW - timedelta(days=4),
                             prefix="hosts/db2", with_manifest=False)
    Journal(spool, VAULT_ID).save({interrupted.backup_id})

    outcome = run_prune(opened(vault), spool, PruneRequest(Policy(last=1), NOW))

    assert outcome.finished == [interrupted.backup_id]
    # An upload without a manifest that no prune began is left alone.
    assert outcome.incomplete == [abandoned.backup_id]
    assert set(list_vault(vault, VAULT_ID)) == {abandoned.backup_id}
    assert Journal(spool, VAULT_ID).load() == set()

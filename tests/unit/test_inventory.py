"""inventory.py in process: what the vault says of a backup, and how that combines
with what the spool says (combine)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryophile.inventory import (
    BackupState,
    FreezeRecord,
    RestoreRecord,
    SpoolRecord,
    ThawRecord,
    VaultRecord,
    combine,
    describe_in_vault,
    list_vault,
)
from support.backups import VAULT_ID, StoredBackup, opened, put_bytes, store_backup
from support.memory_vault import MemoryVault

CREATED = datetime(2026, 11, 30, 3, tzinfo=UTC)


def stored_record(vault: MemoryVault, stored: StoredBackup, scratch: Path) -> VaultRecord:
    listing = list_vault(vault, VAULT_ID)[stored.backup_id]
    return describe_in_vault(opened(vault), listing, scratch)


def test_a_complete_backup_in_the_vault_is_frozen(tmp_path: Path) -> None:
    vault = MemoryVault()
    stored = store_backup(vault, tmp_path, CREATED, storage_class="GLACIER")
    record = stored_record(vault, stored, tmp_path)

    entry = combine(stored.backup_id, None, record)

    assert (entry.state, entry.in_vault, entry.error) == (BackupState.FROZEN, True, None)
    assert entry.manifest == stored.manifest
    assert entry.storage_class == "GLACIER"  # fragment 1's class, no restore needed to say it
    assert entry.as_json()["stored_bytes"] == sum(len(data) for data in stored.fragments)
    assert vault.restore_requests == []


def test_a_fragment_missing_from_the_vault_makes_it_damaged(tmp_path: Path) -> None:
    vault = MemoryVault()
    stored = store_backup(vault, tmp_path, CREATED)
    vault.delete(stored.backup_id.object_key(2))

    entry = combine(stored.backup_id, None, stored_record(vault, stored, tmp_path))

    assert entry.state is BackupState.DAMAGED
    assert entry.error is not None
    assert "fragment(s) 2 missing" in entry.error


def test_an_archived_manifest_makes_it_unreadable_not_the_vault(tmp_path: Path) -> None:
    vault = MemoryVault()
    stored = store_backup(vault, tmp_path, CREATED, with_manifest=False)
    # A lifecycle rule moved the manifest to GLACIER.
    put_bytes(vault, tmp_path, stored.backup_id.manifest_key, stored.manifest.to_json(),
              "GLACIER")

    entry = combine(stored.backup_id, None, stored_record(vault, stored, tmp_path))

    assert entry.state is BackupState.UNREADABLE
    assert entry.error is not None
    assert "cryophile keeps manifests in STANDARD" in entry.error


def test_fragments_without_a_manifest_and_nothing_local_are_incomplete(tmp_path: Path) -> None:
    vault = MemoryVault()
    stored = store_backup(vault, tmp_path, CREATED, with_manifest=False)

    entry = combine(stored.backup_id, None, stored_record(vault, stored, tmp_path))

    assert (entry.state, entry.in_vault) == (BackupState.INCOMPLETE, False)
    assert entry.error is not None
    assert "upload in progress or abandoned" in entry.error


def test_a_queued_backup_still_uploading_is_partly_frozen(tmp_path: Path) -> None:
    vault = MemoryVault()
    stored = store_backup(vault, tmp_path, CREATED, with_manifest=False)
    local = SpoolRecord(stored.backup_id,
                        freeze=FreezeRecord(stored.manifest, fragments_waiting=1,
                                            bytes_waiting=300))

    entry = combine(stored.backup_id, local, stored_record(vault, stored, tmp_path))

    # The spool's word on the upload beats "no manifest in the vault".
    assert entry.state is BackupState.PARTLY_FROZEN
    assert entry.queues == ("freeze",)
    assert entry.manifest == stored.manifest


def test_restored_locally_wins_over_frozen(tmp_path: Path) -> None:
    vault = MemoryVault()
    stored = store_backup(vault, tmp_path, CREATED)
    thaw = ThawRecord("done", None, "Bulk", 1, None, 3, {})
    local = SpoolRecord(stored.backup_id, thaw=thaw,
                        restore=RestoreRecord(stored.manifest, fragments_present=3, bytes=2300))

    entry = combine(stored.backup_id, local, stored_record(vault, stored, tmp_path))

    assert entry.state is BackupState.RESTORED
    assert entry.in_vault
    assert entry.queues == ("thaw", "restore")


def test_a_failed_thaw_is_reported_with_its_error(tmp_path: Path) -> None:
    vault = MemoryVault()
    stored = store_backup(vault, tmp_path, CREATED)
    thaw = ThawRecord("failed", "fragment 2: SHA-256 mismatch", "Bulk", 1, None, 3, {})

    entry = combine(stored.backup_id, SpoolRecord(stored.backup_id, thaw=thaw),
                    stored_record(vault, stored, tmp_path))

    assert entry.state is BackupState.THAW_FAILED
    assert entry.error == "fragment 2: SHA-256 mismatch"

"""catalog.py in process: reading manifests and signatures from a vault."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cryophile.catalog import fetch_manifest, fetch_signature
from cryophile.errors import DataError, NoInputError, TryLaterError
from cryophile.manifest import MAX_SIGNATURE_BYTES
from support.backups import opened, put_bytes, store_backup
from support.memory_vault import MemoryVault

CREATED = datetime(2026, 11, 30, 3, tzinfo=UTC)


def test_the_manifest_and_its_bytes_as_stored(tmp_path: Path) -> None:
    vault = MemoryVault()
    stored = store_backup(vault, tmp_path, CREATED)

    manifest, data = fetch_manifest(opened(vault), stored.backup_id, tmp_path)

    assert manifest == stored.manifest
    assert data == vault.content(stored.backup_id.manifest_key)
    assert list(tmp_path.iterdir()) == []  # no scratch file left


def test_no_manifest_is_no_input(tmp_path: Path) -> None:
    vault = MemoryVault()
    stored = store_backup(vault, tmp_path, CREATED, with_manifest=False)
    with pytest.raises(NoInputError, match="no manifest there"):
        fetch_manifest(opened(vault), stored.backup_id, tmp_path)


def test_an_archived_manifest_says_how_to_get_it_back(tmp_path: Path) -> None:
    vault = MemoryVault()
    stored = store_backup(vault, tmp_path, CREATED, with_manifest=False)
    put_bytes(vault, tmp_path, stored.backup_id.manifest_key, stored.manifest.to_json(),
              "DEEP_ARCHIVE")

    with pytest.raises(TryLaterError, match=r"in DEEP_ARCHIVE .*restore it .*copy it back"):
        fetch_manifest(opened(vault), stored.backup_id, tmp_path)
    assert vault.restore_requests == []


def test_a_manifest_of_another_backup_is_damage(tmp_path: Path) -> None:
    vault = MemoryVault()
    stored = store_backup(vault, tmp_path, CREATED)
    other = store_backup(vault, tmp_path, CREATED, prefix="hosts/db2", with_manifest=False)
    put_bytes(vault, tmp_path, other.backup_id.manifest_key, stored.manifest.to_json())

    with pytest.raises(DataError, match="describes backup"):
        fetch_manifest(opened(vault), other.backup_id, tmp_path)


def test_signatures(tmp_path: Path) -> None:
    vault = MemoryVault()
    stored = store_backup(vault, tmp_path, CREATED)
    assert fetch_signature(opened(vault), stored.backup_id, tmp_path) is None

    put_bytes(vault, tmp_path, stored.backup_id.signature_key, b"-----BEGIN PGP SIGNATURE")
    assert fetch_signature(opened(vault), stored.backup_id,
                           tmp_path) == b"-----BEGIN PGP SIGNATURE"

    vault.delete(stored.backup_id.signature_key)
    put_bytes(vault, tmp_path, stored.backup_id.signature_key,
              b"x" * (MAX_SIGNATURE_BYTES + 1))
    with pytest.raises(DataError, match="not a signature"):
        fetch_signature(opened(vault), stored.backup_id, tmp_path)

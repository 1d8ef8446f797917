"""verification.py in process: the Verifier's metadata and download depths on the
memory vault (decryption is proven end to end, through the CLI)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cryophile.errors import ExitCode
from cryophile.verification import Verifier
from support.backups import StoredBackup, opened, store_backup
from support.memory_vault import MemoryVault

CREATED = datetime(2026, 11, 30, 3, tzinfo=UTC)


@pytest.fixture
def vault() -> MemoryVault:
    return MemoryVault()


@pytest.fixture
def stored(vault: MemoryVault, tmp_path: Path) -> StoredBackup:
    return store_backup(vault, tmp_path / "upload", CREATED)


def verify(vault: MemoryVault, stored: StoredBackup, scratch: Path, *, download: bool) -> Verifier:
    scratch.mkdir(exist_ok=True)
    return Verifier(opened(vault), scratch, download=download)


@pytest.mark.parametrize("download", [False, True], ids=["metadata", "download"])
def test_a_healthy_backup(vault: MemoryVault, stored: StoredBackup, tmp_path: Path,
                          download: bool) -> None:
    report = verify(vault, stored, tmp_path / "s", download=download).verify(stored.backup_id)

    assert report.exit_code is ExitCode.OK
    assert report.findings == []
    assert report.downloaded == (3 if download else 0)
    assert report.describe().startswith(f"{stored.backup_id}: healthy: 3 fragment(s)")


def test_a_missing_fragment_is_damage_named_by_index(vault: MemoryVault, stored: StoredBackup,
                                                     tmp_path: Path) -> None:
    vault.delete(stored.backup_id.object_key(3))

    report = verify(vault, stored, tmp_path / "s", download=False).verify(stored.backup_id)

    assert report.exit_code is ExitCode.DATAERR
    [finding] = report.findings
    assert (finding.index, finding.damaged) == (3, True)
    assert "missing from the vault" in finding.message
    assert "DAMAGED" in report.describe()


def test_damage_at_rest_is_found_by_downloading_only(vault: MemoryVault, stored: StoredBackup,
                                                     tmp_path: Path) -> None:
    key = stored.backup_id.object_key(2)
    data = stored.fragments[1]
    vault.damage(key, data[:-1] + bytes([data[-1] ^ 1]))

    # The vault's metadata still says the right size and SHA-256 ...
    metadata = verify(vault, stored, tmp_path / "m", download=False).verify(stored.backup_id)
    assert metadata.exit_code is ExitCode.OK
    # ... the bytes do not.
    report = verify(vault, stored, tmp_path / "d", download=True).verify(stored.backup_id)
    assert report.exit_code is ExitCode.DATAERR
    assert [(f.index, f.damaged) for f in report.findings] == [(2, True)]
    assert report.downloaded == 2


def test_archived_fragments_are_not_checkable_now(vault: MemoryVault, tmp_path: Path) -> None:
    stored = store_backup(vault, tmp_path / "upload", CREATED, storage_class="GLACIER")

    metadata = verify(vault, stored, tmp_path / "m", download=False).verify(stored.backup_id)
    assert metadata.exit_code is ExitCode.OK  # size and SHA-256 need no restore
    report = verify(vault, stored, tmp_path / "d", download=True).verify(stored.backup_id)
    assert report.exit_code is ExitCode.TEMPFAIL
    assert [(f.index, f.damaged) for f in report.findings] == [(1, False), (2, False),
                                                               (3, False)]
    assert "thaw it first" in report.findings[0].message
    assert vault.restore_requests == []  # verify never asks for a restore


def test_a_damaged_manifest(vault: MemoryVault, stored: StoredBackup, tmp_path: Path) -> None:
    vault.damage(stored.backup_id.manifest_key, b'{"format": "something else"}')

    report = verify(vault, stored, tmp_path / "s", download=False).verify(stored.backup_id)

    assert report.exit_code is ExitCode.DATAERR
    assert report.manifest is None
    assert [(f.index, f.damaged) for f in report.findings] == [(0, True)]

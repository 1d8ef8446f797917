"""Thaw from a directory vault in process: a fragment arrives in the restore queue as a
hard link to the vault's file (issue 14: no copy, no fsync of data), or as a copy
checked in the same pass on another file system; restore still verifies it.

Restore's own check of a linked fragment is proven in process here
(``read_fragments``) and end to end in tests/e2e/test_freeze_thaw_local.py.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cryophile import thaw_request
from cryophile.backup_id import fragment_name
from cryophile.daemons import thaw
from cryophile.errors import DataError, NoInputError
from cryophile.pipeline.fragments import read_fragments
from cryophile.spool import Queue, Spool
from cryophile.vault.local import DirectoryVault
from support.backups import StoredBackup, opened, store_backup

CREATED = datetime(2026, 11, 30, 3, tzinfo=UTC)
SHM = Path("/dev/shm")


def make_spool(root: Path) -> Spool:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Spool.open(root, create_root=True)


def store(vault: DirectoryVault, scratch: Path) -> StoredBackup:
    """A backup stored as freeze stores it: from 0600 spool files."""
    old = os.umask(0o077)
    try:
        return store_backup(vault, scratch, CREATED)
    finally:
        os.umask(old)


def thaw_once(spool: Spool, vault: DirectoryVault, stored: StoredBackup) -> Path:
    """File a request for ``stored`` and serve it with one thaw pass; the restore queue."""
    thaw_request.file_request(spool, stored.backup_id, tier="Bulk", days=1)
    errors = thaw.Thawer(spool, lambda _id: opened(vault)).run_pass()
    assert errors == {}
    return spool.backup_dir(Queue.RESTORE, stored.backup_id)


def object_path(vault: DirectoryVault, stored: StoredBackup, index: int) -> Path:
    return vault.root / stored.backup_id.object_key(index)


def restored_bytes(directory: Path, stored: StoredBackup) -> bytes:
    def present(path: Path) -> None:
        assert path.exists()
    return b"".join(read_fragments(directory, stored.manifest, present))


def test_same_file_system_links_the_vault_file_and_restore_reads_it(tmp_path: Path) -> None:
    vault = DirectoryVault(tmp_path / "vault", create=True)
    stored = store(vault, tmp_path / "scratch")
    spool = make_spool(tmp_path / "spool")

    directory = thaw_once(spool, vault, stored)

    for index in (1, 2, 3):
        queued = directory / fragment_name(index)
        assert queued.stat().st_ino == object_path(vault, stored, index).stat().st_ino
        assert oct(queued.stat().st_mode & 0o777) == "0o600"
    assert restored_bytes(directory, stored) == b"".join(stored.fragments)
    # Nothing is left under a temporary name, and the request is closed.
    assert not thaw_request.request_dir(spool, stored.backup_id).exists()
    # Consuming the restore queue leaves the vault's objects as they were.
    for index in (1, 2, 3):
        (directory / fragment_name(index)).unlink()
        data = object_path(vault, stored, index).read_bytes()
        assert data == stored.fragments[index - 1]


def test_a_linked_fragment_damaged_in_the_vault_is_refused_by_restore(tmp_path: Path) -> None:
    vault = DirectoryVault(tmp_path / "vault", create=True)
    stored = store(vault, tmp_path / "scratch")
    target = object_path(vault, stored, 2)
    with target.open("r+b") as damaged:  # bit rot in place: the sidecar still agrees
        damaged.seek(10)
        byte = damaged.read(1)
        damaged.seek(10)
        damaged.write(bytes([byte[0] ^ 0x01]))
    spool = make_spool(tmp_path / "spool")

    directory = thaw_once(spool, vault, stored)

    released = bytearray()

    def consume() -> None:
        for block in read_fragments(directory, stored.manifest, lambda _path: None):
            released.extend(block)

    with pytest.raises(DataError, match=r"fragment 2 of 3 .* damaged"):
        consume()
    # Fragment 1 is fine and was released; nothing of fragment 2 was.
    assert bytes(released) == stored.fragments[0]


def test_a_crash_before_publishing_leaves_nothing_visible_and_the_next_pass_finishes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vault = DirectoryVault(tmp_path / "vault", create=True)
    stored = store(vault, tmp_path / "scratch")
    spool = make_spool(tmp_path / "spool")
    thaw_request.file_request(spool, stored.backup_id, tier="Bulk", days=1)

    def crash(part: Path, final: Path) -> None:
        raise OSError(5, "Input/output error (simulated crash)", str(final))

    monkeypatch.setattr(thaw, "publish", crash)
    errors = thaw.Thawer(spool, lambda _id: opened(vault)).run_pass()
    assert stored.backup_id in errors
    directory = spool.backup_dir(Queue.RESTORE, stored.backup_id)
    assert sorted(path.name for path in directory.iterdir()) == ["chunk.0"]
    monkeypatch.undo()

    assert thaw.Thawer(spool, lambda _id: opened(vault)).run_pass() == {}
    assert restored_bytes(directory, stored) == b"".join(stored.fragments)
    # The leftover link under the temporary name went, the vault's files stayed whole.
    assert not thaw_request.request_dir(spool, stored.backup_id).exists()
    for index in (1, 2, 3):
        assert object_path(vault, stored, index).stat().st_nlink == 2  # vault + queue
        assert hashlib.sha256(object_path(vault, stored, index).read_bytes()).hexdigest() == \
            stored.manifest.fragments[index - 1].sha256


def test_a_vault_file_with_other_permissions_is_copied_not_linked(tmp_path: Path) -> None:
    vault = DirectoryVault(tmp_path / "vault", create=True)
    stored = store(vault, tmp_path / "scratch")
    object_path(vault, stored, 1).chmod(0o644)  # copied in by hand
    spool = make_spool(tmp_path / "spool")

    directory = thaw_once(spool, vault, stored)

    queued = directory / fragment_name(1)
    assert queued.stat().st_ino != object_path(vault, stored, 1).stat().st_ino
    assert oct(queued.stat().st_mode & 0o777) == "0o600"
    assert oct(object_path(vault, stored, 1).stat().st_mode & 0o777) == "0o644"
    assert restored_bytes(directory, stored) == b"".join(stored.fragments)


@pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm, another file system")
def test_another_file_system_gets_a_checked_copy(tmp_path: Path) -> None:
    vault = DirectoryVault(tmp_path / "vault", create=True)
    stored = store(vault, tmp_path / "scratch")
    key = stored.backup_id.object_key(1)
    dest_dir = Path(os.fsdecode(SHM)) / f"cryophile-test-{os.getpid()}-{tmp_path.name}"
    dest_dir.mkdir()
    try:
        good = dest_dir / "good"
        assert vault.get_shared(key, good, sha256=stored.manifest.fragments[0].sha256) is False
        assert good.read_bytes() == stored.fragments[0]
        assert oct(good.stat().st_mode & 0o777) == "0o600"
        bad = dest_dir / "bad"
        with pytest.raises(DataError, match="damaged"):
            vault.get_shared(key, bad, sha256="0" * 64)
        assert not bad.exists()
        with pytest.raises(NoInputError):
            vault.get_shared(stored.backup_id.object_key(9), dest_dir / "none", sha256="0" * 64)
        assert not (dest_dir / "none").exists()
    finally:
        for path in dest_dir.iterdir():
            path.unlink()
        dest_dir.rmdir()

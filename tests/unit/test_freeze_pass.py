"""The freezer in process, on a directory vault, while the backup's writer runs
(``backup --freeze``, issue 14): what its writer publishes during a pass goes up in
that pass, the writer's SHA-256 is the one the vault checks, and the vault's listing
of the backup is read once, not at every pass."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cryophile.backup_id import BackupId, fragment_name, ulid_for_timestamp
from cryophile.daemons import freeze
from cryophile.errors import DataError
from cryophile.spool import BackupLock, Queue, Spool
from cryophile.uploads import UploadRecords
from cryophile.vault.local import DirectoryVault
from support.backups import VAULT_ID, opened

BACKUP = BackupId(VAULT_ID, "hosts/db1", ulid_for_timestamp(datetime(2026, 12, 1, tzinfo=UTC)))


class Recording(DirectoryVault):
    """A directory vault that counts listings and runs a hook after each put."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, create=True)
        self.listings = 0
        self.after_put: list[str] = []
        self.on_put: Callable[[str], None] = lambda _key: None

    def list(self, prefix: str) -> Iterator[str]:
        self.listings += 1
        return super().list(prefix)

    def put(self, key: str, source: Path, *, sha256: str, storage_class: str) -> None:
        super().put(key, source, sha256=sha256, storage_class=storage_class)
        self.after_put.append(key)
        self.on_put(key)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    root = tmp_path / "spool"
    root.mkdir(mode=0o700)
    return Spool.open(root, create_root=True)


@pytest.fixture
def writer(spool: Spool, tmp_path: Path) -> Iterator[BackupLock]:
    """A backup being written: claimed, its lock held, bound for the test vault."""
    lock = spool.create_backup(BACKUP)
    UploadRecords(spool).claim(BACKUP, opened(DirectoryVault(tmp_path / "vault")).destination)
    spool.backup_dir(Queue.FREEZE, BACKUP).mkdir(parents=True, exist_ok=True)
    yield lock
    lock.release()


def publish_fragment(spool: Spool, index: int, data: bytes) -> str:
    """Publish ``data`` as fragment ``index`` (0600, as the writer does); its SHA-256."""
    path = spool.backup_dir(Queue.FREEZE, BACKUP) / fragment_name(index)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    return hashlib.sha256(data).hexdigest()


def test_fragments_published_during_a_pass_go_up_in_that_pass(
        spool: Spool, writer: BackupLock, tmp_path: Path) -> None:
    vault = Recording(tmp_path / "vault")
    contents = {index: os.urandom(1000 + index) for index in (1, 2, 3)}
    publish_fragment(spool, 1, contents[1])

    def writer_goes_on(key: str) -> None:
        index = int(key.rsplit(".", 1)[1])
        if index < 3:
            publish_fragment(spool, index + 1, contents[index + 1])

    vault.on_put = writer_goes_on
    freezer = freeze.Freezer(spool, lambda _id: opened(vault), parallel=1)

    report = freezer.run_pass()

    assert report.failed == {}
    assert report.uploaded == 3
    assert BACKUP in report.waiting  # no manifest yet: not complete
    assert list(spool.backup_dir(Queue.FREEZE, BACKUP).iterdir()) == []
    for index, data in contents.items():
        assert (vault.root / BACKUP.object_key(index)).read_bytes() == data


def test_the_vault_listing_is_read_once_while_the_writer_runs(
        spool: Spool, writer: BackupLock, tmp_path: Path) -> None:
    vault = Recording(tmp_path / "vault")
    freezer = freeze.Freezer(spool, lambda _id: opened(vault))
    for index in (1, 2, 3):
        publish_fragment(spool, index, os.urandom(500))
        assert freezer.run_pass().failed == {}
    assert vault.listings == 1
    assert sorted(vault.after_put) == [BACKUP.object_key(i) for i in (1, 2, 3)]


def test_the_writers_sha256_is_used_and_a_fragment_that_differs_is_refused(
        spool: Spool, writer: BackupLock, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    vault = Recording(tmp_path / "vault")
    good = publish_fragment(spool, 1, b"what the writer wrote")
    publish_fragment(spool, 2, b"changed after it was written")
    known = {1: good, 2: hashlib.sha256(b"what the writer wrote first").hexdigest()}

    def no_hashing(_path: Path) -> str:
        raise AssertionError("the freezer read a fragment to hash it")

    monkeypatch.setattr(freeze, "sha256_of_file", no_hashing)
    freezer = freeze.Freezer(spool, lambda _id: opened(vault),
                             known_sha256=lambda backup_id, index: known.get(index))

    report = freezer.run_pass()

    assert isinstance(report.failed.get(BACKUP), DataError)
    assert "SHA-256" in str(report.failed[BACKUP])
    assert vault.stat(BACKUP.object_key(1)) is not None
    assert vault.stat(BACKUP.object_key(2)) is None
    # The fragment the vault refused stays queued, as it was.
    queued = spool.backup_dir(Queue.FREEZE, BACKUP) / fragment_name(2)
    assert queued.read_bytes() == b"changed after it was written"

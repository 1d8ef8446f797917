"""The spool: queue layout, permissions, exclusive backup ids, locks, atomic publish."""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cryophile.backup_id import BackupId, parse_ulid
from cryophile.errors import AlreadyExistsError, StorageIOError
from cryophile.spool import Queue, Spool, default_spool_root, is_being_written, publish
from cryophile.vault.local import DirectoryVault

BACKUP = BackupId(uuid.UUID("6f1c2a3b-5d4e-4f60-8a7b-9c0d1e2f3a4b"), "hosts/db1",
                  parse_ulid("01ARZ3NDEKTSV4RRFFQ69G5FAV"))


def test_open_creates_private_queues(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "new" / "spool", create_root=True)
    for queue in Queue:
        assert stat.S_IMODE(spool.queue_dir(queue).stat().st_mode) == 0o700
    with pytest.raises(StorageIOError, match="does not exist"):
        Spool.open(tmp_path / "absent", create_root=False)


def test_backup_id_is_claimed_once_and_locked(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, create_root=False)
    lock = spool.create_backup(BACKUP)
    work = spool.backup_dir(Queue.BACKUP, BACKUP)
    assert is_being_written(work / ".lock")
    with pytest.raises(AlreadyExistsError):
        spool.create_backup(BACKUP)
    lock.release()
    assert not is_being_written(work / ".lock")  # a dead writer is recognisable
    assert list(spool.backups(Queue.BACKUP)) == [BACKUP]
    assert list(spool.backups(Queue.FREEZE)) == [BACKUP]


def test_an_id_in_another_queue_is_taken(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, create_root=False)
    spool.backup_dir(Queue.RESTORE, BACKUP).mkdir(parents=True)
    with pytest.raises(AlreadyExistsError, match="restore queue"):
        spool.create_backup(BACKUP)


def test_publish_never_clobbers(tmp_path: Path) -> None:
    part, final = tmp_path / "a.part", tmp_path / "a"
    part.write_bytes(b"new")
    final.write_bytes(b"old")
    with pytest.raises(AlreadyExistsError):
        publish(part, final)
    assert final.read_bytes() == b"old"
    assert part.exists()
    final.unlink()
    publish(part, final)
    assert final.read_bytes() == b"new"
    assert not part.exists()


def test_default_root(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_spool_root({"CRYOPHILE_SPOOL": "/x"}) == Path("/x")
    assert default_spool_root({}, "/from/config") == Path("/from/config")
    if os.geteuid() == 0:
        assert default_spool_root({}) == Path("/var/spool/cryophile")
    else:
        assert default_spool_root({"XDG_STATE_HOME": "/s"}) == Path("/s/cryophile/spool")


def test_parallel_first_uploads_to_a_new_embedded_vault(tmp_path: Path) -> None:
    # freeze uploads in parallel; the embedded vault's root does not exist before.
    sources = []
    for number in range(16):
        source = tmp_path / f"source{number}"
        source.write_bytes(os.urandom(1000))
        sources.append(source)
    for attempt in range(5):
        vault = DirectoryVault(tmp_path / f"vault{attempt}" / "deep", create=True)
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(vault.put, f"p/{s.name}", s,
                                   sha256=hashlib.sha256(s.read_bytes()).hexdigest(),
                                   storage_class="STANDARD") for s in sources]
            for future in futures:
                future.result()
        assert sorted(vault.list("p/")) == sorted(f"p/{s.name}" for s in sources)


def test_scratch_is_private_to_one_user_and_gone_afterwards(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, create_root=False)
    with spool.scratch("verify") as first, spool.scratch("verify") as second:
        assert first != second  # never shared, even by two users of one purpose
        assert first.parent == spool.root
        assert first.name.startswith(".cryophile-verify-")
        assert stat.S_IMODE(first.stat().st_mode) == 0o700
        (first / "chunk.1.part").write_bytes(b"downloaded")
    assert not first.exists()
    assert not second.exists()
    kept: list[Path] = []

    def failing_command() -> None:
        with spool.scratch("prune") as third:
            kept.append(third)
            (third / "chunk.0.part").write_bytes(b"manifest")
            raise RuntimeError("the command failed")

    with pytest.raises(RuntimeError):
        failing_command()
    assert not kept[0].exists()
    # Nothing is left that a queue scan or `status` could see.
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(q.value for q in Queue)

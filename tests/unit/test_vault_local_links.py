"""A directory vault on the spool's file system stores fragments as hard links.

One read to hash instead of read + write + fsync (issue 14: backup into a directory
vault on the same disk); everything the copy guaranteed still holds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

from cryophile.errors import DataError
from cryophile.vault.local import DirectoryVault

SHM = Path("/dev/shm")


def _source(directory: Path, data: bytes) -> tuple[Path, str]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "chunk.1"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_same_file_system_stores_a_link_dated_when_the_vault_got_it(tmp_path: Path) -> None:
    source, digest = _source(tmp_path / "spool", b"ciphertext" * 1000)
    old = time.time() - 30 * 86400
    os.utime(source, (old, old))  # a fragment that waited a month in the spool
    vault = DirectoryVault(tmp_path / "vault", create=True)
    vault.put("p/U/chunk.1", source, sha256=digest, storage_class="STANDARD")
    stored = tmp_path / "vault" / "p/U/chunk.1"
    assert stored.stat().st_ino == source.stat().st_ino
    info = vault.stat("p/U/chunk.1")
    assert info is not None
    assert info.sha256 == digest
    assert info.size == 10000
    assert info.modified is not None
    assert abs(info.modified.timestamp() - time.time()) < 300
    # The spool removes its copy once stored: the vault keeps the object.
    source.unlink()
    assert stored.read_bytes() == b"ciphertext" * 1000


def test_a_source_whose_bytes_do_not_match_is_not_stored_and_stays_intact(
        tmp_path: Path) -> None:
    source, _ = _source(tmp_path / "spool", b"damaged")
    vault = DirectoryVault(tmp_path / "vault", create=True)
    with pytest.raises(DataError, match="SHA-256"):
        vault.put("p/U/chunk.1", source, sha256="0" * 64, storage_class="STANDARD")
    assert vault.stat("p/U/chunk.1") is None
    assert source.read_bytes() == b"damaged"
    assert source.stat().st_nlink == 1
    assert list((tmp_path / "vault" / ".cryophile" / "tmp").iterdir()) == []


def test_another_file_system_gets_a_copy(tmp_path: Path) -> None:
    # /dev/shm is a tmpfs on Linux hosts and containers: another file system than tmp_path's.
    assert os.stat(SHM).st_dev != os.stat(tmp_path).st_dev, "needs /dev/shm as its own tmpfs"
    source, digest = _source(tmp_path / "spool", b"other disk" * 100)
    vault_root = SHM / f"cryophile-vault-{os.getpid()}"
    try:
        vault = DirectoryVault(vault_root, create=True)
        vault.put("p/U/chunk.1", source, sha256=digest, storage_class="STANDARD")
        stored = vault_root / "p/U/chunk.1"
        assert stored.stat().st_dev != source.stat().st_dev
        assert stored.read_bytes() == b"other disk" * 100
    finally:
        shutil.rmtree(vault_root, ignore_errors=True)

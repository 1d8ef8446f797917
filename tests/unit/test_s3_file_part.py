"""The body of one multipart upload part, read from the spool file as it is sent
(issue 14: parts are no longer held in memory). botocore reads it to sign it, seeks
back, sends it, and seeks to 0 again for a retry: each must see exactly the part."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryophile.errors import StorageIOError
from cryophile.vault.s3 import _FilePart


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "chunk.1"
    path.write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    descriptor = os.open(path, os.O_RDONLY)
    yield descriptor
    os.close(descriptor)


def test_a_part_reads_only_its_range_and_rewinds_for_a_retry(fd: int) -> None:
    whole = bytes(range(256)) * 40
    part = _FilePart(fd, 4096, 4096)
    assert len(part) == 4096
    chunks = []
    while chunk := part.read(1000):
        chunks.append(chunk)
    assert b"".join(chunks) == whole[4096:8192]
    assert part.tell() == 4096
    assert part.seek(0) == 0
    assert part.read() == whole[4096:8192]  # the retry sends the same bytes
    part.seek(-10, os.SEEK_END)
    assert part.read(100) == whole[8182:8192]
    assert part.read(100) == b""
    # The last part of a file: shorter than the part size, ends at the file's end.
    last = _FilePart(fd, 8192, 2048)
    buffer = bytearray(4096)
    assert last.readinto(buffer) == 2048
    assert bytes(buffer[:2048]) == whole[8192:]


def test_a_file_that_shrank_under_a_part_is_an_error_not_a_short_part(fd: int) -> None:
    part = _FilePart(fd, 8192, 4096)  # claims more than the file holds
    assert len(part.read(2048)) == 2048
    with pytest.raises(StorageIOError, match="shrank"):
        part.read(2048)

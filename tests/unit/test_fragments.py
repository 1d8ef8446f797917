"""Splitting and joining fragments: property tests and the verified reader."""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryophile.backup_id import BackupId, parse_ulid
from cryophile.errors import AlreadyExistsError, DataError
from cryophile.manifest import Fragment, Manifest
from cryophile.pipeline.fragments import FragmentWriter, hash_pieces, read_fragments, split

blocks = st.lists(st.binary(max_size=300), max_size=30)


@given(blocks, st.integers(min_value=1, max_value=257))
def test_split_then_join_is_identity(parts: list[bytes], size: int) -> None:
    pieces = list(split(parts, size))
    fragments: dict[int, bytearray] = {}
    for piece in pieces:
        fragments.setdefault(piece.index, bytearray()).extend(piece.data)
    stream = b"".join(parts)
    assert b"".join(fragments[i] for i in sorted(fragments)) == stream
    assert sorted(fragments) == list(range(1, len(fragments) + 1))
    if not stream:
        assert pieces == []
        return
    *full, last = (fragments[i] for i in sorted(fragments))
    assert all(len(fragment) == size for fragment in full)
    assert 0 < len(last) <= size  # never an empty trailing fragment
    # Exactly one "last" piece per fragment, and it is that fragment's final piece.
    lasts = [piece.index for piece in pieces if piece.last]
    assert lasts == sorted(fragments)
    for earlier, later in itertools.pairwise(pieces):
        if earlier.index != later.index:
            assert earlier.last


@given(blocks, st.integers(min_value=1, max_value=100))
def test_hashes_are_those_of_each_fragment(parts: list[bytes], size: int) -> None:
    digests: dict[int, str] = {}
    pieces = list(hash_pieces(split(parts, size), digests))
    stream = b"".join(parts)
    expected = {i + 1: hashlib.sha256(stream[offset:offset + size]).hexdigest()
                for i, offset in enumerate(range(0, len(stream), size))}
    assert digests == expected
    assert len(pieces) >= len(expected)


def write_backup(tmp_path: Path, data: bytes, size: int) -> tuple[Path, Manifest]:
    work, queue = tmp_path / "work", tmp_path / "queue"
    work.mkdir()
    queue.mkdir()
    writer = FragmentWriter(work, queue)
    digests: dict[int, str] = {}
    writer.write(hash_pieces(split([data[i:i + 1000] for i in range(0, len(data), 1000)], size),
                             digests))
    fragments = tuple(Fragment(i, writer.sizes[i], digests[i]) for i in sorted(writer.sizes))
    backup = BackupId(uuid.uuid4(), "", parse_ulid("01ARZ3NDEKTSV4RRFFQ69G5FAV"))
    return queue, Manifest(backup, datetime.now(UTC), "none", "test", (), size, fragments)


def present(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path.name} missing")


def test_writer_publishes_complete_fragments_only(tmp_path: Path) -> None:
    data = os.urandom(10_500)
    queue, manifest = write_backup(tmp_path, data, 4096)
    assert sorted(p.name for p in queue.iterdir()) == ["chunk.1", "chunk.2", "chunk.3"]
    assert not list((tmp_path / "work").iterdir())  # no .part left
    assert [f.size for f in manifest.fragments] == [4096, 4096, 10_500 - 8192]
    assert b"".join(read_fragments(queue, manifest, present, block_size=1000)) == data


def test_reader_refuses_a_swapped_pair(tmp_path: Path) -> None:
    queue, manifest = write_backup(tmp_path, os.urandom(8192), 4096)
    (queue / "chunk.1").rename(tmp_path / "one")
    (queue / "chunk.2").rename(queue / "chunk.1")
    (tmp_path / "one").rename(queue / "chunk.2")
    reader = read_fragments(queue, manifest, present)
    with pytest.raises(DataError, match="fragment 1 of 2"):
        next(reader)


def test_reader_checks_a_fragment_before_yielding_any_of_it(tmp_path: Path) -> None:
    data = os.urandom(3 * 4096)
    queue, manifest = write_backup(tmp_path, data, 4096)
    damaged = bytearray((queue / "chunk.2").read_bytes())
    damaged[-1] ^= 1
    (queue / "chunk.2").write_bytes(bytes(damaged))
    received = bytearray()
    reader = read_fragments(queue, manifest, present, block_size=512)
    for _ in range(4096 // 512):
        received.extend(next(reader))
    with pytest.raises(DataError, match="fragment 2 of 3"):
        next(reader)  # nothing of fragment 2 comes out before the check
    assert bytes(received) == data[:4096]


def test_a_fragment_that_cannot_be_published_fails_the_write_and_leaves_no_part(
        tmp_path: Path) -> None:
    # Fragment 2's name is taken in the queue (publishing never overwrites):
    # the error names it, fragment 1 stays published, nothing half-written stays.
    work, queue = tmp_path / "work", tmp_path / "queue"
    work.mkdir()
    queue.mkdir()
    (queue / "chunk.2").write_bytes(b"somebody else's")
    writer = FragmentWriter(work, queue)
    data = os.urandom(3 * 4096 + 10)
    with pytest.raises(AlreadyExistsError, match=r"chunk\.2 already exists"):
        writer.write(split([data[i:i + 1000] for i in range(0, len(data), 1000)], 4096))
    writer.abort()
    assert not list(work.iterdir())
    assert writer.published[0] == queue / "chunk.1"
    assert (queue / "chunk.1").read_bytes() == data[:4096]
    assert (queue / "chunk.2").read_bytes() == b"somebody else's"
    # Whatever else was published is known, so the backup can take it back.
    assert set(queue.iterdir()) - {queue / "chunk.2"} == set(writer.published)


def test_a_reader_stopped_early_leaves_no_fragment_open(tmp_path: Path) -> None:
    # The next fragment is verified ahead in a thread while this one streams;
    # stopping the restore must close what that thread opened.
    queue, manifest = write_backup(tmp_path, os.urandom(5 * 4096), 4096)
    before = set(os.listdir("/proc/self/fd"))
    reader = read_fragments(queue, manifest, present, block_size=1024)
    next(reader)
    reader.close()
    assert set(os.listdir("/proc/self/fd")) == before


def test_a_damaged_next_fragment_is_refused_after_the_current_one_streamed(
        tmp_path: Path) -> None:
    queue, manifest = write_backup(tmp_path, os.urandom(2 * 4096), 4096)
    (queue / "chunk.2").write_bytes(b"x" * 4096)
    reader = read_fragments(queue, manifest, present, block_size=4096)
    assert len(next(reader)) == 4096
    with pytest.raises(DataError, match="fragment 2 of 2"):
        next(reader)

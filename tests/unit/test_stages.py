"""Pipeline plumbing: the ordered parallel map that compression runs on."""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryophile.pipeline import stages
from cryophile.pipeline.stages import ordered_map, tune_allocator


def test_results_come_in_input_order_whatever_order_the_work_finishes() -> None:
    delays = random.Random(7)

    def slow_square(value: int) -> int:
        time.sleep(delays.random() / 200)
        return value * value

    assert list(ordered_map(slow_square, range(60), workers=3, name="t")) == [
        value * value for value in range(60)]


def test_the_input_is_read_only_a_bounded_distance_ahead() -> None:
    # What bounds the memory of a backup: with 2 workers, at most 3 blocks
    # are taken from the input beyond those already handed on.
    taken = 0

    def source() -> Iterator[int]:
        nonlocal taken
        for value in range(100):
            taken += 1
            yield value

    results = ordered_map(lambda value: value, source(), workers=2, name="t")
    for handed_on in range(1, 50):
        next(results)
        assert taken - handed_on <= 3
    del results


def test_an_error_is_raised_in_order_and_stops_the_work() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def fail_on_five(value: int) -> int:
        with lock:
            started.append(value)
        if value == 5:
            raise ValueError("five")
        return value

    results = ordered_map(fail_on_five, range(1000), workers=2, name="t")
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="five"):
        next(results)
    assert max(started) < 10


def test_the_allocator_tuning_is_accepted_by_glibc() -> None:
    # mallopt answers 0 to a parameter or value it refuses (e.g. an mmap
    # threshold above its maximum): then backup and restore would silently
    # run with the page-faulting defaults.
    assert tune_allocator()


def test_a_regular_file_is_read_from_its_position_and_asked_for_ahead_of_the_reader(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # stdin may be a file already partly read, e.g. `(head -c N >/dev/null;
    # cryophile backup) < dump`: the backup starts where the file stands.
    data = random.Random(5).randbytes(3 * stages.READ_AHEAD_STEP + 12345)
    path = tmp_path / "input"
    path.write_bytes(data)
    advised: list[tuple[int, int]] = []
    real_fadvise = os.posix_fadvise

    def recording(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_WILLNEED:
            advised.append((offset, offset + length))
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recording)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 777, os.SEEK_SET)
        read = 0
        for block in stages.read_blocks(fd, 1024 * 1024):
            read += len(block)
            # Everything up to READ_AHEAD beyond what was handed out has been
            # asked for, in one contiguous run starting at the first position.
            assert advised[0][0] == 777
            assert all(end == start for (_, end), (start, _) in itertools.pairwise(advised))
            assert advised[-1][1] >= 777 + read + stages.READ_AHEAD
        assert read == len(data) - 777
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 777, os.SEEK_SET)
        assert b"".join(stages.read_blocks(fd, 1024 * 1024)) == data[777:]
    finally:
        os.close(fd)


def test_a_pipe_is_read_whole_without_read_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda *args: calls.append(args[3]))
    data = random.Random(6).randbytes(300_000)
    read_end, write_end = os.pipe()

    def produce() -> None:
        with os.fdopen(write_end, "wb") as pipe:
            for start in range(0, len(data), 4096):
                pipe.write(data[start:start + 4096])

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        blocks = list(stages.read_blocks(read_end, 128 * 1024))
    finally:
        producer.join()
        os.close(read_end)
    assert b"".join(blocks) == data
    # Blocks are filled across the pipe's short reads.
    assert [len(block) for block in blocks] == [128 * 1024, 128 * 1024, 300_000 - 256 * 1024]
    assert calls == []

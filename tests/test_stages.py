"""Pipeline plumbing: the ordered parallel map that compression runs on."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest

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

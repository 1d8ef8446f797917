"""Back-off for loops that retry: when may a thing that failed be tried again.

The freeze and thaw daemons keep one :class:`Backoff` per daemon, keyed by
backup: every failure of a key doubles its wait (from ``first`` up to
``limit``), a success forgets it. Whatever the error (transient, permanent,
a lock held by someone else, a full disk), a loop that asks :meth:`due`
before each attempt never retries a key faster than its back-off, and the
exponent is bounded, so weeks of failures never overflow (``2.0 ** 1024``
raised OverflowError and killed the freeze daemon once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)

#: Doublings after which the delay stops growing (2**30 × 1 s is decades).
MAX_DOUBLINGS = 30


@dataclass
class _Entry:
    failures: int
    due: float


class Backoff(Generic[Key]):
    """Exponential back-off per key: ``first``, ``2·first``, … up to ``limit`` seconds."""

    def __init__(self, first: float, limit: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if first <= 0 or limit < first:
            raise ValueError("back-off needs 0 < first <= limit")
        self.first = first
        self.limit = limit
        self._clock = clock
        self._entries: dict[Key, _Entry] = {}

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` failures in a row (≥ 1)."""
        doublings = min(max(failures - 1, 0), MAX_DOUBLINGS)
        return min(self.limit, self.first * float(2 ** doublings))

    def failed(self, key: Key, *, at_least: float = 0.0) -> float:
        """Record a failure of ``key``; return how long it must now wait.

        ``at_least`` raises this one wait (a poll interval that is longer).
        """
        entry = self._entries.get(key)
        failures = entry.failures + 1 if entry is not None else 1
        wait = max(self.delay(failures), min(at_least, self.limit))
        self._entries[key] = _Entry(failures, self._clock() + wait)
        return wait

    def succeeded(self, key: Key) -> None:
        """Forget ``key``'s failures."""
        self._entries.pop(key, None)

    def failures(self, key: Key) -> int:
        """Failures of ``key`` in a row so far."""
        entry = self._entries.get(key)
        return entry.failures if entry is not None else 0

    def due(self, key: Key) -> bool:
        """True when ``key`` may be tried now (never failed, or its wait is over)."""
        entry = self._entries.get(key)
        return entry is None or entry.due <= self._clock()

    def next_due_in(self, default: float) -> float:
        """Seconds until the earliest waiting key is due (``default`` when none waits)."""
        if not self._entries:
            return default
        return max(0.0, min(entry.due for entry in self._entries.values()) - self._clock())

    def keep_only(self, keys: set[Key]) -> None:
        """Forget every key not in ``keys`` (backups that left the queue)."""
        for key in [key for key in self._entries if key not in keys]:
            del self._entries[key]

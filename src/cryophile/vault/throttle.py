"""A bandwidth cap shared by every transfer of one vault (``max_bandwidth``).

Each transfer reserves its bytes before it starts: the reservation waits
until the bytes already reserved have had their time at the capped rate. The
cap therefore holds on average over every object or multipart part (at most
64 MiB each with the default thresholds), not within one request, which is
what an operator sharing an uplink needs, without a byte-level shaper of our
own in the HTTP path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Throttle:
    """Paces reservations so that they add up to at most ``bytes_per_second``."""

    def __init__(self, bytes_per_second: int,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if bytes_per_second < 1:
            raise ValueError("a bandwidth cap needs at least 1 byte per second")
        self.rate = bytes_per_second
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._free_at = 0.0

    def reserve(self, size: int) -> None:
        """Wait until ``size`` more bytes may go out, then return."""
        with self._lock:
            now = self._clock()
            start = max(now, self._free_at)
            self._free_at = start + size / self.rate
        if start > now:
            self._sleep(start - now)

"""Running a daemon loop until SIGTERM/SIGINT, shared by ``freeze`` and ``thaw``.

The first signal asks the loop to stop after the transfers in flight (the
loop watches the event); a second one interrupts at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger(__name__)


def serve_until_signalled(name: str, loop: Callable[[threading.Event], None]) -> None:
    """Run ``loop(stop)`` with SIGTERM/SIGINT setting ``stop``; restore the handlers after."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        del frame
        if stop.is_set():
            raise KeyboardInterrupt  # a second signal: stop now
        logger.info("%s: signal %d, stopping after the transfers in flight", name, signum)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        logger.info("%s daemon started", name)
        loop(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("%s daemon stopped", name)

"""What ``freeze`` and ``thaw`` share: their common options, the exit code of a
``--once`` pass, and running the daemon loop until SIGTERM/SIGINT.

The first signal asks the loop to stop after the transfers in flight (the
loop watches the event); a second one interrupts at once.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
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
        loop(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("%s daemon stopped", name)


def add_daemon_options(parser: argparse.ArgumentParser) -> None:
    """``--metrics FILE`` and ``--json`` (and the daemons' default log level: info)."""
    parser.add_argument("--metrics", type=Path, metavar="FILE",
                        help="after every pass, write Prometheus metrics to FILE (node_exporter "
                             "textfile format; default: metrics_file from the configuration)")
    parser.add_argument("--json", dest="json_logs", action="store_true",
                        help="log one JSON object per line (for machines)")
    parser.set_defaults(default_log_level=logging.INFO)

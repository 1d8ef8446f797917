"""A progress line on stderr for backup and restore.

Shown when stderr is a terminal (or with ``--progress``), never otherwise: a
cron job's mail and a pipeline's log stay clean. A thread redraws one line
about twice a second from the job's :class:`~cryophile.pipeline.stages.Counters`
and erases it at the end, so the final summary stands alone.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TextIO

from cryophile.pipeline.stages import Counters
from cryophile.units import human_bytes

REFRESH_SECONDS = 0.5


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress`` (default: on when stderr is a terminal)."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress line on stderr (default: when it is a terminal)")


def backup_line(counters: Counters, elapsed: float) -> str:
    """``1.2 GiB in → 800.0 MiB stored (1.50×), 3 fragment(s), 180.0 MiB/s, 7 s``, and
    ``, waiting for upload: spool 47.9/48.0 MiB`` while the backup waits for uploads."""
    ratio = counters.bytes_in / counters.bytes_out if counters.bytes_out else 0.0
    rate = counters.bytes_in / elapsed if elapsed > 0 else 0.0
    line = (f"{human_bytes(counters.bytes_in)} in → {human_bytes(counters.bytes_out)} stored "
            f"({ratio:.2f}×), {counters.fragments} fragment(s), {human_bytes(rate)}/s, "
            f"{elapsed:.0f} s")
    if counters.waiting_for:
        # "waiting for upload: spool 47.9/48.0 MiB" (backpressure)
        line += f", {counters.waiting_for}"
    return line


def restore_line(counters: Counters, elapsed: float) -> str:
    """``fragment 2/5, 1.1 GiB out, 300.0 MiB/s, 4 s, waiting for chunk.3``."""
    rate = counters.bytes_out / elapsed if elapsed > 0 else 0.0
    total = counters.fragments_total or "?"
    line = (f"fragment {counters.fragments}/{total}, {human_bytes(counters.bytes_out)} out, "
            f"{human_bytes(rate)}/s, {elapsed:.0f} s")
    if counters.waiting_for:
        line += f", waiting for {counters.waiting_for} (thaw)"
    return line


@contextlib.contextmanager
def progress_line(counters: Counters, stream: TextIO, enabled: bool | None, *,
                  kind: str) -> Iterator[None]:
    """Show ``kind`` ("backup" or "restore") progress on ``stream`` while the block runs."""
    if enabled is None:
        enabled = stream.isatty()
    if not enabled:
        yield
        return
    format_line = backup_line if kind == "backup" else restore_line
    started = time.monotonic()
    stop = threading.Event()

    def draw() -> None:
        while True:
            stream.write(f"\r\x1b[K{format_line(counters, time.monotonic() - started)}")
            stream.flush()
            if stop.wait(REFRESH_SECONDS):
                return

    ticker = threading.Thread(target=draw, name="progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        stream.write("\r\x1b[K")
        stream.flush()

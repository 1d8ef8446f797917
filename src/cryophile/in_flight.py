"""The uploads a freeze process runs now, published for ``status``.

``SPOOL/run/uploading.json`` (``Spool.in_flight_path``)::

    {"pid": 4242, "uploads": [{"key": "...", "bytes": 16777216,
                               "started": "2026-12-07T03:00:01Z"}]}

The file names the freezer's pid, so a reader tells a live freezer's list
from the leftover of one that was killed; it is removed when no upload runs.
It lives under ``SPOOL/run``, not in the freeze queue, because the freeze
daemon watches its queue: writing there would wake the daemon itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from cryophile.backup_id import rfc3339
from cryophile.durable import make_dirs, replace_file
from cryophile.spool import Spool

logger = logging.getLogger(__name__)


class InFlight:
    """The writer's side: one per freezer, shared by its upload threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._uploads: dict[str, dict[str, object]] = {}

    @contextlib.contextmanager
    def upload(self, key: str, size: int) -> Iterator[None]:
        """Mark ``key`` (``size`` bytes) as being uploaded while the block runs."""
        with self._lock:
            self._uploads[key] = {"key": key, "bytes": size,
                                  "started": rfc3339(datetime.now(UTC))}
            self._publish()
        try:
            yield
        finally:
            with self._lock:
                self._uploads.pop(key, None)
                self._publish()

    def clear(self) -> None:
        """Remove the file and its temporaries as a killed freezer may have left them."""
        for leftover in [self.path, *self.path.parent.glob(f".{self.path.name}.*.tmp")]:
            with contextlib.suppress(OSError):
                leftover.unlink()

    def _publish(self) -> None:
        # Progress information only: failing to write it must not fail an upload.
        try:
            if self._uploads:
                document = {"pid": os.getpid(), "uploads": list(self._uploads.values())}
                make_dirs(self.path.parent)
                replace_file(self.path, json.dumps(document).encode())
            else:
                self.path.unlink(missing_ok=True)
        except OSError as error:
            logger.debug("cannot update %s: %s", self.path, error)


def uploads_in_flight(spool: Spool) -> list[dict[str, object]]:
    """The reader's side: the uploads a live freezer runs now on ``spool`` (empty when none)."""
    try:
        document = json.loads(spool.in_flight_path.read_bytes())
        os.kill(int(document["pid"]), 0)
        uploads = document["uploads"]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # none, unreadable, or left by a freezer that is gone
    return [entry for entry in uploads if isinstance(entry, dict)]

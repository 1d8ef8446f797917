"""A bandwidth cap around any vault (``max_bandwidth``), shared by all its transfers.

Where this sits: :func:`cryophile.vault.factory.open_vault` wraps the vault a
configuration entry names in a :class:`ThrottledVault` when the entry sets
``max_bandwidth``; the vault implementations (S3, directory) know nothing of
it, and every vault gets the same cap.

Each transfer reserves its bytes with one :class:`Throttle` per vault: a
reservation waits until the bytes already reserved have had their time at the
capped rate. A vault that can pace its own transfers block by block (it
implements :class:`Paceable`: the S3 vault does, per part of a multipart
upload and per 1 MiB of a download) is handed the throttle's ``reserve`` and
calls it as its bytes go, so the cap holds within one fragment, not only on
average over several: a burst is at most one block (a part: 16 MiB by
default; a single-part upload, below 64 MiB, is reserved whole before it
goes). Any other vault (the directory vault) is paced per object: an upload
reserves the file's size before it goes, a download reserves what arrived
once it is complete (its size is known only then), so the next transfer
waits for it. No byte-level shaper of our own sits in the HTTP path.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryophile.vault.base import ObjectInfo, RestoreState, Vault

logger = logging.getLogger(__name__)


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


#: A pacing callback: returns once ``size`` more bytes may go.
Pace = Callable[[int], None]


@runtime_checkable
class Paceable(Protocol):
    """A vault that paces its own transfers, block by block, once given a callback."""

    def pace_with(self, pace: Pace) -> None:
        """Call ``pace(n)`` before sending (or after receiving) each block of ``n``
        bytes of every upload and download from now on."""


class ThrottledVault:
    """A :class:`~cryophile.vault.base.Vault` whose ``put`` and ``get`` go through
    ``throttle``; every other call goes straight to ``inner``.

    The contract is ``inner``'s, unchanged: errors, no-ops and refusals are
    what ``inner`` raises or does. A :class:`Paceable` ``inner`` is handed
    ``throttle.reserve`` and paces itself block by block; any other is paced
    here per object: a ``put`` that ``inner`` finds already stored still
    takes its turn (the wrapper cannot tell it from an upload), a ``get``
    that fails reserves nothing.
    """

    def __init__(self, inner: Vault, throttle: Throttle) -> None:
        self.inner = inner
        self.throttle = throttle
        self._self_paced = isinstance(inner, Paceable)
        if isinstance(inner, Paceable):
            inner.pace_with(throttle.reserve)

    def __repr__(self) -> str:
        # Messages name the vault, not its wrappers.
        return repr(self.inner)

    def put(self, key: str, source: Path, *, sha256: str, storage_class: str) -> None:
        """See :meth:`cryophile.vault.base.Vault.put`; waits for its turn first
        (or, self-paced, block by block)."""
        if self._self_paced:
            self.inner.put(key, source, sha256=sha256, storage_class=storage_class)
            return
        try:
            size = os.stat(source).st_size
        except OSError:
            size = 0  # inner.put reports the missing or unreadable file
        self.throttle.reserve(size)
        self.inner.put(key, source, sha256=sha256, storage_class=storage_class)

    def stat(self, key: str) -> ObjectInfo | None:
        """See :meth:`cryophile.vault.base.Vault.stat`."""
        return self.inner.stat(key)

    def request_restore(self, key: str, *, days: int, tier: str) -> RestoreState:
        """See :meth:`cryophile.vault.base.Vault.request_restore`."""
        return self.inner.request_restore(key, days=days, tier=tier)

    def get(self, key: str, dest: Path) -> None:
        """See :meth:`cryophile.vault.base.Vault.get`; the bytes that arrived are
        reserved afterwards, so the call returns once earlier transfers have
        had their time (self-paced: block by block as they arrive)."""
        self.inner.get(key, dest)
        if self._self_paced:
            return
        try:
            size = os.stat(dest).st_size
        except OSError as error:  # the caller moved it already: nothing to charge
            logger.debug("cannot size %s for the bandwidth cap: %s", dest, error)
            return
        self.throttle.reserve(size)

    def list(self, prefix: str) -> Iterator[str]:
        """See :meth:`cryophile.vault.base.Vault.list`."""
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        """See :meth:`cryophile.vault.base.Vault.delete`."""
        self.inner.delete(key)

    def abort_incomplete_uploads(self, key: str) -> int:
        """See :meth:`cryophile.vault.base.Vault.abort_incomplete_uploads`."""
        return self.inner.abort_incomplete_uploads(key)

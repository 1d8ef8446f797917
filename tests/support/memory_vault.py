"""A vault in memory, with cold storage on a clock the test advances.

:class:`MemoryVault` implements :class:`cryophile.vault.base.Vault` and passes
the same contract suite as the directory and S3 vaults
(``tests/unit/test_vault_contract.py``), so in-process tests of the use cases
(prune, inventory, verification, ...) can run on it without a server.

Cold storage follows AWS: an object in a class of
:data:`~cryophile.storage_classes.COLD_STORAGE_CLASSES` is COLD (``get``
raises TryLaterError) until a restore is requested; it is then RESTORING for
``restore_ticks`` ticks of its :class:`FakeClock`, then RESTORED until the
copy expires ``days`` after the request, then COLD again. Nothing happens on
its own: time moves only when the test calls :meth:`FakeClock.advance`.

Like S3 the content is checked against the caller's SHA-256 on ``put`` and
against the stored SHA-256 on ``get``; :meth:`MemoryVault.damage` changes
stored bytes behind the vault's back (a bit flip at rest), to test what
notices it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryophile.errors import AlreadyExistsError, DataError, NoInputError, TryLaterError
from cryophile.storage_classes import COLD_STORAGE_CLASSES
from cryophile.vault.base import (
    ObjectInfo,
    RestoreState,
    check_key,
    check_prefix,
    check_restore_args,
    check_sha256,
    check_storage_class,
)

#: Ticks a restore takes unless the vault is told otherwise.
DEFAULT_RESTORE_TICKS = 2


class FakeClock:
    """Time as the tests decide it: real time plus what :meth:`advance` added.

    ``ticks`` counts the calls of :meth:`advance`; restores complete after a
    number of them. Starting from real time keeps ``ObjectInfo.modified``
    plausible for code that compares it with ``datetime.now``.
    """

    def __init__(self, step: timedelta = timedelta(minutes=10)) -> None:
        self.step = step
        self.ticks = 0
        self._offset = timedelta()

    def now(self) -> datetime:
        """The current time on this clock (UTC)."""
        return datetime.now(UTC) + self._offset

    def advance(self, ticks: int = 1, *, by: timedelta | None = None) -> None:
        """Move ``ticks`` ticks on, each ``step`` long (or ``by`` in all)."""
        self.ticks += ticks
        self._offset += by if by is not None else self.step * ticks


@dataclass(frozen=True)
class _Restore:
    ready_tick: int
    expiry: datetime


@dataclass(frozen=True)
class _Object:
    data: bytes
    sha256: str
    storage_class: str
    modified: datetime
    restore: _Restore | None = None


class MemoryVault:
    """A :class:`~cryophile.vault.base.Vault` whose objects live in a dict.

    Thread-safe. ``before_publish``, when set, is called by ``put`` after it
    found the key free and before it stores the object (outside the lock),
    so a test can let another writer in at exactly that moment.
    """

    def __init__(self, clock: FakeClock | None = None, *,
                 restore_ticks: int = DEFAULT_RESTORE_TICKS) -> None:
        self.clock = clock or FakeClock()
        self.restore_ticks = restore_ticks
        self.before_publish: Callable[[], None] | None = None
        #: Every restore request that started one, as (key, days, tier).
        self.restore_requests: list[tuple[str, int, str]] = []
        self._objects: dict[str, _Object] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryVault({len(self._objects)} objects)"

    # -- the Vault contract ---------------------------------------------------

    def put(self, key: str, source: Path, *, sha256: str, storage_class: str) -> None:
        """See :meth:`cryophile.vault.base.Vault.put`."""
        check_key(key)
        sha256 = check_sha256(sha256)
        check_storage_class(storage_class)
        data = source.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        with self._lock:
            existing = self._objects.get(key)
        if existing is not None:
            self._same_or_refuse(key, existing, data, sha256)
            return
        if actual != sha256:
            raise DataError(f"{source}: SHA-256 is {actual}, expected {sha256}; not stored")
        if self.before_publish is not None:
            self.before_publish()
        with self._lock:
            existing = self._objects.get(key)
            if existing is None:  # a conditional write, as S3's If-None-Match
                self._objects[key] = _Object(data, sha256, storage_class, self.clock.now())
                return
        self._same_or_refuse(key, existing, data, sha256)

    def stat(self, key: str) -> ObjectInfo | None:
        """See :meth:`cryophile.vault.base.Vault.stat`."""
        check_key(key)
        with self._lock:
            stored = self._objects.get(key)
            if stored is None:
                return None
            state, expiry = self._state(key, stored)
        return ObjectInfo(size=len(stored.data), sha256=stored.sha256,
                          storage_class=stored.storage_class, restore_state=state,
                          restore_expiry=expiry, modified=stored.modified)

    def request_restore(self, key: str, *, days: int, tier: str) -> RestoreState:
        """See :meth:`cryophile.vault.base.Vault.request_restore`."""
        check_key(key)
        check_restore_args(days, tier)
        with self._lock:
            stored = self._objects.get(key)
            if stored is None:
                raise NoInputError(f"no object {key} in {self!r}")
            state, _ = self._state(key, stored)
            if state is not RestoreState.COLD:
                return state
            restore = _Restore(self.clock.ticks + self.restore_ticks,
                               self.clock.now() + timedelta(days=days))
            self._objects[key] = replace(stored, restore=restore)
            self.restore_requests.append((key, days, tier))
        return RestoreState.RESTORING

    def get(self, key: str, dest: Path) -> None:
        """See :meth:`cryophile.vault.base.Vault.get`."""
        check_key(key)
        with self._lock:
            stored = self._objects.get(key)
            if stored is None:
                raise NoInputError(f"no object {key} in {self!r}")
            state, _ = self._state(key, stored)
        if state in (RestoreState.COLD, RestoreState.RESTORING):
            raise TryLaterError(f"{key} is in cold storage and not restored yet")
        actual = hashlib.sha256(stored.data).hexdigest()
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as writer:
                writer.write(stored.data)
            if actual != stored.sha256:
                raise DataError(f"{key} in {self!r} is damaged: SHA-256 {actual}, "  # noqa: TRY301
                                f"expected {stored.sha256}")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            raise

    def list(self, prefix: str) -> Iterator[str]:
        """See :meth:`cryophile.vault.base.Vault.list`."""
        check_prefix(prefix)
        with self._lock:
            keys = sorted(key for key in self._objects if key.startswith(prefix))
        yield from keys

    def delete(self, key: str) -> None:
        """See :meth:`cryophile.vault.base.Vault.delete`."""
        check_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def abort_incomplete_uploads(self, key: str) -> int:
        """See :meth:`cryophile.vault.base.Vault.abort_incomplete_uploads`:
        uploads here are never incomplete."""
        check_key(key)
        return 0

    # -- for tests --------------------------------------------------------------

    def damage(self, key: str, data: bytes) -> None:
        """Replace ``key``'s bytes, keeping its recorded SHA-256 (damage at rest)."""
        with self._lock:
            self._objects[key] = replace(self._objects[key], data=data)

    def content(self, key: str) -> bytes:
        """The stored bytes of ``key``, cold or not (what the test put there)."""
        with self._lock:
            return self._objects[key].data

    # -- internals --------------------------------------------------------------

    def _state(self, key: str, stored: _Object) -> tuple[RestoreState, datetime | None]:
        """``stored``'s restore state now; forgets an expired restore. Call with the lock."""
        if stored.storage_class not in COLD_STORAGE_CLASSES:
            return RestoreState.NOT_NEEDED, None
        restore = stored.restore
        if restore is None:
            return RestoreState.COLD, None
        if self.clock.now() >= restore.expiry:
            self._objects[key] = replace(stored, restore=None)
            return RestoreState.COLD, None
        if self.clock.ticks < restore.ready_tick:
            return RestoreState.RESTORING, None
        return RestoreState.RESTORED, restore.expiry

    def _same_or_refuse(self, key: str, existing: _Object, data: bytes, sha256: str) -> None:
        if len(existing.data) != len(data) or existing.sha256 != sha256:
            raise AlreadyExistsError(f"{key} already exists in {self!r} with other content")

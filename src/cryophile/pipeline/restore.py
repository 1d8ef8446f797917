"""The restore job: restore queue → verify → concatenate → decrypt → decompress → output.

Stages::

    [thread: wait, verify, read fragments] → [worker process: decrypt] → [this thread:
    decompress, write]

The manifest is read first; the secret key is chosen from its recipients and
unlocked (wrong passphrase detected) before any output is written. Each
fragment's size and SHA-256 are checked before its bytes reach the decryptor.
Fragments may arrive in any order while this runs; they are consumed in order.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryophile.backup_id import BackupId, fragment_name
from cryophile.durable import make_dirs
from cryophile.errors import (
    CryophileError,
    DataError,
    KeyAccessError,
    NoInputError,
    StorageIOError,
)
from cryophile.manifest import AUTO_COMPRESSION, Fragment, Manifest, parse
from cryophile.pipeline.compress import Codec, codec_for, detecting
from cryophile.pipeline.engines import Engine
from cryophile.pipeline.fragments import read_fragments
from cryophile.pipeline.keys import SecretKey, select_secret_keys, unlock
from cryophile.pipeline.stages import Buffer, Counters, threaded, tune_allocator, write_all
from cryophile.spool import Queue, Spool, read_spool_file
from cryophile.watch import DirectoryWatcher, wait_for_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestorePlan:
    """What to restore and how."""

    backup_id: BackupId
    secret_keys: list[SecretKey]
    ask_passphrase: Callable[[SecretKey], str]
    engine: Engine
    compression: str | None = None
    wait: bool = False
    timeout: float | None = None
    # Returns why the supplier of fragments (a thaw request) gave up, if it did.
    supplier_failure: Callable[[], str | None] | None = None
    # Checks the manifest's bytes (and its directory, for chunk.0.sig) before
    # they are trusted; raises to refuse the backup (--signed-by).
    authenticate: Callable[[Path, bytes], None] | None = None
    # Told every minute while a fragment is awaited (its path, seconds waited).
    still_waiting: Callable[[Path, float], None] | None = None
    # Told of each fragment once all its bytes went on to the decryptor (a
    # bounded restore removes it from the restore queue then).
    consumed: Callable[[Fragment], None] | None = None


@dataclass(frozen=True)
class RestoreResult:
    """What a finished restore reports."""

    manifest: Manifest
    output_bytes: int
    seconds: float


class _Waiter:
    """Waits for files in one restore directory, or refuses to when nothing will come."""

    def __init__(self, directory: Path, plan: RestorePlan, counters: Counters) -> None:
        self.directory = directory
        self.counters = counters
        self.wait = plan.wait
        self.deadline = None if plan.timeout is None else time.monotonic() + plan.timeout
        self.watcher = DirectoryWatcher(directory)
        self.supplier_failure = plan.supplier_failure
        self.still_waiting = plan.still_waiting

    def check(self) -> None:
        """Raise DataError when the thaw request serving this restore failed."""
        if self.supplier_failure is not None:
            failure = self.supplier_failure()
            if failure is not None:
                raise DataError(f"the thaw request failed: {failure}")

    def __call__(self, path: Path) -> None:
        if not self.wait:
            if not path.exists():
                raise DataError(f"{path.name} of backup is missing from {self.directory}"
                                " (use --wait to wait for it to arrive)")
            return
        self.counters.waiting_for = path.name
        try:
            wait_for_file(self.watcher, path, deadline=self.deadline, check=self.check,
                          on_wait=lambda p: logger.info("waiting for %s to arrive in %s",
                                                        p.name, self.directory),
                          still_waiting=self.still_waiting)
        finally:
            self.counters.waiting_for = None


def read_manifest(directory: Path, backup_id: BackupId, wait_for: Callable[[Path], None],
                  authenticate: Callable[[Path, bytes], None] | None = None) -> Manifest:
    """Wait for and parse ``chunk.0`` of ``backup_id`` in ``directory``.

    ``authenticate`` sees the exact bytes that are then parsed and used.
    """
    path = directory / fragment_name(0)
    wait_for(path)
    try:
        # Never through a symlink planted in the restore queue (restore --wait
        # reads it without thaw's checks).
        data = read_spool_file(path)
    except OSError as error:
        raise StorageIOError(f"cannot read manifest {path}: {error.strerror}") from None
    if authenticate is not None:
        authenticate(directory, data)
    return parse(data, expected=backup_id)


def run_restore(spool: Spool, plan: RestorePlan, output_fd: int,
                counters: Counters | None = None) -> RestoreResult:
    """Restore ``plan.backup_id`` from the restore queue into ``output_fd``.

    Raises NoInputError when the backup is not in the restore queue,
    KeyAccessError before any output when no key or passphrase fits,
    DataError when a fragment is missing (and ``wait`` is off), damaged or
    fails decryption; TryLaterError when ``timeout`` passes while waiting.
    """
    started = time.monotonic()
    tune_allocator()
    directory = spool.backup_dir(Queue.RESTORE, plan.backup_id)
    if plan.wait:
        # Whoever delivers (thaw) creates it too; the watcher needs it now.
        make_dirs(directory)
    elif not directory.is_dir():
        raise NoInputError(f"backup {plan.backup_id} is not in the restore queue "
                           f"({directory} does not exist)")
    counters = counters if counters is not None else Counters()
    waiter = _Waiter(directory, plan, counters)
    with waiter.watcher:
        manifest = read_manifest(directory, plan.backup_id, waiter, plan.authenticate)
        counters.fragments_total = len(manifest.fragments)
        _warn_about_strays(directory, manifest)
        key, passphrase = choose_key(manifest, plan.secret_keys, plan.ask_passphrase)
        codec = _codec(plan.compression, manifest)
        ciphertext = threaded(read_fragments(directory, manifest, waiter, counters=counters,
                                             consumed=plan.consumed),
                              name="fragments")
        plaintext: Iterator[Buffer] = plan.engine.decrypt(ciphertext, key, passphrase)
        if codec is None:
            codec, plaintext = detecting(plaintext)
            logger.info("compression detected from the data: %s", codec.name)
        written = 0
        try:
            for block in codec.decompress(plaintext):
                write_all(output_fd, block)
                written += len(block)
                counters.bytes_out = written
        except BrokenPipeError:
            raise StorageIOError("the output was closed before the restore finished") from None
        except OSError as error:
            raise StorageIOError(f"cannot write the output: {error.strerror}") from None
        except CryophileError as error:
            # Plaintext may already be out: say so, whatever went wrong.
            raise type(error)(f"{error}; the output is incomplete ({written} bytes were "
                              "written)") from error
    seconds = time.monotonic() - started
    logger.info("restore of %s complete: %d bytes out, %.1f s", plan.backup_id, written, seconds)
    return RestoreResult(manifest, written, seconds)


def choose_key(manifest: Manifest, secret_keys: list[SecretKey],
               ask_passphrase: Callable[[SecretKey], str]) -> tuple[SecretKey, str | None]:
    """The secret key (and its passphrase) that decrypts the backup ``manifest`` describes.

    Raises KeyAccessError when no key is a recipient or no passphrase fits.
    """
    candidates = select_secret_keys(secret_keys, manifest.recipients)
    failure: KeyAccessError | None = None
    for key in candidates:
        try:
            return key, unlock(key, manifest.recipients, ask_passphrase)
        except KeyAccessError as error:
            failure = error
    assert failure is not None
    raise failure


def _codec(override: str | None, manifest: Manifest) -> Codec | None:
    """The codec to decompress with; None means "detect from the magic bytes"."""
    if override == AUTO_COMPRESSION:
        return None
    if override is not None:
        if override != manifest.compression:
            logger.warning("decompressing as %s although the manifest says %s", override,
                           manifest.compression)
        return codec_for(override)
    return codec_for(manifest.compression)


def _warn_about_strays(directory: Path, manifest: Manifest) -> None:
    known = {fragment_name(fragment.index) for fragment in manifest.fragments}
    known.add(fragment_name(0))
    for name in sorted(os.listdir(directory)):
        # chunk.0.sig is the manifest's signature, not a fragment.
        if (name.startswith("chunk.") and name not in known
                and not name.endswith((".part", ".sig"))):
            logger.warning("ignoring %s in %s: the manifest lists %d fragment(s)", name,
                           directory, len(manifest.fragments))


"""The backup job: input → compress → encrypt → split → hash → fragments in the spool.

Stages run concurrently, joined by bounded queues of ≥ 1 MiB items::

    [thread: read → compress, on every core] → [thread: encrypt (the engine's
    own stages) → split] → [this thread: SHA-256, write] → [thread: fsync, publish]

The input is opened only after the backup id is claimed, so a FIFO is never
drained into a backup that cannot be written. The manifest is published last;
on any failure the fragments already handed to the freeze queue are removed
again, so the spool is left as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryophile.backup_id import MANIFEST_NAME, SIGNATURE_NAME, BackupId
from cryophile.destination import Destination
from cryophile.durable import remove_empty_dirs
from cryophile.errors import StorageIOError
from cryophile.manifest import Fragment, Manifest
from cryophile.pipeline.compress import Codec
from cryophile.pipeline.engines import Engine
from cryophile.pipeline.fragments import FragmentWriter, hash_pieces, split
from cryophile.pipeline.keys import Recipients
from cryophile.pipeline.stages import (
    Counters,
    counting,
    enlarge_pipe,
    read_blocks,
    threaded,
    tune_allocator,
)
from cryophile.spool import LOCK_NAME, Queue, Spool, describe_os_error, write_file_durably
from cryophile.uploads import UploadRecords

if TYPE_CHECKING:
    from ulid import ULID

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupPlan:
    """Everything a backup needs, checked before the input is opened."""

    backup_id: BackupId
    codec: Codec
    fragment_size: int
    recipients: Recipients
    engine: Engine
    # Signs the manifest bytes (--sign-key): a detached signature published
    # as chunk.0.sig *before* chunk.0, so the "complete" marker comes last.
    sign: Callable[[bytes], bytes] | None = None
    # Where the backup is bound for: recorded in the spool when it is queued,
    # so that freeze never sends it anywhere else (cryophile.uploads).
    destination: Destination | None = None
    # An incremental stream's parent (checked by the caller: cryophile.chains),
    # and the user's labels, recorded in the manifest.
    parent: ULID | None = None
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BackupResult:
    """What a finished backup reports."""

    manifest: Manifest
    input_bytes: int
    seconds: float


def run_backup(spool: Spool, plan: BackupPlan, open_input: Callable[[], int],
               counters: Counters | None = None,
               reserve: Callable[[int], None] | None = None,
               digests: dict[int, str] | None = None) -> BackupResult:
    """Write one backup into the spool; return its manifest.

    ``reserve(size)`` is called before each fragment (with the fragment size)
    and before the manifest (with its size): it returns once that many bytes
    may be written to the spool, or raises (backpressure,
    :class:`cryophile.backpressure.SpoolGate`).

    ``open_input`` returns a readable file descriptor; it is called only once
    the backup id has been claimed. Raises AlreadyExistsError when the id is
    taken, StorageIOError on input or spool I/O errors, and whatever the
    engine raises; in every failure case nothing of this backup stays in the
    spool.

    ``digests``, when given, receives each fragment's SHA-256 (by index) before
    that fragment is published: ``backup --freeze`` hands it to its uploads.
    """
    started = time.monotonic()
    tune_allocator()
    backup_id = plan.backup_id
    lock = spool.create_backup(backup_id)
    records = UploadRecords(spool)
    if plan.destination is not None:
        try:
            records.claim(backup_id, plan.destination)
        except BaseException:
            spool.abandon_claim(backup_id, lock)
            raise
    work_dir = spool.backup_dir(Queue.BACKUP, backup_id)
    freeze_dir = spool.backup_dir(Queue.FREEZE, backup_id)
    counters = counters if counters is not None else Counters()
    writer = FragmentWriter(work_dir, freeze_dir, counters,
                            None if reserve is None else lambda: reserve(plan.fragment_size))
    completed = False
    try:
        input_fd = open_input()
        digests = digests if digests is not None else {}
        try:
            blocks = counting(_reading(input_fd, plan.codec.block_size), counters)
            # Compression looks ahead on its own (ordered_map): a short queue
            # here, as its items are up to 4 MiB.
            compressed = threaded(plan.codec.compress(blocks), name="compress", depth=1)
            ciphertext = plan.engine.encrypt(compressed, plan.recipients)
            # CFB encryption is sequential: its thread does nothing else. The
            # fragments' SHA-256 is computed here, in the writing thread.
            pieces = threaded(split(ciphertext, plan.fragment_size), name="encrypt")
            writer.write(hash_pieces(pieces, digests))
        finally:
            os.close(input_fd)
        fragments = tuple(Fragment(index, writer.sizes[index], digests[index])
                          for index in sorted(writer.sizes))
        manifest = Manifest(
            backup_id=backup_id,
            created=datetime.now(UTC),
            compression=plan.codec.name,
            engine=plan.engine.name,
            recipients=plan.recipients.subkeys,
            fragment_size=plan.fragment_size,
            fragments=fragments,
            parent=plan.parent,
            labels=plan.labels,
        )
        manifest_bytes = manifest.to_json()
        signature = None if plan.sign is None else plan.sign(manifest_bytes)
        if reserve is not None:
            reserve(len(manifest_bytes) + (len(signature) if signature is not None else 0))
        try:
            if signature is not None:
                write_file_durably(work_dir / f"{SIGNATURE_NAME}.part",
                                   freeze_dir / SIGNATURE_NAME, signature)
            write_file_durably(work_dir / f"{MANIFEST_NAME}.part",
                               freeze_dir / MANIFEST_NAME, manifest_bytes)
        except OSError as error:
            # Name the place and say "full" like a fragment's error does.
            raise StorageIOError(f"cannot write the manifest to the spool ({freeze_dir}): "
                                 f"{describe_os_error(error)}") from None
        completed = True
    finally:
        writer.abort()
        if not completed:
            # The manifest first: one linked before its directory fsync failed
            # must never outlive the fragments it lists.
            for path in [freeze_dir / MANIFEST_NAME, *writer.published,
                         freeze_dir / SIGNATURE_NAME]:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            remove_empty_dirs(freeze_dir, spool.queue_dir(Queue.FREEZE))
            # What a freezer uploaded meanwhile stays recorded: the freezer removes
            # it from the vault again. A record with nothing uploaded just goes.
            records.release(backup_id)
        lock.release()
        with contextlib.suppress(FileNotFoundError):
            (work_dir / LOCK_NAME).unlink()
        remove_empty_dirs(work_dir, spool.queue_dir(Queue.BACKUP))
    seconds = time.monotonic() - started
    logger.info("backup %s complete: %d bytes in, %d bytes stored in %d fragment(s), %.1f s",
                backup_id, counters.bytes_in, manifest.stored_bytes, len(fragments), seconds)
    return BackupResult(manifest, counters.bytes_in, seconds)


def _reading(fd: int, block_size: int) -> Iterator[bytearray]:
    # A 1 MiB pipe lets the producer (zfs send, tar) run further ahead, and
    # hands over whole blocks in fewer reads.
    enlarge_pipe(fd)
    try:
        yield from read_blocks(fd, block_size)
    except OSError as error:
        raise StorageIOError(f"cannot read the input: {error.strerror}") from None

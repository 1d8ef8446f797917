"""Splitting the ciphertext into fragments, and joining them back.

Backup side, three stages: :func:`split` cuts the message into pieces tagged
with their fragment index (a pure function), :func:`hash_pieces` computes each
fragment's SHA-256, and :class:`FragmentWriter` writes the pieces to
``backup/ID/chunk.N.part`` and hands each complete fragment to
``freeze/ID/chunk.N`` (fsync, hard link, unlink). A fragment opens only when a
byte for it arrives, so there is never an empty trailing fragment.

Restore side: :func:`read_fragments` waits for each fragment in order in the
restore queue, checks its size and SHA-256 against the manifest *before* any
of its bytes are used, then yields its contents.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryophile.backup_id import fragment_name
from cryophile.durable import FILE_MODE, start_writeback
from cryophile.errors import DataError, StorageIOError
from cryophile.manifest import Fragment, Manifest
from cryophile.pipeline.stages import BLOCK_SIZE, Buffer, Counters, ReadAhead
from cryophile.spool import describe_os_error, publish

logger = logging.getLogger(__name__)

#: Written bytes of a fragment are sent on to the disk in steps of this size
#: (:func:`cryophile.durable.start_writeback`).
WRITEBACK_STEP = 8 * 1024 * 1024
WRITEBACK_ALIGN = 64 * 1024


@dataclass(frozen=True)
class Piece:
    """A slice of the message that belongs to fragment ``index``.

    ``last`` marks the final piece of its fragment.
    """

    index: int
    data: Buffer
    last: bool


def split(blocks: Iterable[Buffer], fragment_size: int) -> Iterator[Piece]:
    """Cut a stream into pieces of consecutive fragments of ``fragment_size`` bytes.

    Every fragment but the last is exactly ``fragment_size`` bytes; the last
    holds the rest and is never empty. An empty stream gives no piece.
    """
    if fragment_size <= 0:
        raise ValueError("fragment size must be positive")
    index = 1
    filled = 0
    pending: Piece | None = None
    for block in blocks:
        view = memoryview(block)
        while view:
            if pending is not None:
                yield pending
                pending = None
            take = min(len(view), fragment_size - filled)
            piece_data, view = view[:take], view[take:]
            filled += take
            if filled == fragment_size:
                yield Piece(index, piece_data, last=True)
                index += 1
                filled = 0
            else:
                # Whether this piece ends its fragment is known only when the
                # next byte arrives or the stream ends.
                pending = Piece(index, piece_data, last=False)
    if pending is not None:
        yield Piece(pending.index, pending.data, last=True)


def hash_pieces(pieces: Iterable[Piece], digests: dict[int, str]) -> Iterator[Piece]:
    """Pass pieces through, recording each complete fragment's SHA-256 in ``digests``."""
    hasher = hashlib.sha256()
    for piece in pieces:
        hasher.update(piece.data)
        if piece.last:
            digests[piece.index] = hasher.hexdigest()
            hasher = hashlib.sha256()
        yield piece


class FragmentWriter:
    """Writes pieces into ``work_dir`` as ``chunk.N.part`` and publishes them to ``queue_dir``.

    Everything that waits for the disk runs in a publishing thread of its own,
    in order, while the writing thread goes on: starting the writeback of
    what was written (every :data:`WRITEBACK_STEP`), and publishing each
    complete fragment (fsync, link into the queue). Block allocation happens
    there too (the file system allocates at writeback): reserving a whole
    fragment with ``posix_fallocate`` when it opens made the writer wait for
    ext4 to read block bitmaps from disk, 0.1-0.5 s per fragment here. A full
    disk still fails the write that does not fit (ENOSPC at ``write``).
    """

    def __init__(self, work_dir: Path, queue_dir: Path,
                 counters: Counters | None = None,
                 before_open: Callable[[], None] | None = None) -> None:
        """``before_open()`` is called before each fragment's file is created: it may
        wait (backpressure: room in the spool) or raise, which fails :meth:`write`."""
        self.work_dir = work_dir
        self.queue_dir = queue_dir
        self.counters = counters if counters is not None else Counters()
        self.before_open = before_open
        #: Size of every published fragment; complete once :meth:`write` returned.
        self.sizes: dict[int, int] = {}
        #: Every fragment visible in the queue, in order (a failed backup removes them).
        self.published: list[Path] = []
        self._fd: int | None = None
        self._index = 0
        self._written = 0
        self._sent = 0  # bytes of the open fragment already sent on to the disk
        self._publishing: list[concurrent.futures.Future[None]] = []
        self._publisher: concurrent.futures.ThreadPoolExecutor | None = None
        #: Fragments whose .part file exists and is not (yet) published.
        self._unpublished: set[int] = set()

    def write(self, pieces: Iterable[Piece]) -> None:
        """Write every piece; publish each fragment once its last piece is written.

        Returns when every fragment is published; raises StorageIOError naming
        the fragment on the first write or publish error.
        """
        # Leaving the executor, also on an error, waits for the publishing
        # thread: after write() no fragment is half-published.
        with concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="publish") as publisher:
            self._publisher = publisher
            for piece in pieces:
                if self._fd is None:
                    if self.before_open is not None:
                        self.before_open()
                    self._open(piece.index)
                self._write_piece(piece.data)
                if piece.last:
                    self._check_published()
                    fd, self._fd = self._fd, None
                    assert fd is not None
                    self._publishing.append(
                        publisher.submit(self._publish, fd, self._index, self._written))
        self._publisher = None
        self._check_published()

    def _write_piece(self, data: Buffer) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as error:
            raise self._error(self._index, error) from None
        self._written += len(data)
        self.counters.bytes_out += len(data)
        if self._written - self._sent >= WRITEBACK_STEP:
            # Whole pages only: the next write into a page under writeback
            # would wait for the disk.
            end = self._written - self._written % WRITEBACK_ALIGN
            # In the publishing thread, before this fragment's publish (which
            # closes the fd): starting writeback allocates blocks, which can wait.
            assert self._publisher is not None
            self._publisher.submit(start_writeback, self._fd, self._sent, end - self._sent)
            self._sent = end

    def _error(self, index: int, error: OSError) -> StorageIOError:
        return StorageIOError(f"cannot write fragment {index} to the spool "
                              f"({self.work_dir}): {describe_os_error(error)}")

    def _check_published(self) -> None:
        """Raise the first error of a finished publish (they finish in order)."""
        while self._publishing and self._publishing[0].done():
            self._publishing.pop(0).result()

    def _part(self, index: int) -> Path:
        return self.work_dir / f"{fragment_name(index)}.part"

    def _open(self, index: int) -> None:
        self._index = index
        self._written = 0
        self._sent = 0
        self._unpublished.add(index)
        try:
            self._fd = os.open(self._part(index),
                               os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except OSError as error:
            raise self._error(index, error) from None

    def _publish(self, fd: int, index: int, size: int) -> None:
        """Flush and link fragment ``index`` (runs in the publishing thread)."""
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            final = self.queue_dir / fragment_name(index)
            publish(self._part(index), final)
        except OSError as error:
            raise self._error(index, error) from None
        self.sizes[index] = size
        self.published.append(final)
        self._unpublished.discard(index)
        self.counters.fragments += 1
        logger.debug("fragment %d published: %d bytes", index, size)

    def abort(self) -> None:
        """Close and remove every unpublished ``.part`` file (published fragments stay).

        Call after :meth:`write` returned or raised: no publish is running then.
        """
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for index in sorted(self._unpublished):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._part(index))
        self._unpublished.clear()
        self._publishing.clear()


WaitFor = Callable[[Path], None]


def read_fragments(directory: Path, manifest: Manifest, wait_for: WaitFor,
                   block_size: int = BLOCK_SIZE,
                   counters: Counters | None = None,
                   consumed: Callable[[Fragment], None] | None = None,
                   ) -> Generator[bytes, None, None]:
    """Yield the message, fragment by fragment, each verified before it is used.

    Closing the generator early closes every fragment it opened.
    ``consumed(fragment)`` is called once every byte of a fragment has been
    yielded and its file closed (a bounded restore removes it then).

    ``wait_for(path)`` returns once ``path`` exists (or raises, e.g. on a
    timeout). Each fragment is opened once, hashed whole, and only then read
    again from the same descriptor and yielded, so what was verified is what
    is used. Raises DataError naming the fragment when its size or SHA-256
    differs from the manifest.

    While a fragment is yielded, the next one, if it is already there, is
    verified in a background thread: otherwise every fragment boundary would
    stall the whole restore for the time of one SHA-256 pass.
    """
    count = len(manifest.fragments)
    ahead: _VerifiedAhead | None = None
    try:
        for position, fragment in enumerate(manifest.fragments):
            path = directory / fragment_name(fragment.index)
            if ahead is not None:
                fd, ahead = ahead.result(), None
            else:
                wait_for(path)
                # The next fragment, if there, is verified on the other core
                # meanwhile: at the start both cores would otherwise wait on
                # one SHA-256 pass.
                ahead = _start_next(directory, manifest, position)
                fd = _open_verified(path, fragment, count)
            try:
                if ahead is None:
                    ahead = _start_next(directory, manifest, position)
                yield from _blocks(fd, path, fragment.size, block_size, counters)
            finally:
                os.close(fd)
            if counters is not None:
                counters.fragments += 1
            if consumed is not None:
                consumed(fragment)
    finally:
        if ahead is not None:
            ahead.discard()


def _start_next(directory: Path, manifest: Manifest, position: int) -> _VerifiedAhead | None:
    """Start verifying the fragment after ``position`` when it is there already."""
    if position + 1 >= len(manifest.fragments):
        return None
    return _VerifiedAhead.start_if_present(directory, manifest.fragments[position + 1],
                                           len(manifest.fragments))


def _blocks(fd: int, path: Path, size: int, block_size: int,
            counters: Counters | None) -> Iterator[bytes]:
    os.lseek(fd, 0, os.SEEK_SET)
    remaining = size
    while remaining:
        block = os.read(fd, min(block_size, remaining))
        if not block:
            raise DataError(f"fragment {path} shrank while it was read")
        remaining -= len(block)
        if counters is not None:
            counters.bytes_in += len(block)
        yield block


def _open_verified(path: Path, fragment: Fragment, count: int,
                   stop: threading.Event | None = None) -> int:
    """Open ``path`` (never through a symlink) and check it against ``fragment``; return the fd."""
    try:
        # A symlink planted in the restore queue is refused, never followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DataError(f"fragment {path} is a symbolic link; refusing to follow "
                            "it") from None
        raise StorageIOError(f"cannot open fragment {path}: {error.strerror}") from None
    try:
        _verify(fd, path, fragment, count, stop)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _VerifiedAhead:
    """One fragment opened and verified in a daemon thread (see :func:`read_fragments`).

    It never waits for a file to arrive, so it always ends: after one SHA-256
    pass, or at the next block once :meth:`discard` asked it to stop.
    """

    def __init__(self, path: Path, fragment: Fragment, count: int) -> None:
        self._stop = threading.Event()
        self._outcome: int | BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(path, fragment, count),
                                        name="verify-ahead", daemon=True)
        self._thread.start()

    @classmethod
    def start_if_present(cls, directory: Path, fragment: Fragment,
                         count: int) -> _VerifiedAhead | None:
        path = directory / fragment_name(fragment.index)
        # Fragments appear whole (hard link of a complete file), so one that
        # exists can be verified now; one that does not is waited for later.
        return cls(path, fragment, count) if os.path.lexists(path) else None

    def _run(self, path: Path, fragment: Fragment, count: int) -> None:
        try:
            self._outcome = _open_verified(path, fragment, count, self._stop)
        except BaseException as error:  # handed to the consumer by result()
            self._outcome = error

    def result(self) -> int:
        """The verified fd; raises what verifying raised."""
        self._thread.join()
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome

    def discard(self) -> None:
        """Stop early and close the fd, if any (the restore stopped before this fragment)."""
        self._stop.set()
        self._thread.join()
        if isinstance(self._outcome, int):
            os.close(self._outcome)


def sha256_of_fd(fd: int, stop: threading.Event | None = None) -> str:
    """Hex SHA-256 of everything from ``fd``'s position to its end.

    Raises InterruptedError when ``stop`` is set (checked once per block).
    """
    hasher = hashlib.sha256()
    buffer = bytearray(BLOCK_SIZE)
    view = memoryview(buffer)
    # A fragment thawed or written long ago may have left the page cache: the
    # disk then reads on while this thread hashes.
    ahead = ReadAhead.start(fd)
    while count_read := os.readv(fd, [view]):
        if stop is not None and stop.is_set():
            raise InterruptedError("stopped")
        hasher.update(view[:count_read])
        if ahead is not None:
            ahead.advance(count_read)
    return hasher.hexdigest()


def sha256_of_file(path: Path) -> str:
    """Hex SHA-256 of a whole file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return sha256_of_fd(fd)
    finally:
        os.close(fd)


def _verify(fd: int, path: Path, fragment: Fragment, count: int,
            stop: threading.Event | None = None) -> None:
    size = os.fstat(fd).st_size
    if size != fragment.size:
        what = "truncated" if size < fragment.size else "too long"
        raise DataError(f"fragment {fragment.index} of {count} ({path}) is {what}: "
                        f"{size} bytes, the manifest says {fragment.size}")
    if sha256_of_fd(fd, stop) != fragment.sha256:
        raise DataError(f"fragment {fragment.index} of {count} ({path}) is damaged or not "
                        "part of this backup: its SHA-256 does not match the manifest")


"""Plumbing of the byte pipeline: block readers and threads joined by bounded queues.

Every stage of backup and restore (read, compress, encrypt, split, hash, write)
is an iterator of byte blocks. :func:`threaded` runs one in its own thread and
hands its items to the next through a bounded queue, so stages overlap on both
cores (zstandard, lz4, hashlib and OpenSSL release the GIL) while memory stays
bounded by queue depth × block size. Items are ≥ 1 MiB: smaller items make the
queue hand-off cost more than the work.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import ctypes
import fcntl
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

BLOCK_SIZE = 1024 * 1024
QUEUE_DEPTH = 4
STOP_GRACE_SECONDS = 5.0

#: What byte stages pass along.
Buffer = bytes | bytearray | memoryview

T = TypeVar("T")
R = TypeVar("R")

_END = object()


@dataclass
class Counters:
    """How far a job has come, for a progress display; each field has one writer thread.

    ``bytes_in``: input (backup) or ciphertext (restore) consumed; ``bytes_out``:
    ciphertext stored (backup) or plaintext written (restore); ``fragments``
    done of ``fragments_total`` (0: not known yet); ``waiting_for``: the file a
    restore is waiting for, if any.
    """

    bytes_in: int = 0
    bytes_out: int = 0
    fragments: int = 0
    fragments_total: int = 0
    waiting_for: str | None = None


def counting(blocks: Iterable[bytearray], counters: Counters) -> Iterator[bytearray]:
    """Pass blocks through, adding their sizes to ``counters.bytes_in``."""
    for block in blocks:
        counters.bytes_in += len(block)
        yield block


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def threaded(source: Iterable[T], *, name: str, depth: int = QUEUE_DEPTH) -> Iterator[T]:
    """Iterate ``source`` in a new thread; yield its items here, in order.

    An exception in the thread is re-raised here. When the consumer stops
    early (an exception, or closing this generator), the thread is told to
    stop and joined for a grace period, so no stage keeps running behind a
    failed pipeline.
    """
    handoff: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def run() -> None:
        try:
            for item in source:
                if not offer(item):
                    break
        except BaseException as error:
            offer(_Failure(error))
            return
        finally:
            close = getattr(source, "close", None)
            if stop.is_set() and close is not None:
                close()
        offer(_END)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    finished = False
    try:
        while True:
            item = handoff.get()
            if item is _END:
                finished = True
                break
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        # A stage stopped early may be blocked in a read that nothing will
        # answer (an idle input pipe); it is a daemon thread, so after a
        # grace period it is left behind rather than hanging the caller.
        thread.join(timeout=None if finished else STOP_GRACE_SECONDS)


def ordered_map(function: Callable[[T], R], items: Iterable[T], *, workers: int,
                name: str, ahead: int | None = None) -> Iterator[R]:
    """``map(function, items)`` on ``workers`` threads; results in input order.

    At most ``ahead`` (default ``workers + 1``) items are taken from ``items``
    ahead of the consumer, so memory stays bounded by the item size. ``function`` must
    release the GIL for the threads to overlap (compressors do). An exception
    from ``function`` is raised here in order; when the consumer stops early,
    items not started are cancelled and running ones are waited for.
    """
    pending: collections.deque[concurrent.futures.Future[R]] = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= (workers + 1 if ahead is None else ahead):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


#: glibc's mallopt() parameters (malloc.h) and the values tune_allocator sets.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024


def tune_allocator() -> bool:
    """Keep the pipeline's freed 1-8 MiB buffers for reuse instead of handing them back.

    With glibc's defaults, buffers freed by one stage's thread are often
    returned to the kernel (heap trimming, or munmap of mmapped chunks) and
    the next allocation faults fresh zeroed pages in: 70-100 thousand page
    faults and ~0.5-1 s of system time per GiB restored here. Raising the
    mmap and trim thresholds (fixed values also stop glibc's own adaptive
    threshold) removes most of them: 17 thousand faults, 10-15 % less wall
    time for backup and restore (``bench/``). One arena for all threads:
    buffers are allocated in one thread and freed in another, and with an
    arena per thread each arena kept its own freed buffers (restore's peak
    RSS 150 → 123 MiB, and faster). Memory stays bounded by the
    pipeline's queues, as before; it is only not returned early. Only for
    the backup and restore jobs, which end when the stream does — not for
    the long-running daemons. Returns False where there is no glibc
    ``mallopt`` (then nothing changes).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 for a parameter or value it refuses.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                and mallopt(M_ARENA_MAX, 1))


def enlarge_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer when ``fd`` is a pipe (else do nothing).

    A default pipe hands over at most 64 KiB per read; a larger buffer lets
    whole blocks through in fewer system calls.
    """
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, BLOCK_SIZE)


#: How far ahead of the reader a regular file is asked for (posix_fadvise).
READ_AHEAD = 64 * 1024 * 1024
READ_AHEAD_STEP = 16 * 1024 * 1024


class ReadAhead:
    """Asks the kernel to read a regular file ahead of its sequential reader.

    Without it, every page the page cache lacks (never read, or reclaimed
    since) makes the reader wait for the disk while the stages behind it run
    dry: 0.5-0.9 s of waits per GiB of backup input on the development
    machine, whose page cache is reclaimed proactively (0.1-0.3 s with it).
    WILLNEED reads asynchronously, into the page cache, so it costs no memory
    of this process. Advice is only advice: errors are ignored.
    """

    def __init__(self, fd: int, position: int) -> None:
        self.fd = fd
        self.position = position
        self.advised = position
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, position, 0, os.POSIX_FADV_SEQUENTIAL)
        self.advance(0)

    @classmethod
    def start(cls, fd: int) -> ReadAhead | None:
        """A read-ahead for ``fd`` when it is a regular file, else None."""
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return cls(fd, os.lseek(fd, 0, os.SEEK_CUR))
        except OSError:
            return None

    def advance(self, count: int) -> None:
        """The reader consumed ``count`` more bytes."""
        self.position += count
        while self.advised < self.position + READ_AHEAD:
            with contextlib.suppress(OSError):
                os.posix_fadvise(self.fd, self.advised, READ_AHEAD_STEP,
                                 os.POSIX_FADV_WILLNEED)
            self.advised += READ_AHEAD_STEP


def read_blocks(fd: int, block_size: int = BLOCK_SIZE) -> Iterator[bytearray]:
    """Read ``fd`` to its end in whole blocks (the last one may be short).

    Pipes deliver at most a pipe buffer per read; blocks are filled across
    reads so that later stages always get large items. A regular file is
    read ahead by the kernel (:class:`ReadAhead`).
    """
    ahead = ReadAhead.start(fd)
    while True:
        block = bytearray(block_size)
        view = memoryview(block)
        filled = 0
        while filled < block_size:
            count = os.readv(fd, [view[filled:]])
            if count == 0:
                break
            filled += count
        view.release()
        if ahead is not None:
            ahead.advance(filled)
        if filled == 0:
            return
        if filled < block_size:
            del block[filled:]
            yield block
            return
        yield block


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of ``data`` to ``fd`` (handles short writes)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def rebatch(blocks: Iterable[bytes], minimum: int = BLOCK_SIZE) -> Iterator[bytes]:
    """Join small pieces (compressor output) into items of at least ``minimum`` bytes."""
    pending: list[bytes] = []
    size = 0
    for block in blocks:
        if not block:
            continue
        pending.append(block)
        size += len(block)
        if size >= minimum:
            yield pending[0] if len(pending) == 1 else b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)

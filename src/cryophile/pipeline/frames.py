"""Cutting a compressed stream at its frame boundaries, so frames decompress in parallel.

Backup writes one independent zstd or lz4 frame per input block
(:mod:`cryophile.pipeline.compress`). Restore finds where each frame ends by
reading the frame and block headers (RFC 8878 §3.1 for zstd, the LZ4 Frame
Format 1.6.x for lz4; neither needs any decompression) and hands whole frames
to :data:`~cryophile.pipeline.compress.WORKERS` threads, in order.

Only frames that declare their content size, at most :data:`MAX_FRAME`, are
cut out this way, so memory stays bounded whatever the stream holds. Any other
frame (a stream written by another tool, or by cryophile before frames were
per block) is decompressed as it streams by, on this thread, with the
library's streaming decompressor: slower, never wrong.

Both formats end every frame with a checksum of its content when the writer
asked for one; the libraries check it. The frame boundaries found here are
only trusted as far as the libraries accept each frame whole: a frame that
does not decompress to exactly its declared size is a :class:`DataError`.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import lz4.frame
import zstandard

from cryophile.errors import DataError
from cryophile.pipeline.stages import Buffer, ordered_map

#: Largest frame (content or compressed) cut out whole: backup's frames are
#: 4 MiB (zstd; 8 MiB before issue 14) or 1 MiB (lz4); larger ones stream.
MAX_FRAME = 16 * 1024 * 1024

ZSTD_MAGIC = 0xFD2FB528
LZ4_MAGIC = 0x184D2204
#: Both formats share skippable frames: magic 0x184D2A50-5F, a 4-octet size.
SKIPPABLE_MASK = 0xFFFFFFF0
SKIPPABLE_MAGIC = 0x184D2A50
ZSTD_MAX_HEADER = 18  # magic 4, descriptor 1, window 1, dictionary 4, content size 8
ZSTD_RESERVED_BLOCK = 3
LZ4_END_MARK = 0
LZ4_UNCOMPRESSED = 0x80000000


class Input:
    """The stream being decompressed: its blocks, taken from the source on demand.

    Blocks are kept as they came, without a copy (a list of pieces, not one
    growing buffer: appending to a buffer the size of a frame copies it again
    and again), so they must not change once handed over; :meth:`take`
    copies a frame out once.
    """

    def __init__(self, blocks: Iterable[Buffer]) -> None:
        self._blocks = iter(blocks)
        self._pieces: collections.deque[memoryview] = collections.deque()
        self._available = 0
        self.offset = 0  # of the position in the stream, for messages

    def fill(self, count: int) -> bool:
        """Make ``count`` bytes available; False when the stream ends first."""
        while self._available < count:
            block = next(self._blocks, None)
            if block is None:
                return False
            # Kept as it is, not copied: blocks never change once handed over.
            self._pieces.append(memoryview(block).cast("B"))
            self._available += len(block)
        return True

    def available(self) -> int:
        """How many bytes are buffered after the position."""
        return self._available

    def peek(self, start: int, count: int) -> bytes:
        """Up to ``count`` available bytes from ``start`` on (relative to the position)."""
        found = bytearray()
        for piece in self._pieces:
            if start >= len(piece):
                start -= len(piece)
                continue
            found += piece[start:start + count - len(found)]
            start = 0
            if len(found) == count:
                break
        return bytes(found)

    def take(self, count: int) -> bytes:
        """The next ``count`` available bytes, copied out; the position moves past them."""
        parts: list[memoryview] = []
        need = count
        while need:
            piece = self._pieces[0]
            if len(piece) <= need:
                parts.append(self._pieces.popleft())
                need -= len(piece)
            else:
                parts.append(piece[:need])
                self._pieces[0] = piece[need:]
                need = 0
        self._available -= count
        self.offset += count
        return b"".join(parts)

    def blocks(self) -> Iterator[bytes]:
        """Everything from the position on: the buffered bytes, then the rest of the stream.

        Use :meth:`give_back` for what the consumer did not use.
        """
        while self._pieces:
            yield self.take(len(self._pieces[0]))
        for block in self._blocks:
            self.offset += len(block)
            yield bytes(block)

    def give_back(self, data: bytes) -> None:
        """Put ``data`` back in front of the position (it was read past a frame's end)."""
        if data:
            self._pieces.appendleft(memoryview(data))
            self._available += len(data)
            self.offset -= len(data)


@dataclass(frozen=True)
class Frame:
    """One whole frame cut from the stream, and the size it must decompress to."""

    data: bytes
    content_size: int


class Format(Protocol):
    """How one compression format marks, cuts and decompresses its frames."""

    name: str

    def frame_length(self, source: Input) -> tuple[int, int] | None:
        """(length, content size) of the frame at the position, or None when it must stream.

        Raises DataError for a damaged or cut-off frame.
        """
        ...

    def decompress_frame(self, frame: Frame) -> bytes:
        """Decompress one whole frame (any thread)."""
        ...

    def stream_frame(self, source: Input) -> Iterator[bytes]:
        """Decompress the frame at the position as it streams by."""
        ...


def decompress_frames(form: Format, blocks: Iterable[Buffer], workers: int) -> Iterator[bytes]:
    """Decompress a stream of concatenated frames (and skippable frames), frames in parallel."""
    source = Input(blocks)
    while source.fill(1):
        # Frames are up to 4-8 MiB in and out: no more in flight than threads.
        yield from ordered_map(_checked(form), _whole_frames(form, source), workers=workers,
                               name=f"un{form.name}", ahead=workers)
        if source.fill(1):  # a frame that streams
            yield from form.stream_frame(source)


def _checked(form: Format) -> Callable[[Frame], bytes]:
    def decompress(frame: Frame) -> bytes:
        data = form.decompress_frame(frame)
        if len(data) != frame.content_size:
            raise DataError(f"{form.name} stream is damaged: a frame holds {len(data)} bytes, "
                            f"its header says {frame.content_size}")
        return data
    return decompress


def _whole_frames(form: Format, source: Input) -> Iterator[Frame]:
    """Whole frames from the position on, until the end or a frame that must stream."""
    while source.fill(1):
        if not source.fill(4):
            raise _truncated(form)
        magic = int.from_bytes(source.peek(0, 4), "little")
        if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC:
            _skip(form, source)
            continue
        found = form.frame_length(source)
        if found is None:
            return
        length, content_size = found
        yield Frame(source.take(length), content_size)


def _skip(form: Format, source: Input) -> None:
    if not source.fill(8):
        raise _truncated(form)
    length = 8 + int.from_bytes(source.peek(4, 4), "little")
    while length:
        if not source.fill(1):
            raise _truncated(form)
        step = min(length, source.available())
        source.take(step)
        length -= step


def _truncated(form: Format) -> DataError:
    return DataError(f"{form.name} stream ends in the middle of a frame (truncated)")


def _damaged(form: Format, source: Input, what: str) -> DataError:
    return DataError(f"{form.name} stream is damaged at offset {source.offset}: {what}")


class _StreamingDecompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes | None: ...

    def decompress(self, data: bytes) -> bytes: ...


def _stream(form: Format, source: Input, frame: _StreamingDecompressor,
            errors: type[Exception]) -> Iterator[bytes]:
    """Decompress the one frame at the position as the stream goes by; give back the rest."""
    try:
        for data in source.blocks():
            yield frame.decompress(data)
            if frame.eof:
                source.give_back(frame.unused_data or b"")
                return
    except errors as error:
        raise DataError(f"{form.name} stream is damaged: {error}") from None
    raise _truncated(form)


def _require(form: Format, source: Input, count: int) -> None:
    if not source.fill(count):
        raise _truncated(form)


class ZstdFrames:
    """zstd frames: header by the library, blocks walked here (RFC 8878 §3.1.1.2)."""

    name = "zstd"

    def __init__(self) -> None:
        # A ZstdDecompressor must not be shared between threads: one per worker.
        self._local = threading.local()

    def frame_length(self, source: Input) -> tuple[int, int] | None:
        if int.from_bytes(source.peek(0, 4), "little") != ZSTD_MAGIC:
            raise _damaged(self, source, "not a zstd frame")
        source.fill(ZSTD_MAX_HEADER)
        head = source.peek(0, ZSTD_MAX_HEADER)
        try:
            header_size = zstandard.frame_header_size(head)
            if len(head) < header_size:
                raise _truncated(self)
            parameters = zstandard.get_frame_parameters(head)
        except zstandard.ZstdError as error:
            if len(head) < ZSTD_MAX_HEADER:
                raise _truncated(self) from None
            raise _damaged(self, source, str(error)) from None
        content_size = parameters.content_size
        if content_size > MAX_FRAME:  # includes ZSTD_CONTENTSIZE_UNKNOWN (2**64 - 1)
            return None
        length = header_size
        while True:
            _require(self, source, length + 3)
            block = int.from_bytes(source.peek(length, 3), "little")
            kind, size = (block >> 1) & 3, block >> 3
            if kind == ZSTD_RESERVED_BLOCK:
                raise _damaged(self, source, "reserved block type")
            length += 3 + (1 if kind == 1 else size)  # an RLE block stores one byte
            if length > MAX_FRAME + ZSTD_MAX_HEADER:
                raise _damaged(self, source, "a frame is larger than its content size allows")
            if block & 1:  # the last block
                break
        length += 4 if parameters.has_checksum else 0
        _require(self, source, length)
        return length, content_size

    def decompress_frame(self, frame: Frame) -> bytes:
        context: zstandard.ZstdDecompressor | None = getattr(self._local, "context", None)
        if context is None:
            context = self._local.context = zstandard.ZstdDecompressor()
        try:
            data: bytes = context.decompress(frame.data)
        except zstandard.ZstdError as error:
            raise DataError(f"zstd stream is damaged: {error}") from None
        return data

    def stream_frame(self, source: Input) -> Iterator[bytes]:
        return _stream(self, source, zstandard.ZstdDecompressor().decompressobj(),
                       zstandard.ZstdError)


class Lz4Frames:
    """LZ4 frames (LZ4 Frame Format 1.6.x): descriptor and blocks walked here."""

    name = "lz4"

    def frame_length(self, source: Input) -> tuple[int, int] | None:
        if int.from_bytes(source.peek(0, 4), "little") != LZ4_MAGIC:
            raise _damaged(self, source, "not an lz4 frame")
        _require(self, source, 7)
        flags = source.peek(4, 1)[0]
        if flags >> 6 != 1:
            raise _damaged(self, source, "unknown frame version")
        block_checksum, has_size = flags & 0x10, flags & 0x08
        content_checksum, dictionary = flags & 0x04, flags & 0x01
        if not has_size:
            return None
        length = 4 + 2 + 8 + (4 if dictionary else 0) + 1
        _require(self, source, length)
        content_size = int.from_bytes(source.peek(6, 8), "little")
        if content_size > MAX_FRAME:
            return None
        while True:
            _require(self, source, length + 4)
            block = int.from_bytes(source.peek(length, 4), "little")
            length += 4
            if block == LZ4_END_MARK:
                break
            length += (block & ~LZ4_UNCOMPRESSED) + (4 if block_checksum else 0)
            if length > MAX_FRAME + 64:
                raise _damaged(self, source, "a frame is larger than its content size allows")
        length += 4 if content_checksum else 0
        _require(self, source, length)
        return length, content_size

    def decompress_frame(self, frame: Frame) -> bytes:
        try:
            data: bytes = lz4.frame.decompress(frame.data)
        except RuntimeError as error:
            raise DataError(f"lz4 stream is damaged: {error}") from None
        return data

    def stream_frame(self, source: Input) -> Iterator[bytes]:
        return _stream(self, source, lz4.frame.LZ4FrameDecompressor(), RuntimeError)

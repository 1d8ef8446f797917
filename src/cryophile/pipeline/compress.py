"""Compression, the first stage of backup and the last of restore.

One class per algorithm, each with its name (as written in the manifest), its
magic bytes for detection, a compressing and a decompressing stage. Stages map
an iterator of byte blocks to another; the outer stream of every algorithm is
the tool's standard format (``zstd -d`` and ``lz4 -d`` read what we write), so
a backup can be recovered without cryophile.

Libraries: ``zstandard`` and ``lz4.frame``, both of which release the GIL.
Compression is the costliest stage of a backup, so it runs on every core
(:data:`WORKERS` threads): the input is read in blocks of the codec's
``block_size`` and each block becomes one independent frame, like ``pzstd``
and ``zstd -T`` do. Concatenated frames are one valid stream for ``zstd -d``
and ``lz4 -d``. Memory stays bounded: at most ``WORKERS + 1`` blocks are in
flight (:func:`cryophile.pipeline.stages.ordered_map`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar, Protocol

import lz4.frame
import zstandard

from cryophile.errors import UsageError
from cryophile.pipeline.frames import Lz4Frames, ZstdFrames, decompress_frames
from cryophile.pipeline.stages import BLOCK_SIZE, Buffer, ordered_map, rebatch

DEFAULT_ZSTD_LEVEL = 3
#: Compressing threads: one per core (the other stages mostly wait on them).
WORKERS = max(1, min(4, os.cpu_count() or 1))
#: zstd frame size. Each frame is compressed with no history of the others, so
#: smaller frames cost ratio: on a tar of /usr, 8 MiB frames 0.5 % against one
#: frame, 4 MiB 1.5 %; on a tar of /usr/lib, 4 MiB 0.16 % more than 8 MiB. But up
#: to nine frames are in memory at once between the reader, the compressing
#: threads and the encrypting thread: 4 MiB frames take the peak RSS of a local
#: backup of 512 MiB (-s 64M) from 137 to 95 MiB and of its restore --thaw from
#: 143 to 116 MiB (/usr/bin/time), which keeps `backup --freeze` with boto3 and its
#: uploads under 160 MiB (issue 14; bench/README.md has the benchmarks' figures).
ZSTD_FRAME = 4 * 1024 * 1024
#: lz4 frame size: lz4 looks back only 64 KiB, so 1 MiB frames cost nothing
#: in ratio and keep the lz4 backup within its memory budget.
LZ4_FRAME = 1024 * 1024


class Codec(Protocol):
    """One compression algorithm."""

    name: ClassVar[str]
    magic: ClassVar[bytes]
    #: The input block size :meth:`compress` works best with.
    block_size: ClassVar[int]

    def compress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Compress a stream of blocks into one stream of the tool's format.

        Blocks must not change after they are handed over.
        """
        ...

    def decompress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Decompress; raise DataError if the stream is damaged or ends early.

        Blocks must not change after they are handed over (they may be kept
        without a copy).
        """
        ...


class NoCompression:
    """Stores the stream as it is."""

    name: ClassVar[str] = "none"
    magic: ClassVar[bytes] = b""
    block_size: ClassVar[int] = BLOCK_SIZE

    def compress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Pass the blocks through unchanged."""
        for block in blocks:
            yield bytes(block)

    def decompress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Pass the blocks through unchanged."""
        for block in blocks:
            yield bytes(block)


class Zstd:
    """Zstandard: one frame per input block (``zstd -d`` reads them as one stream)."""

    name: ClassVar[str] = "zstd"
    magic: ClassVar[bytes] = b"\x28\xb5\x2f\xfd"
    block_size: ClassVar[int] = ZSTD_FRAME

    def __init__(self, level: int = DEFAULT_ZSTD_LEVEL, workers: int = WORKERS) -> None:
        if not 1 <= level <= 22:
            raise UsageError(f"invalid zstd level {level}: use 1 to 22")
        self.level = level
        self.workers = workers
        # A ZstdCompressor must not be shared between threads: one per worker.
        self._local = threading.local()

    def _frame(self, block: Buffer) -> bytes:
        compressor: zstandard.ZstdCompressor | None = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = zstandard.ZstdCompressor(level=self.level)
        return compressor.compress(block)

    def compress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Compress each block into its own frame, on :data:`WORKERS` threads, in order."""
        yield from _frames(self._frame, blocks, self.workers, "zstd")

    def decompress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Decompress one or more concatenated frames, on :data:`WORKERS` threads, in order.

        A damaged or cut-off frame is a DataError.
        """
        yield from decompress_frames(ZstdFrames(), blocks, self.workers)


class Lz4:
    """LZ4 frame format: one frame per input block (``lz4 -d`` reads them as one stream)."""

    name: ClassVar[str] = "lz4"
    magic: ClassVar[bytes] = b"\x04\x22\x4d\x18"
    block_size: ClassVar[int] = LZ4_FRAME

    def __init__(self, workers: int = WORKERS) -> None:
        self.workers = workers

    @staticmethod
    def _frame(block: Buffer) -> bytes:
        # python-lz4 is slower on a memoryview than on bytes or bytearray
        # (the backup's input blocks): only views are copied.
        data = bytes(block) if isinstance(block, memoryview) else block
        compressed: bytes = lz4.frame.compress(data, block_size=lz4.frame.BLOCKSIZE_MAX1MB)
        return compressed

    def compress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Compress each block into its own frame, on :data:`WORKERS` threads, in order."""
        yield from _frames(self._frame, blocks, self.workers, "lz4")

    def decompress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Decompress one or more concatenated frames, on :data:`WORKERS` threads, in order.

        A damaged or cut-off frame is a DataError.
        """
        yield from decompress_frames(Lz4Frames(), blocks, self.workers)


def _frames(frame: Callable[[Buffer], bytes], blocks: Iterable[Buffer], workers: int,
            name: str) -> Iterator[bytes]:
    """One compressed frame per non-empty block, in items of ≥ 1 MiB.

    Small frames (very compressible input) are joined so the next stages get
    large items. An empty stream is one empty frame, which keeps ``zstd -d``
    and ``lz4 -d`` of an empty backup working.
    """
    produced = False
    for item in rebatch(ordered_map(frame, (block for block in blocks if len(block)),
                                    workers=workers, name=name)):
        produced = True
        yield item
    if not produced:
        yield frame(b"")


NAMES = ("none", "lz4", "zstd")
#: Both magics are 4 octets.
MAGIC_SIZE = 4


def codec_for(name: str, level: int | None = None) -> Codec:
    """The codec called ``name`` (as on the command line and in the manifest)."""
    if name == "zstd":
        return Zstd(DEFAULT_ZSTD_LEVEL if level is None else level)
    if level is not None:
        raise UsageError(f"a compression level only applies to zstd, not {name!r}")
    if name == "lz4":
        return Lz4()
    if name == "none":
        return NoCompression()
    raise UsageError(f"unknown compression {name!r}: use one of {', '.join(NAMES)}")


def detect(head: bytes) -> Codec:
    """Guess the codec from the first bytes of the decrypted stream."""
    for codec in (Zstd(), Lz4()):
        if head.startswith(codec.magic):
            return codec
    return NoCompression()


def detecting(blocks: Iterable[Buffer]) -> tuple[Codec, Iterator[Buffer]]:
    """Peek at the first blocks to :func:`detect` the codec; return it and the whole stream."""
    iterator = iter(blocks)
    head: list[Buffer] = []
    # The magic may span blocks: a decryptor's items can be a few octets long.
    while sum(len(block) for block in head) < MAGIC_SIZE:
        block = next(iterator, None)
        if block is None:
            break
        head.append(block)

    def whole() -> Iterator[Buffer]:
        yield from head
        yield from iterator

    return detect(b"".join(block[:MAGIC_SIZE] for block in head)[:MAGIC_SIZE]), whole()

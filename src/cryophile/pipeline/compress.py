"""Compression, the first stage of backup and the last of restore.

One class per algorithm, each with its name (as written in the manifest), its
magic bytes for detection, a compressing and a decompressing stage. Stages map
an iterator of byte blocks to another; the outer stream of every algorithm is
the tool's standard format (``zstd -d`` and ``lz4 -d`` read what we write), so
a backup can be recovered without cryophile.

Libraries: ``zstandard`` and ``lz4.frame``, both of which release the GIL, so
compression overlaps with encryption in another thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import ClassVar, Protocol

import lz4.frame
import zstandard

from cryophile.errors import DataError, UsageError
from cryophile.pipeline.stages import rebatch

DEFAULT_ZSTD_LEVEL = 3

Buffer = bytes | bytearray | memoryview


class Codec(Protocol):
    """One compression algorithm."""

    name: ClassVar[str]
    magic: ClassVar[bytes]

    def compress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Compress a stream of blocks into one stream of the tool's format."""
        ...

    def decompress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Decompress; raise DataError if the stream is damaged or ends early."""
        ...


class NoCompression:
    """Stores the stream as it is."""

    name: ClassVar[str] = "none"
    magic: ClassVar[bytes] = b""

    def compress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Pass the blocks through unchanged."""
        for block in blocks:
            yield bytes(block)

    def decompress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Pass the blocks through unchanged."""
        for block in blocks:
            yield bytes(block)


class Zstd:
    """Zstandard, one frame (``zstd -d`` reads it); restore accepts several frames."""

    name: ClassVar[str] = "zstd"
    magic: ClassVar[bytes] = b"\x28\xb5\x2f\xfd"

    def __init__(self, level: int = DEFAULT_ZSTD_LEVEL, threads: int = 0) -> None:
        if not 1 <= level <= 22:
            raise UsageError(f"invalid zstd level {level}: use 1 to 22")
        self.level = level
        self.threads = threads

    def compress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Compress into one zstd frame, in items of ≥ 1 MiB."""
        compressor = zstandard.ZstdCompressor(level=self.level, threads=self.threads).compressobj()

        def pieces() -> Iterator[bytes]:
            for block in blocks:
                yield compressor.compress(block)
            yield compressor.flush()

        yield from rebatch(pieces())

    def decompress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Decompress one or more concatenated frames; a cut-off frame is a DataError."""
        context = zstandard.ZstdDecompressor()
        frame = context.decompressobj()
        started = False
        try:
            for block in blocks:
                data = bytes(block)
                while data:
                    started = True
                    yield frame.decompress(data)
                    if not frame.eof:
                        break
                    data = frame.unused_data
                    frame = context.decompressobj()
                    started = False
        except zstandard.ZstdError as error:
            raise DataError(f"zstd stream is damaged: {error}") from None
        if started and not frame.eof:
            raise DataError("zstd stream ends in the middle of a frame (truncated)")


class Lz4:
    """LZ4 frame format (``lz4 -d`` reads it)."""

    name: ClassVar[str] = "lz4"
    magic: ClassVar[bytes] = b"\x04\x22\x4d\x18"

    def compress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Compress into one LZ4 frame, in items of ≥ 1 MiB."""
        compressor = lz4.frame.LZ4FrameCompressor(block_size=lz4.frame.BLOCKSIZE_MAX4MB)

        def pieces() -> Iterator[bytes]:
            yield compressor.begin()
            for block in blocks:
                # python-lz4 is several times slower on memoryview than on bytes.
                yield compressor.compress(block if isinstance(block, bytes) else bytes(block))
            yield compressor.flush()

        yield from rebatch(pieces())

    def decompress(self, blocks: Iterable[Buffer]) -> Iterator[bytes]:
        """Decompress one or more concatenated frames; a cut-off frame is a DataError."""
        frame = lz4.frame.LZ4FrameDecompressor()
        started = False
        try:
            for block in blocks:
                data = bytes(block)
                while data:
                    started = True
                    yield frame.decompress(data)
                    if not frame.eof:
                        break
                    data = frame.unused_data
                    frame = lz4.frame.LZ4FrameDecompressor()
                    started = False
        except RuntimeError as error:
            raise DataError(f"lz4 stream is damaged: {error}") from None
        if started and not frame.eof:
            raise DataError("lz4 stream ends in the middle of a frame (truncated)")


NAMES = ("none", "lz4", "zstd")


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
    """Peek at the first block to :func:`detect` the codec; return it and the whole stream."""
    iterator = iter(blocks)
    first = next(iterator, b"")

    def whole() -> Iterator[Buffer]:
        if first:
            yield first
        yield from iterator

    return detect(bytes(first[:4])), whole()

"""Cutting zstd and lz4 streams at frame boundaries for parallel decompression.

The frames come from the real tools (``zstd``, ``lz4``) and from the libraries
with every option that changes the framing (checksums, content size or not,
RLE blocks, skippable frames); the stream is cut into pieces at random places,
as decrypted data arrives; the output must be exactly the input, and every
damage must be a DataError, never wrong output.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess

import lz4.frame
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cryophile.errors import DataError
from cryophile.pipeline.compress import Lz4, Zstd
from cryophile.pipeline.frames import MAX_FRAME, Input

TEXT = b"".join(b"line %d of a log file, fairly repetitive\n" % n for n in range(60_000))


def cut(data: bytes, rng: random.Random, largest: int = 300_000) -> list[bytes]:
    """``data`` in pieces of random sizes (1 byte and up)."""
    pieces = []
    position = 0
    while position < len(data):
        step = rng.randint(1, largest)
        pieces.append(data[position:position + step])
        position += step
    return pieces


def run_tool(argv: list[str], data: bytes) -> bytes:
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


def skippable(payload: bytes, variant: int = 0) -> bytes:
    return struct.pack("<II", 0x184D2A50 + variant, len(payload)) + payload


def zstd_frame(data: bytes, **options: object) -> bytes:
    compressed: bytes = zstandard.ZstdCompressor(**options).compress(data)  # type: ignore[arg-type]
    return compressed


def zstd_streamed(data: bytes) -> bytes:
    """A frame without a content size, with a checksum (as ``zstd`` makes from a pipe)."""
    compressor = zstandard.ZstdCompressor(write_checksum=True).compressobj()
    return compressor.compress(data) + compressor.flush()


def zstd_parts() -> list[tuple[bytes, bytes]]:
    """(compressed, plaintext) pairs covering every kind of zstd frame we may meet."""
    random_bytes = os.urandom(700_000)
    return [
        (zstd_frame(TEXT), TEXT),                                      # content size, no checksum
        (zstd_frame(random_bytes, write_checksum=True), random_bytes),  # raw blocks, checksum
        (zstd_frame(b"\0" * 500_000), b"\0" * 500_000),                 # RLE blocks
        (zstd_frame(b""), b""),                                         # empty frame
        (skippable(b"metadata", 5), b""),                              # skippable frame
        (zstd_streamed(TEXT[:200_000]), TEXT[:200_000]),                # no content size
        (run_tool(["zstd", "-q", "-c", "-3"], TEXT[:100_000]), TEXT[:100_000]),  # the tool
        (zstd_frame(TEXT[:5000], write_content_size=False), TEXT[:5000]),
    ]


def lz4_parts() -> list[tuple[bytes, bytes]]:
    random_bytes = os.urandom(600_000)
    return [
        (lz4.frame.compress(TEXT), TEXT),
        (lz4.frame.compress(random_bytes, block_checksum=True, content_checksum=True),
         random_bytes),
        (lz4.frame.compress(TEXT[:300_000], store_size=False), TEXT[:300_000]),
        (lz4.frame.compress(b""), b""),
        (skippable(b"x" * 1000), b""),
        (lz4.frame.compress(TEXT, block_size=lz4.frame.BLOCKSIZE_MAX64KB,
                            block_linked=False), TEXT),
        (run_tool(["lz4", "-q", "-c"], TEXT[:100_000]), TEXT[:100_000]),
    ]


@pytest.mark.parametrize(("codec", "parts"), [(Zstd(), zstd_parts), (Lz4(), lz4_parts)],
                         ids=["zstd", "lz4"])
def test_every_kind_of_frame_in_any_order_and_any_cut(codec: Zstd | Lz4,
                                                      parts: object) -> None:
    made = parts()  # type: ignore[operator]
    rng = random.Random(7)
    for round_number in range(6):
        rng.shuffle(made)
        stream = b"".join(compressed for compressed, _ in made)
        expected = b"".join(plain for _, plain in made)
        largest = [1 << 20, 1000, 70_000][round_number % 3]
        assert b"".join(codec.decompress(cut(stream, rng, largest))) == expected


def test_a_frame_larger_than_the_limit_streams_instead() -> None:
    big = os.urandom(MAX_FRAME + 100_000)
    stream = zstd_frame(b"head") + zstd_frame(big) + zstd_frame(b"tail")
    pieces = cut(stream, random.Random(1), 1 << 20)
    assert b"".join(Zstd().decompress(pieces)) == b"head" + big + b"tail"
    lz4_stream = lz4.frame.compress(b"head") + lz4.frame.compress(big) + lz4.frame.compress(b"x")
    assert b"".join(Lz4().decompress(cut(lz4_stream, random.Random(2), 1 << 20))) == \
        b"head" + big + b"x"


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 40_000), min_size=1, max_size=12), seed=st.integers(0, 999))
def test_many_small_frames_come_out_in_order(sizes: list[int], seed: int) -> None:
    rng = random.Random(seed)
    plains = [rng.randbytes(size // 2) + TEXT[:size - size // 2] for size in sizes]
    for codec, compress in ((Zstd(), zstd_frame), (Lz4(), lz4.frame.compress)):
        stream = b"".join(compress(plain) for plain in plains)
        assert b"".join(codec.decompress(cut(stream, rng, 20_000))) == b"".join(plains)


@pytest.mark.parametrize("name", ["zstd", "lz4"])
def test_a_cut_at_every_place_of_a_frame_is_truncation(name: str) -> None:
    codec = Zstd() if name == "zstd" else Lz4()
    frame = zstd_frame(TEXT[:3000], write_checksum=True) if name == "zstd" else \
        lz4.frame.compress(TEXT[:3000], block_checksum=True, content_checksum=True)
    whole = zstd_frame(b"first") if name == "zstd" else lz4.frame.compress(b"first")
    for end in range(1, len(frame)):
        with pytest.raises(DataError, match=r"truncated|damaged"):
            b"".join(codec.decompress([whole, frame[:end]]))


@pytest.mark.parametrize("name", ["zstd", "lz4"])
def test_damage_is_a_data_error_never_wrong_output(name: str) -> None:
    codec = Zstd() if name == "zstd" else Lz4()
    plain = TEXT[:50_000]
    frame = zstd_frame(plain, write_checksum=True) if name == "zstd" else \
        lz4.frame.compress(plain, content_checksum=True)
    rng = random.Random(3)
    refused = 0
    for _ in range(300):
        damaged = bytearray(frame)
        position = rng.randrange(len(damaged))
        damaged[position] ^= 1 << rng.randrange(8)
        try:
            output = b"".join(codec.decompress(cut(bytes(damaged), rng, 4000)))
        except DataError:
            refused += 1
            continue
        assert output == plain  # a flip the format ignores may pass, but never wrong data
    assert refused >= 250


def test_garbage_after_a_frame_is_an_error() -> None:
    with pytest.raises(DataError, match="not a zstd frame"):
        b"".join(Zstd().decompress([zstd_frame(b"data") + b"garbage!"]))
    with pytest.raises(DataError, match="not an lz4 frame"):
        b"".join(Lz4().decompress([lz4.frame.compress(b"data") + b"garbage!"]))


def test_a_header_that_lies_about_the_content_size_is_an_error() -> None:
    # Single-segment frame, 1-byte content size: patch the size from 100 to 99.
    frame = bytearray(zstd_frame(b"a" * 100))
    assert frame[4] & 0x20
    assert frame[5] == 100
    frame[5] = 99
    with pytest.raises(DataError, match="zstd stream is damaged"):
        b"".join(Zstd().decompress([bytes(frame)]))


def test_a_reserved_block_type_is_refused_before_decompressing() -> None:
    frame = bytearray(zstd_frame(b"a" * 100))
    header_size = zstandard.frame_header_size(bytes(frame))
    frame[header_size] |= 0b110  # block type 3 (reserved)
    with pytest.raises(DataError, match="reserved block type"):
        b"".join(Zstd().decompress([bytes(frame)]))


def test_the_input_gives_back_what_a_streaming_decoder_read_too_far() -> None:
    source = Input([b"abc", b"defg", b"h"])
    assert source.fill(5)
    assert source.take(2) == b"ab"
    assert source.peek(0, 4) == b"cdef"
    pieces = source.blocks()
    assert next(pieces) == b"c"
    source.give_back(b"c")
    assert source.take(1) == b"c"
    assert not source.fill(100)
    assert source.available() == 5
    assert source.take(5) == b"defgh"

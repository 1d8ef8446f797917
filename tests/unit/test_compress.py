"""Compression stages: round trips, the tools' formats, truncation, detection."""

from __future__ import annotations

import os
import subprocess

import pytest

from cryophile.errors import DataError, UsageError
from cryophile.pipeline.compress import Codec, codec_for, detect, detecting

DATA = os.urandom(3 * 1024 * 1024) + b"compressible text " * 200_000


def blocks(data: bytes, size: int = 1024 * 1024) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("name", ["zstd", "lz4", "none"])
def test_round_trip(name: str) -> None:
    codec = codec_for(name)
    compressed = list(codec.compress(blocks(DATA)))
    assert all(len(item) >= 1024 * 1024 for item in compressed[:-1])
    assert b"".join(codec.decompress(blocks(b"".join(compressed), 7777))) == DATA


@pytest.mark.parametrize(("name", "tool"), [("zstd", "zstd"), ("lz4", "lz4")])
def test_the_tool_reads_our_stream(name: str, tool: str) -> None:
    compressed = b"".join(codec_for(name).compress(blocks(DATA)))
    result = subprocess.run([tool, "-d", "-c"], input=compressed, capture_output=True,
                            check=True)
    assert result.stdout == DATA


@pytest.mark.parametrize(("name", "tool"), [("zstd", "zstd"), ("lz4", "lz4")])
def test_we_read_the_tools_stream_with_several_frames(name: str, tool: str) -> None:
    first = subprocess.run([tool, "-c"], input=b"one " * 1000, capture_output=True,
                           check=True).stdout
    second = subprocess.run([tool, "-c"], input=b"two " * 1000, capture_output=True,
                            check=True).stdout
    codec = codec_for(name)
    assert b"".join(codec.decompress([first + second])) == b"one " * 1000 + b"two " * 1000


@pytest.mark.parametrize("name", ["zstd", "lz4"])
def test_truncated_stream_is_an_error(name: str) -> None:
    codec: Codec = codec_for(name)
    compressed = b"".join(codec.compress(blocks(DATA)))
    with pytest.raises(DataError, match=r"truncated|damaged"):
        b"".join(codec.decompress([compressed[:-10]]))


def test_detection_by_magic() -> None:
    for name in ("zstd", "lz4"):
        stream = b"".join(codec_for(name).compress([b"x" * 100]))
        assert detect(stream).name == name
        codec, whole = detecting(iter([stream]))
        assert codec.name == name
        assert b"".join(whole) == stream
    assert detect(b"plain").name == "none"


def test_detection_when_the_magic_is_split_across_blocks() -> None:
    # The fast engine hands plaintext on as views cut where the literal
    # packet's chunks end: the first item may be shorter than the magic.
    for name in ("zstd", "lz4"):
        stream = b"".join(codec_for(name).compress([b"x" * 100]))
        pieces = [memoryview(stream)[:1], memoryview(stream)[1:3], memoryview(stream)[3:]]
        codec, whole = detecting(iter(pieces))
        assert codec.name == name
        assert b"".join(whole) == stream
        assert b"".join(codec.decompress(pieces)) == b"x" * 100
    for short in (b"", b"\x28\xb5"):
        codec, whole = detecting(iter([short]))
        assert codec.name == "none"
        assert b"".join(whole) == short


def test_bad_names_and_levels() -> None:
    with pytest.raises(UsageError, match="gzip"):
        codec_for("gzip")
    with pytest.raises(UsageError, match="1 to 22"):
        codec_for("zstd", 0)
    with pytest.raises(UsageError, match="only applies to zstd"):
        codec_for("lz4", 3)


@pytest.mark.parametrize(("name", "tool"), [("zstd", "zstd"), ("lz4", "lz4")])
def test_blocks_are_compressed_in_parallel_frames_the_tool_reads_as_one_stream(
        name: str, tool: str) -> None:
    # Backup reads input in blocks of block_size; each becomes a frame, made
    # on several threads and put back in order.
    codec = codec_for(name)
    # ~12 MiB, part random, part repetitive: a dozen frames of each codec.
    data = b"".join(os.urandom(100) * (7 + index % 50) for index in range(4000))
    compressed = b"".join(codec.compress(blocks(data, codec.block_size // 8)))
    assert compressed.count(codec.magic) >= len(data) // (codec.block_size // 8)
    result = subprocess.run([tool, "-d", "-c"], input=compressed, capture_output=True,
                            check=True)
    assert result.stdout == data


@pytest.mark.parametrize(("name", "tool"), [("zstd", "zstd"), ("lz4", "lz4")])
def test_an_empty_stream_is_one_empty_frame(name: str, tool: str) -> None:
    compressed = b"".join(codec_for(name).compress([]))
    assert compressed.startswith(codec_for(name).magic)
    result = subprocess.run([tool, "-d", "-c"], input=compressed, capture_output=True,
                            check=True)
    assert result.stdout == b""

"""Interop matrix of the fast OpenPGP engine against real implementations.

Everything :class:`FastEngine` writes must be decrypted byte for byte by
``gpg``, ``sqop decrypt``, ``sq decrypt`` (unprotected keys: sq 0.27 reads
passwords only from a terminal) and pysequoia; everything ``gpg`` (with
``--compress-algo none``), ``sqop`` and pysequoia write to the same keys must
be decrypted by the engine. For keys made by each tool, with and without a
passphrase, at the sizes around the framing boundaries (the 1 MiB partial
chunks), plus a large stream (256 MiB here; 2 GiB under the ``slow`` marker).

The engine's own decryptor is fed blocks of awkward sizes so that packet
headers, partial lengths and the MDC straddle block boundaries.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pysequoia
import pytest
from pysequoia.packet import PacketPile, Tag

import oracles
from cryophile.pipeline.fastpgp.engine import FastEngine
from cryophile.pipeline.keys import load_recipients, load_secret_keys

MIB = 1024 * 1024
_RANDOM = random.Random(20261126)
SIZES = [0, 1, 8191, 8192, MIB - 1, MIB, MIB + 1,
         _RANDOM.randrange(2, 8191), _RANDOM.randrange(8193, MIB - 1),
         _RANDOM.randrange(2 * MIB, 4 * MIB)]
#: Awkward block sizes for feeding the decryptor (cycled).
ODD_BLOCKS = (1, 5, 65536, MIB + 3, 17, 999_983)

KINDS = ["gpg-cv25519", "gpg-cv25519-protected", "gpg-rsa3072", "gpg-rsa3072-protected",
         "sq", "sq-protected", "sqop", "sqop-protected"]
_FIXTURES = {"gpg-cv25519": "gpg_key", "gpg-cv25519-protected": "gpg_key_protected",
             "gpg-rsa3072": "gpg_rsa_key", "gpg-rsa3072-protected": "gpg_rsa_key_protected",
             "sq": "sq_key", "sq-protected": "sq_key_protected", "sqop": "sqop_key",
             "sqop-protected": "sqop_key_protected"}


@pytest.fixture(scope="session")
def gpg_rsa_key_protected(key_dir: Path) -> oracles.KeyPair:
    return oracles.make_gpg_key(key_dir / "gpg-rsa-pw", algo="rsa3072", passphrase="rsa pass")


@pytest.fixture(scope="session")
def sq_key_protected(key_dir: Path) -> oracles.KeyPair:
    return oracles.make_sq_key(key_dir / "sq-pw", passphrase="sq pass phrase")


@pytest.fixture(params=KINDS)
def key(request: pytest.FixtureRequest) -> oracles.KeyPair:
    pair: oracles.KeyPair = request.getfixturevalue(_FIXTURES[request.param])
    return pair


def data_of(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def blocks_of(data: bytes, sizes: Iterable[int] = (MIB,)) -> Iterator[bytes]:
    """``data`` cut into consecutive blocks, cycling through ``sizes``."""
    cuts = list(sizes)
    position = 0
    index = 0
    while position < len(data):
        step = cuts[index % len(cuts)]
        yield data[position:position + step]
        position += step
        index += 1


def fast_encrypt(data: bytes, pair: oracles.KeyPair) -> bytes:
    recipients = load_recipients([pair.cert])
    return b"".join(FastEngine().encrypt(blocks_of(data), recipients))


def fast_decrypt(message: bytes, pair: oracles.KeyPair) -> bytes:
    key = load_secret_keys([pair.secret])[0]
    return b"".join(FastEngine().decrypt(blocks_of(message, ODD_BLOCKS), key, pair.passphrase))


def pysequoia_decrypt(message: bytes, pair: oracles.KeyPair) -> bytes:
    tsk = pysequoia.Tsk.from_file(str(pair.secret))
    plain = pysequoia.decrypt(message, decryptor=tsk.decryptor(pair.passphrase)).bytes
    assert plain is not None
    return bytes(plain)


Oracle = Callable[[Path, oracles.KeyPair, Path], None]


def cli_decryptors(pair: oracles.KeyPair) -> list[Oracle]:
    found: list[Oracle] = [oracles.gpg_decrypt, oracles.sqop_decrypt]
    if pair.passphrase is None:
        found.append(oracles.sq_decrypt)
    return found


def test_everything_the_engine_writes_is_read_by_gpg_sq_sqop_and_pysequoia(
        key: oracles.KeyPair, tmp_path: Path) -> None:
    failures: list[str] = []
    # The CLI oracles are mostly process start-up and agent latency: run
    # them side by side.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        jobs: list[tuple[str, int, concurrent.futures.Future[None], Path]] = []
        for size in SIZES:
            data = data_of(size)
            message = fast_encrypt(data, key)
            path = tmp_path / f"{size}.pgp"
            path.write_bytes(message)
            packets = [(p.tag, p.body[:1]) for p in PacketPile.from_bytes(message)]
            assert packets == [(Tag.PKESK, b"\x03"), (Tag.SEIP, b"\x01")], size
            for decrypt in cli_decryptors(key):
                out = tmp_path / f"{size}.{decrypt.__name__}"
                jobs.append((decrypt.__name__, size, pool.submit(decrypt, path, key, out), out))
            if pysequoia_decrypt(message, key) != data:
                failures.append(f"pysequoia, {size} bytes: output differs")
            if fast_decrypt(message, key) != data:
                failures.append(f"fast engine, {size} bytes: output differs")
        for name, size, job, out in jobs:
            try:
                job.result()
            except oracles.OracleError as error:
                failures.append(f"{name}, {size} bytes: {error}")
                continue
            if out.read_bytes() != data_of(size):
                failures.append(f"{name}, {size} bytes: output differs")
    assert not failures, "\n".join(failures)


def test_the_engine_reads_what_gpg_sqop_and_pysequoia_write(
        key: oracles.KeyPair, tmp_path: Path) -> None:
    failures: list[str] = []
    cert = pysequoia.Cert.from_file(str(key.cert))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        jobs: list[tuple[str, int, concurrent.futures.Future[None], Path]] = []
        for size in SIZES:
            plain = tmp_path / f"{size}.plain"
            plain.write_bytes(data_of(size))
            for encrypt in (oracles.gpg_encrypt, oracles.sqop_encrypt):
                out = tmp_path / f"{size}.{encrypt.__name__}.pgp"
                jobs.append((encrypt.__name__, size, pool.submit(encrypt, plain, key, out), out))
            message = pysequoia.encrypt(data_of(size), [cert], armor=False)
            if fast_decrypt(message, key) != data_of(size):
                failures.append(f"pysequoia.encrypt, {size} bytes: fast engine output differs")
        for name, size, job, out in jobs:
            job.result()
            if fast_decrypt(out.read_bytes(), key) != data_of(size):
                failures.append(f"{name}, {size} bytes: fast engine output differs")
    assert not failures, "\n".join(failures)


def test_several_recipients_one_pkesk_each(gpg_key: oracles.KeyPair, gpg_rsa_key: oracles.KeyPair,
                                           sqop_key_protected: oracles.KeyPair,
                                           tmp_path: Path) -> None:
    keys = [gpg_key, gpg_rsa_key, sqop_key_protected]
    recipients = load_recipients([pair.cert for pair in keys])
    data = data_of(MIB + 12345)
    message = b"".join(FastEngine().encrypt(blocks_of(data), recipients))
    tags = [p.tag for p in PacketPile.from_bytes(message)]
    assert tags == [Tag.PKESK] * 3 + [Tag.SEIP]
    path = tmp_path / "m.pgp"
    path.write_bytes(message)
    for pair in keys:
        out = tmp_path / f"{pair.tool}.out"
        oracles.gpg_decrypt(path, pair, out)
        assert out.read_bytes() == data
        assert fast_decrypt(message, pair) == data


# --------------------------------------------------------------------------- large streams


def _stream(size: int, digest: hashlib._Hash) -> Iterator[bytes]:
    """``size`` bytes in 1 MiB blocks (a random MiB rotated per block), hashed on the way."""
    base = os.urandom(MIB)
    sent = 0
    index = 0
    while sent < size:
        shift = (index * 4099) % MIB
        block = (base[shift:] + base[:shift])[:size - sent]
        digest.update(block)
        sent += len(block)
        index += 1
        yield block


def _write(path: Path, blocks: Iterable[bytes | bytearray | memoryview]) -> None:
    with path.open("wb") as out:
        for block in blocks:
            out.write(block)


def _file_blocks(path: Path, size: int = MIB) -> Iterator[bytes]:
    with path.open("rb") as source:
        while block := source.read(size):
            yield block


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    for block in _file_blocks(path):
        digest.update(block)
    return digest.hexdigest()


def _large_round_trip(size: int, pair: oracles.KeyPair, tmp_path: Path) -> None:
    expected = hashlib.sha256()
    message = tmp_path / "large.pgp"
    recipients = load_recipients([pair.cert])
    _write(message, FastEngine().encrypt(_stream(size, expected), recipients))
    out = tmp_path / "large.gpg.out"
    oracles.gpg_decrypt(message, pair, out)
    assert out.stat().st_size == size
    assert _sha256_file(out) == expected.hexdigest()
    out.unlink()
    key = load_secret_keys([pair.secret])[0]
    got = hashlib.sha256()
    count = 0
    for block in FastEngine().decrypt(_file_blocks(message), key, pair.passphrase):
        got.update(block)
        count += len(block)
    assert (count, got.hexdigest()) == (size, expected.hexdigest())
    message.unlink()
    # And the other way: gpg writes (its own partial-length framing), we read.
    plain = tmp_path / "large.plain"
    again = hashlib.sha256()
    _write(plain, _stream(size, again))
    oracles.gpg_encrypt(plain, pair, message)
    plain.unlink()
    got = hashlib.sha256()
    for block in FastEngine().decrypt(_file_blocks(message), key, pair.passphrase):
        got.update(block)
    assert got.hexdigest() == again.hexdigest()


def test_large_stream_256_mib(gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    _large_round_trip(256 * MIB, gpg_key, tmp_path)


@pytest.mark.slow
def test_large_stream_2_gib(gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    _large_round_trip(2 * 1024 * MIB, gpg_key, tmp_path)

"""Pieces of the fast OpenPGP engine: framing, key parsing, fallback to the reference engine.

The fallback tests use what pysequoia writes for certificates of the
sequoia 2.x kind (SEIPD v2 messages, v6 keys) and what gpg writes by default
(a compressed packet inside): valid OpenPGP the fast engine does not handle,
which must still decrypt — through the reference engine, with a notice.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import random
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pysequoia
import pytest
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st
from pysequoia.packet import PacketPile, Tag

import oracles
from cryophile.pipeline.engines import ENGINES, engine_for
from cryophile.pipeline.fastpgp import cfb, packets, seipd
from cryophile.pipeline.fastpgp.engine import FastEngine, recipient_keys
from cryophile.pipeline.fastpgp.packets import (
    BodyReader,
    StreamReader,
    UnsupportedError,
    mpi,
    new_length,
    read_header,
    read_mpi,
    read_new_length,
)
from cryophile.pipeline.fastpgp.pkesk import supported_recipient
from cryophile.pipeline.fastpgp.secretkey import S2K, SecretKeyPacket, secret_keys, unlock
from cryophile.pipeline.keys import Recipients, load_recipients, load_secret_keys

MIB = 1024 * 1024


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


# --------------------------------------------------------------------------- framing


@pytest.mark.parametrize("length", [0, 1, 191, 192, 193, 8383, 8384, 65535, 2**32 - 1])
def test_new_format_lengths_round_trip(length: int) -> None:
    encoded = new_length(length)
    assert len(encoded) == (1 if length < 192 else 2 if length < 8384 else 5)
    reader = StreamReader(pieces(encoded, 1))
    assert read_new_length(reader, "test") == (length, False)
    assert reader.at_end()


def test_partial_length_octet() -> None:
    reader = StreamReader([packets.PARTIAL_1MIB])
    assert read_new_length(reader, "test") == (MIB, True)


@pytest.mark.parametrize("value", [0, 1, 0x7F, 0x80, 0x1FF, 2**255 + 12345])
def test_mpi_round_trip(value: int) -> None:
    encoded = mpi(value)
    raw, end = read_mpi(encoded, 0, strict=True)
    assert int.from_bytes(raw, "big") == value
    assert end == len(encoded)


def test_strict_mpi_refuses_a_wrong_bit_count() -> None:
    with pytest.raises(ValueError, match="bit count"):
        read_mpi(b"\x00\x07\xff", 0, strict=True)
    assert read_mpi(b"\x00\x07\xff", 0) == (b"\xff", 3)


def test_old_and_new_headers_and_partial_bodies() -> None:
    old = bytes([0x80 | (11 << 2) | 1]) + (3).to_bytes(2, "big") + b"abc"
    new = bytes([0xC0 | 11]) + packets.PARTIAL_1MIB[:0] + bytes([224 + 9]) + b"x" * 512 \
        + new_length(2) + b"yz"
    reader = StreamReader(pieces(old + new, 7))
    first = read_header(reader)
    assert first is not None
    assert (first.tag, first.length) == (11, 3)
    assert BodyReader(reader, first, "t").read_all(10) == b"abc"
    second = read_header(reader)
    assert second is not None
    assert second.partial
    assert BodyReader(reader, second, "t").read_all(1000) == b"x" * 512 + b"yz"
    assert read_header(reader) is None


def test_writer_framing_inner_and_outer() -> None:
    # The plaintext stage (literal packet + MDC) on 2.5 MiB in odd pieces:
    # 1 MiB partial chunks, then one definite chunk, then the MDC packet.
    data = random.Random(1).randbytes(5 * MIB // 2)
    prefix = seipd.make_prefix()
    plain = b"".join(b"".join(bytes(p) for p in item)
                     for item in seipd._plaintext_items(pieces(data, 333_333), prefix))
    assert plain[:18] == prefix
    assert prefix[14:16] == prefix[16:18]
    assert plain[18] == 0xC0 | packets.TAG_LITERAL
    body = plain[19:-22]
    chunks = []
    position = 0
    while True:
        length, partial = read_new_length(StreamReader([body[position:position + 5]]), "t")
        size = 1 if partial else len(new_length(length))
        chunks.append(body[position + size:position + size + length])
        position += size + length
        if not partial:
            break
    assert position == len(body)
    assert [len(chunk) for chunk in chunks[:-1]] == [MIB, MIB]
    literal = b"".join(chunks)
    assert literal[:6] == b"b\x00\x00\x00\x00\x00"
    assert literal[6:] == data
    assert plain[-22:-20] == b"\xd3\x14"
    assert plain[-20:] == hashlib.sha1(plain[:-20]).digest()


@pytest.mark.parametrize("size", [MIB - 6, MIB - 5, MIB + 1])
def test_last_chunk_is_never_empty(size: int) -> None:
    # The literal body is 6 header octets + data; at exactly one chunk it
    # must be one definite chunk, never a partial one plus an empty one.
    items = list(seipd._plaintext_items([bytes(size)], seipd.make_prefix()))
    assert len(items) == (1 if size + 6 <= MIB else 2)


def test_message_uses_partial_lengths_of_1_mib(gpg_key: oracles.KeyPair) -> None:
    recipients = load_recipients([gpg_key.cert])
    message = b"".join(FastEngine().encrypt(pieces(bytes(3 * MIB), MIB), recipients))
    assert [(p.tag, p.body[:1]) for p in PacketPile.from_bytes(message)] == [
        (Tag.PKESK, b"\x03"), (Tag.SEIP, b"\x01")]
    start = 2 + message[1]
    assert message[start:start + 2] == bytes([0xD2, 224 + 20])


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize("maker", ["gpg_key", "gpg_rsa_key", "sq_key", "sqop_key_protected"])
def test_key_packets_and_fingerprints_agree_with_pysequoia(
        maker: str, request: pytest.FixtureRequest) -> None:
    pair: oracles.KeyPair = request.getfixturevalue(maker)
    key = load_secret_keys([pair.secret])[0]
    ours = {packet.public.hex for packet in secret_keys(key.key_bytes)}
    assert ours == set(key.key_fingerprints)
    recipients = load_recipients([pair.cert])
    assert [public.hex for public in recipient_keys(recipients)] == list(recipients.subkeys)


def test_recipient_recorded_as_key_id(gpg_key: oracles.KeyPair) -> None:
    recipients = load_recipients([gpg_key.cert])
    by_key_id = Recipients(recipients.certificates, tuple(s[-16:] for s in recipients.subkeys))
    assert [k.hex for k in recipient_keys(by_key_id)] == list(recipients.subkeys)


def test_unsupported_public_key_algorithms() -> None:
    elgamal = packets.PublicKey(packets.TAG_PUBLIC_SUBKEY, packets.ALGO_ELGAMAL, bytes(20), 0)
    with pytest.raises(UnsupportedError, match="algorithm 16"):
        supported_recipient(elgamal)
    p256 = bytes.fromhex("2a8648ce3d030107")
    nist = packets.PublicKey(packets.TAG_PUBLIC_SUBKEY, packets.ALGO_ECDH, bytes(20), 0,
                             ecdh=(p256, b"\x04" + bytes(64), 8, 9))
    with pytest.raises(UnsupportedError, match="Curve25519"):
        supported_recipient(nist)


def test_s2k_forms() -> None:
    salt = b"saltsalt"
    simple = S2K(0, 8).derive(b"pw", 32)
    assert simple == hashlib.sha256(b"pw").digest()
    assert S2K(1, 8, salt).derive(b"pw", 16) == hashlib.sha256(salt + b"pw").digest()[:16]
    # Iterated: salt||passphrase repeated up to the count (here 2.5 times).
    iterated = S2K(3, 2, salt, 25).derive(b"pw", 16)
    assert iterated == hashlib.sha1((salt + b"pw") * 2 + (salt + b"pw")[:5]).digest()[:16]
    # A count below one whole string still hashes it once.
    assert S2K(3, 2, salt, 1).derive(b"pw", 20) == hashlib.sha1(salt + b"pw").digest()
    # More key than one hash: a second context primed with one zero octet.
    long_key = S2K(1, 2, salt).derive(b"pw", 32)
    assert long_key == (hashlib.sha1(salt + b"pw").digest()
                        + hashlib.sha1(b"\0" + salt + b"pw").digest())[:32]


def test_unlock_refuses_unknown_protection(gpg_key: oracles.KeyPair) -> None:
    key = load_secret_keys([gpg_key.secret])[0]
    ecdh = next(p for p in secret_keys(key.key_bytes) if p.public.algorithm == 18)
    argon2 = SecretKeyPacket(ecdh.public, 254, 9, None, b"", b"")
    with pytest.raises(UnsupportedError, match="S2K usage 254"):
        unlock(argon2, "pw")


def test_engine_registry() -> None:
    assert sorted(ENGINES) == ["fast", "reference"]
    assert engine_for("fast").name == "fast"


# --------------------------------------------------------------------------- fallback


@pytest.fixture(scope="module")
def sequoia2_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A v4 cv25519 key whose certificate advertises SEIPD v2, as sequoia 2.x makes them."""
    directory = tmp_path_factory.mktemp("sequoia2")
    tsk = pysequoia.Tsk.generate("sequoia 2 <s2@cryophile.invalid>")
    (directory / "secret.pgp").write_bytes(bytes(tsk))
    (directory / "cert.pgp").write_bytes(bytes(tsk.extract_certificate()))
    return directory / "cert.pgp", directory / "secret.pgp"


def test_seipd_v2_input_falls_back_to_the_reference_engine(
        sequoia2_key: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    cert, secret = sequoia2_key
    data = random.Random(2).randbytes(200_000)
    message = pysequoia.encrypt(data, [pysequoia.Cert.from_file(str(cert))], armor=False)
    assert [p.body[:1] for p in PacketPile.from_bytes(message)] == [b"\x06", b"\x02"]
    key = load_secret_keys([secret])[0]
    with caplog.at_level(logging.WARNING):
        out = b"".join(FastEngine().decrypt(pieces(message, 4096), key, None))
    assert out == data
    notices = [r.getMessage() for r in caplog.records if r.name.endswith("fastpgp.engine")]
    assert len(notices) == 1
    assert "reference engine" in notices[0]
    assert "\n" not in notices[0]


def test_the_engine_writes_v1_even_when_a_cert_advertises_v2(
        sequoia2_key: tuple[Path, Path], tmp_path: Path) -> None:
    cert, secret = sequoia2_key
    data = b"for GnuPG 2.2 too"
    message = b"".join(FastEngine().encrypt([data], load_recipients([cert])))
    assert [(p.tag, p.body[:1]) for p in PacketPile.from_bytes(message)] == [
        (Tag.PKESK, b"\x03"), (Tag.SEIP, b"\x01")]
    pair = oracles.KeyPair("pysequoia", cert, secret, None, "")
    path = tmp_path / "m.pgp"
    path.write_bytes(message)
    oracles.gpg_decrypt(path, pair, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data


def test_v6_recipient_falls_back_to_the_reference_engine(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tsk = pysequoia.Tsk.generate("v6 <v6@cryophile.invalid>",
                                 profile=pysequoia.Profile.RFC9580)
    cert = tmp_path / "v6.cert"
    cert.write_bytes(bytes(tsk.extract_certificate()))
    data = random.Random(3).randbytes(100_000)
    with caplog.at_level(logging.WARNING):
        recipients = load_recipients([cert])
        message = b"".join(FastEngine().encrypt(pieces(data, 65536), recipients))
    assert any("reference engine" in r.getMessage() for r in caplog.records
               if r.name.endswith("fastpgp.engine"))
    assert pysequoia.decrypt(message, decryptor=tsk.decryptor(None)).bytes == data


def test_compressed_content_falls_back_to_the_reference_engine(
        gpg_key: oracles.KeyPair, caplog: pytest.LogCaptureFixture) -> None:
    data = b"compressible line\n" * 20_000
    # gpg's default: a compressed packet inside the encrypted one.
    with tempfile.TemporaryDirectory(prefix="cryo-gpg-", dir="/tmp") as home:
        try:
            message = subprocess.run(
                ["gpg", "--homedir", home, "--batch", "--no-tty", "--trust-model", "always",
                 "--recipient-file", str(gpg_key.cert), "--encrypt"],
                input=data, capture_output=True, check=True, start_new_session=True).stdout
        finally:
            subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"],
                           capture_output=True, check=False)
    assert len(message) < len(data) // 10
    key = load_secret_keys([gpg_key.secret])[0]
    with caplog.at_level(logging.WARNING):
        out = b"".join(FastEngine().decrypt([message], key, None))
    assert out == data
    assert any("packet tag 8" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- CFB segments


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), iv=st.binary(min_size=16, max_size=16),
       ciphertext=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=6))
def test_segment_decryption_is_exactly_cfb(key: bytes, iv: bytes, ciphertext: bytes,
                                           cuts: list[int]) -> None:
    # cfb.decrypt_segment batches the CFB block calls through ECB (for speed);
    # whatever the length and however the segment is cut into pieces, its
    # output must be cryptography's own CFB decryption, octet for octet.
    expected = Cipher(algorithms.AES(key), CFB(iv)).decryptor().update(ciphertext)
    bounds = sorted({0, len(ciphertext), *(min(cut, len(ciphertext)) for cut in cuts)})
    view = memoryview(ciphertext)
    pieces = [view[start:end] for start, end in itertools.pairwise(bounds)]
    target = bytearray(len(ciphertext) + 2 * cfb.BLOCK)
    assert cfb.decrypt_segment(key, iv, pieces, target) == len(ciphertext)
    assert bytes(target[:len(ciphertext)]) == expected


def test_segment_decryption_of_a_whole_mib_segment_and_a_short_target() -> None:
    key, iv = os.urandom(32), os.urandom(16)
    ciphertext = os.urandom(seipd.SEGMENT + 5)
    target = bytearray(len(ciphertext) + 2 * cfb.BLOCK)
    cfb.decrypt_segment(key, iv, [memoryview(ciphertext)], target)
    assert bytes(target[:len(ciphertext)]) == (
        Cipher(algorithms.AES(key), CFB(iv)).decryptor().update(ciphertext))
    with pytest.raises(ValueError, match="cannot hold"):
        cfb.decrypt_segment(key, iv, [memoryview(ciphertext)], bytearray(len(ciphertext)))

"""Damaged, truncated and misaddressed messages: the fast engine must fail clearly.

Every flipped byte (in the PKESK, the CFB prefix, the body, the framing and
the MDC), every truncation at a packet or chunk boundary, a wrong key and a
wrong passphrase raise a CryophileError — DataError or KeyAccessError from
the engine itself, or (for a flipped version or algorithm octet, which turns
the PKESK into valid-looking OpenPGP the engine hands to the reference
engine) the reference engine's error. Decryption is never allowed to end
normally on damaged input. Also: two encryptions of the same input differ.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import oracles
from cryophile.errors import CryophileError, DataError, KeyAccessError
from cryophile.pipeline.fastpgp.engine import FastEngine
from cryophile.pipeline.keys import SecretKey, load_recipients, load_secret_keys

MIB = 1024 * 1024
DATA = random.Random(5).randbytes(3 * MIB + 5)
PREFIX = 18
MDC = 22


def blocks(data: bytes, size: int = 300_007) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def encrypt(pair: oracles.KeyPair, data: bytes = DATA) -> bytes:
    return b"".join(FastEngine().encrypt(blocks(data, MIB), load_recipients([pair.cert])))


def decrypt(message: bytes, key: SecretKey, passphrase: str | None = None) -> bytes:
    return b"".join(FastEngine().decrypt(blocks(message), key, passphrase))


@dataclass(frozen=True)
class Layout:
    """Where things are in a message the engine wrote (found by walking its framing)."""

    pkesk_end: int
    body_start: int  # first octet of the SEIPD body (the version octet)
    headers: list[tuple[int, int]]  # (start, end) of every SEIPD chunk length
    chunks: list[tuple[int, int]]  # (start, end) of every SEIPD body chunk
    end: int

    def at(self, body_offset: int) -> int:
        """Message offset of SEIPD body offset ``body_offset``."""
        for start, stop in self.chunks:
            if body_offset < stop - start:
                return start + body_offset
            body_offset -= stop - start
        raise ValueError("beyond the body")


def layout(message: bytes) -> Layout:
    # Written independently of the engine's parser: new-format headers only,
    # which is all the engine writes.
    assert message[0] == 0xC1
    if message[1] < 192:
        pkesk_end = 2 + message[1]
    else:  # two-octet length (an RSA-3072 PKESK is ~400 octets)
        assert message[1] < 224
        pkesk_end = 3 + ((message[1] - 192) << 8) + message[2] + 192
    assert message[pkesk_end] == 0xD2
    position = pkesk_end + 1
    headers: list[tuple[int, int]] = []
    chunks: list[tuple[int, int]] = []
    while True:
        first = message[position]
        if 224 <= first < 255:
            assert first == 224 + 20, "partial chunks are 1 MiB"
            length, size, partial = 1 << 20, 1, True
        elif first == 255:
            length, size, partial = int.from_bytes(message[position + 1:position + 5], "big"), 5, \
                False
        elif first >= 192:
            length, size, partial = ((first - 192) << 8) + message[position + 1] + 192, 2, False
        else:
            length, size, partial = first, 1, False
        headers.append((position, position + size))
        chunks.append((position + size, position + size + length))
        position += size + length
        if not partial:
            break
    assert position == len(message)
    return Layout(pkesk_end, chunks[0][0], headers, chunks, len(message))


@pytest.fixture(scope="module")
def cv25519(gpg_key: oracles.KeyPair) -> tuple[bytes, SecretKey]:
    return encrypt(gpg_key), load_secret_keys([gpg_key.secret])[0]


def flipped(message: bytes, position: int, mask: int = 0x01) -> bytes:
    return message[:position] + bytes([message[position] ^ mask]) + message[position + 1:]


def assert_fails(message: bytes, key: SecretKey, passphrase: str | None = None) -> None:
    with pytest.raises(CryophileError):
        decrypt(message, key, passphrase)


def test_the_undamaged_message_decrypts(cv25519: tuple[bytes, SecretKey]) -> None:
    message, key = cv25519
    assert decrypt(message, key) == DATA
    shape = layout(message)
    assert len(shape.chunks) == 4  # three 1 MiB partial chunks and the final one


#: Offset of the last octet of the ephemeral X25519 point in an ECDH PKESK:
#: header (2), version, key id (8), algorithm, MPI bit count (2), 0x40, 32 octets.
X25519_LAST_OCTET = 2 + 1 + 8 + 1 + 2 + 1 + 31


def test_every_flipped_pkesk_byte_is_an_error(cv25519: tuple[bytes, SecretKey]) -> None:
    message, key = cv25519
    for position in range(layout(message).pkesk_end):
        for mask in (0x01, 0x80):
            damaged = flipped(message, position, mask)
            if (position, mask) == (X25519_LAST_OCTET, 0x80):
                # RFC 7748 §5: X25519 ignores the top bit of a u-coordinate,
                # so this flip changes nothing (gpg and Sequoia agree): the
                # output must then be exactly right.
                assert decrypt(damaged, key) == DATA
                continue
            with pytest.raises(CryophileError):
                decrypt(damaged, key)


def test_flipped_rsa_pkesk_bytes_are_errors(gpg_rsa_key: oracles.KeyPair) -> None:
    message = encrypt(gpg_rsa_key, DATA[:70_000])
    key = load_secret_keys([gpg_rsa_key.secret])[0]
    end = layout(message).pkesk_end
    # Header, version, key id, algorithm, MPI bit count, then the RSA value
    # (where OpenSSL's implicit rejection yields a random "session key" that
    # the checksum, the quick check and the MDC must all refuse).
    positions = [0, 1, 2, 3, 10, 11, 12, 13, 14, 15, 100, 200, 300, end - 2, end - 1]
    for position in positions:
        with pytest.raises(CryophileError):
            decrypt(flipped(message, position), key)


def test_flipped_prefix_bytes_are_errors(cv25519: tuple[bytes, SecretKey]) -> None:
    message, key = cv25519
    shape = layout(message)
    for body_offset in range(1 + PREFIX):  # the version octet and the 18 prefix octets
        with pytest.raises(DataError):
            decrypt(flipped(message, shape.at(body_offset)), key)


def test_flipped_body_bytes_are_errors(cv25519: tuple[bytes, SecretKey]) -> None:
    message, key = cv25519
    shape = layout(message)
    size = sum(stop - start for start, stop in shape.chunks)
    literal = 1 + PREFIX  # the literal packet's header starts here
    offsets = [literal, literal + 1, literal + 2, literal + 8,  # tag, length, format, date
               literal + 1 + 1 + MIB,  # the literal packet's second chunk length octet
               1000, MIB - 1, MIB, MIB + 1, 2 * MIB + 77, size - MDC - 1]
    for body_offset in offsets:
        for mask in (0x01, 0x80):
            with pytest.raises(DataError):
                decrypt(flipped(message, shape.at(body_offset), mask), key)


def test_flipped_mdc_bytes_are_errors(cv25519: tuple[bytes, SecretKey]) -> None:
    message, key = cv25519
    for position in range(len(message) - MDC, len(message)):
        with pytest.raises(DataError, match=r"integrity check|damaged"):
            decrypt(flipped(message, position), key)


def test_flipped_framing_bytes_are_errors(cv25519: tuple[bytes, SecretKey]) -> None:
    message, key = cv25519
    shape = layout(message)
    positions = [shape.pkesk_end]  # the SEIPD packet tag
    for start, stop in shape.headers:
        positions += range(start, stop)
    for position in positions:
        for mask in (0x01, 0x02, 0x80):
            with pytest.raises(DataError):
                decrypt(flipped(message, position, mask), key)


def test_truncation_at_every_boundary_is_an_error(cv25519: tuple[bytes, SecretKey]) -> None:
    message, key = cv25519
    shape = layout(message)
    body = sum(stop - start for start, stop in shape.chunks)
    cuts = {0, 1, shape.pkesk_end - 1, shape.pkesk_end, shape.pkesk_end + 1,
            shape.end - MDC, shape.end - MDC + 2, shape.end - 1}
    for start, stop in shape.headers:
        cuts |= {start, start + 1, stop}
    for start, stop in shape.chunks:
        cuts |= {start, stop - 1, stop}
    # Inside the plaintext: after the prefix, the literal header, its chunks.
    for body_offset in (1, 1 + PREFIX, 1 + PREFIX + 1, 1 + PREFIX + 2, 1 + PREFIX + 8,
                        1 + PREFIX + 2 + MIB, 1 + PREFIX + 3 + MIB, body - MDC):
        cuts.add(shape.at(body_offset))
    cuts.discard(shape.end)
    for cut in sorted(cuts):
        with pytest.raises(DataError):
            decrypt(message[:cut], key)


def test_trailing_data_is_an_error(cv25519: tuple[bytes, SecretKey]) -> None:
    message, key = cv25519
    with pytest.raises(DataError, match="trailing data"):
        decrypt(message + b"\xc1", key)


def test_wrong_key(cv25519: tuple[bytes, SecretKey], sqop_key: oracles.KeyPair) -> None:
    message, _ = cv25519
    other = load_secret_keys([sqop_key.secret])[0]
    with pytest.raises(KeyAccessError, match="not encrypted to"):
        decrypt(message, other)


def test_wrong_or_missing_passphrase(gpg_key_protected: oracles.KeyPair,
                                     sqop_key_protected: oracles.KeyPair) -> None:
    for pair in (gpg_key_protected, sqop_key_protected):
        message = encrypt(pair, DATA[:1000])
        key = load_secret_keys([pair.secret])[0]
        assert decrypt(message, key, pair.passphrase) == DATA[:1000]
        with pytest.raises(KeyAccessError, match="wrong passphrase"):
            decrypt(message, key, "not " + str(pair.passphrase))
        with pytest.raises(KeyAccessError, match="passphrase is needed"):
            decrypt(message, key, None)


def test_two_encryptions_of_the_same_input_differ(gpg_key: oracles.KeyPair) -> None:
    first, second = encrypt(gpg_key, DATA[:5000]), encrypt(gpg_key, DATA[:5000])
    one, two = layout(first), layout(second)
    # Fresh session key (different PKESK: new ephemeral key, new wrapped key)
    # and fresh prefix (different body from the first octet after the version).
    assert first[:one.pkesk_end] != second[:two.pkesk_end]
    assert first[one.at(1):one.at(17)] != second[two.at(1):two.at(17)]
    assert first[one.body_start + 1:] != second[two.body_start + 1:]

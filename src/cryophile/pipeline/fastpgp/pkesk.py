"""Session keys and their PKESK v3 packets: ECDH over Curve25519 (RFC 6637) and RSA.

Where it sits: :mod:`.engine` makes one session key per message and one PKESK
per recipient subkey with :func:`encrypt_session_key`; on restore it parses
PKESKs with :func:`parse_pkesk` and recovers the session key with
:func:`decrypt_session_key` and the private key from :mod:`.secretkey`.

Contract: the session key is 32 bytes from the operating system's CSPRNG
(``secrets``) for AES-256. What is encrypted is RFC 4880 §5.1's
``algorithm || key || checksum``, for RSA inside EME-PKCS1-v1_5
(``cryptography``'s ``PKCS1v15`` padding), for ECDH padded per PKCS#5 and
AES-key-wrapped (RFC 3394, ``cryptography``'s ``aes_key_wrap``) under a KEK
from the RFC 6637 §7 KDF, which is NIST SP 800-56A's concatenation KDF
(``ConcatKDFHash``) over the X25519 shared secret. Only the byte layouts are
ours. A damaged PKESK raises DataError; a layout this module does not know
raises UnsupportedError.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, keywrap
from cryptography.hazmat.primitives.asymmetric import padding, rsa, x25519
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash

from cryophile.errors import DataError
from cryophile.pipeline.fastpgp.packets import (
    AES_KEY_SIZES,
    ALGO_ECDH,
    ALGO_RSA,
    ALGO_RSA_ENCRYPT_ONLY,
    CURVE25519_OID,
    SYM_AES256,
    TAG_PKESK,
    PublicKey,
    UnsupportedError,
    mpi,
    packet,
    read_mpi,
)

PKESK_VERSION_3 = 3
#: RFC 6637 §8: the sender is anonymous; 20 octets.
ANONYMOUS_SENDER = b"Anonymous Sender    "
#: Prefix of a native (little-endian) Curve25519 point in an MPI (RFC 4880bis §13.2).
NATIVE_POINT_PREFIX = 0x40
CURVE25519_POINT_SIZE = 33

_KDF_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    8: hashes.SHA256, 9: hashes.SHA384, 10: hashes.SHA512}


@dataclass(frozen=True)
class SessionKey:
    """A symmetric algorithm id and its key."""

    algorithm: int
    key: bytes

    def material(self) -> bytes:
        """``algorithm || key || checksum`` (RFC 4880 §5.1): what a PKESK encrypts."""
        checksum = sum(self.key) & 0xFFFF
        return bytes([self.algorithm]) + self.key + checksum.to_bytes(2, "big")


def new_session_key() -> SessionKey:
    """A fresh AES-256 session key from the operating system's CSPRNG."""
    return SessionKey(SYM_AES256, secrets.token_bytes(AES_KEY_SIZES[SYM_AES256]))


def parse_session_key(material: bytes) -> SessionKey:
    """Check and split decrypted ``algorithm || key || checksum``.

    Raises DataError when the length or checksum is wrong (a damaged PKESK
    or, for RSA, a wrong key), UnsupportedError for a non-AES algorithm.
    """
    if len(material) < 3:
        raise DataError("the session key packet (PKESK) is damaged")
    algorithm, key, checksum = material[0], material[1:-2], material[-2:]
    size = AES_KEY_SIZES.get(algorithm)
    if size is None:
        # Garbage from a damaged RSA PKESK lands here too; the caller treats
        # both alike only after the checksum below has failed or passed.
        if (sum(key) & 0xFFFF).to_bytes(2, "big") == checksum:
            raise UnsupportedError(f"session key algorithm {algorithm}")
        raise DataError("the session key packet (PKESK) is damaged")
    if len(key) != size or (sum(key) & 0xFFFF).to_bytes(2, "big") != checksum:
        raise DataError("the session key packet (PKESK) is damaged")
    return SessionKey(algorithm, key)


def supported_recipient(key: PublicKey) -> None:
    """Raise UnsupportedError unless this engine can encrypt to ``key``."""
    if key.algorithm in (ALGO_RSA, ALGO_RSA_ENCRYPT_ONLY) and key.rsa is not None:
        return
    if key.algorithm == ALGO_ECDH and key.ecdh is not None:
        oid, point, kdf_hash, kek = key.ecdh
        if oid != CURVE25519_OID:
            raise UnsupportedError(f"ECDH subkey {key.hex} on a curve other than Curve25519")
        if len(point) != CURVE25519_POINT_SIZE or point[0] != NATIVE_POINT_PREFIX:
            raise UnsupportedError(f"ECDH subkey {key.hex} with an unknown point encoding")
        if kdf_hash not in _KDF_HASHES or kek not in AES_KEY_SIZES:
            raise UnsupportedError(f"ECDH subkey {key.hex} with KDF hash {kdf_hash} / KEK {kek}")
        return
    raise UnsupportedError(f"subkey {key.hex} uses public-key algorithm {key.algorithm}")


def encrypt_session_key(key: PublicKey, session: SessionKey) -> bytes:
    """A whole PKESK v3 packet carrying ``session`` to the subkey ``key``."""
    supported_recipient(key)
    head = bytes([PKESK_VERSION_3]) + key.key_id + bytes([key.algorithm])
    if key.rsa is not None:
        modulus, exponent = key.rsa
        public = rsa.RSAPublicNumbers(exponent, modulus).public_key()
        return packet(TAG_PKESK, head + mpi(public.encrypt(session.material(),
                                                           padding.PKCS1v15())))
    assert key.ecdh is not None
    ephemeral = x25519.X25519PrivateKey.generate()
    shared = ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(key.ecdh[1][1:]))
    wrapped = keywrap.aes_key_wrap(_kek(key, shared), _pkcs5_pad(session.material()))
    point = bytes([NATIVE_POINT_PREFIX]) + ephemeral.public_key().public_bytes_raw()
    return packet(TAG_PKESK, head + mpi(point) + bytes([len(wrapped)]) + wrapped)


def _kek(key: PublicKey, shared: bytes) -> bytes:
    """The RFC 6637 §7 key-encryption key: ConcatKDF(Z, Param) with Param of §8."""
    assert key.ecdh is not None
    oid, _, kdf_hash, kek = key.ecdh
    param = (bytes([len(oid)]) + oid + bytes([ALGO_ECDH, 3, 1, kdf_hash, kek])
             + ANONYMOUS_SENDER + key.fingerprint)
    kdf = ConcatKDFHash(algorithm=_KDF_HASHES[kdf_hash](), length=AES_KEY_SIZES[kek],
                        otherinfo=param)
    return kdf.derive(shared)


def _pkcs5_pad(material: bytes) -> bytes:
    # RFC 6637 §8: padded to a multiple of 8 octets, PKCS#5 style (35 → 40).
    count = 8 - len(material) % 8
    return material + bytes([count]) * count


def _pkcs5_unpad(padded: bytes) -> bytes:
    count = padded[-1] if padded else 0
    if not 1 <= count <= 8 or count > len(padded) or padded[-count:] != bytes([count]) * count:
        raise DataError("the session key packet (PKESK) is damaged: bad padding")
    return padded[:-count]


@dataclass(frozen=True)
class Pkesk:
    """A parsed PKESK v3: recipient key id (zero = wildcard), algorithm, encrypted fields."""

    key_id: bytes
    algorithm: int
    fields: tuple[bytes, ...]


def parse_pkesk(body: bytes) -> Pkesk:
    """Parse a PKESK body. UnsupportedError for versions other than 3 or unknown algorithms."""
    if not body:
        raise DataError("empty session key packet (PKESK)")
    if body[0] != PKESK_VERSION_3:
        raise UnsupportedError(f"version {body[0]} session key packets (PKESK)")
    if len(body) < 10:
        raise DataError("the session key packet (PKESK) is truncated")
    key_id, algorithm = body[1:9], body[9]
    if algorithm not in (ALGO_RSA, ALGO_RSA_ENCRYPT_ONLY, ALGO_ECDH):
        raise UnsupportedError(f"session keys for public-key algorithm {algorithm}")
    try:
        fields, end = _pkesk_fields(algorithm, body)
    except ValueError as error:
        raise DataError(f"the session key packet (PKESK) is damaged: {error}") from None
    if end != len(body):
        raise DataError("the session key packet (PKESK) is damaged: trailing bytes")
    return Pkesk(key_id, algorithm, fields)


def _pkesk_fields(algorithm: int, body: bytes) -> tuple[tuple[bytes, ...], int]:
    """The encrypted fields after the algorithm octet, and where they end."""
    if algorithm == ALGO_ECDH:
        point, end = read_mpi(body, 10, strict=True)
        if end >= len(body):
            raise ValueError("missing wrapped key")
        size = body[end]
        wrapped = body[end + 1:end + 1 + size]
        if len(wrapped) != size:
            raise ValueError("wrapped key beyond the end of the packet")
        return (point, wrapped), end + 1 + size
    value, end = read_mpi(body, 10, strict=True)
    return (value,), end


PrivateKey = rsa.RSAPrivateKey | x25519.X25519PrivateKey


def decrypt_session_key(pkesk: Pkesk, key: PublicKey, private: PrivateKey) -> SessionKey:
    """Recover the session key of ``pkesk`` with the unlocked subkey ``key``/``private``.

    Raises DataError when the PKESK is damaged or not for this key.
    """
    if isinstance(private, rsa.RSAPrivateKey):
        if pkesk.algorithm not in (ALGO_RSA, ALGO_RSA_ENCRYPT_ONLY):
            raise DataError("the session key packet (PKESK) does not match the RSA subkey")
        size = (private.key_size + 7) // 8
        value = pkesk.fields[0]
        if len(value) > size:
            raise DataError("the session key packet (PKESK) is damaged: value too large")
        try:
            # OpenSSL ≥ 3.2 answers bad PKCS#1 v1.5 padding with a random
            # message (implicit rejection) instead of an error; the length and
            # checksum checks of parse_session_key, the CFB quick check and
            # the MDC then reject it.
            material = private.decrypt(value.rjust(size, b"\0"), padding.PKCS1v15())
        except ValueError:
            raise DataError("the session key packet (PKESK) is damaged or not for this "
                            "key") from None
        return parse_session_key(material)
    if pkesk.algorithm != ALGO_ECDH:
        raise DataError("the session key packet (PKESK) does not match the ECDH subkey")
    point, wrapped = pkesk.fields
    if len(point) != CURVE25519_POINT_SIZE or point[0] != NATIVE_POINT_PREFIX:
        raise DataError("the session key packet (PKESK) is damaged: bad ephemeral point")
    try:
        shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(point[1:]))
        padded = keywrap.aes_key_unwrap(_kek(key, shared), wrapped)
    except (ValueError, keywrap.InvalidUnwrap):
        raise DataError("the session key packet (PKESK) is damaged or not for this "
                        "key") from None
    return parse_session_key(_pkcs5_unpad(padded))

"""Secret key packets: parsing, S2K, unlocking (RFC 4880 §3.7, §5.5.3).

Where it sits: on restore, :mod:`.engine` finds the secret subkey a PKESK
names with :func:`secret_keys` and unlocks it with :func:`unlock`; the
result goes to :func:`.pkesk.decrypt_session_key`.

Contract: v4 secret key and subkey packets of RSA and Curve25519 ECDH keys,
unprotected (S2K usage 0) or protected with S2K usage 254 (SHA-1 check) or
255 (two-octet checksum), S2K specifier simple, salted or iterated+salted
with a SHA-1/SHA-2 hash, and AES-128/192/256 in CFB mode — the forms GnuPG
2.2 (iterated SHA-1, AES-128), sq and sqop 0.27 (iterated SHA-256, AES-256)
write. The S2K salting and iteration is RFC 4880 §3.7.1's recipe built on
``hashlib``; AES-CFB comes from ``cryptography``. A wrong passphrase raises
KeyAccessError (the SHA-1 check, or for usage 255 the checksum plus a
consistency check of the key itself); other protection forms raise
UnsupportedError.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.asymmetric import rsa, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from cryophile.errors import KeyAccessError
from cryophile.pipeline.fastpgp.packets import (
    AES_KEY_SIZES,
    ALGO_ECDH,
    ALGO_RSA,
    ALGO_RSA_ENCRYPT_ONLY,
    CURVE25519_OID,
    HASH_NAMES,
    TAG_SECRET_KEY,
    TAG_SECRET_SUBKEY,
    PublicKey,
    UnsupportedError,
    key_packets,
    read_mpi,
)
from cryophile.pipeline.fastpgp.pkesk import CURVE25519_POINT_SIZE, PrivateKey

S2K_USAGE_NONE = 0
S2K_USAGE_SHA1 = 254
S2K_USAGE_CHECKSUM = 255
S2K_SIMPLE = 0
S2K_SALTED = 1
S2K_ITERATED = 3
SALT_SIZE = 8
AES_BLOCK = 16
SHA1_SIZE = 20
X25519_SIZE = 32
# Iterated S2K hashes at most this much per update (a repeated salt||passphrase).
_S2K_CHUNK = 1 << 16


@dataclass(frozen=True)
class S2K:
    """An S2K specifier (RFC 4880 §3.7.1): type, hash id, salt, byte count."""

    kind: int
    hash_id: int
    salt: bytes = b""
    count: int = 0

    def derive(self, passphrase: bytes, size: int) -> bytes:
        """``size`` key bytes from ``passphrase`` (RFC 4880 §3.7.1.1-3).

        When one hash output is too short, further hash contexts are primed
        with 1, 2, … zero octets and their outputs appended.
        """
        name = HASH_NAMES[self.hash_id]
        data = self.salt + passphrase
        output = b""
        context = 0
        while len(output) < size:
            hasher = hashlib.new(name)
            hasher.update(b"\0" * context)
            if self.kind == S2K_ITERATED:
                # The salt||passphrase string is hashed repeatedly until
                # `count` octets went in (at least once, whole).
                total = max(self.count, len(data))
                repeats = max(1, _S2K_CHUNK // len(data)) if data else 1
                block = data * repeats
                while total >= len(block) and block:
                    hasher.update(block)
                    total -= len(block)
                hasher.update(block[:total])
            else:
                hasher.update(data)
            output += hasher.digest()
            context += 1
        return output[:size]


@dataclass(frozen=True)
class SecretKeyPacket:
    """A v4 secret key packet: its public part and its (maybe protected) secret part."""

    public: PublicKey
    usage: int
    cipher: int
    s2k: S2K | None
    iv: bytes
    secret: bytes

    @property
    def protected(self) -> bool:
        """Whether a passphrase is needed."""
        return self.usage != S2K_USAGE_NONE


def secret_keys(key_bytes: bytes) -> list[SecretKeyPacket]:
    """Every v4 secret key packet (primary and subkeys) in binary ``key_bytes``.

    Packets whose protection this module cannot parse are returned with
    ``usage`` set to the raw octet and ``s2k`` None; :func:`unlock` then
    raises UnsupportedError for them.
    """
    packets: list[SecretKeyPacket] = []
    for public, body in key_packets(key_bytes):
        if public.tag not in (TAG_SECRET_KEY, TAG_SECRET_SUBKEY):
            continue
        packets.append(_parse_secret(public, body))
    return packets


def _parse_secret(public: PublicKey, body: bytes) -> SecretKeyPacket:
    offset = public.public_length
    if offset >= len(body):
        return SecretKeyPacket(public, -1, 0, None, b"", b"")
    usage = body[offset]
    offset += 1
    if usage == S2K_USAGE_NONE:
        return SecretKeyPacket(public, usage, 0, None, b"", body[offset:])
    if usage not in (S2K_USAGE_SHA1, S2K_USAGE_CHECKSUM) or offset + 2 > len(body):
        # Legacy usage octets (a cipher id with implicit MD5 S2K) and AEAD
        # protection (253) are not handled here.
        return SecretKeyPacket(public, usage, 0, None, b"", b"")
    cipher = body[offset]
    kind = body[offset + 1]
    offset += 2
    s2k: S2K | None = None
    if kind == S2K_SIMPLE and offset + 1 <= len(body):
        s2k = S2K(kind, body[offset])
        offset += 1
    elif kind == S2K_SALTED and offset + 1 + SALT_SIZE <= len(body):
        s2k = S2K(kind, body[offset], body[offset + 1:offset + 1 + SALT_SIZE])
        offset += 1 + SALT_SIZE
    elif kind == S2K_ITERATED and offset + 2 + SALT_SIZE <= len(body):
        coded = body[offset + 1 + SALT_SIZE]
        count = (16 + (coded & 15)) << ((coded >> 4) + 6)
        s2k = S2K(kind, body[offset], body[offset + 1:offset + 1 + SALT_SIZE], count)
        offset += 2 + SALT_SIZE
    if s2k is None or s2k.hash_id not in HASH_NAMES or cipher not in AES_KEY_SIZES:
        # GNU dummy keys (101), Argon2 (4), other hashes or ciphers.
        return SecretKeyPacket(public, usage, cipher, None, b"", b"")
    iv = body[offset:offset + AES_BLOCK]
    return SecretKeyPacket(public, usage, cipher, s2k, iv, body[offset + AES_BLOCK:])


def _supported(packet: SecretKeyPacket) -> None:
    public = packet.public
    rsa_key = public.algorithm in (ALGO_RSA, ALGO_RSA_ENCRYPT_ONLY) and public.rsa is not None
    curve25519 = public.algorithm == ALGO_ECDH and public.ecdh is not None \
        and public.ecdh[0] == CURVE25519_OID
    if not rsa_key and not curve25519:
        raise UnsupportedError(f"secret subkey {public.hex} uses public-key algorithm "
                               f"{public.algorithm}")
    if packet.usage != S2K_USAGE_NONE and packet.s2k is None:
        raise UnsupportedError(f"secret subkey {public.hex} is protected in a form this "
                               f"engine does not read (S2K usage {packet.usage})")


def unlock(packet: SecretKeyPacket, passphrase: str | None) -> PrivateKey:
    """The private key of ``packet``, decrypted with ``passphrase`` when protected.

    Raises KeyAccessError for a missing or wrong passphrase (or a damaged
    key), UnsupportedError for an algorithm or protection form not handled.
    """
    _supported(packet)
    name = packet.public.hex.upper()  # as gpg prints it
    if packet.usage == S2K_USAGE_NONE:
        cleartext = packet.secret
        check_size = 2
    else:
        if passphrase is None:
            raise KeyAccessError(f"secret subkey {name} is protected: a passphrase is needed")
        assert packet.s2k is not None
        key = packet.s2k.derive(passphrase.encode("utf-8"), AES_KEY_SIZES[packet.cipher])
        decryptor = Cipher(algorithms.AES(key), CFB(packet.iv)).decryptor()
        cleartext = decryptor.update(packet.secret) + decryptor.finalize()
        check_size = SHA1_SIZE if packet.usage == S2K_USAGE_SHA1 else 2
    wrong = KeyAccessError(f"wrong passphrase for secret subkey {name}" if packet.protected
                           else f"secret subkey {name} is damaged")
    if len(cleartext) < check_size:
        raise wrong
    material, check = cleartext[:-check_size], cleartext[-check_size:]
    if check_size == SHA1_SIZE:
        expected = hashlib.sha1(material, usedforsecurity=False).digest()
    else:
        expected = (sum(material) & 0xFFFF).to_bytes(2, "big")
    if check != expected:
        raise wrong
    try:
        return _private_key(packet.public, material)
    except ValueError:
        # Only reachable past a 16-bit checksum: a wrong passphrase that
        # happened to match it, or a damaged key; the key's own consistency
        # check (public part derived from the secret) catches both.
        raise wrong from None


def _private_key(public: PublicKey, material: bytes) -> PrivateKey:
    if public.rsa is not None:
        modulus, exponent = public.rsa
        offset = 0
        values = []
        for _ in range(4):  # d, p, q, u (u = p⁻¹ mod q, recomputed below as q⁻¹ mod p)
            value, offset = read_mpi(material, offset)
            values.append(int.from_bytes(value, "big"))
        d, p, q, _ = values
        if p * q != modulus:
            raise ValueError("RSA secret does not match the public modulus")
        numbers = rsa.RSAPrivateNumbers(
            p=p, q=q, d=d, dmp1=rsa.rsa_crt_dmp1(d, p), dmq1=rsa.rsa_crt_dmq1(d, q),
            iqmp=rsa.rsa_crt_iqmp(p, q),
            public_numbers=rsa.RSAPublicNumbers(exponent, modulus))
        return numbers.private_key()
    assert public.ecdh is not None
    value, _ = read_mpi(material, 0)
    if len(value) > X25519_SIZE:
        raise ValueError("Curve25519 secret too long")
    # The MPI holds the scalar big-endian; X25519 wants it in its native
    # little-endian order (RFC 4880bis §13.2 / the "cv25519" convention).
    private = x25519.X25519PrivateKey.from_private_bytes(value.rjust(X25519_SIZE, b"\0")[::-1])
    point = public.ecdh[1]
    if len(point) != CURVE25519_POINT_SIZE \
            or private.public_key().public_bytes_raw() != point[1:]:
        raise ValueError("Curve25519 secret does not match the public point")
    return private

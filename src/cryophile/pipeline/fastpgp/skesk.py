"""A session key handed over as a password-protected SKESK v4 packet (RFC 4880 §5.3).

Where it sits: the reference engine (pysequoia 0.1.35) decrypts only with
the secret subkey its policy selects, never with an expired or revoked one,
and takes no session key; it does take passwords for symmetric-key encrypted
session key (SKESK) packets. So when pysequoia cannot use the subkey a backup
is encrypted to, :mod:`.engine` recovers the session key itself and puts one
SKESK packet carrying it in front of the message, and pysequoia decrypts the
rest (SEIPD, MDC, literal data) as usual, with that packet's password.

Contract: :func:`password_packet` returns a whole SKESK v4 packet for
AES-256 with an iterated and salted SHA-256 S2K, whose encrypted session key
field holds ``algorithm || key`` of ``session`` (§5.3: AES-CFB under the
S2K-derived key, zero IV), and its password: 32 random hex digits, used for
this one message and passed to pysequoia only through the worker's control
pipe. The S2K is RFC 4880 §3.7.1's recipe on ``hashlib``
(:meth:`.secretkey.S2K.derive`); AES-CFB comes from ``cryptography``.
"""

from __future__ import annotations

import secrets

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from cryophile.pipeline.fastpgp.packets import AES_KEY_SIZES, SYM_AES256, TAG_SKESK, packet
from cryophile.pipeline.fastpgp.pkesk import SessionKey
from cryophile.pipeline.fastpgp.secretkey import AES_BLOCK, S2K, S2K_ITERATED, SALT_SIZE

SKESK_VERSION_4 = 4
HASH_SHA256 = 8
#: Coded S2K count 96: 65536 octets hashed. The password is random, not
#: chosen by a person, so the iteration only has to be valid, not slow.
S2K_CODED_COUNT = 96


def password_packet(session: SessionKey) -> tuple[bytes, str]:
    """A whole SKESK v4 packet that carries ``session``, and the password that opens it."""
    password = secrets.token_hex(16)
    salt = secrets.token_bytes(SALT_SIZE)
    count = (16 + (S2K_CODED_COUNT & 15)) << ((S2K_CODED_COUNT >> 4) + 6)
    s2k = S2K(S2K_ITERATED, HASH_SHA256, salt, count)
    key = s2k.derive(password.encode("ascii"), AES_KEY_SIZES[SYM_AES256])
    encryptor = Cipher(algorithms.AES(key), CFB(bytes(AES_BLOCK))).encryptor()
    encrypted = encryptor.update(bytes([session.algorithm]) + session.key) + encryptor.finalize()
    body = bytes([SKESK_VERSION_4, SYM_AES256, S2K_ITERATED, HASH_SHA256]) + salt \
        + bytes([S2K_CODED_COUNT]) + encrypted
    return packet(TAG_SKESK, body), password

"""CFB-128 decryption of one ciphertext segment, at the speed of AES in ECB mode.

Where it sits: :mod:`.seipd` cuts the SEIPD ciphertext into segments and
decrypts them on several threads; this module decrypts one segment.

Why not ``cryptography``'s CFB decryptor: OpenSSL decrypts CFB one block at a
time unless the CPU has AVX-512 (FACTS.md measured 11.7 GB/s on such a CPU;
without it, on this project's reference machine, 0.44 GB/s — slower than
``gpg -d``, which decrypts CFB in bulk). CFB decryption needs no chaining of
its own (NIST SP 800-38A §6.3)::

    P[i] = C[i] XOR AES-encrypt(K, C[i-1]),  C[0] = IV

so all the block cipher calls of a segment are independent: they are one
AES-ECB encryption of ``IV || C[1..m-1]`` by ``cryptography`` (OpenSSL, which
pipelines independent blocks through AES-NI/VAES at several GB/s), and the
XOR with the ciphertext is done by numpy. The cipher is OpenSSL's; this
module only feeds it the blocks the mode specifies. Decryption only: the
writer encrypts with ``cryptography``'s own CFB encryptor (CFB encryption is
sequential by nature). tests/unit/test_fastpgp_units.py checks this function
against ``cryptography``'s CFB decryptor on random keys, IVs, lengths and
piece boundaries.

Contract: :func:`decrypt_segment` writes exactly what
``Cipher(AES(key), CFB(iv)).decryptor().update(b"".join(pieces))`` returns
into ``target``. Both numpy and OpenSSL release the GIL on these buffers.
:func:`new_buffer` gives targets that need no clearing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# numpy's OpenBLAS starts a pool of threads when numpy is imported, and they
# spin between calls: ~0.1 CPU-s per restore wasted on a 2-core machine, for
# a library this module never calls (only numpy's own bitwise_xor). Must be
# set before numpy is first imported; a value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy

BLOCK = 16


def new_buffer(size: int) -> memoryview:
    """A writable buffer of ``size`` octets whose content is undefined.

    For targets of :func:`decrypt_segment`, which overwrites them: unlike
    ``bytearray(size)``, nothing is zeroed first. A fresh buffer per segment
    (malloc reuses the freed ones) lets a segment's plaintext be handed on
    without a copy.
    """
    return numpy.empty(size, dtype=numpy.uint8).data


def decrypt_segment(key: bytes, iv: bytes, pieces: Sequence[memoryview],
                    target: bytearray | memoryview) -> int:
    """CFB-decrypt the concatenation of ``pieces`` (with ``iv``) into ``target``; return its size.

    ``target`` must hold the whole segment plus 2 × BLOCK octets (OpenSSL's
    ``update_into`` wants BLOCK - 1 spare octets beyond the keystream, which
    itself may run up to BLOCK - 1 octets past the segment's end). The
    segment need not be a multiple of BLOCK (a message's last segment is not).
    """
    size = sum(len(piece) for piece in pieces)
    if len(target) < size + 2 * BLOCK:
        raise ValueError(f"target of {len(target)} octets cannot hold a {size}-octet segment")
    if not size:
        return 0
    # The keystream: AES of the IV and of every ciphertext block but the last
    # (whole or partial) one, written straight into `target`.
    keystream_inputs = (size + BLOCK - 1) // BLOCK - 1
    # ECB here is not a mode of this message: it is how the CFB block calls
    # reach OpenSSL in one batch (see the module docstring).
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305
    out = memoryview(target)
    position = ecb.update_into(iv, out)
    left = keystream_inputs * BLOCK
    for piece in pieces:
        if not left:
            break
        take = piece[:left]
        position += ecb.update_into(take, out[position:])
        left -= len(take)
    ecb.finalize()
    # Then target ^= ciphertext, piece by piece, in place.
    plain = numpy.frombuffer(target, dtype=numpy.uint8)
    offset = 0
    for piece in pieces:
        end = offset + len(piece)
        window = plain[offset:end]
        numpy.bitwise_xor(window, numpy.frombuffer(piece, dtype=numpy.uint8), out=window)
        offset = end
    return size

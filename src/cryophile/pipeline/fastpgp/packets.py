"""OpenPGP packet framing for the fast engine (RFC 4880 §3.2, §4, §5.5, §12.2).

Where it sits: the bottom layer of :mod:`cryophile.pipeline.fastpgp`; the
other modules build and parse packets with it. Nothing here encrypts.

Contract:

* Writing: :func:`packet` frames a whole packet with a new-format header and
  a definite length; :func:`new_length` and :data:`PARTIAL_1MIB` are the
  length octets the streaming writer interleaves.
* Reading keys: :func:`iter_packets` splits in-memory binary OpenPGP data
  (certificates, secret keys — pysequoia already parsed and validated them)
  into ``(tag, body)`` pairs, old and new formats, partial lengths joined.
  :func:`parse_public_key` reads the public part of a v4 key packet and
  computes its fingerprint.
* Reading messages: :class:`StreamReader` pulls byte blocks from an iterator
  and hands out small exact reads (copied) and large zero-copy views;
  :func:`read_header` and :class:`BodyReader` walk packet headers and bodies,
  including partial body lengths, on top of it. A stream that ends inside a
  packet raises DataError ("truncated").

:class:`UnsupportedError` means "valid OpenPGP that this engine does not
handle": the engine then falls back to the reference engine.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cryophile.errors import DataError
from cryophile.pipeline.stages import Buffer

# Packet tags (RFC 4880 §4.3; 20 and 21 from RFC 9580).
TAG_PKESK = 1
TAG_SIGNATURE = 2
TAG_SKESK = 3
TAG_ONE_PASS_SIGNATURE = 4
TAG_SECRET_KEY = 5
TAG_PUBLIC_KEY = 6
TAG_SECRET_SUBKEY = 7
TAG_COMPRESSED = 8
TAG_SED = 9
TAG_MARKER = 10
TAG_LITERAL = 11
TAG_PUBLIC_SUBKEY = 14
TAG_SEIPD = 18
TAG_MDC = 19
TAG_AEAD = 20
TAG_PADDING = 21

# Public-key algorithms (RFC 4880 §9.1, RFC 6637).
ALGO_RSA = 1
ALGO_RSA_ENCRYPT_ONLY = 2
ALGO_RSA_SIGN_ONLY = 3
ALGO_ELGAMAL = 16
ALGO_DSA = 17
ALGO_ECDH = 18
ALGO_ECDSA = 19
ALGO_EDDSA = 22

# Symmetric algorithms (RFC 4880 §9.2): only AES is handled here.
SYM_AES128 = 7
SYM_AES192 = 8
SYM_AES256 = 9
AES_KEY_SIZES = {SYM_AES128: 16, SYM_AES192: 24, SYM_AES256: 32}

# Hash algorithms (RFC 4880 §9.4) → hashlib names.
HASH_NAMES = {2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}

#: OID of Curve25519 for ECDH in v4 keys (RFC 4880bis "cv25519", 1.3.6.1.4.1.3029.1.5.1).
CURVE25519_OID = bytes.fromhex("2b060104019755010501")

#: Partial body length octet for 2^20 = 1 MiB (RFC 4880 §4.2.2.4: 224 + power).
PARTIAL_POWER = 20
PARTIAL_CHUNK = 1 << PARTIAL_POWER
PARTIAL_1MIB = bytes([224 + PARTIAL_POWER])

KEY_VERSION_4 = 4


class UnsupportedError(Exception):
    """Valid OpenPGP this engine does not handle; the message says what.

    Raised before any output exists, so the engine can hand the job to the
    reference engine instead.
    """


def truncated(what: str) -> DataError:
    """The DataError for a message that ends too early."""
    return DataError(f"the OpenPGP message is truncated or damaged: it ends inside {what}")


# --------------------------------------------------------------------------- writing


def new_length(length: int) -> bytes:
    """New-format definite body length octets (RFC 4880 §4.2.2.1-3)."""
    if length < 192:
        return bytes([length])
    if length < 8384:
        length -= 192
        return bytes([(length >> 8) + 192, length & 0xFF])
    return b"\xff" + length.to_bytes(4, "big")


def packet(tag: int, body: bytes) -> bytes:
    """A whole packet: new-format header with a definite length, then ``body``."""
    return bytes([0xC0 | tag]) + new_length(len(body)) + body


def mpi(value: bytes | int) -> bytes:
    """A multiprecision integer (RFC 4880 §3.2): bit count, then big-endian octets."""
    raw = value if isinstance(value, bytes) else value.to_bytes((value.bit_length() + 7) // 8,
                                                                 "big")
    raw = raw.lstrip(b"\0")
    bits = (len(raw) - 1) * 8 + raw[0].bit_length() if raw else 0
    return bits.to_bytes(2, "big") + raw


def read_mpi(body: Buffer, offset: int, *, strict: bool = False) -> tuple[bytes, int]:
    """The MPI at ``offset`` of ``body`` (its octets) and the offset after it.

    ``strict``: the bit count must start at the most significant set bit
    (RFC 4880 §3.2). Used for messages, where a damaged bit count must not
    pass unnoticed; key material (already accepted by pysequoia) is read
    leniently.
    """
    if offset + 2 > len(body):
        raise ValueError("MPI header beyond the end of the packet")
    bits = int.from_bytes(body[offset:offset + 2], "big")
    end = offset + 2 + (bits + 7) // 8
    if end > len(body):
        raise ValueError("MPI beyond the end of the packet")
    value = bytes(body[offset + 2:end])
    if strict and value and value[0].bit_length() != bits - 8 * (len(value) - 1):
        raise ValueError("MPI bit count does not match its value")
    return value, end


# --------------------------------------------------------------------------- in-memory parsing


def iter_packets(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(tag, body)`` of every packet in binary OpenPGP ``data``.

    Raises ValueError on malformed framing (the callers parse key material
    that pysequoia has already accepted, so this means "not for us").
    """
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        octet = view[offset]
        offset += 1
        if not octet & 0x80:
            raise ValueError(f"not an OpenPGP packet header at offset {offset - 1}")
        chunks: list[bytes] = []
        if octet & 0x40:
            tag = octet & 0x3F
            while True:
                length, partial, offset = _new_length_at(view, offset)
                if offset + length > len(view):
                    raise ValueError("packet body beyond the end of the data")
                chunks.append(bytes(view[offset:offset + length]))
                offset += length
                if not partial:
                    break
        else:
            tag = (octet >> 2) & 0x0F
            kind = octet & 0x03
            if kind == 3:
                length = len(view) - offset
            else:
                size = 1 << kind
                if offset + size > len(view):
                    raise ValueError("packet length beyond the end of the data")
                length = int.from_bytes(view[offset:offset + size], "big")
                offset += size
            if offset + length > len(view):
                raise ValueError("packet body beyond the end of the data")
            chunks.append(bytes(view[offset:offset + length]))
            offset += length
        yield tag, b"".join(chunks)


def _new_length_at(view: memoryview, offset: int) -> tuple[int, bool, int]:
    if offset >= len(view):
        raise ValueError("packet length beyond the end of the data")
    first = view[offset]
    if first < 192:
        return first, False, offset + 1
    if first < 224:
        if offset + 2 > len(view):
            raise ValueError("packet length beyond the end of the data")
        return ((first - 192) << 8) + view[offset + 1] + 192, False, offset + 2
    if first == 255:
        if offset + 5 > len(view):
            raise ValueError("packet length beyond the end of the data")
        return int.from_bytes(view[offset + 1:offset + 5], "big"), False, offset + 5
    return 1 << (first & 0x1F), True, offset + 1


@dataclass(frozen=True)
class PublicKey:
    """The public part of a v4 key packet, as far as this engine uses it.

    ``rsa`` holds ``(n, e)`` for RSA keys; ``ecdh`` holds ``(curve OID,
    public point, KDF hash id, KEK algorithm id)`` for ECDH keys; both are
    None for other algorithms. ``public_length`` is where the public part
    ends in the packet body (a secret key packet continues after it).
    """

    tag: int
    algorithm: int
    fingerprint: bytes
    public_length: int
    rsa: tuple[int, int] | None = None
    ecdh: tuple[bytes, bytes, int, int] | None = None

    @property
    def key_id(self) -> bytes:
        """The 8-octet key id (the low 64 bits of the v4 fingerprint)."""
        return self.fingerprint[-8:]

    @property
    def hex(self) -> str:
        """Fingerprint as lower-case hex, as pysequoia and the manifest write it."""
        return self.fingerprint.hex()


KEY_TAGS = (TAG_PUBLIC_KEY, TAG_PUBLIC_SUBKEY, TAG_SECRET_KEY, TAG_SECRET_SUBKEY)


def parse_public_key(tag: int, body: bytes) -> PublicKey:
    """Parse the public part of a key packet body (v4 only).

    Raises UnsupportedError for other key versions and ValueError when the
    body is malformed or its algorithm's layout is unknown (so its end, and
    with it the fingerprint, cannot be found).
    """
    if not body:
        raise ValueError("empty key packet")
    if body[0] != KEY_VERSION_4:
        raise UnsupportedError(f"version {body[0]} key packets")
    if len(body) < 6:
        raise ValueError("key packet too short")
    algorithm = body[5]
    offset = 6
    rsa: tuple[int, int] | None = None
    ecdh: tuple[bytes, bytes, int, int] | None = None
    if algorithm in (ALGO_RSA, ALGO_RSA_ENCRYPT_ONLY, ALGO_RSA_SIGN_ONLY):
        modulus, offset = read_mpi(body, offset)
        exponent, offset = read_mpi(body, offset)
        rsa = (int.from_bytes(modulus, "big"), int.from_bytes(exponent, "big"))
    elif algorithm in (ALGO_ECDH, ALGO_ECDSA, ALGO_EDDSA):
        oid, offset = _read_oid(body, offset)
        point, offset = read_mpi(body, offset)
        if algorithm == ALGO_ECDH:
            # KDF parameters: length, 0x01 (reserved), hash id, KEK algorithm id.
            if offset + 4 > len(body) or body[offset] != 3 or body[offset + 1] != 1:
                raise ValueError("malformed ECDH KDF parameters")
            ecdh = (oid, point, body[offset + 2], body[offset + 3])
            offset += 4
    elif algorithm == ALGO_ELGAMAL:
        for _ in range(3):
            _, offset = read_mpi(body, offset)
    elif algorithm == ALGO_DSA:
        for _ in range(4):
            _, offset = read_mpi(body, offset)
    else:
        raise ValueError(f"public-key algorithm {algorithm} has an unknown layout")
    public = body[:offset]
    fingerprint = hashlib.sha1(b"\x99" + len(public).to_bytes(2, "big") + public,
                               usedforsecurity=False).digest()
    return PublicKey(tag, algorithm, fingerprint, offset, rsa, ecdh)


def _read_oid(body: bytes, offset: int) -> tuple[bytes, int]:
    if offset >= len(body):
        raise ValueError("missing curve OID")
    size = body[offset]
    if size in (0, 0xFF) or offset + 1 + size > len(body):
        raise ValueError("malformed curve OID")
    return body[offset + 1:offset + 1 + size], offset + 1 + size


def key_packets(data: bytes) -> Iterator[tuple[PublicKey, bytes]]:
    """Every v4 key packet in ``data`` that this engine can parse, with its body.

    Key packets of other versions or unknown algorithms are skipped: they
    cannot be the subkeys this engine encrypts or decrypts with.
    """
    for tag, body in iter_packets(data):
        if tag not in KEY_TAGS:
            continue
        try:
            yield parse_public_key(tag, body), body
        except (UnsupportedError, ValueError):
            continue


# --------------------------------------------------------------------------- streaming


class StreamReader:
    """Exact reads and zero-copy views over a stream of byte blocks.

    Blocks are pulled from ``blocks`` only when needed. ``read_view`` returns
    a slice of the current block without copying; ``read_exact`` and
    ``peek`` copy (use them for headers only). The blocks must not be changed
    by their producer after they were handed over.
    """

    def __init__(self, blocks: Iterable[Buffer]) -> None:
        self._blocks = iter(blocks)
        self._pending: deque[memoryview] = deque()
        self._exhausted = False

    def _pull(self) -> bool:
        if self._exhausted:
            return False
        for block in self._blocks:
            view = memoryview(block).cast("B")
            if len(view):
                self._pending.append(view)
                return True
        self._exhausted = True
        return False

    def read_view(self, limit: int) -> memoryview:
        """Up to ``limit`` bytes (fewer at a block end); empty only at the end of the stream."""
        if not self._pending and not self._pull():
            return memoryview(b"")
        head = self._pending[0]
        if len(head) <= limit:
            self._pending.popleft()
            return head
        self._pending[0] = head[limit:]
        return head[:limit]

    def read_exact(self, count: int, what: str) -> bytes:
        """Exactly ``count`` bytes; DataError ("truncated … inside ``what``") if the stream ends."""
        parts: list[memoryview] = []
        missing = count
        while missing:
            view = self.read_view(missing)
            if not view:
                raise truncated(what)
            parts.append(view)
            missing -= len(view)
        return b"".join(parts)

    def peek(self, count: int) -> bytes:
        """Up to ``count`` next bytes without consuming them (fewer at the end of the stream)."""
        while sum(len(view) for view in self._pending) < count and self._pull():
            pass
        out = bytearray()
        for view in self._pending:
            out += view[:count - len(out)]
            if len(out) >= count:
                break
        return bytes(out)

    def at_end(self) -> bool:
        """Whether the stream has no more bytes."""
        return not self._pending and not self._pull()


@dataclass(frozen=True)
class Header:
    """A packet header: tag, first body length, and how the body is framed.

    ``partial``: the first chunk is ``length`` bytes and more chunks follow
    (new format); ``indeterminate``: old format, the body runs to the end of
    the stream (``length`` is then meaningless).
    """

    tag: int
    length: int
    partial: bool = False
    indeterminate: bool = False


def read_header(reader: StreamReader) -> Header | None:
    """The next packet header, or None at the end of the stream."""
    first = reader.read_view(1)
    if not first:
        return None
    octet = first[0]
    if not octet & 0x80:
        raise DataError(f"not an OpenPGP message: byte 0x{octet:02x} is not a packet header")
    if octet & 0x40:
        length, partial = read_new_length(reader, "a packet header")
        return Header(octet & 0x3F, length, partial=partial)
    tag = (octet >> 2) & 0x0F
    kind = octet & 0x03
    if kind == 3:
        return Header(tag, 0, indeterminate=True)
    size = 1 << kind
    return Header(tag, int.from_bytes(reader.read_exact(size, "a packet header"), "big"))


def read_new_length(reader: StreamReader, what: str) -> tuple[int, bool]:
    """New-format length octets: ``(length, partial)``."""
    first = reader.read_exact(1, what)[0]
    if first < 192:
        return first, False
    if first < 224:
        return ((first - 192) << 8) + reader.read_exact(1, what)[0] + 192, False
    if first == 255:
        return int.from_bytes(reader.read_exact(4, what), "big"), False
    return 1 << (first & 0x1F), True


class BodyReader:
    """The body of one packet, read from a :class:`StreamReader` across partial chunks."""

    def __init__(self, reader: StreamReader, header: Header, what: str) -> None:
        self._reader = reader
        self._what = what
        self._remaining = header.length
        self._partial = header.partial
        self._indeterminate = header.indeterminate
        self.done = not self._indeterminate and not self._partial and self._remaining == 0

    def read_view(self, limit: int) -> memoryview:
        """Up to ``limit`` bytes of the body; empty only at its end.

        Raises DataError when the stream ends inside the body.
        """
        if self._indeterminate:
            view = self._reader.read_view(limit)
            self.done = not view
            return view
        while self._remaining == 0:
            if not self._partial:
                self.done = True
                return memoryview(b"")
            self._remaining, self._partial = read_new_length(self._reader, self._what)
        view = self._reader.read_view(min(limit, self._remaining))
        if not view:
            raise truncated(self._what)
        self._remaining -= len(view)
        if self._remaining == 0 and not self._partial:
            self.done = True
        return view

    def peek(self, count: int) -> bytes:
        """Up to ``count`` next octets of the current chunk, without consuming them."""
        if self._indeterminate:
            return self._reader.peek(count)
        return self._reader.peek(min(count, self._remaining))

    def read_exact(self, count: int) -> bytes:
        """Exactly ``count`` body bytes; DataError if the body or stream ends first."""
        parts: list[memoryview] = []
        missing = count
        while missing:
            view = self.read_view(missing)
            if not view:
                raise truncated(self._what)
            parts.append(view)
            missing -= len(view)
        return b"".join(parts)

    def read_all(self, limit: int) -> bytes:
        """The whole (small) body; DataError when it exceeds ``limit`` bytes."""
        parts: list[memoryview] = []
        size = 0
        while view := self.read_view(limit + 1 - size):
            parts.append(view)
            size += len(view)
            if size > limit:
                raise DataError(f"{self._what} is implausibly long (over {limit} bytes)")
        return b"".join(parts)

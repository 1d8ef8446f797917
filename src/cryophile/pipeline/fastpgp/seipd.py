"""Streaming SEIPD v1 (RFC 4880 §5.13, §5.14) around a binary literal packet, in parallel stages.

Where it sits: :mod:`.engine` puts the PKESK packets in front (``lead``) and
calls :func:`encrypt`; on restore it parses the packets up to the SEIPD body
and calls :func:`decrypt`. Both run inside the backup/restore pipelines of
:mod:`cryophile.pipeline.stages` (threads joined by bounded queues, ≥ 1 MiB
items).

Writer, two stages::

    [thread openpgp-mdc: literal framing + SHA-1]  →  [caller's thread: AES-CFB + SEIPD framing]

The plaintext of the SEIPD body is ``prefix(18) || literal packet || MDC
packet``; the literal packet (format ``b``, no file name, date 0) and the
SEIPD packet both use 1 MiB partial body lengths and end with one definite
length chunk that is never empty. The framing stage passes zero-copy views
of the input blocks, with the small headers as separate pieces; the CFB stage
encrypts them straight into a fresh buffer per SEIPD chunk (its length octet
in front) and yields a view of it, so nothing is copied after encryption.
SHA-1 (the MDC) and AES-CFB run in different threads, and both release the
GIL on large buffers.

Reader, three stages::

    [thread openpgp-cfb: SEIPD deframing → AES-CFB, one worker per core]  →
    [thread openpgp-mdc: SHA-1 + literal deframing]  →  caller

CFB decryption of a block needs only the previous ciphertext block, so the
ciphertext is cut into 1 MiB segments (multiples of 16 octets from the start
of the CFB stream) and each segment is decrypted with the last ciphertext
block of the segment before it as IV, one segment per core at a time, by
:mod:`.cfb` (AES from ``cryptography``, its independent block calls batched
as one ECB call; see there why), into a buffer of its own. The literal data
reaches the caller as views of those buffers, never copied.

SEIPD v1 withholds nothing: plaintext is yielded as it is decrypted, and the
MDC is checked only at the end, where a mismatch, a truncation or trailing
data raises DataError — callers must then treat all output as incomplete
(restore does; it also releases a fragment's bytes only after the fragment's
SHA-256 matched the manifest). A wrong session key is caught early by the
two-octet "quick check" of the prefix.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import os
import secrets
import threading
from collections.abc import Iterable, Iterator

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from cryophile.errors import DataError
from cryophile.pipeline.fastpgp.packets import (
    PARTIAL_1MIB,
    PARTIAL_CHUNK,
    TAG_LITERAL,
    TAG_MDC,
    TAG_SEIPD,
    BodyReader,
    StreamReader,
    new_length,
    truncated,
)
from cryophile.pipeline.fastpgp.pkesk import SessionKey
from cryophile.pipeline.stages import Buffer, threaded

SEIPD_VERSION_1 = 1
BLOCK = 16
PREFIX_SIZE = BLOCK + 2
#: Format ``b`` (binary), empty file name, date 0: nothing about the input leaks.
LITERAL_HEADER = b"b\x00\x00\x00\x00\x00"
MDC_HEADER = bytes([0xC0 | TAG_MDC, 20])
MDC_DIGEST_SIZE = 20
#: Ciphertext segment decrypted as one unit on restore; a multiple of BLOCK.
SEGMENT = PARTIAL_CHUNK
#: Segments decrypted at once: one per core (at most 4: the other stages need
#: cores too), plus one queued.
CFB_WORKERS = max(1, min(4, os.cpu_count() or 2))
CFB_IN_FLIGHT = CFB_WORKERS + 1
FRAMING_QUEUE_DEPTH = 2


def _cipher(session: SessionKey, iv: bytes = bytes(BLOCK)) -> Cipher[CFB]:
    # SEIPD is plain CFB-128 with a zero IV and no resynchronisation (§5.13).
    return Cipher(algorithms.AES(session.key), CFB(iv))


def make_prefix() -> bytes:
    """16 random octets from the CSPRNG, then a repeat of the last two (RFC 4880 §5.13)."""
    random = secrets.token_bytes(BLOCK)
    return random + random[-2:]


# --------------------------------------------------------------------------- writer


def encrypt(blocks: Iterable[Buffer], session: SessionKey, lead: bytes) -> Iterator[Buffer]:
    """The whole message: ``lead`` (the PKESK packets), then one SEIPD v1 packet.

    ``blocks`` must not be changed after they are handed over (they are
    encrypted from zero-copy views). The message is complete only when the
    iterator ends without error: the final chunk is yielded last. Each partial
    chunk is yielded as a view of a buffer of its own, length octet included:
    nothing is copied after encryption on this thread, the slowest of a backup.
    """
    # SHA-1 runs about three times faster than CFB, so this queue is full most
    # of the time: a short one pins fewer input blocks.
    items = threaded(_plaintext_items(blocks, make_prefix()), name="openpgp-mdc",
                     depth=FRAMING_QUEUE_DEPTH)
    encryptor = _cipher(session).encryptor()
    yield lead + bytes([0xC0 | TAG_SEIPD])
    # A chunk buffer: its length octet, then the chunk, then the BLOCK - 1
    # spare octets update_into wants.
    view = memoryview(bytearray(1 + PARTIAL_CHUNK + BLOCK))
    view[1] = SEIPD_VERSION_1
    filled = 1
    for item in items:
        for piece in item:
            data = memoryview(piece)
            while data:
                if filled == PARTIAL_CHUNK:
                    # The chunk is full and more follows: it may be partial.
                    view[0] = PARTIAL_1MIB[0]
                    yield view[:1 + PARTIAL_CHUNK]
                    view = memoryview(bytearray(1 + PARTIAL_CHUNK + BLOCK))
                    filled = 0
                take = min(len(data), PARTIAL_CHUNK - filled)
                encryptor.update_into(data[:take], view[1 + filled:])
                filled += take
                data = data[take:]
    encryptor.finalize()
    yield b"".join((new_length(filled), view[1:1 + filled]))


def _plaintext_items(blocks: Iterable[Buffer], prefix: bytes) -> Iterator[list[Buffer]]:
    """The SEIPD plaintext as lists of pieces of ≈ 1 MiB, with the MDC computed on the way.

    Runs in its own thread: the SHA-1 here overlaps the AES-CFB of the
    previous item in the caller's thread.
    """
    sha1 = hashlib.sha1(usedforsecurity=False)
    pending: collections.deque[memoryview] = collections.deque([memoryview(LITERAL_HEADER)])
    pending_size = len(LITERAL_HEADER)
    item: list[Buffer] = [prefix, bytes([0xC0 | TAG_LITERAL])]
    for block in blocks:
        view = memoryview(block).cast("B")
        if not view:
            continue
        pending.append(view)
        pending_size += len(view)
        # Strictly more than one chunk: the last chunk must hold ≥ 1 octet,
        # because it is the one with a definite length.
        while pending_size > PARTIAL_CHUNK:
            item.append(PARTIAL_1MIB)
            _take(pending, PARTIAL_CHUNK, item)
            pending_size -= PARTIAL_CHUNK
            for piece in item:
                sha1.update(piece)
            yield item
            item = []
    item.append(new_length(pending_size))
    _take(pending, pending_size, item)
    item.append(MDC_HEADER)
    for piece in item:
        sha1.update(piece)
    item.append(sha1.digest())
    yield item


def _take(pending: collections.deque[memoryview], count: int, into: list[Buffer]) -> None:
    while count:
        head = pending[0]
        if len(head) <= count:
            into.append(pending.popleft())
            count -= len(head)
        else:
            into.append(head[:count])
            pending[0] = head[count:]
            count = 0


# --------------------------------------------------------------------------- reader


def probe(first: bytes, session: SessionKey) -> int:
    """Decrypt the first octets of a SEIPD body; check the prefix; return the first inner tag.

    ``first`` is the start of the CFB data (after the version octet), at
    least PREFIX_SIZE + 1 octets. Raises DataError when the quick check fails
    (wrong session key or damaged start).
    """
    plain = _cipher(session).decryptor().update(first[:PREFIX_SIZE + 1])
    _quick_check(plain[:PREFIX_SIZE])
    octet = plain[PREFIX_SIZE]
    if not octet & 0x80:
        raise DataError("the encrypted data is damaged: no packet after the prefix")
    return octet & 0x3F if octet & 0x40 else (octet >> 2) & 0x0F


def _quick_check(prefix: Buffer) -> None:
    if prefix[14:16] != prefix[16:18]:
        raise DataError("the encrypted data is damaged or the session key is wrong "
                        "(the prefix quick check failed)")


def decrypt(reader: StreamReader, body: BodyReader,
            session: SessionKey) -> Iterator[memoryview]:
    """The literal data of a SEIPD v1 body whose version octet was already read.

    The views yielded stay valid and unchanged (the caller may keep them).

    Raises DataError at the end when the MDC does not match, the message is
    truncated, or anything follows the SEIPD packet.
    """
    segments = threaded(_decrypted_segments(reader, body, session), name="openpgp-cfb")
    return threaded(_literal_data(segments), name="openpgp-mdc")


def load_decryption() -> None:
    """Start importing what decryption needs (numpy, ~0.1-0.2 s) in the background.

    Imported lazily because only restore needs it. The engine calls this
    before it waits for the first ciphertext, so the import overlaps with the
    verification of the first fragment instead of following it; a segment
    decrypted before it is done waits on Python's import lock.
    """

    def load() -> None:
        from cryophile.pipeline.fastpgp import cfb  # noqa: PLC0415, F401

    threading.Thread(target=load, name="load-numpy", daemon=True).start()


def _decrypt_segment(session: SessionKey, iv: bytes, pieces: list[memoryview],
                     target: memoryview) -> None:
    """CFB-decrypt consecutive ciphertext ``pieces`` (one segment) into ``target``."""
    from cryophile.pipeline.fastpgp import cfb  # noqa: PLC0415 - see load_decryption

    cfb.decrypt_segment(session.key, iv, pieces, target)


def _gather(body: BodyReader) -> tuple[list[memoryview], int]:
    """The next segment of ciphertext as zero-copy views of the input blocks, and its size."""
    pieces: list[memoryview] = []
    size = 0
    while size < SEGMENT:
        data = body.read_view(SEGMENT - size)
        if not data:
            break
        pieces.append(data)
        size += len(data)
    return pieces, size


def _last_block(pieces: list[memoryview]) -> bytes:
    """The last BLOCK octets of a segment (the IV of the next one)."""
    tail = b""
    for piece in reversed(pieces):
        tail = bytes(piece[-(BLOCK - len(tail)):]) + tail
        if len(tail) == BLOCK:
            break
    return tail


def _decrypted_segments(reader: StreamReader, body: BodyReader,
                        session: SessionKey) -> Iterator[memoryview]:
    """Plaintext segments in order, each a view of a buffer of its own.

    The ciphertext is never copied: each segment is a list of views of the
    input blocks, decrypted straight into a fresh plaintext buffer, which is
    never written again (so the literal data in it is handed on without a copy).
    """
    from cryophile.pipeline.fastpgp import cfb  # noqa: PLC0415 - see load_decryption

    in_flight: collections.deque[tuple[concurrent.futures.Future[None], memoryview,
                                       int]] = collections.deque()
    iv = bytes(BLOCK)
    with concurrent.futures.ThreadPoolExecutor(CFB_WORKERS,
                                               thread_name_prefix="openpgp-cfb") as workers:
        try:
            while True:
                pieces, size = _gather(body)
                if size:
                    target = cfb.new_buffer(SEGMENT + 2 * BLOCK)
                    future = workers.submit(_decrypt_segment, session, iv, pieces, target)
                    in_flight.append((future, target, size))
                    # Only the last segment can be shorter than SEGMENT (a
                    # multiple of BLOCK), so this is always a whole block.
                    iv = _last_block(pieces)
                while in_flight and (len(in_flight) >= CFB_IN_FLIGHT or not size):
                    future, target, done = in_flight.popleft()
                    future.result()
                    yield target[:done]
                if not size:
                    break
        finally:
            for future, *_ in in_flight:
                future.cancel()
    if not reader.at_end():
        raise DataError("the OpenPGP message has trailing data after the encrypted packet")


# Parser states of the SEIPD plaintext.
_PREFIX, _TAG, _LENGTH, _LENGTH_MORE, _LITERAL_HEAD, _LITERAL_NAME, _DATA, _CHUNK_LENGTH, \
    _CHUNK_LENGTH_MORE, _MDC, _END = range(11)


class _PlaintextParser:
    """Walks ``prefix || literal packet || MDC packet`` incrementally; checks the MDC.

    :meth:`feed` takes consecutive slices of the plaintext and returns views
    of the literal data in them; :meth:`finish` raises DataError unless the
    MDC packet was complete and matched.
    """

    def __init__(self) -> None:
        self.sha1 = hashlib.sha1(usedforsecurity=False)
        self.state = _PREFIX
        self.need = PREFIX_SIZE
        self.field = bytearray()
        self.chunk_left = 0
        self.partial = False
        self.old_format = False
        self.mdc = b""

    def feed(self, view: memoryview) -> list[memoryview]:
        data: list[memoryview] = []
        position = 0
        hashed_end = len(view)
        while position < len(view):
            if self.state == _DATA:
                take = min(self.chunk_left, len(view) - position)
                data.append(view[position:position + take])
                position += take
                self.chunk_left -= take
                if not self.chunk_left:
                    self._chunk_done()
                continue
            if self.state == _END:
                raise DataError("the encrypted data is damaged: data after the integrity check")
            take = min(self.need - len(self.field), len(view) - position)
            if self.state == _MDC and not self.field:
                # The MDC digest is not hashed: hashing stops after its header.
                hashed_end = position + 2 if take >= 2 else len(view)
            elif self.state == _MDC and len(self.field) == 1:
                hashed_end = position + 1
            elif self.state == _MDC:
                hashed_end = position
            self.field += view[position:position + take]
            position += take
            if len(self.field) == self.need:
                field, self.field = bytes(self.field), bytearray()
                self._field_done(field)
        self.sha1.update(view[:hashed_end])
        return data

    def _body_field(self, size: int) -> None:
        # Literal header fields are inside the first body chunk (which, if
        # partial, is ≥ 512 octets, more than the longest header).
        if size > self.chunk_left:
            raise DataError("the encrypted data is damaged: malformed literal packet")
        self.chunk_left -= size

    def _field_done(self, field: bytes) -> None:
        state = self.state
        if state == _PREFIX:
            _quick_check(field)
            self.state, self.need = _TAG, 1
        elif state == _TAG:
            octet = field[0]
            if not octet & 0x80:
                raise DataError("the encrypted data is damaged: no packet after the prefix")
            if octet & 0x40:
                tag = octet & 0x3F
                self.state, self.need = _LENGTH, 1
            else:
                tag = (octet >> 2) & 0x0F
                if octet & 3 == 3:
                    raise DataError("the encrypted data holds a literal packet of "
                                    "indeterminate length")
                self.state, self.need = _LENGTH_MORE, 1 << (octet & 3)
                self.old_format = True
            if tag != TAG_LITERAL:
                raise DataError(f"the encrypted data holds packet tag {tag}, not literal data")
        elif state in (_LENGTH, _CHUNK_LENGTH):
            first = field[0]
            if first < 192:
                self._chunk_start(first, partial=False)
            elif first < 224 or first == 255:
                self.field = bytearray(field)
                self.need = 2 if first < 224 else 5
                self.state = _LENGTH_MORE if state == _LENGTH else _CHUNK_LENGTH_MORE
                self.partial = False
            else:
                self._chunk_start(1 << (first & 0x1F), partial=True)
        elif state in (_LENGTH_MORE, _CHUNK_LENGTH_MORE):
            if self.old_format:  # 1, 2 or 4 octets, big-endian
                length = int.from_bytes(field, "big")
                self.old_format = False
            elif len(field) == 2:
                length = ((field[0] - 192) << 8) + field[1] + 192
            else:  # 0xFF and four octets
                length = int.from_bytes(field[1:], "big")
            self._chunk_start(length, partial=False)
        elif state == _LITERAL_HEAD:
            self._body_field(2)
            self.state, self.need = _LITERAL_NAME, field[1] + 4
        elif state == _LITERAL_NAME:
            self._body_field(len(field))
            self._data_or_next()
        elif state == _MDC:
            if field[:2] != MDC_HEADER:
                raise DataError("the encrypted data is damaged: no integrity check (MDC) packet "
                                "after the literal data")
            self.mdc = field[2:]
            self.state = _END

    def _chunk_start(self, length: int, *, partial: bool) -> None:
        first_chunk = self.state in (_LENGTH, _LENGTH_MORE)
        self.chunk_left = length
        self.partial = partial
        if first_chunk:
            self.state, self.need = _LITERAL_HEAD, 2
            if length < 2:
                raise DataError("the encrypted data is damaged: malformed literal packet")
        else:
            self._data_or_next()

    def _data_or_next(self) -> None:
        if self.chunk_left:
            self.state = _DATA
        else:
            self._chunk_done()

    def _chunk_done(self) -> None:
        if self.partial:
            self.state, self.need = _CHUNK_LENGTH, 1
        else:
            self.state, self.need = _MDC, len(MDC_HEADER) + MDC_DIGEST_SIZE

    def finish(self) -> None:
        if self.state != _END:
            raise truncated("the encrypted data (no complete integrity check packet)")
        if self.sha1.digest() != self.mdc:
            raise DataError("the integrity check (MDC) failed: the encrypted data was "
                            "modified or damaged")


def _literal_data(segments: Iterable[memoryview]) -> Iterator[memoryview]:
    """Literal data as views of the segments' buffers; the MDC check runs after the last one.

    No copy: a segment's buffer is never written again once decrypted, so the
    consumer may keep the views (this thread does SHA-1, the one sequential
    step of decryption, and nothing more per octet).
    """
    parser = _PlaintextParser()
    for segment in segments:
        for data in parser.feed(segment):
            if data:
                yield data
    parser.finish()

"""A message's session key, read with the fast engine's parts; and what the
reference engine gives pysequoia (:func:`reference_handover`).

Where it sits: below both engines. :mod:`.engine` (the fast engine) reads the
session key packets and recovers the session key with it; the reference
engine (:mod:`cryophile.pipeline.openpgp`) asks :func:`reference_handover`
for the message it hands pysequoia. The fast engine falls back to the
reference engine, so the dependency points one way: engine → openpgp →
session, never back.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator

from cryophile.errors import DataError, KeyAccessError
from cryophile.pipeline.fastpgp import seipd
from cryophile.pipeline.fastpgp.packets import (
    TAG_AEAD,
    TAG_MARKER,
    TAG_PADDING,
    TAG_PKESK,
    TAG_SED,
    TAG_SEIPD,
    TAG_SKESK,
    BodyReader,
    StreamReader,
    UnsupportedError,
    read_header,
)
from cryophile.pipeline.fastpgp.packets import packet as whole_packet
from cryophile.pipeline.fastpgp.pkesk import Pkesk, SessionKey, decrypt_session_key, parse_pkesk
from cryophile.pipeline.fastpgp.secretkey import SecretKeyPacket, secret_keys, unlock
from cryophile.pipeline.fastpgp.skesk import password_packet
from cryophile.pipeline.keys import SecretKey, describe_secret_key, gpg_form, sequoia_decrypts
from cryophile.pipeline.stages import Buffer

logger = logging.getLogger(__name__)

#: Far above any real PKESK (an RSA-16384 one is ~2 KiB).
PKESK_MAX = 16 * 1024
SEIPD_VERSION_2 = 2
WILDCARD_KEY_ID = bytes(8)


class Recorder:
    """Passes blocks through and remembers them until :meth:`stop`, so they can be replayed."""

    def __init__(self, blocks: Iterable[Buffer]) -> None:
        self._blocks = iter(blocks)
        self._seen: list[Buffer] | None = []

    def __iter__(self) -> Iterator[Buffer]:
        for block in self._blocks:
            if self._seen is not None:
                self._seen.append(block)
            yield block

    def stop(self) -> None:
        self._seen = None

    def replay(self) -> Iterator[Buffer]:
        """Every block seen so far, then the rest of the stream."""
        return itertools.chain(self._seen or (), self._blocks)


def read_packets(reader: StreamReader) -> tuple[list[bytes], BodyReader]:
    """The PKESK bodies and the SEIPD v1 body (positioned after its version octet)."""
    pkesks: list[bytes] = []
    while True:
        header = read_header(reader)
        if header is None:
            raise DataError("the OpenPGP message is truncated or empty: no encrypted data")
        what = f"packet {header.tag}"
        if header.tag == TAG_SEIPD:
            break
        if header.tag == TAG_PKESK:
            pkesks.append(BodyReader(reader, header, "a session key packet (PKESK)")
                          .read_all(PKESK_MAX))
        elif header.tag in (TAG_SKESK, TAG_MARKER, TAG_PADDING):
            BodyReader(reader, header, what).read_all(PKESK_MAX)
        elif header.tag == TAG_AEAD:
            raise UnsupportedError("AEAD encrypted data packets")
        elif header.tag == TAG_SED:
            raise DataError("the message has no integrity protection (SED packet, no MDC); "
                            "refusing to decrypt it")
        else:
            raise DataError(f"not an encrypted OpenPGP message (packet tag {header.tag})")
    body = BodyReader(reader, header, "the encrypted data packet (SEIPD)")
    version = body.read_exact(1)[0]
    if version == SEIPD_VERSION_2:
        raise UnsupportedError("SEIPD v2 (AEAD) encrypted data")
    if version != seipd.SEIPD_VERSION_1:
        raise DataError(f"unknown encrypted data packet version {version}")
    return pkesks, body


def session_key(pkesk_bodies: list[bytes], key: SecretKey,
                 passphrase: str | None) -> SessionKey:
    """Unlock the subkey a PKESK names and recover the session key."""
    ours = secret_keys(key.key_bytes)
    by_id: dict[bytes, SecretKeyPacket] = {packet.public.key_id: packet for packet in ours}
    candidates: list[tuple[Pkesk, SecretKeyPacket]] = []
    unsupported: UnsupportedError | None = None
    named: list[str] = []
    for body in pkesk_bodies:
        try:
            pkesk = parse_pkesk(body)
        except UnsupportedError as error:
            unsupported = unsupported or error
            continue
        named.append(pkesk.key_id.hex())
        if pkesk.key_id == WILDCARD_KEY_ID:
            candidates += [(pkesk, packet) for packet in ours]
        elif pkesk.key_id in by_id:
            candidates.append((pkesk, by_id[pkesk.key_id]))
    if not candidates:
        if unsupported is not None:
            raise unsupported
        raise KeyAccessError(f"the backup is not encrypted to {describe_secret_key(key)}, from "
                             f"{key.source}: it names subkey id(s) "
                             f"{', '.join(gpg_form(key_id) for key_id in named) or 'none'}")
    failure: DataError | KeyAccessError | None = None
    # Unprotected subkeys first: restore asks for a passphrase only when every
    # recipient subkey of this key is protected.
    for pkesk, packet in sorted(candidates, key=lambda candidate: candidate[1].protected):
        try:
            private = unlock(packet, passphrase)
            return decrypt_session_key(pkesk, packet.public, private)
        except (DataError, KeyAccessError) as error:
            failure = failure or error
    assert failure is not None
    raise failure


def reference_handover(ciphertext: Iterable[Buffer], key: SecretKey,
                       passphrase: str | None) -> tuple[Iterator[Buffer], str | None]:
    """What the reference engine gives pysequoia: the message, and an SKESK password or None.

    pysequoia 0.1.35 decrypts only with the first alive, unrevoked encryption
    subkey of a key, so not a backup whose subkey has since expired or been
    revoked, or that is encrypted to another subkey than that one. This reads
    the message's session key packets, recovers the session key with this
    engine and asks pysequoia to decrypt a probe with the same PKESKs
    (:func:`cryophile.pipeline.keys.sequoia_decrypts`). If it can, the message
    goes to pysequoia unchanged (None: decrypt with ``key`` and
    ``passphrase``); if not, it goes with an SKESK packet in front that holds
    the session key (:mod:`.skesk`), and the password that opens it. When
    this engine cannot read the session key itself (another algorithm or
    packet version, a damaged packet), the message goes unchanged and
    pysequoia reports what it finds.
    """
    recorder = Recorder(ciphertext)
    try:
        pkesks, _ = read_packets(StreamReader(recorder))
        session = session_key(pkesks, key, passphrase)
    except (UnsupportedError, DataError, KeyAccessError) as why:
        logger.debug("session key not recovered for the reference engine: %s", why)
        return recorder.replay(), None
    lead = b"".join(whole_packet(TAG_PKESK, body) for body in pkesks)
    probe = b"".join(seipd.encrypt([b""], session, lead))
    if sequoia_decrypts(probe, key, passphrase):
        return recorder.replay(), None
    logger.info("pysequoia does not decrypt with the subkey of %s this backup is encrypted to "
                "(expired, revoked or not its first encryption subkey): the fast engine "
                "recovered the session key and hands it to pysequoia", describe_secret_key(key))
    skesk, password = password_packet(session)
    return itertools.chain([skesk], recorder.replay()), password

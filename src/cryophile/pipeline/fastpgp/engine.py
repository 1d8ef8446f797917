"""The fast OpenPGP engine: :class:`FastEngine`, registered as ``fast``.

Where it sits: implements the :class:`cryophile.pipeline.engines.Engine`
protocol next to the pysequoia reference engine (:mod:`cryophile.pipeline.openpgp`,
which it falls back to); the backup and restore pipelines call it like any engine.

Contract:

* ``encrypt`` writes one PKESK v3 per subkey in ``recipients.subkeys`` (the
  subkeys pysequoia selected: valid, unexpired, unrevoked, storage
  encryption — this engine does no selection or validation of its own), built
  from that subkey's public key packet found by fingerprint in
  ``recipients.certificates``, then a SEIPD v1 packet (:mod:`.seipd`).
* ``decrypt`` reads the PKESKs, picks the one(s) addressed to a subkey of
  ``key``, unlocks that subkey with ``passphrase`` (:mod:`.secretkey`),
  recovers the session key and streams the literal data out. Errors: no
  PKESK for this key or a wrong passphrase → KeyAccessError; a damaged or
  truncated message, a failed MDC → DataError.
* Fallback: when a recipient subkey, the secret key or the message is valid
  OpenPGP this engine does not handle (UnsupportedError: other algorithms,
  curves, key or PKESK versions, S2K forms, SEIPD v2 or AEAD packets,
  compressed or signed content), the whole job goes to the reference engine,
  with a one-line warning. For decryption that decision is made before any
  output, on the first block(s) of the message, which are then replayed to
  the reference engine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from cryophile.errors import DataError
from cryophile.pipeline.fastpgp import seipd
from cryophile.pipeline.fastpgp.packets import (
    KEY_TAGS,
    TAG_LITERAL,
    BodyReader,
    PublicKey,
    StreamReader,
    UnsupportedError,
    key_packets,
)
from cryophile.pipeline.fastpgp.pkesk import (
    SessionKey,
    encrypt_session_key,
    new_session_key,
    supported_recipient,
)
from cryophile.pipeline.fastpgp.session import Recorder, read_packets, session_key
from cryophile.pipeline.keys import Recipients, SecretKey
from cryophile.pipeline.openpgp import ReferenceEngine
from cryophile.pipeline.stages import Buffer

logger = logging.getLogger(__name__)



def recipient_keys(recipients: Recipients) -> list[PublicKey]:
    """The public key packet of every subkey pysequoia selected, in its order.

    Raises UnsupportedError when a subkey is missing from the certificates
    (e.g. a v6 key, which :func:`.packets.key_packets` skips) or uses an
    algorithm this engine does not encrypt to.
    """
    if not recipients.subkeys:
        raise UnsupportedError("no recipient subkey was recorded")
    known: dict[str, PublicKey] = {}
    for certificate in recipients.certificates:
        try:
            for public, _ in key_packets(certificate):
                if public.tag in KEY_TAGS:
                    known.setdefault(public.hex, public)
        except ValueError as error:
            raise UnsupportedError(f"certificate not parsed: {error}") from None
    selected: list[PublicKey] = []
    for wanted in recipients.subkeys:
        wanted = wanted.lower()
        # keys.py records a 16-hex key id when it could not map it to a fingerprint.
        match = known.get(wanted) or next(
            (key for fingerprint, key in known.items() if fingerprint.endswith(wanted)), None)
        if match is None:
            raise UnsupportedError(f"recipient subkey {wanted} is not a v4 key")
        supported_recipient(match)
        selected.append(match)
    return selected


class FastEngine:
    """Streaming SEIPD v1 on ``cryptography`` and ``hashlib``; see the module docstring."""

    name = "fast"

    def encrypt(self, plaintext: Iterable[Buffer], recipients: Recipients) -> Iterator[Buffer]:
        """See :meth:`cryophile.pipeline.engines.Engine.encrypt`."""
        try:
            keys = recipient_keys(recipients)
        except UnsupportedError as why:
            logger.warning("fast OpenPGP engine: %s; encrypting with the reference engine", why)
            # The manifest records the engine that really wrote the message.
            self.name = ReferenceEngine.name
            return ReferenceEngine().encrypt(plaintext, recipients)
        session = new_session_key()
        lead = b"".join(encrypt_session_key(public, session) for public in keys)
        return seipd.encrypt(plaintext, session, lead)

    def decrypt(self, ciphertext: Iterable[Buffer], key: SecretKey,
                passphrase: str | None) -> Iterator[Buffer]:
        """See :meth:`cryophile.pipeline.engines.Engine.decrypt`."""
        seipd.load_decryption()
        recorder = Recorder(ciphertext)
        reader = StreamReader(recorder)
        try:
            body, session = _open(reader, key, passphrase)
        except UnsupportedError as why:
            logger.warning("fast OpenPGP engine: %s; decrypting with the reference engine", why)
            return ReferenceEngine().decrypt(recorder.replay(), key, passphrase)
        recorder.stop()
        return seipd.decrypt(reader, body, session)


def _open(reader: StreamReader, key: SecretKey,
          passphrase: str | None) -> tuple[BodyReader, SessionKey]:
    """Read up to the SEIPD body, recover the session key, probe the content.

    Raises UnsupportedError (→ reference engine) before any plaintext exists.
    """
    pkesks, body = read_packets(reader)
    session = session_key(pkesks, key, passphrase)
    # The first chunk of the body is contiguous (a partial one is ≥ 512
    # octets): the prefix and the first inner header are in it.
    first = body.peek(seipd.PREFIX_SIZE + 1)
    if len(first) < seipd.PREFIX_SIZE + 1:
        raise DataError("the encrypted data is truncated or damaged: too short")
    tag = seipd.probe(first, session)
    if tag != TAG_LITERAL:
        raise UnsupportedError(f"packet tag {tag} inside the encrypted data "
                               "(compressed or signed content)")
    return body, session

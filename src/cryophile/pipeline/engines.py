"""The OpenPGP engines: the stream interface they implement, and the registry by name.

An engine maps a stream of blocks to a stream of blocks::

    encrypt(plaintext blocks, recipients) -> ciphertext blocks
    decrypt(ciphertext blocks, secret key, passphrase) -> plaintext blocks

The message format is PKESK v3 + SEIPD v1 (AES-256, MDC) around a binary
literal packet, which GnuPG 2.2/2.4, sq, sqop and pysequoia all decrypt.

Two engines, each in its own module, neither importing this one (they are
engines by shape, :class:`Engine` is a Protocol):

* ``fast``: :class:`cryophile.pipeline.fastpgp.engine.FastEngine`, a streaming
  writer and reader on ``cryptography``; it hands what it does not handle to
  the reference engine.
* ``reference``: :class:`cryophile.pipeline.openpgp.ReferenceEngine`, pysequoia
  in a child process.

The registry imports an engine's module when that engine is asked for, not
before: naming the engines (the ``--engine`` choices every command line's
parser lists) loads neither of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from cryophile.errors import CryophileError

if TYPE_CHECKING:
    from cryophile.pipeline.keys import Recipients, SecretKey
    from cryophile.pipeline.stages import Buffer


class Engine(Protocol):
    """An OpenPGP stream engine."""

    name: str

    def encrypt(self, plaintext: Iterable[Buffer], recipients: Recipients) -> Iterator[Buffer]:
        """Encrypt the stream to every recipient subkey; yield the message in blocks.

        The message is complete only when the iterator ends without error.
        """
        ...

    def decrypt(self, ciphertext: Iterable[Buffer], key: SecretKey,
                passphrase: str | None) -> Iterator[Buffer]:
        """Decrypt a message with ``key``; yield the plaintext of its literal packet.

        Items yielded never change afterwards (the consumer may keep them
        without copying), and may be of any size. Raises DataError when the
        message is damaged, truncated or fails its integrity check (MDC): the
        caller must then treat everything already yielded as incomplete.
        """
        ...


def _fast() -> Engine:
    from cryophile.pipeline.fastpgp.engine import FastEngine  # noqa: PLC0415 - see the docstring

    return FastEngine()


def _reference() -> Engine:
    from cryophile.pipeline.openpgp import ReferenceEngine  # noqa: PLC0415 - see the docstring

    return ReferenceEngine()


#: Every engine by the name the command line and the manifest use.
ENGINES: Mapping[str, Callable[[], Engine]] = {"fast": _fast, "reference": _reference}


def engine_for(name: str) -> Engine:
    """A new engine called ``name``; CryophileError if there is none."""
    try:
        factory = ENGINES[name]
    except KeyError:
        raise CryophileError(f"unknown OpenPGP engine {name!r}") from None
    return factory()

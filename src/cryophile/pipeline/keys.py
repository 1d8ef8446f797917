"""OpenPGP keys: recipients for backup, secret keys for restore.

pysequoia is the key-handling authority: it parses certificates, applies its
policy (valid, unexpired, unrevoked) and selects the encryption subkeys. We
learn which subkeys it selected by encrypting an empty probe message and
reading the key ids of its PKESK packets; those subkeys' fingerprints go into
the manifest, so restore can tell before reading any fragment whether a secret
key it was given can decrypt the backup.

Errors name the keyring file. pysequoia reports everything as RuntimeError
strings (with a Rust backtrace when RUST_BACKTRACE is set), so only the first
line of its message is shown.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pysequoia
from pysequoia.packet import PacketPile, Tag

from cryophile.errors import ConfigError, KeyAccessError, NoInputError, StorageIOError

logger = logging.getLogger(__name__)

PKESK_VERSION_3 = 3
PKESK_VERSION_6 = 6
SEIPD_VERSION_1 = 1


def sequoia_message(error: BaseException) -> str:
    """First line of a pysequoia error (the rest is a Rust backtrace)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@dataclass(frozen=True)
class Recipients:
    """Certificates to encrypt to, as pysequoia selected them.

    ``certificates`` is the binary encoding of every certificate (what the
    encryption worker process parses again); ``subkeys`` are the fingerprints of
    the encryption subkeys a message to them is addressed to.
    """

    certificates: tuple[bytes, ...]
    subkeys: tuple[str, ...]


@dataclass(frozen=True)
class SecretKey:
    """One transferable secret key, with the fingerprints of all its keys."""

    source: Path
    fingerprint: str
    key_bytes: bytes
    key_fingerprints: frozenset[str]


#: Far above any real keyring (a cert with many signatures is ~100 KiB); a
#: larger "keyring" (say /dev/zero) is refused instead of filling memory.
MAX_KEYRING_BYTES = 16 * 1024 * 1024


def _read_keyring(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEYRING_BYTES + 1)
    except FileNotFoundError:
        raise NoInputError(f"keyring {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"keyring {str(path)!r} is a directory, not a key file") from None
    except OSError as error:
        raise StorageIOError(f"cannot read keyring {str(path)!r}: {error.strerror}") from None
    if not data.strip():
        raise ConfigError(f"keyring {str(path)!r} is empty")
    if len(data) > MAX_KEYRING_BYTES:
        raise ConfigError(f"keyring {str(path)!r} is larger than "
                          f"{MAX_KEYRING_BYTES // (1024 * 1024)} MiB: not a key file")
    return data


def _split_certs(path: Path, data: bytes) -> list[pysequoia.Cert]:
    try:
        certs = pysequoia.Cert.split_bytes(data)
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt | SystemExit):
            raise
        raise ConfigError(f"keyring {str(path)!r} is not OpenPGP key data: "
                          f"{sequoia_message(error)}") from None
    if not certs:
        raise ConfigError(f"keyring {str(path)!r} holds no OpenPGP certificate")
    return certs


def _secrets(cert: pysequoia.Cert) -> pysequoia.Tsk | None:
    """The secret keys of ``cert``, or None when it holds only public keys."""
    with warnings.catch_warnings():
        # Cert.secrets/has_secret_keys are deprecated in favour of Tsk.from_*,
        # which cannot split a keyring that holds several keys.
        warnings.simplefilter("ignore", DeprecationWarning)
        return cert.secrets if cert.has_secret_keys else None


def _key_packets(data: bytes) -> dict[str, tuple[str, bool]]:
    """Key id → (fingerprint, storage-encryption flag) for every key packet in ``data``."""
    keys: dict[str, tuple[str, bool]] = {}
    current: str | None = None
    for packet in PacketPile.from_bytes(data):
        if packet.fingerprint is not None and packet.key_id is not None:
            current = packet.key_id
            keys[current] = (packet.fingerprint, False)
        elif packet.tag == Tag.Signature and current is not None:
            flags = packet.key_flags
            if flags is not None and flags.storage_encryption:
                keys[current] = (keys[current][0], True)
    return keys


def message_key_ids(message: bytes) -> tuple[list[str], int | None]:
    """Recipients of a message's PKESK packets and its SEIPD version (None if absent).

    A recipient is a 16-hex key id (PKESK v3) or a full fingerprint (PKESK v6).
    """
    key_ids: list[str] = []
    seipd_version: int | None = None
    for packet in PacketPile.from_bytes(message):
        body = packet.body
        if packet.tag == Tag.PKESK and body and body[0] == PKESK_VERSION_3:
            key_ids.append(body[1:9].hex())
        elif packet.tag == Tag.PKESK and len(body) > 3 and body[0] == PKESK_VERSION_6:
            # v6: a length octet, the key version, then the full fingerprint.
            key_ids.append(body[3:2 + body[1]].hex())
        elif packet.tag == Tag.SEIP and body:
            seipd_version = body[0]
            break
    return key_ids, seipd_version


def load_recipients(paths: Iterable[Path]) -> Recipients:
    """Every certificate in every keyring file, checked for a usable encryption subkey.

    Raises NoInputError (missing file), ConfigError (empty, not OpenPGP, or a
    certificate without a valid, unexpired, unrevoked encryption subkey).
    Warns when a keyring holds secret keys (the backup host needs none) and
    when a certificate makes pysequoia write SEIPD v2, which GnuPG 2.2 cannot
    decrypt.
    """
    certificates: list[bytes] = []
    subkeys: list[str] = []
    for path in paths:
        for cert in _split_certs(path, _read_keyring(path)):
            if _secrets(cert) is not None:
                logger.warning("keyring %s holds the secret key of %s: the backup host only "
                               "needs the certificate (public key)", path, cert.fingerprint)
            _refuse_expired_or_revoked(path, cert)
            try:
                probe = pysequoia.encrypt(b"", [cert], armor=False)
            except BaseException as error:
                if isinstance(error, KeyboardInterrupt | SystemExit):
                    raise
                raise ConfigError(
                    f"keyring {str(path)!r}: certificate {cert.fingerprint} has no valid, "
                    f"unexpired, unrevoked encryption subkey ({sequoia_message(error)})") from None
            key_ids, seipd_version = message_key_ids(probe)
            known = _key_packets(bytes(cert))
            for key_id in key_ids:
                fingerprint, storage = known.get(key_id[-16:], (key_id, False))
                if not storage:
                    logger.warning("keyring %s: subkey %s is not flagged for storage "
                                   "encryption; encrypting to it anyway", path, fingerprint)
                subkeys.append(fingerprint)
            if seipd_version != SEIPD_VERSION_1:
                logger.warning(
                    "certificate %s in %s advertises SEIPD v2: this backup will be written in "
                    "a format that GnuPG 2.2 and sq/sqop 0.27 cannot decrypt", cert.fingerprint,
                    path)
            certificates.append(bytes(cert))
    if not certificates:
        raise ConfigError("no keyring given: name certificate files with -k/--keyring")
    return Recipients(tuple(certificates), tuple(dict.fromkeys(subkeys)))


def _refuse_expired_or_revoked(path: Path, cert: pysequoia.Cert) -> None:
    """ConfigError for a revoked or expired certificate.

    pysequoia.encrypt (0.1.x) happily encrypts to both, so its probe alone
    does not enforce "valid, unexpired, unrevoked": a backup to a key revoked
    because it leaked, or to one that expired, would be written without a word.
    """
    if cert.is_revoked:
        raise ConfigError(f"keyring {str(path)!r}: certificate {cert.fingerprint} is revoked; "
                          "no valid, unexpired, unrevoked encryption subkey")
    expiration = cert.expiration
    if expiration is not None and expiration <= datetime.now(UTC):
        raise ConfigError(f"keyring {str(path)!r}: certificate {cert.fingerprint} expired on "
                          f"{expiration:%Y-%m-%d}; no valid, unexpired, unrevoked encryption "
                          "subkey")


def load_secret_keys(paths: Iterable[Path]) -> list[SecretKey]:
    """Every secret key in every keyring file (expired and revoked ones included).

    Raises NoInputError / ConfigError like :func:`load_recipients`, and
    ConfigError when a file holds no secret key material at all.
    """
    keys: list[SecretKey] = []
    for path in paths:
        found = 0
        for cert in _split_certs(path, _read_keyring(path)):
            tsk = _secrets(cert)
            if tsk is None:
                continue
            key_bytes = bytes(tsk)
            fingerprints = frozenset(fpr for fpr, _ in _key_packets(key_bytes).values())
            keys.append(SecretKey(path, cert.fingerprint, key_bytes, fingerprints))
            found += 1
        if not found:
            raise ConfigError(f"keyring {str(path)!r} holds no secret key (only certificates); "
                              "restore needs the secret key")
    return keys


def select_secret_keys(keys: list[SecretKey], recipients: Iterable[str]) -> list[SecretKey]:
    """The keys that hold one of the backup's recipient subkeys.

    Raises KeyAccessError naming the recipients when none does. With no
    recipients recorded (an old or foreign manifest), every key is a candidate.
    """
    wanted = {fingerprint.lower() for fingerprint in recipients}
    if not wanted:
        return keys
    # A recipient may be recorded as a 16-hex key id (v3 PKESK) or a fingerprint.
    matching = [key for key in keys
                if any(fpr in wanted or fpr[-16:] in wanted for fpr in key.key_fingerprints)]
    if not matching:
        raise KeyAccessError(
            "no secret key for this backup: it is encrypted to subkey(s) "
            f"{', '.join(sorted(wanted))}, and the keyring(s) hold "
            f"{', '.join(key.fingerprint for key in keys) or 'no secret key'}")
    return matching


def unlock(key: SecretKey, ask_passphrase: Callable[[SecretKey], str]) -> str | None:
    """Find the passphrase that unlocks ``key``'s decryption subkey (None: unprotected).

    pysequoia decrypts the secret key material when the decryptor is made, so
    a wrong passphrase is detected here, before any output is written.
    Raises KeyAccessError for a wrong passphrase.
    """
    tsk = pysequoia.Tsk.from_bytes(key.key_bytes)
    try:
        tsk.decryptor(None)
        return None
    except RuntimeError as error:
        logger.debug("key %s needs a passphrase: %s", key.fingerprint, sequoia_message(error))
    passphrase = ask_passphrase(key)
    try:
        tsk.decryptor(passphrase)
    except RuntimeError:
        raise KeyAccessError(f"wrong passphrase for secret key {key.fingerprint} "
                             f"(from {key.source})") from None
    return passphrase

"""Signing the manifest: a detached OpenPGP signature, ``chunk.0.sig``, beside ``chunk.0``.

Why: the manifest lists every fragment's SHA-256, so it proves the fragments
are the ones it names, but it is not secret and not signed: anyone who can
write to the vault and has the public key can encrypt a stream of their own
to it, write a matching manifest and have it restored as the real backup.
With ``backup --sign-key`` the backup host signs the exact manifest bytes with
a signing-only secret key it keeps (it still holds no decryption key); with
``restore``/``verify --signed-by CERT`` a backup whose manifest is unsigned,
or whose signature does not verify against that certificate, is refused.

The signature is a plain detached OpenPGP signature (binary, a
signature of type "binary document" over the bytes of ``chunk.0``), so
``gpg --verify chunk.0.sig chunk.0`` and ``sqop verify chunk.0.sig CERT <
chunk.0`` check it without cryophile.

Where it lives: published *before* the manifest in every queue and uploaded
before it, so that whoever sees ``chunk.0`` (the "complete" marker) can rely
on the signature being there already if the backup was signed.

pysequoia does the cryptography and applies its policy (valid, unrevoked
signing-capable key, acceptable algorithms).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pysequoia
from pysequoia.packet import PacketPile, Tag

from cryophile.backup_id import SIGNATURE_NAME, BackupId
from cryophile.errors import ConfigError, DataError, KeyAccessError, StorageIOError
from cryophile.manifest import MAX_SIGNATURE_BYTES
from cryophile.pipeline.keys import (
    SecretKey,
    _key_packets,
    _read_keyring,
    _secrets,
    _split_certs,
    sequoia_message,
)
from cryophile.spool import read_spool_file

logger = logging.getLogger(__name__)

_PROBE = b"cryophile signing probe\n"


def _signing_fingerprints(data: bytes) -> list[str]:
    """Fingerprints of the keys in ``data`` whose binding says "may sign"."""
    found: list[str] = []
    current: str | None = None
    for packet in PacketPile.from_bytes(data):
        if packet.fingerprint is not None:
            current = packet.fingerprint
        elif packet.tag == Tag.Signature and current is not None:
            flags = packet.key_flags
            if flags is not None and flags.signing and current not in found:
                found.append(current)
    return found


@dataclass(frozen=True)
class SigningKey:
    """An unlocked signing key, ready to sign manifests."""

    source: Path
    fingerprint: str
    signer: pysequoia.PySigner
    certificate: pysequoia.Cert

    def sign(self, data: bytes) -> bytes:
        """A detached binary signature of exactly ``data``."""
        try:
            return bytes(pysequoia.sign(self.signer, data,
                                        mode=pysequoia.SignatureMode.DETACHED, armor=False))
        except RuntimeError as error:
            raise ConfigError(f"signing key {self.fingerprint} (from {self.source}) failed to "
                              f"sign: {sequoia_message(error)}") from None


def load_signing_key(path: Path, ask_passphrase: Callable[[SecretKey], str],
                     recipients: Iterable[str] = ()) -> SigningKey:
    """The one secret signing key in ``path``, unlocked and checked by a probe signature.

    Raises NoInputError (no such file), ConfigError (not OpenPGP, only a
    certificate, several keys, no signing-capable key, or a probe signature
    that does not verify) and KeyAccessError (wrong passphrase). Warns when
    the file also holds the secret key of one of ``recipients`` (the subkeys
    the backup is encrypted to): the backup host should hold no key that
    decrypts its backups.
    """
    certs = _split_certs(path, _read_keyring(path))
    secret = [(cert, tsk) for cert in certs if (tsk := _secrets(cert)) is not None]
    if not secret:
        raise ConfigError(f"signing key {str(path)!r} holds no secret key (only a certificate): "
                          "--sign-key needs the secret signing key, e.g. from "
                          "gpg --export-secret-keys")
    if len(secret) > 1:
        raise ConfigError(f"signing key {str(path)!r} holds {len(secret)} secret keys "
                          f"({', '.join(c.fingerprint for c, _ in secret)}); give a file with "
                          "exactly one")
    cert, tsk = secret[0]
    key_bytes = bytes(tsk)
    if not _signing_fingerprints(key_bytes):
        raise ConfigError(f"signing key {cert.fingerprint} in {str(path)!r} has no "
                          "signing-capable key; make one with gpg --quick-gen-key UID ed25519 "
                          "sign, or sq key generate --cannot-encrypt")
    held = {fpr for fpr, _ in _key_packets(key_bytes).values()}
    wanted = {fpr.lower() for fpr in recipients}
    if any(fpr in wanted or fpr[-16:] in wanted for fpr in held):
        logger.warning("signing key file %s also holds the secret key this backup is "
                       "encrypted to: anyone who can read it on this host can decrypt the "
                       "backups; use a signing-only key", path)
    record = SecretKey(path, cert.fingerprint, key_bytes, frozenset(held))
    signer = _unlock(tsk, record, ask_passphrase)
    key = SigningKey(path, cert.fingerprint, signer, _public(cert))
    probe = key.sign(_PROBE)
    if verify_signature([key.certificate], _PROBE, probe) is None:
        raise ConfigError(f"signing key {cert.fingerprint} in {str(path)!r} makes signatures "
                          "that do not verify (expired, revoked, or an algorithm the policy "
                          "rejects)")
    return key


def _public(cert: pysequoia.Cert) -> pysequoia.Cert:
    """The certificate of ``cert`` without its secret key material."""
    return pysequoia.Cert.from_bytes(bytes(cert))


def _unlock(tsk: pysequoia.Tsk, key: SecretKey,
            ask_passphrase: Callable[[SecretKey], str]) -> pysequoia.PySigner:
    try:
        return tsk.signer(None)
    except RuntimeError as error:
        message = sequoia_message(error)
        if "encrypted" not in message:
            # Its signing keys exist (checked before) but none is valid now.
            raise ConfigError(f"signing key {key.fingerprint} in {str(key.source)!r} cannot "
                              f"sign (expired or revoked?): {message}") from None
    try:
        passphrase = ask_passphrase(key)
    except KeyAccessError as error:
        raise KeyAccessError(f"signing key {key.fingerprint} (from {key.source}) is "
                             f"passphrase-protected: {error}") from None
    try:
        return tsk.signer(passphrase)
    except RuntimeError:
        raise KeyAccessError(f"wrong passphrase for signing key {key.fingerprint} "
                             f"(from {key.source})") from None


@dataclass(frozen=True)
class TrustedSigners:
    """The certificates a manifest signature must come from (``--signed-by``)."""

    source: Path
    certificates: tuple[pysequoia.Cert, ...]

    @property
    def fingerprints(self) -> list[str]:
        """Primary fingerprints, for messages."""
        return [cert.fingerprint for cert in self.certificates]

    def describe(self) -> str:
        """``FPR[, FPR…] (from FILE)``."""
        return f"{', '.join(self.fingerprints)} (from {self.source})"


def load_trusted_signers(path: Path) -> TrustedSigners:
    """Every certificate in ``path``; each must have a signing-capable key.

    Raises NoInputError (no such file) and ConfigError (empty, not OpenPGP,
    or a certificate that could never have signed anything).
    """
    certs = _split_certs(path, _read_keyring(path))
    for cert in certs:
        if not _signing_fingerprints(bytes(cert)):
            raise ConfigError(f"--signed-by {str(path)!r}: certificate {cert.fingerprint} has "
                              "no signing-capable key, so it cannot have signed a manifest")
    return TrustedSigners(path, tuple(_public(cert) for cert in certs))


def verify_signature(certificates: Iterable[pysequoia.Cert], data: bytes,
                     signature: bytes) -> str | None:
    """The fingerprint of the key that made ``signature`` over ``data``, if it is
    valid and comes from one of ``certificates``; None otherwise."""
    if len(signature) > MAX_SIGNATURE_BYTES:
        return None
    trusted = list(certificates)
    try:
        parsed = pysequoia.Sig.from_bytes(signature)
        result = pysequoia.verify(bytes=data, store=lambda _ids: trusted, signature=parsed)
    except RuntimeError as error:
        logger.debug("signature does not verify: %s", sequoia_message(error))
        return None
    for valid in result.valid_sigs:
        return str(valid.signing_key)
    return None


def _issuer(signature: bytes) -> str | None:
    try:
        return pysequoia.Sig.from_bytes(signature).issuer_fingerprint
    except RuntimeError:
        return None


def signature_problem(signers: TrustedSigners, manifest: bytes,
                      signature: bytes | None) -> tuple[str | None, str | None]:
    """``(None, signing key fingerprint)`` when ``signature`` is a valid signature of
    ``manifest`` by ``signers``; else ``(what is wrong, None)``."""
    if signature is None:
        return (f"no manifest signature ({SIGNATURE_NAME}), but one from "
                f"{signers.describe()} is required (an unsigned manifest can be forged by "
                "anyone who can write to the vault)"), None
    signing_key = verify_signature(signers.certificates, manifest, signature)
    if signing_key is None:
        issuer = _issuer(signature)
        made_by = (f"it was made by key {issuer}" if issuer else
                   "it is not a readable OpenPGP signature")
        return (f"the manifest signature ({SIGNATURE_NAME}) does not verify against "
                f"{signers.describe()}; {made_by}: the manifest was changed after signing "
                "or signed by another key"), None
    return None, signing_key


def check_manifest_signature(signers: TrustedSigners, backup_id: BackupId, manifest: bytes,
                             signature: bytes | None) -> str:
    """Return the signing key's fingerprint, or raise DataError saying why the
    manifest of ``backup_id`` is refused: no signature, or one that does not
    verify against ``signers`` (another key, or a manifest changed after signing)."""
    problem, signing_key = signature_problem(signers, manifest, signature)
    if problem is not None or signing_key is None:
        raise DataError(f"backup {backup_id}: {problem}; refusing it")
    logger.info("manifest of %s signed by %s", backup_id, signing_key)
    return signing_key


def read_local_signature(directory: Path) -> bytes | None:
    """``directory/chunk.0.sig``, or None when there is none; DataError for a symlink."""
    path = directory / SIGNATURE_NAME
    try:
        return read_spool_file(path)  # never through a planted symlink
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StorageIOError(f"cannot read {path}: {error.strerror}") from None

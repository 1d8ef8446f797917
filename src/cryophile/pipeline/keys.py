"""OpenPGP keys: recipients for backup, secret keys for restore.

pysequoia is the key-handling authority: it parses certificates, applies its
policy and selects the encryption subkeys. We learn which subkeys it selected
by encrypting an empty probe message and reading the key ids of its PKESK
packets; those subkeys' fingerprints go into the manifest, so restore can tell
before reading any fragment whether a secret key it was given can decrypt the
backup.

pysequoia 0.1.35 does not enforce "unexpired" on its own: when no encryption
subkey of a certificate is alive it encrypts to an expired one. So each
subkey's expiry and revocation are read here too (:func:`subkey_states`, from
its newest binding signature and its revocations) and a selection that
includes an expired or revoked subkey is refused.

On restore the roles turn: an expired or revoked subkey must still decrypt
the backups made while it was valid, which pysequoia's ``Tsk.decryptor``
refuses (it picks the first alive, unrevoked encryption subkey, or none).
Whether a passphrase is needed is therefore decided per subkey, from the S2K
usage octet of the secret subkey packet the backup is encrypted to
(:mod:`.fastpgp.secretkey`), and a passphrase is checked by unlocking that
very packet; :func:`sequoia_decrypts` tells the reference engine whether
pysequoia's own key selection can decrypt a message at all.

Errors name the keyring file, and name a key by its primary fingerprint and
its encryption subkey fingerprints side by side, in the form gpg prints them
(uppercase hex, :func:`describe_key`), so a backup's recipients can be matched
by eye against ``gpg --list-keys --with-subkey-fingerprint``. pysequoia
reports everything as RuntimeError strings (with a Rust backtrace when
RUST_BACKTRACE is set), so only the first line of its message is shown.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pysequoia
from pysequoia.packet import Packet, PacketPile, SignatureType, Tag

from cryophile.errors import ConfigError, KeyAccessError, NoInputError, StorageIOError
from cryophile.pipeline.fastpgp import secretkey
from cryophile.pipeline.fastpgp.packets import UnsupportedError

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


def gpg_form(fingerprint: str) -> str:
    """A fingerprint (or key id) as gpg prints it: uppercase hex, no spaces."""
    return fingerprint.upper()


def describe_key(primary: str, subkeys: Iterable[str]) -> str:
    """How every message names a key: ``key PRIMARY (encryption subkey SUBKEY)``."""
    listed = [gpg_form(subkey) for subkey in subkeys]
    what = ("no encryption subkey" if not listed else
            f"encryption subkey {listed[0]}" if len(listed) == 1 else
            f"encryption subkeys {', '.join(listed)}")
    return f"key {gpg_form(primary)} ({what})"


def describe_secret_key(key: SecretKey) -> str:
    """:func:`describe_key` for ``key``, expired and revoked encryption subkeys included.

    Oldest subkey first, as gpg lists the subkeys it added over the years
    (pysequoia serialises a key's subkeys in an order of its own).
    """
    states = sorted((state for state in subkey_states(key.key_bytes).values()
                     if state.encryption), key=lambda state: (state.created, state.fingerprint))
    return describe_key(key.fingerprint, [state.fingerprint for state in states])


_KEY_TAGS = (Tag.PublicKey, Tag.SecretKey, Tag.PublicSubkey, Tag.SecretSubkey)
_SUBKEY_TAGS = (Tag.PublicSubkey, Tag.SecretSubkey)


@dataclass(frozen=True)
class SubkeyState:
    """What a certificate says about one of its subkeys.

    ``expires`` comes from the newest subkey binding signature (None: never);
    ``revoked`` is when the newest subkey revocation was made (None: never
    revoked). Signatures are taken as pysequoia parsed them, not verified
    again here: these states only ever narrow pysequoia's own selection.
    """

    fingerprint: str
    created: datetime
    expires: datetime | None
    revoked: datetime | None
    storage: bool
    transport: bool

    @property
    def encryption(self) -> bool:
        """Flagged for storage or transport encryption (what pysequoia encrypts to)."""
        return self.storage or self.transport

    def problem(self, now: datetime) -> str | None:
        """Why this subkey must not be encrypted to at ``now`` ("revoked on …"), or None."""
        if self.revoked is not None:
            return f"revoked on {self.revoked:%Y-%m-%d}"
        if self.expires is not None and self.expires <= now:
            return f"expired on {self.expires:%Y-%m-%d}"
        return None


def subkey_states(data: bytes, now: datetime | None = None) -> dict[str, SubkeyState]:
    """Fingerprint → state of every subkey in one certificate or secret key ``data``.

    Only self-signatures count (issued by the primary key, or naming no
    issuer), and none made after ``now`` (default: the current time).
    """
    now = now or datetime.now(UTC)
    states: dict[str, SubkeyState] = {}
    newest_binding: dict[str, datetime] = {}
    primary: tuple[str, str] | None = None  # fingerprint, key id
    current: str | None = None  # the subkey the signatures that follow are about
    for packet in PacketPile.from_bytes(data):
        if packet.tag != Tag.Signature:
            current = None
            if packet.tag in _SUBKEY_TAGS and packet.fingerprint and packet.key_created:
                current = packet.fingerprint
                states[current] = SubkeyState(current, packet.key_created, None, None,
                                              storage=False, transport=False)
            elif packet.tag in _KEY_TAGS and packet.fingerprint and packet.key_id:
                primary = (packet.fingerprint, packet.key_id)
            continue
        created = packet.signature_created
        if current is None or created is None or created > now \
                or not _self_signature(packet, primary):
            continue
        state = states[current]
        if packet.signature_type == SignatureType.SubkeyRevocation:
            if state.revoked is None or created > state.revoked:
                states[current] = replace(state, revoked=created)
        elif packet.signature_type == SignatureType.SubkeyBinding \
                and (current not in newest_binding or created > newest_binding[current]):
            newest_binding[current] = created
            period = packet.key_validity_period
            flags = packet.key_flags
            # A validity period of zero means "never expires" (RFC 4880 §5.2.3.6).
            states[current] = replace(
                state, expires=state.created + period if period else None,
                storage=bool(flags and flags.storage_encryption),
                transport=bool(flags and flags.transport_encryption))
    return states


def _self_signature(packet: Packet, primary: tuple[str, str] | None) -> bool:
    if primary is None:
        return False
    if packet.issuer_fingerprint is not None:
        return packet.issuer_fingerprint == primary[0]
    return packet.issuer_key_id is None or packet.issuer_key_id == primary[1]


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

    The recipients of a certificate are the encryption subkeys pysequoia
    selects, which must all be unexpired and unrevoked: pysequoia 0.1.x picks
    only the alive ones when there are any (so of an expired and a valid
    subkey only the valid one is a recipient) but falls back to expired ones
    when none is.

    Raises NoInputError (missing file), ConfigError (empty, not OpenPGP, or a
    certificate without a valid, unexpired, unrevoked encryption subkey: the
    message names each subkey, what is wrong with it and how to fix it).
    Warns when a keyring holds secret keys (the backup host needs none) and
    when a certificate makes pysequoia write SEIPD v2, which GnuPG 2.2 cannot
    decrypt.
    """
    certificates: list[bytes] = []
    subkeys: list[str] = []
    now = datetime.now(UTC)
    for path in paths:
        for cert in _split_certs(path, _read_keyring(path)):
            if _secrets(cert) is not None:
                logger.warning("keyring %s holds the secret key of %s: the backup host only "
                               "needs the certificate (public key)", path, cert.fingerprint)
            _refuse_expired_or_revoked(path, cert)
            states = subkey_states(bytes(cert), now)
            try:
                probe = pysequoia.encrypt(b"", [cert], armor=False)
            except BaseException as error:
                if isinstance(error, KeyboardInterrupt | SystemExit):
                    raise
                raise ConfigError(_no_valid_subkey(path, cert, states, now,
                                                   sequoia_message(error))) from None
            key_ids, seipd_version = message_key_ids(probe)
            known = _key_packets(bytes(cert))
            selected = [known.get(key_id[-16:], (key_id, False)) for key_id in key_ids]
            if any(fingerprint not in states or states[fingerprint].problem(now)
                   for fingerprint, _ in selected):
                raise ConfigError(_no_valid_subkey(path, cert, states, now))
            for fingerprint, storage in selected:
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
    primary = gpg_form(cert.fingerprint)
    if cert.is_revoked:
        raise ConfigError(f"keyring {str(path)!r}: certificate {primary} is revoked; "
                          "no valid, unexpired, unrevoked encryption subkey")
    expiration = cert.expiration
    if expiration is not None and expiration <= datetime.now(UTC):
        raise ConfigError(f"keyring {str(path)!r}: certificate {primary} expired on "
                          f"{expiration:%Y-%m-%d}; no valid, unexpired, unrevoked encryption "
                          f"subkey: extend it (gpg --quick-set-expire {primary} 2y), then "
                          f"export the certificate again (gpg --export {primary} > FILE)")


def _no_valid_subkey(path: Path, cert: pysequoia.Cert, states: dict[str, SubkeyState],
                     now: datetime, reason: str | None = None) -> str:
    """The one-line ConfigError text for a certificate with no usable encryption subkey.

    It names every encryption subkey with what is wrong with it, and the gpg
    commands that fix it (README, "Keys": the same with sq).
    """
    primary = gpg_form(cert.fingerprint)
    encryption = [state for state in states.values() if state.encryption]
    head = f"keyring {str(path)!r}: certificate {primary} has no valid, unexpired, " \
           "unrevoked encryption subkey"
    add = f"gpg --quick-add-key {primary} cv25519 encr 2y"
    export = f"then export the certificate again (gpg --export {primary} > FILE)"
    if not encryption:
        detail = f" ({reason})" if reason else ""
        return f"{head}{detail}: add one ({add}), {export}"
    refused = f"is refused by pysequoia ({reason})" if reason else "is not usable"
    problems = "; ".join(f"subkey {gpg_form(state.fingerprint)} "
                         f"{state.problem(now) or refused}" for state in encryption)
    expired = [state for state in encryption
               if state.revoked is None and state.problem(now) is not None]
    extend = "".join(f"extend it (gpg --quick-set-expire {primary} 2y "
                     f"{gpg_form(state.fingerprint)}) or " for state in expired[:1])
    return f"{head}: {problems}; {extend}make a new subkey ({add}), {export}"


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


def _wanted(recipients: Iterable[str]) -> set[str]:
    return {fingerprint.lower() for fingerprint in recipients}


def _is_recipient(fingerprint: str, wanted: set[str]) -> bool:
    # A recipient may be recorded as a 16-hex key id (v3 PKESK) or a fingerprint.
    return fingerprint in wanted or fingerprint[-16:] in wanted


def select_secret_keys(keys: list[SecretKey], recipients: Iterable[str]) -> list[SecretKey]:
    """The keys that hold one of the backup's recipient subkeys.

    Raises KeyAccessError when none does, naming the backup's recipient
    subkeys and, for every key given, its primary and encryption subkey
    fingerprints (:func:`describe_key`). The manifest records only subkeys:
    the message says how to find the key that holds one. With no recipients
    recorded (an old or foreign manifest), every key is a candidate.
    """
    wanted = _wanted(recipients)
    if not wanted:
        return keys
    matching = [key for key in keys
                if any(_is_recipient(fpr, wanted) for fpr in key.key_fingerprints)]
    if not matching:
        named = [gpg_form(fingerprint) for fingerprint in dict.fromkeys(recipients)]
        held = "; ".join(describe_secret_key(key) for key in keys) or "no secret key"
        raise KeyAccessError(
            f"no secret key for this backup: it is encrypted to subkey{_plural(named)} "
            f"{', '.join(named)}, and the keyring(s) hold {held} (to find the key that holds "
            "it: gpg --list-keys --with-subkey-fingerprint --list-options show-unusable-subkeys "
            f"{named[0]})")
    return matching


def _plural(items: list[str]) -> str:
    return "s" if len(items) > 1 else ""


def unlock(key: SecretKey, recipients: Iterable[str],
           ask_passphrase: Callable[[SecretKey], str]) -> str | None:
    """The passphrase for the subkey of ``key`` a backup is encrypted to (None: none needed).

    ``recipients`` are the backup's recipient subkeys (the manifest's; empty:
    any subkey of ``key``). A passphrase is asked for only when every such
    subkey's secret material is encrypted (S2K usage octet non-zero), and it
    is checked by decrypting that material, so a wrong passphrase is reported
    here, before any output is written. Expired and revoked subkeys count
    like any other: they still decrypt the backups made while they were valid.
    Raises KeyAccessError for a wrong passphrase.
    """
    wanted = _wanted(recipients)
    if wanted:
        targets = [packet for packet in _secret_packets(key)
                   if _is_recipient(packet.public.hex, wanted)]
    else:
        states = subkey_states(key.key_bytes)
        targets = [packet for packet in _secret_packets(key)
                   if packet.public.hex in states and states[packet.public.hex].encryption]
    if not targets:
        # Keys the fast engine does not parse (other algorithms, v6): ask pysequoia.
        return _unlock_with_sequoia(key, ask_passphrase)
    described = describe_key(key.fingerprint, [packet.public.hex for packet in targets])
    if any(not packet.protected for packet in targets):
        logger.debug("%s holds this backup's subkey unprotected: no passphrase", described)
        return None
    logger.debug("%s holds this backup's subkey protected: asking for its passphrase",
                 described)
    passphrase = ask_passphrase(key)
    for packet in targets:
        try:
            secretkey.unlock(packet, passphrase)
            return passphrase
        except KeyAccessError:
            continue
        except UnsupportedError as why:
            logger.debug("subkey %s: %s; checking the passphrase with pysequoia",
                         packet.public.hex, why)
            return _check_with_sequoia(key, passphrase)
    raise KeyAccessError(f"wrong passphrase for {described}, from {key.source}")


def _secret_packets(key: SecretKey) -> list[secretkey.SecretKeyPacket]:
    """The secret (sub)key packets of ``key`` that hold secret material (fast engine parser)."""
    try:
        packets = secretkey.secret_keys(key.key_bytes)
    except ValueError as error:
        logger.debug("key %s: secret key packets not parsed: %s", key.fingerprint, error)
        return []
    # usage -1: a key packet with no secret part at all.
    return [packet for packet in packets if packet.usage >= 0]


def _unlock_with_sequoia(key: SecretKey, ask_passphrase: Callable[[SecretKey], str]) -> str | None:
    tsk = pysequoia.Tsk.from_bytes(key.key_bytes)
    try:
        tsk.decryptor(None)
        return None
    except RuntimeError as error:
        logger.debug("key %s needs a passphrase: %s", key.fingerprint, sequoia_message(error))
    return _check_with_sequoia(key, ask_passphrase(key))


def _check_with_sequoia(key: SecretKey, passphrase: str) -> str:
    """``passphrase`` if pysequoia unlocks ``key``'s decryption subkey with it."""
    try:
        pysequoia.Tsk.from_bytes(key.key_bytes).decryptor(passphrase)
    except RuntimeError as error:
        message = sequoia_message(error)
        if message.startswith("No suitable decryption subkey"):
            # Not a passphrase problem: pysequoia refuses the subkey itself.
            raise KeyAccessError(f"cannot unlock {describe_secret_key(key)}, from "
                                 f"{key.source}: {message}") from None
        raise KeyAccessError(f"wrong passphrase for {describe_secret_key(key)}, from "
                             f"{key.source}") from None
    return passphrase


def sequoia_decrypts(message: bytes, key: SecretKey, passphrase: str | None) -> bool:
    """Whether pysequoia, with its own choice of ``key``'s subkey, decrypts ``message``.

    pysequoia 0.1.35 decrypts only with the first alive, unrevoked encryption
    subkey of a key: not with one that has expired or been revoked, nor with
    a second one. ``message`` is a small probe (the PKESKs of a backup around
    an empty body).
    """
    try:
        decryptor = pysequoia.Tsk.from_bytes(key.key_bytes).decryptor(passphrase)
        pysequoia.decrypt(message, decryptor=decryptor)
    except RuntimeError as error:
        logger.debug("pysequoia does not decrypt with key %s: %s", key.fingerprint,
                     sequoia_message(error))
        return False
    return True

"""Self-test of ``tests/oracles.py``: every key kind round-trips through every oracle.

Also pins the facts in ``tests/ORACLE_FINDINGS.md`` that the product code relies on
(storage-encryption key flags, pysequoia writing PKESK v3 + SEIPD v1 to these certs,
how pysequoia reports a wrong passphrase), so a tool upgrade that changes them fails here.

These tests never skip: a missing tool is a test failure naming the Debian package.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pysequoia
import pytest
from pysequoia.packet import PacketPile, SignatureType, Tag

from oracles import (
    KeyPair,
    OracleError,
    gpg_decrypt,
    gpg_encrypt,
    make_gpg_key,
    make_sq_key,
    make_sqop_key,
    missing_tools,
    sq_decrypt,
    sqop_decrypt,
    sqop_encrypt,
    tool_available,
)

PASSPHRASE = "correct horse ü battery"
REQUIRED_TOOLS = ("gpg", "gpgconf", "gpg-agent", "sq", "sqop", "setsid")

Maker = Callable[[Path], KeyPair]
Oracle = Callable[[Path, KeyPair, Path], None]

KINDS: dict[str, Maker] = {
    "gpg-cv25519": make_gpg_key,
    "gpg-cv25519-binary": partial(make_gpg_key, armor=False),
    "gpg-cv25519-pw": partial(make_gpg_key, passphrase=PASSPHRASE),
    # RSA key generation is slow (0.6 s to several s): exactly one RSA key in this file.
    "gpg-rsa3072": partial(make_gpg_key, algo="rsa3072"),
    "sq": make_sq_key,
    "sq-pw": partial(make_sq_key, passphrase=PASSPHRASE),
    "sqop": make_sqop_key,
    "sqop-pw": partial(make_sqop_key, passphrase=PASSPHRASE),
}


def _pysequoia_encrypt(plain: Path, key: KeyPair, out: Path) -> None:
    """The product's path: pysequoia 0.1.35 encrypting to the oracle's cert."""
    cert = pysequoia.Cert.from_file(str(key.cert))
    out.write_bytes(pysequoia.encrypt(plain.read_bytes(), [cert], armor=False))


ENCRYPTORS: dict[str, Oracle] = {
    "gpg": gpg_encrypt,
    "sqop": sqop_encrypt,
    "pysequoia": _pysequoia_encrypt,
}


@pytest.fixture(autouse=True)
def _tools_present() -> None:
    """Fail (never skip) when an oracle tool is missing: CI must install it."""
    message = missing_tools(*REQUIRED_TOOLS)
    if message is not None:
        pytest.fail(message)


def _decryptors(key: KeyPair) -> dict[str, Oracle]:
    result: dict[str, Oracle] = {"gpg": gpg_decrypt, "sqop": sqop_decrypt}
    if key.passphrase is None:
        result["sq"] = sq_decrypt
    return result


def _check_key_facts(kind: str, key: KeyPair, workdir: Path) -> None:
    """Facts from ORACLE_FINDINGS.md: files, fingerprint, flags, SEIPD v1 from pysequoia."""
    assert key.tool == kind.removesuffix("-pw").removesuffix("-binary")
    assert key.cert.parent == workdir
    assert key.secret.parent == workdir
    assert key.secret.stat().st_mode & 0o077 == 0
    armored = key.cert.read_bytes().startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert armored == (kind != "gpg-cv25519-binary")
    secret_armored = key.secret.read_bytes().startswith(b"-----BEGIN PGP PRIVATE KEY BLOCK-----")
    assert secret_armored == armored

    cert = pysequoia.Cert.from_file(str(key.cert))
    assert key.fingerprint == cert.fingerprint
    assert len(key.fingerprint) == 40
    assert key.fingerprint == key.fingerprint.lower()
    # (Cert.has_secret_keys / .secrets emit DeprecationWarning in pysequoia 0.1.35.)
    # (pysequoia's Tag is not hashable: compare in lists, not sets.)
    cert_tags = [p.tag for p in PacketPile.from_file(str(key.cert))]
    assert Tag.SecretKey not in cert_tags
    assert Tag.SecretSubkey not in cert_tags
    assert Tag.SecretSubkey in [p.tag for p in PacketPile.from_file(str(key.secret))]
    tsk = pysequoia.Tsk.from_file(str(key.secret))
    assert tsk.extract_certificate().fingerprint == key.fingerprint

    bindings = [
        p.key_flags
        for p in PacketPile.from_file(str(key.cert))
        if p.tag == Tag.Signature and p.signature_type == SignatureType.SubkeyBinding
    ]
    encryption = [f for f in bindings if f is not None and f.storage_encryption]
    assert len(encryption) == 1
    assert encryption[0].transport_encryption

    message = pysequoia.encrypt(b"x", [cert], armor=False)
    packets = _packets(message)
    assert [tag for tag, _ in packets] == [Tag.PKESK, Tag.SEIP]
    assert packets[0][1][:1] == b"\x03"  # PKESK v3
    assert packets[1][1][:1] == b"\x01"  # SEIPD v1 (tag 18, version 1)


def _packets(data: bytes) -> list[tuple[Tag, bytes]]:
    return [(p.tag, p.body) for p in PacketPile.from_bytes(data)]


@pytest.mark.parametrize("kind", list(KINDS))
def test_key_kind_roundtrips_through_every_oracle(kind: str, tmp_path: Path) -> None:
    key = KINDS[kind](tmp_path / "keys")
    _check_key_facts(kind, key, tmp_path / "keys")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(7000))

    for enc_name, encrypt in ENCRYPTORS.items():
        message = tmp_path / f"msg.{enc_name}"
        encrypt(plain, key, message)
        for dec_name, decrypt in _decryptors(key).items():
            out = tmp_path / f"out.{enc_name}.{dec_name}"
            decrypt(message, key, out)
            assert out.read_bytes() == plain.read_bytes(), (kind, enc_name, dec_name)

    if key.passphrase is not None:
        message = tmp_path / "msg.gpg"
        bad = dataclasses.replace(key, passphrase="wrong passphrase")
        unset = dataclasses.replace(key, passphrase=None)
        for decrypt in (gpg_decrypt, sqop_decrypt):
            for wrong in (bad, unset):
                out = tmp_path / "out.wrong"
                with pytest.raises(OracleError):
                    decrypt(message, wrong, out)
                assert not out.exists()
        with pytest.raises(OracleError, match="terminal"):
            sq_decrypt(message, key, tmp_path / "out.sq")


def test_pysequoia_wrong_passphrase_fails_in_decryptor(tmp_path: Path) -> None:
    """pysequoia 0.1.35 rejects a wrong or missing passphrase already in decryptor()."""
    key = make_gpg_key(tmp_path, passphrase=PASSPHRASE)
    tsk = pysequoia.Tsk.from_file(str(key.secret))
    with pytest.raises(RuntimeError):
        tsk.decryptor("wrong passphrase")
    with pytest.raises(RuntimeError, match="secret key material is encrypted"):
        tsk.decryptor(None)
    decryptor = tsk.decryptor(PASSPHRASE)

    other = make_sqop_key(tmp_path)
    message = pysequoia.encrypt(b"y", [pysequoia.Cert.from_file(str(other.cert))], armor=False)
    with pytest.raises(RuntimeError, match="No key to decrypt message"):
        pysequoia.decrypt(message, decryptor=decryptor)


@pytest.mark.parametrize("decrypt", [gpg_decrypt, sqop_decrypt, sq_decrypt])
def test_not_a_recipient_raises(decrypt: Oracle, tmp_path: Path) -> None:
    recipient = make_sqop_key(tmp_path)
    stranger = make_gpg_key(tmp_path)
    plain = tmp_path / "plain"
    plain.write_bytes(b"secret")
    message = tmp_path / "msg"
    sqop_encrypt(plain, recipient, message)
    out = tmp_path / "out"
    with pytest.raises(OracleError):
        decrypt(message, stranger, out)
    assert not out.exists()


def test_tampered_message_raises(tmp_path: Path) -> None:
    key = make_sqop_key(tmp_path)
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(4096))
    message = tmp_path / "msg"
    gpg_encrypt(plain, key, message)
    data = bytearray(message.read_bytes())
    data[-30] ^= 0x01
    message.write_bytes(bytes(data))
    for decrypt in (gpg_decrypt, sqop_decrypt, sq_decrypt):
        out = tmp_path / f"out.{decrypt.__name__}"
        with pytest.raises(OracleError):
            decrypt(message, key, out)
        assert not out.exists()


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="algo"):
        make_gpg_key(tmp_path, algo="dsa1024")
    for maker in (make_sq_key, make_sqop_key):
        with pytest.raises(ValueError, match="passphrase=None"):
            maker(tmp_path, passphrase="")
    with pytest.raises(ValueError, match="newline"):
        make_sqop_key(tmp_path, passphrase="a\nb")


def test_missing_tool_message_names_debian_package() -> None:
    assert tool_available("gpg")
    assert not tool_available("cryophile-no-such-tool")
    assert missing_tools("gpg", "sqop") is None
    message = missing_tools("sqop", "cryophile-no-such-tool")
    assert message is not None
    assert "cryophile-no-such-tool" in message
    assert "apt-get install" in message

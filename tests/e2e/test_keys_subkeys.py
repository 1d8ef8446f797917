"""Expired, revoked and rotated encryption subkeys, through the real CLI.

Issue 12 point 5: a backup made while its encryption subkey was valid must restore after
that subkey expired or was revoked, with both engines, with or without a passphrase, as
``gpg -d`` and ``sqop decrypt`` do; ``backup -k`` must refuse a certificate whose only
encryption subkey is expired or revoked (exit 78, naming the subkey, what is wrong and
the fix, nothing queued); after a rotation (old subkey expired or revoked, new one
added) new backups go to the new subkey and old ones still restore. Issue 17 point 6:
"no usable key" messages name every key by primary and encryption subkey fingerprints,
uppercase as gpg prints them, so the backup's recipients and the keyring's keys match
by eye.

Keys come from the real tools (``oracles.make_gpg_subkey_history``: GnuPG with
``--faked-system-time``, the subkey expired or revoked a year ago;
``oracles.make_sq_subkey_history``: ``sq revoke subkey`` and ``sq key adopt``). The
backup is made with the certificate as it was (``before``) and restored with the secret
key as it is now (``after``), which is what happens to a real backup kept for years.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pysequoia
import pytest
from pysequoia.packet import PacketPile, Tag

import oracles
from support.cli import VAULT, Cli, Result
from support.files import snapshot

ENGINES = ("fast", "reference")
PREFIX = "hosts/db1"
PASSPHRASE = "old backups, new subkey"

# ----------------------------------------------------------------------------- keys


@pytest.fixture(scope="module")
def histories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, oracles.SubkeyHistory]:
    """Every key history the tests use, made once (≈ 1 s in all)."""
    root = tmp_path_factory.mktemp("histories")
    return {
        "gpg-expired": oracles.make_gpg_subkey_history(root / "gpg-expire", "expire"),
        "gpg-expired-protected": oracles.make_gpg_subkey_history(
            root / "gpg-expire-pw", "expire", passphrase=PASSPHRASE),
        "gpg-revoked": oracles.make_gpg_subkey_history(root / "gpg-revoke", "revoke"),
        "gpg-rotated": oracles.make_gpg_subkey_history(root / "gpg-rotate", "rotate"),
        "sq-revoked": oracles.make_sq_subkey_history(root / "sq-revoke", "revoke"),
        "sq-rotated": oracles.make_sq_subkey_history(root / "sq-rotate", "rotate"),
    }


# ----------------------------------------------------------------------------- helpers


def backup(cli: Cli, cert: Path, data: bytes, *extra: str) -> str:
    """Back ``data`` up to ``cert`` (asserting success) and stage it for restore."""
    result = cli.run(["backup", "-v", VAULT, "-p", PREFIX, "-k", cert, "-s", "5M", "--json",
                      *extra], stdin=data)
    assert result.returncode == 0, result.stderr
    ulid: str = json.loads(result.stdout)["ulid"]
    cli.stage_for_restore(ulid, PREFIX)
    return ulid


def restore(cli: Cli, ulid: str, secret: Path, engine: str, output: Path, *,
            passphrase: str | None = None, env: dict[str, str] | None = None) -> Result:
    """``restore -u ULID -k SECRET --engine ENGINE -o OUTPUT --keep`` [``-P FD``]."""
    args: list[str | os.PathLike[str]] = ["restore", "-v", VAULT, "-p", PREFIX, "-u", ulid,
                                          "-k", secret, "--engine", engine, "-o", output,
                                          "--keep"]
    if passphrase is None:
        return cli.run(args, env=env)
    read_end, write_end = os.pipe()
    os.write(write_end, passphrase.encode() + b"\n")
    os.close(write_end)
    try:
        return cli.run([*args, "--pass-fd", str(read_end)], pass_fds=[read_end], env=env)
    finally:
        os.close(read_end)


def manifest(cli: Cli, ulid: str) -> dict[str, object]:
    document: dict[str, object] = json.loads(
        (cli.freeze_dir(ulid, PREFIX) / "chunk.0").read_bytes())
    return document


def message_of(cli: Cli, ulid: str, into: Path) -> Path:
    """The backup's OpenPGP message: ``cat chunk.1 … chunk.N`` (the README's recipe)."""
    count = len(manifest(cli, ulid)["fragments"])  # type: ignore[arg-type]
    directory = cli.freeze_dir(ulid, PREFIX)
    into.write_bytes(b"".join((directory / f"chunk.{index}").read_bytes()
                              for index in range(1, count + 1)))
    return into


def packets(message: Path) -> list[tuple[Tag, str | None]]:
    """(tag, PKESK recipient key id) of every top-level packet, read by pysequoia."""
    found: list[tuple[Tag, str | None]] = []
    for packet in PacketPile.from_file(str(message)):
        body = packet.body if packet.tag == Tag.PKESK else b""
        found.append((packet.tag, body[1:9].hex() if body else None))
    return found


def unzstd(path: Path) -> bytes:
    """What ``zstd -d`` makes of the file (every frame of it, as a user would recover it)."""
    return subprocess.run(["zstd", "-d", "-q", "-c", str(path)], capture_output=True,
                          check=True).stdout


def gpg_form(fingerprint: str) -> str:
    return fingerprint.upper()


@pytest.fixture
def data() -> bytes:
    # Incompressible and above one 5 MiB fragment: two fragments.
    return os.urandom(6 * 1024 * 1024)


# ----------------------------------------------------------------------------- restore


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("which", ["gpg-expired", "gpg-revoked", "sq-revoked"])
def test_a_backup_restores_after_its_subkey_expired_or_was_revoked(
        cli: Cli, histories: dict[str, oracles.SubkeyHistory], which: str, engine: str,
        data: bytes, tmp_path: Path) -> None:
    """Unprotected key: no passphrase is asked for (main exited 77 "passphrase-protected
    and there is no terminal"); a --pass-fd given anyway is not read (main said "wrong
    passphrase"); the fragments are left as they were (--keep)."""
    history = histories[which]
    ulid = backup(cli, history.before.cert, data)
    staged = cli.restore_dir(ulid, PREFIX)
    fragments = {path.name: path.read_bytes() for path in staged.iterdir()}

    output = tmp_path / "out"
    result = restore(cli, ulid, history.after.secret, engine, output)
    assert result.returncode == 0, result.stderr
    assert output.read_bytes() == data
    assert "passphrase" not in result.stderr

    again = tmp_path / "again"
    result = restore(cli, ulid, history.after.secret, engine, again, passphrase="anything")
    assert result.returncode == 0, result.stderr
    assert again.read_bytes() == data
    # The reference engine hands pysequoia the session key in an SKESK packet in its
    # pipe: nothing of that reaches the restore queue.
    assert {path.name: path.read_bytes() for path in staged.iterdir()} == fragments


@pytest.mark.parametrize("which", ["gpg-expired", "gpg-revoked", "sq-revoked"])
def test_gpg_sqop_and_sq_decrypt_the_same_fragments(
        cli: Cli, histories: dict[str, oracles.SubkeyHistory], which: str, data: bytes,
        tmp_path: Path) -> None:
    """What cryophile now does is what its peers do with the same key."""
    history = histories[which]
    message = message_of(cli, backup(cli, history.before.cert, data), tmp_path / "message")
    for name, decrypt in [("gpg", oracles.gpg_decrypt), ("sqop", oracles.sqop_decrypt),
                          ("sq", oracles.sq_decrypt)]:
        out = tmp_path / f"{name}.zst"
        decrypt(message, history.after, out)
        assert unzstd(out) == data, name


@pytest.mark.parametrize("engine", ENGINES)
def test_a_protected_key_whose_subkey_expired(
        cli: Cli, histories: dict[str, oracles.SubkeyHistory], engine: str, data: bytes,
        tmp_path: Path) -> None:
    """-P and CRYOPHILE_ASKPASS give the passphrase; a wrong one is "wrong passphrase"
    naming the key and the subkey, before any output."""
    history = histories["gpg-expired-protected"]
    ulid = backup(cli, history.before.cert, data)

    by_fd = tmp_path / "by-fd"
    result = restore(cli, ulid, history.after.secret, engine, by_fd, passphrase=PASSPHRASE)
    assert result.returncode == 0, result.stderr
    assert by_fd.read_bytes() == data

    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\necho '{PASSPHRASE}'\n")
    askpass.chmod(0o700)
    by_askpass = tmp_path / "by-askpass"
    result = restore(cli, ulid, history.after.secret, engine, by_askpass,
                     env={"CRYOPHILE_ASKPASS": str(askpass)})
    assert result.returncode == 0, result.stderr
    assert by_askpass.read_bytes() == data

    wrong = tmp_path / "wrong"
    result = restore(cli, ulid, history.after.secret, engine, wrong, passphrase="not it")
    assert result.returncode == 77, result.stderr
    assert (f"wrong passphrase for key {gpg_form(history.after.fingerprint)} "
            f"(encryption subkey {gpg_form(history.subkey)})") in result.stderr
    assert not wrong.exists()


# ----------------------------------------------------------------------------- backup -k


ADVICE = re.compile(r"\(gpg (--quick-(?:set-expire|add-key) [^)]*)\)")


@pytest.mark.parametrize(("which", "problem"), [
    ("gpg-expired", "expired on"), ("gpg-revoked", "revoked on"), ("sq-revoked", "revoked on"),
])
def test_backup_refuses_a_certificate_whose_only_encryption_subkey_is_retired(
        cli: Cli, histories: dict[str, oracles.SubkeyHistory], which: str, problem: str,
        data: bytes) -> None:
    """Exit 78 (configuration, as README's table says), the subkey named as gpg prints
    it with what is wrong, the fix, and nothing queued in the spool."""
    history = histories[which]
    before = snapshot(cli.spool)
    result = cli.run(["backup", "-v", VAULT, "-p", PREFIX, "-k", history.after.cert],
                     stdin=data)
    assert result.returncode == 78, result.stderr
    printed = oracles.gpg_fingerprints(history.after.cert)
    primary, subkey = printed[0], gpg_form(history.subkey)
    assert subkey in printed
    # The gpg helper set the subkey to expire one day after the change.
    when = history.changed + timedelta(days=1 if problem == "expired on" else 0)
    day = f"{when:%Y-%m-%d}"
    assert f"certificate {primary} has no valid, unexpired, unrevoked encryption subkey: " \
           f"subkey {subkey} {problem} {day}" in result.stderr
    assert str(history.after.cert) in result.stderr
    assert "gpg --quick-add-key" in result.stderr
    assert ("--quick-set-expire" in result.stderr) == (problem == "expired on")
    assert snapshot(cli.spool) == before


@pytest.mark.parametrize("which", ["gpg-expired", "gpg-revoked"])
def test_the_fix_the_refusal_names_works(
        cli: Cli, histories: dict[str, oracles.SubkeyHistory], which: str, data: bytes,
        tmp_path: Path) -> None:
    """Run the gpg command of the message as written: then backup -k accepts the
    certificate, and the key restores both the new backup and one made before."""
    history = histories[which]
    old = backup(cli, history.before.cert, data)
    refused = cli.run(["backup", "-v", VAULT, "-p", PREFIX, "-k", history.after.cert],
                      stdin=data)
    assert refused.returncode == 78
    commands = ADVICE.findall(refused.stderr)
    assert commands, refused.stderr
    fixed = oracles.gpg_change_key(history.after, commands[0].split(), tmp_path / "fixed")
    new = backup(cli, fixed.cert, data)
    recipients = manifest(cli, new)["recipients"]
    if which == "gpg-expired":
        assert recipients == [history.subkey]  # extended, so the same subkey
    else:
        assert recipients != [history.subkey]
    for ulid in (old, new):
        out = tmp_path / f"out-{ulid}"
        result = restore(cli, ulid, fixed.secret, "fast", out)
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == data


# ----------------------------------------------------------------------------- rotation


@pytest.mark.parametrize("which", ["gpg-rotated", "sq-rotated"])
def test_after_a_rotation_backups_go_to_the_new_subkey_and_old_ones_still_restore(
        cli: Cli, histories: dict[str, oracles.SubkeyHistory], which: str, data: bytes,
        tmp_path: Path) -> None:
    history = histories[which]
    assert history.new_subkey is not None
    old = backup(cli, history.before.cert, data)
    new = {engine: backup(cli, history.after.cert, data, "--engine", engine)
           for engine in ENGINES}
    for engine, ulid in new.items():
        assert manifest(cli, ulid)["recipients"] == [history.new_subkey], engine
        message = message_of(cli, ulid, tmp_path / f"message-{engine}")
        # Only PKESKs to the new subkey, then the encrypted data: never an SKESK.
        assert packets(message) == [(Tag.PKESK, history.new_subkey[-16:]), (Tag.SEIP, None)]
        # Our framing, read by every peer with the key as it is now.
        for name, decrypt in [("gpg", oracles.gpg_decrypt), ("sqop", oracles.sqop_decrypt),
                              ("sq", oracles.sq_decrypt)]:
            out = tmp_path / f"{name}-{engine}.zst"
            decrypt(message, history.after, out)
            assert unzstd(out) == data, (name, engine)
        # pysequoia chooses the alive subkey itself: no help from the fast engine.
        tsk = pysequoia.Tsk.from_file(str(history.after.secret))
        decrypted = pysequoia.decrypt(message.read_bytes(), decryptor=tsk.decryptor(None))
        plain = tmp_path / f"pysequoia-{engine}.zst"
        plain.write_bytes(decrypted.bytes or b"")
        assert unzstd(plain) == data
    for engine in ENGINES:
        for ulid in (old, *new.values()):
            out = tmp_path / f"out-{engine}-{ulid}"
            result = restore(cli, ulid, history.after.secret, engine, out)
            assert result.returncode == 0, (engine, result.stderr)
            assert out.read_bytes() == data


# ----------------------------------------------------------------------------- messages


def test_no_secret_key_names_both_sides_as_gpg_prints_them(
        cli: Cli, gpg_key: oracles.KeyPair, sqop_key: oracles.KeyPair,
        histories: dict[str, oracles.SubkeyHistory], tmp_path: Path) -> None:
    """Issue 17 point 6: the backup's subkey and, for each key given, its primary and
    encryption subkey(s), all uppercase, so a glance matches them (and gpg's listing)."""
    ulid = backup(cli, gpg_key.cert, b"for the gpg key only")
    recipient = oracles.gpg_fingerprints(gpg_key.cert)[1]
    rotated = histories["gpg-rotated"]
    args: list[str | os.PathLike[str]] = ["restore", "-v", VAULT, "-p", PREFIX, "-u", ulid,
                                          "-k", sqop_key.secret, "-k", rotated.after.secret,
                                          "-o", tmp_path / "out"]
    result = cli.run(args)
    assert result.returncode == 77, result.stderr
    sqop_primary, sqop_subkey = _primary_and_encryption_subkey(sqop_key)
    # Both subkeys of the rotated key, the expired one too, oldest first as gpg lists them.
    rotated_primary, *rotated_subkeys = oracles.gpg_fingerprints(rotated.after.cert)
    assert sorted(rotated_subkeys) == sorted(map(gpg_form, (rotated.subkey,
                                                            rotated.new_subkey or "")))
    assert f"no secret key for this backup: it is encrypted to subkey {recipient}, and " \
           f"the keyring(s) hold key {sqop_primary} (encryption subkey {sqop_subkey}); " \
           f"key {rotated_primary} (encryption subkeys {', '.join(rotated_subkeys)})" \
           in result.stderr
    assert "gpg --list-keys --with-subkey-fingerprint --list-options show-unusable-subkeys " \
           f"{recipient})" in result.stderr
    assert not (tmp_path / "out").exists()


def _primary_and_encryption_subkey(key: oracles.KeyPair) -> tuple[str, str]:
    """gpg's printed primary fingerprint, and that of the key's only encryption subkey."""
    printed = oracles.gpg_fingerprints(key.cert)
    encryption = [fingerprint for fingerprint in printed[1:]
                  if _is_encryption_subkey(key.cert, fingerprint)]
    assert len(encryption) == 1, printed
    return printed[0], encryption[0]


def _is_encryption_subkey(cert: Path, fingerprint: str) -> bool:
    current: str | None = None
    for packet in PacketPile.from_file(str(cert)):
        if packet.tag in (Tag.PublicSubkey, Tag.SecretSubkey):
            current = packet.fingerprint
        elif packet.tag == Tag.Signature and current == fingerprint.lower() \
                and packet.key_flags is not None:
            return bool(packet.key_flags.storage_encryption
                        or packet.key_flags.transport_encryption)
    return False


def test_a_protected_key_without_a_terminal_is_named_with_its_file(
        cli: Cli, histories: dict[str, oracles.SubkeyHistory], data: bytes,
        tmp_path: Path) -> None:
    """No -P, no askpass, no terminal: exit 77 naming the key (uppercase) and its file."""
    history = histories["gpg-expired-protected"]
    ulid = backup(cli, history.before.cert, data)
    args: Sequence[str | os.PathLike[str]] = [
        "restore", "-v", VAULT, "-p", PREFIX, "-u", ulid, "-k", history.after.secret,
        "-o", tmp_path / "out"]
    detached = subprocess.run([sys.executable, "-m", "cryophile", *map(str, args)],
                              capture_output=True, env=cli.environment(), check=False,
                              start_new_session=True, timeout=120)
    assert detached.returncode == 77
    stderr = detached.stderr.decode()
    assert f"secret key {gpg_form(history.after.fingerprint)} (from {history.after.secret}) " \
           "is passphrase-protected and there is no terminal" in stderr

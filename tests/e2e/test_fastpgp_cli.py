"""The fast engine through the real CLI: backup and restore with either engine, either way.

``backup --engine fast`` is restored by ``restore --engine fast`` and
``--engine reference``; ``backup --engine reference`` by ``restore --engine
fast``; the fragments of a fast backup, concatenated, are decrypted by gpg.
A message whose MDC fails (its fragments re-hashed into the manifest, so the
per-fragment SHA-256 check passes) makes restore exit 65 saying the output is
incomplete.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
from pathlib import Path

import pytest

import oracles
from support.cli import VAULT, Cli

MIB = 1024 * 1024


def payload(tar_stream: bytes) -> bytes:
    return random.Random(11).randbytes(7 * MIB) + tar_stream


def restore(cli: Cli, ulid: str, key: oracles.KeyPair, engine: str, *extra: str) -> bytes:
    args: list[str | os.PathLike[str]] = ["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid,
                                          "-k", key.secret, "--engine", engine, *extra]
    pass_fds: list[int] = []
    read_end = -1
    if key.passphrase is not None:
        read_end, write_end = os.pipe()
        os.write(write_end, key.passphrase.encode() + b"\n")
        os.close(write_end)
        args += ["--pass-fd", str(read_end)]
        pass_fds.append(read_end)
    try:
        result = cli.run(args, pass_fds=pass_fds)
    finally:
        if read_end >= 0:
            os.close(read_end)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_fast_backup_restores_with_both_engines(cli: Cli, gpg_key: oracles.KeyPair,
                                                tar_stream: bytes, compression: str) -> None:
    data = payload(tar_stream)
    ulid = cli.backup(gpg_key, data, "--engine", "fast", "-C", compression)
    manifest = json.loads((cli.freeze_dir(ulid) / "chunk.0").read_bytes())
    assert manifest["engine"] == "fast"
    assert len(manifest["fragments"]) >= 2
    cli.stage_for_restore(ulid)
    assert restore(cli, ulid, gpg_key, "fast", "--keep") == data
    assert restore(cli, ulid, gpg_key, "reference") == data


@pytest.mark.parametrize("maker", ["gpg_rsa_key", "sqop_key_protected"])
def test_reference_backup_restores_with_the_fast_engine(cli: Cli, tar_stream: bytes, maker: str,
                                                        request: pytest.FixtureRequest) -> None:
    key: oracles.KeyPair = request.getfixturevalue(maker)
    data = payload(tar_stream)
    ulid = cli.backup(key, data, "--engine", "reference")
    cli.stage_for_restore(ulid)
    assert restore(cli, ulid, key, "fast") == data


def test_fast_backup_fragments_are_one_message_for_gpg(cli: Cli, gpg_key_protected: oracles.KeyPair,
                                                       tmp_path: Path) -> None:
    data = random.Random(12).randbytes(12 * MIB)
    ulid = cli.backup(gpg_key_protected, data, "--engine", "fast", "-C", "none")
    directory = cli.freeze_dir(ulid)
    manifest = json.loads((directory / "chunk.0").read_bytes())
    message = tmp_path / "message.pgp"
    with message.open("wb") as out:
        for entry in manifest["fragments"]:
            out.write((directory / f"chunk.{entry['index']}").read_bytes())
    oracles.gpg_decrypt(message, gpg_key_protected, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    cli.stage_for_restore(ulid)
    assert restore(cli, ulid, gpg_key_protected, "fast") == data


def test_failed_mdc_makes_restore_fail_and_say_the_output_is_incomplete(
        cli: Cli, gpg_key: oracles.KeyPair) -> None:
    data = random.Random(13).randbytes(12 * MIB)
    ulid = cli.backup(gpg_key, data, "--engine", "fast", "-C", "none")
    directory = cli.stage_for_restore(ulid)
    # Damage the middle of the message, then make the manifest agree with the
    # damaged fragment: only the MDC can notice now.
    manifest = json.loads((directory / "chunk.0").read_bytes())
    entry = manifest["fragments"][1]
    fragment = directory / f"chunk.{entry['index']}"
    content = bytearray(fragment.read_bytes())
    content[len(content) // 2] ^= 0x01
    fragment.unlink()
    fragment.write_bytes(content)
    entry["sha256"] = hashlib.sha256(content).hexdigest()
    (directory / "chunk.0").unlink()
    (directory / "chunk.0").write_text(json.dumps(manifest))
    result = cli.run(["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid, "-k",
                      gpg_key.secret, "--engine", "fast"])
    assert result.returncode == 65, result.stderr
    assert "integrity check (MDC) failed" in result.stderr
    assert "output is incomplete" in result.stderr
    assert result.stdout != data


def test_unsupported_recipient_falls_back_and_the_manifest_says_so(
        cli: Cli, tmp_path: Path) -> None:
    # A real GnuPG key whose encryption subkey is ECDH on NIST P-256: not handled by
    # the fast engine, so the reference engine writes the backup, with a notice.
    home = tmp_path / "g"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
           "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "p256 <p@example.org>", "nistp256", "sign",
                    "never"], check=True, capture_output=True)
    listing = subprocess.run([*gpg, "--list-keys", "--with-colons"], check=True,
                             capture_output=True, text=True).stdout
    fingerprint = next(line.split(":")[9] for line in listing.splitlines()
                       if line.startswith("fpr"))
    subprocess.run([*gpg, "--quick-add-key", fingerprint, "nistp256", "encr", "never"],
                   check=True, capture_output=True)
    cert, secret = tmp_path / "p256.cert", tmp_path / "p256.key"
    subprocess.run([*gpg, "--export", "-o", str(cert)], check=True, capture_output=True)
    subprocess.run([*gpg, "--export-secret-keys", "-o", str(secret)], check=True,
                   capture_output=True)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
    data = b"a backup for a P-256 key\n" * 1000
    result = cli.run(["backup", "-v", VAULT, "-p", "p256", "-k", cert, "--json"], stdin=data)
    assert result.returncode == 0, result.stderr
    assert "encrypting with the reference engine" in result.stderr
    ulid = json.loads(result.stdout)["ulid"]
    manifest = json.loads((cli.freeze_dir(ulid, "p256") / "chunk.0").read_bytes())
    assert manifest["engine"] == "reference"
    cli.stage_for_restore(ulid, "p256")
    restored = cli.run(["restore", "-v", VAULT, "-p", "p256", "-u", ulid, "-k", secret])
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == data

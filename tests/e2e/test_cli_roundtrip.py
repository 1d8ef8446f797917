"""End to end through the real CLI: backup into the spool, restore from the restore queue.

Keys from the real gpg, sq and sqop; data from the real tar; every restore is
compared byte for byte with what went in.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import oracles
from support.cli import VAULT, Cli


def payload(tar_stream: bytes, random_bytes: int = 11 * 1024 * 1024) -> bytes:
    """Incompressible bytes then a real tar stream: several 5 MiB fragments."""
    return random.Random(7).randbytes(random_bytes) + tar_stream


def test_backup_writes_fragments_and_manifest_last(cli: Cli, gpg_key: oracles.KeyPair,
                                                   tar_stream: bytes) -> None:
    data = payload(tar_stream)
    ulid = cli.backup(gpg_key, data)
    frozen = cli.freeze_dir(ulid)
    names = sorted(os.listdir(frozen))
    manifest = json.loads((frozen / "chunk.0").read_bytes())
    count = len(manifest["fragments"])
    assert count >= 3
    assert names == sorted(f"chunk.{i}" for i in range(count + 1))
    for entry in manifest["fragments"]:
        content = (frozen / f"chunk.{entry['index']}").read_bytes()
        assert len(content) == entry["size"]
        assert hashlib.sha256(content).hexdigest() == entry["sha256"]
        if entry["index"] < count:
            assert entry["size"] == 5 * 1024 * 1024
    assert manifest["compression"] == "zstd"
    assert manifest["prefix"] == "hosts/db1"
    # The backup/ work directory is gone and nothing half-written remains.
    assert not (cli.spool / "backup" / VAULT / "hosts" / "db1" / ulid).exists()
    assert not list(cli.spool.rglob("*.part"))
    # Spool directories 0700, files 0600.
    for path in [frozen, *frozen.iterdir()]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
    # The manifest names the subkey we encrypted to, and nothing about the plaintext.
    assert manifest["recipients"]
    assert str(len(data)) not in (frozen / "chunk.0").read_text()


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_round_trip_every_compression(cli: Cli, gpg_key: oracles.KeyPair, tar_stream: bytes,
                                      compression: str) -> None:
    data = payload(tar_stream)
    ulid = cli.backup(gpg_key, data, "-C", compression)
    cli.stage_for_restore(ulid)
    result = cli.run(["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid, "-k",
                      gpg_key.secret])
    assert result.returncode == 0, result.stderr
    assert result.stdout == data


@pytest.mark.parametrize("maker", ["sq", "sqop", "gpg_rsa"])
def test_round_trip_with_keys_of_every_tool(cli: Cli, tar_stream: bytes, maker: str,
                                            request: pytest.FixtureRequest) -> None:
    key: oracles.KeyPair = request.getfixturevalue(f"{maker}_key")
    ulid = cli.backup(key, tar_stream)
    cli.stage_for_restore(ulid)
    result = cli.run(["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid, "-k", key.secret])
    assert result.returncode == 0, result.stderr
    assert result.stdout == tar_stream


def test_several_recipients_each_can_restore(cli: Cli, gpg_key: oracles.KeyPair,
                                             sqop_key: oracles.KeyPair, tar_stream: bytes) -> None:
    ulid = cli.backup(gpg_key, tar_stream, "-k", str(sqop_key.cert))
    cli.stage_for_restore(ulid)
    for key in (gpg_key, sqop_key):
        result = cli.run(["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid, "-k",
                          key.secret, "--keep"])
        assert result.returncode == 0, result.stderr
        assert result.stdout == tar_stream


def test_timestamp_names_the_same_backup_at_restore(cli: Cli, gpg_key: oracles.KeyPair,
                                                    tar_stream: bytes) -> None:
    when = "2026-11-26T03:00:00+01:00"
    ulid = cli.backup(gpg_key, tar_stream, "-t", when)
    cli.stage_for_restore(ulid)
    same_instant = "2026-11-26T02:00:00Z"
    result = cli.run(["restore", "-v", VAULT, "-p", "hosts/db1", "-t", same_instant, "-k",
                      gpg_key.secret])
    assert result.returncode == 0, result.stderr
    assert result.stdout == tar_stream
    # The same timestamp again is the same backup id: refused, input untouched.
    again = cli.run(["backup", "-v", VAULT, "-p", "hosts/db1", "-k", gpg_key.cert, "-t", when],
                    stdin=b"other data")
    assert again.returncode == 73
    assert "already exists" in again.stderr


def test_input_from_file_and_fifo(cli: Cli, gpg_key: oracles.KeyPair, tar_stream: bytes,
                                  tmp_path: Path) -> None:
    source = tmp_path / "in.tar"
    source.write_bytes(tar_stream)
    ulid = cli.backup(gpg_key, b"", "-i", str(source))
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"cat {source} > {fifo}"])
    ulid_fifo = cli.backup(gpg_key, b"", "-i", str(fifo))
    assert writer.wait(timeout=60) == 0
    for backup in (ulid, ulid_fifo):
        cli.stage_for_restore(backup)
        result = cli.run(["restore", "-v", VAULT, "-p", "hosts/db1", "-u", backup, "-k",
                          gpg_key.secret])
        assert result.stdout == tar_stream


def test_empty_input_round_trips(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    ulid = cli.backup(gpg_key, b"")
    assert sorted(os.listdir(cli.freeze_dir(ulid))) == ["chunk.0", "chunk.1"]
    cli.stage_for_restore(ulid)
    result = cli.run(["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid, "-k",
                      gpg_key.secret])
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""


def test_restore_to_file(cli: Cli, gpg_key: oracles.KeyPair, tar_stream: bytes,
                         tmp_path: Path) -> None:
    ulid = cli.backup(gpg_key, tar_stream)
    cli.stage_for_restore(ulid)
    target = tmp_path / "restored.tar"
    args: list[str | os.PathLike[str]] = ["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid,
                                          "-k", gpg_key.secret, "-o", target, "--keep"]
    result = cli.run(args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    assert target.read_bytes() == tar_stream
    # A second restore to the same file refuses and leaves it alone.
    again = cli.run(args)
    assert again.returncode == 73
    assert str(target) in again.stderr
    assert target.read_bytes() == tar_stream


def test_passphrase_from_fd_askpass_and_wrong(cli: Cli, gpg_key_protected: oracles.KeyPair,
                                              tar_stream: bytes, tmp_path: Path) -> None:
    key = gpg_key_protected
    assert key.passphrase is not None
    ulid = cli.backup(key, tar_stream)
    cli.stage_for_restore(ulid)
    base: list[str | os.PathLike[str]] = ["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid,
                                          "-k", key.secret, "--keep"]

    read_end, write_end = os.pipe()
    os.write(write_end, key.passphrase.encode() + b"\n")
    os.close(write_end)
    result = cli.run([*base, "--pass-fd", str(read_end)], pass_fds=[read_end])
    os.close(read_end)
    assert result.returncode == 0, result.stderr
    assert result.stdout == tar_stream

    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\necho '{key.passphrase}'\n")
    askpass.chmod(0o700)
    result = cli.run(base, env={"CRYOPHILE_ASKPASS": str(askpass)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == tar_stream

    wrong = tmp_path / "wrong"
    wrong.write_text("#!/bin/sh\necho 'not the passphrase'\n")
    wrong.chmod(0o700)
    output = tmp_path / "out"
    result = cli.run([*base, "-o", output], env={"CRYOPHILE_ASKPASS": str(wrong)})
    assert result.returncode == 77
    assert "wrong passphrase" in result.stderr
    assert not output.exists()
    result = cli.run(base, env={"CRYOPHILE_ASKPASS": str(wrong)})
    assert result.returncode == 77
    assert result.stdout == b""  # detected before any output

    # No terminal, no --pass-fd, no askpass: a clear error, not a hang.
    detached = subprocess.run([sys.executable, "-m", "cryophile", *map(str, base)],
                              capture_output=True, env=cli.environment(), check=False,
                              start_new_session=True, timeout=60)
    assert detached.returncode == 77
    assert b"--pass-fd" in detached.stderr


def test_sqop_protected_key_restores(cli: Cli, sqop_key_protected: oracles.KeyPair,
                                     tar_stream: bytes) -> None:
    key = sqop_key_protected
    assert key.passphrase is not None
    ulid = cli.backup(key, tar_stream)
    cli.stage_for_restore(ulid)
    read_end, write_end = os.pipe()
    os.write(write_end, key.passphrase.encode())
    os.close(write_end)
    result = cli.run(["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid, "-k", key.secret,
                      "-P", str(read_end)], pass_fds=[read_end])
    os.close(read_end)
    assert result.returncode == 0, result.stderr
    assert result.stdout == tar_stream


def test_restore_waits_for_fragments_arriving_in_any_order(
        cli: Cli, gpg_key: oracles.KeyPair, tar_stream: bytes) -> None:
    data = payload(tar_stream, 16 * 1024 * 1024)
    ulid = cli.backup(gpg_key, data)
    source = cli.freeze_dir(ulid)
    target = cli.restore_dir(ulid)
    target.mkdir(parents=True)
    command = [sys.executable, "-m", "cryophile", "restore", "-v", VAULT, "-p", "hosts/db1",
               "-u", ulid, "-k", str(gpg_key.secret), "--wait", "--timeout", "120"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=cli.environment()) as process:
        names = os.listdir(source)
        random.Random(3).shuffle(names)
        for name in names:
            time.sleep(0.3)
            # What thaw does: write elsewhere, then link into place atomically.
            os.link(source / name, target / name)
        stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr.decode()
    assert stdout == data


def test_restore_wait_times_out_with_try_later(cli: Cli, gpg_key: oracles.KeyPair,
                                               tar_stream: bytes) -> None:
    ulid = cli.backup(gpg_key, payload(tar_stream))
    target = cli.stage_for_restore(ulid)
    (target / "chunk.2").unlink()
    result = cli.run(["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid, "-k",
                      gpg_key.secret, "--wait", "--timeout", "1"])
    assert result.returncode == 75
    assert "chunk.2" in result.stderr
    assert "output is incomplete" in result.stderr


def test_global_options_after_the_command(cli: Cli, gpg_key: oracles.KeyPair,
                                          tar_stream: bytes, tmp_path: Path) -> None:
    other_spool = tmp_path / "other-spool"
    other_spool.mkdir()
    result = cli.run(["backup", "-v", VAULT, "-k", gpg_key.cert, "-S", other_spool, "-q"],
                     stdin=tar_stream)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert list((other_spool / "freeze" / VAULT).iterdir())
    assert not (cli.spool / "freeze" / VAULT).exists()

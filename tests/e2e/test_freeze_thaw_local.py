"""backup → freeze → thaw → restore on the embedded default vault (a local directory).

The whole off-site cycle without any cloud: what the README's quick start runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import oracles
from polling import live_files, wait_serving, wait_until
from support.cli import VAULT, Cli

PREFIX = "hosts/db1"


def vault_dir(cli: Cli) -> Path:
    return cli.spool.parent / f"{cli.spool.name}-vaults" / VAULT


def vault_objects(cli: Cli, ulid: str) -> dict[str, str]:
    """Object name → SHA-256 of what the directory vault holds for one backup."""
    directory = vault_dir(cli) / PREFIX / ulid
    if not directory.exists():
        return {}
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in directory.iterdir()}


def wipe_spool(cli: Cli) -> None:
    for child in cli.spool.iterdir():
        shutil.rmtree(child)


def restore_args(ulid: str, key: oracles.KeyPair) -> list[str | os.PathLike[str]]:
    return ["restore", "-v", VAULT, "-p", PREFIX, "-u", ulid, "-k", key.secret]


@pytest.fixture
def data(tar_stream: bytes) -> bytes:
    return random.Random(11).randbytes(11 * 1024 * 1024) + tar_stream


def test_freeze_uploads_everything_once_and_empties_the_queue(
        cli: Cli, gpg_key: oracles.KeyPair, data: bytes) -> None:
    ulid = cli.backup(gpg_key, data)
    manifest = json.loads((cli.freeze_dir(ulid) / "chunk.0").read_bytes())
    result = cli.run(["freeze", "--once"])
    assert result.returncode == 0, result.stderr
    assert not cli.freeze_dir(ulid).exists()
    stored = vault_objects(cli, ulid)
    assert set(stored) == {f"chunk.{i}" for i in range(len(manifest["fragments"]) + 1)}
    for entry in manifest["fragments"]:
        assert stored[f"chunk.{entry['index']}"] == entry["sha256"]
    again = cli.run(["freeze", "--once"])
    assert again.returncode == 0
    assert "0 object(s)" in again.stderr
    assert vault_objects(cli, ulid) == stored


def test_restore_with_thaw_in_process_after_wiping_the_spool(
        cli: Cli, gpg_key: oracles.KeyPair, data: bytes) -> None:
    ulid = cli.backup(gpg_key, data)
    assert cli.run(["freeze", "--once"]).returncode == 0
    wipe_spool(cli)
    dry = cli.run([*restore_args(ulid, gpg_key), "--dry-run"])
    assert dry.returncode == 0, dry.stderr
    assert b"fragment(s)" in dry.stdout
    assert b"no restore needed" in dry.stdout
    assert not list((cli.spool / "thaw").iterdir()) if (cli.spool / "thaw").exists() else True
    result = cli.run([*restore_args(ulid, gpg_key), "--thaw", "--poll", "0.2"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    # A spool with room for the whole backup says so, not "a window of" more
    # fragments than the backup has.
    fragments = len([name for name in vault_objects(cli, ulid) if name.count(".") == 1
                     and name != "chunk.0"])
    assert (f"restoring {fragments} fragment(s): the spool's budget holds them all at once"
            in result.stderr), result.stderr
    assert "window of" not in result.stderr
    # The restore queue and the request are cleaned up after success.
    assert not (cli.spool / "restore" / VAULT).exists()
    assert not (cli.spool / "thaw" / VAULT).exists()


def test_restore_served_by_a_running_thaw_daemon(cli: Cli, gpg_key: oracles.KeyPair,
                                                 data: bytes) -> None:
    ulid = cli.backup(gpg_key, data, "-t", "2026-11-26T03:00:00Z")
    assert cli.run(["freeze", "--once"]).returncode == 0
    wipe_spool(cli)
    daemon = subprocess.Popen([sys.executable, "-m", "cryophile", "thaw", "--poll", "0.2",
                               "--json"], env=cli.environment(), stderr=subprocess.PIPE)
    try:
        wait_serving(cli.spool, "thaw")
        result = cli.run(["restore", "-v", VAULT, "-p", PREFIX, "-t", "2026-11-26T03:00:00Z",
                          "-k", gpg_key.secret, "--timeout", "120"])
        assert result.returncode == 0, result.stderr
        assert result.stdout == data
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr.decode()
    events = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    downloaded = [event["key"] for event in events if event.get("event") == "downloaded"]
    assert sorted(downloaded) == sorted(set(downloaded))  # nothing downloaded twice
    assert len(downloaded) == len(vault_objects(cli, ulid)) - 1
    assert any(event.get("event") == "plan" for event in events)


def test_fragments_of_a_running_backup_go_up_but_never_the_manifest(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    fifo = tmp_path / "input.fifo"
    os.mkfifo(fifo)
    backup = subprocess.Popen([sys.executable, "-m", "cryophile", "backup", "-v", VAULT, "-p",
                               PREFIX, "-k", str(gpg_key.cert), "-s", "5M", "-C", "none",
                               "-i", str(fifo), "--json"], env=cli.environment(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with fifo.open("wb") as writer:
            writer.write(os.urandom(12 * 1024 * 1024))
            writer.flush()
            # Wait until two fragments are handed to the freeze queue.
            wait_until(lambda: len(live_files(cli.spool / "freeze", "chunk.*")) >= 2,
                       "two fragments in the freeze queue", interval=0.1)
            result = cli.run(["freeze", "--once"])
            assert result.returncode == 0, result.stderr
            ulid = next((cli.spool / "backup" / VAULT / PREFIX).iterdir()).name
            stored = vault_objects(cli, ulid)
            assert {"chunk.1", "chunk.2"} <= set(stored)
            assert "chunk.0" not in stored
            writer.write(b"the end")
        stdout, stderr = backup.communicate(timeout=120)
    finally:
        if backup.poll() is None:  # a failed assertion must not leave the writer behind
            backup.kill()
            backup.communicate()
    assert backup.returncode == 0, stderr.decode()
    assert json.loads(stdout)["ulid"] == ulid
    assert cli.run(["freeze", "--once"]).returncode == 0
    assert "chunk.0" in vault_objects(cli, ulid)


def test_abandoned_backup_is_not_uploaded(cli: Cli, gpg_key: oracles.KeyPair,
                                          tmp_path: Path) -> None:
    fifo = tmp_path / "input.fifo"
    os.mkfifo(fifo)
    backup = subprocess.Popen([sys.executable, "-m", "cryophile", "backup", "-v", VAULT, "-p",
                               PREFIX, "-k", str(gpg_key.cert), "-s", "5M", "-C", "none",
                               "-i", str(fifo)], env=cli.environment())
    try:
        with fifo.open("wb") as writer:
            # More than a fragment: the stages and pipes between them hold a few MiB.
            writer.write(os.urandom(16 * 1024 * 1024))
            writer.flush()
            wait_until(lambda: live_files(cli.spool / "freeze", "chunk.1"),
                       "chunk.1 in the freeze queue", interval=0.1)
            backup.kill()  # before the writer closes: the backup must not see its end
            backup.wait()
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()
    result = cli.run(["freeze", "--once"])
    assert result.returncode == 0, result.stderr
    assert "incomplete (no manifest) and its writer is gone" in result.stderr
    assert not vault_dir(cli).exists() or not list(vault_dir(cli).rglob("chunk.*"))


def test_freeze_killed_at_random_points_completes_identically(
        cli: Cli, gpg_key: oracles.KeyPair) -> None:
    data = os.urandom(40 * 1024 * 1024)
    ulid = cli.backup(gpg_key, data, "-C", "none")
    manifest = json.loads((cli.freeze_dir(ulid) / "chunk.0").read_bytes())
    rng = random.Random(5)
    for _ in range(6):
        process = subprocess.Popen([sys.executable, "-m", "cryophile", "freeze", "-j", "2"],
                                   env=cli.environment(), stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 0.9))
        process.kill()
        process.wait()
        if not cli.freeze_dir(ulid).exists():
            break
    result = cli.run(["freeze", "--once"])
    assert result.returncode == 0, result.stderr
    stored = vault_objects(cli, ulid)
    assert len(stored) == len(manifest["fragments"]) + 1
    for entry in manifest["fragments"]:
        assert stored[f"chunk.{entry['index']}"] == entry["sha256"]
    wipe_spool(cli)
    restored = cli.run([*restore_args(ulid, gpg_key), "--thaw", "--poll", "0.2"])
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == data


def test_restore_of_a_backup_the_vault_does_not_have(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    result = cli.run([*restore_args("01ARZ3NDEKTSV4RRFFQ69G5FAV", gpg_key), "--thaw"])
    assert result.returncode == 66
    assert "is not in vault" in result.stderr
    assert not (cli.spool / "thaw" / VAULT).exists()
    assert not (cli.spool / "restore" / VAULT).exists()


@pytest.mark.parametrize("damage", ["missing", "flipped"])
def test_damaged_vault_object_fails_the_request_naming_the_fragment(
        cli: Cli, gpg_key: oracles.KeyPair, damage: str) -> None:
    data = os.urandom(12 * 1024 * 1024)
    ulid = cli.backup(gpg_key, data, "-C", "none")
    assert cli.run(["freeze", "--once"]).returncode == 0
    wipe_spool(cli)
    target = vault_dir(cli) / PREFIX / ulid / "chunk.2"
    if damage == "missing":
        target.unlink()
    else:
        content = bytearray(target.read_bytes())
        content[100] ^= 0x40
        target.write_bytes(bytes(content))
    result = cli.run([*restore_args(ulid, gpg_key), "--thaw", "--poll", "0.05",
                      "--timeout", "120"])
    assert result.returncode == 65, result.stderr
    assert "fragment 2" in result.stderr
    assert "output is incomplete" in result.stderr
    assert data.startswith(result.stdout)
    if damage == "missing":
        state = json.loads(next((cli.spool / "thaw").rglob("state.json")).read_text())
        assert state["status"] == "failed"
    else:
        # Thaw links the vault's file into the restore queue without reading it
        # (issue 14); restore's check of every fragment refuses it, and leaves the
        # vault's file as it was.
        assert "damaged" in result.stderr
        assert target.read_bytes() == bytes(content)


def test_wrong_key_is_refused_before_any_thaw(cli: Cli, gpg_key: oracles.KeyPair,
                                              sqop_key: oracles.KeyPair) -> None:
    ulid = cli.backup(gpg_key, b"small backup")
    assert cli.run(["freeze", "--once"]).returncode == 0
    wipe_spool(cli)
    result = cli.run([*restore_args(ulid, sqop_key)[:-1], sqop_key.secret, "--thaw"])
    assert result.returncode == 77
    assert not (cli.spool / "thaw" / VAULT).exists()  # no request filed, nothing downloaded

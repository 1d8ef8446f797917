"""``backup --freeze`` (issue 14): one command streams any size to S3 through a bounded spool.

Through the real CLI against the real SeaweedFS, uploads capped with the
vault's ``max_bandwidth``, no freeze daemon anywhere: a backup of 40+
fragments through a budget of three exits 0 with its manifest in the vault
and the spool empty, spool usage sampled all along within the budget, and the
vault's objects decrypt with the real ``gpg -d | zstd -d`` to the input.
Then ``kill -9`` at seeded points (mid-stream, while waiting for spool space,
after the manifest was queued): a rerun of the same ``-t`` completes, the
vault holds exactly that backup, and ``restore`` gives the input back.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import oracles
from e2e import test_freeze_s3 as fs
from e2e.test_backpressure import (
    BUDGET,
    FRAGMENT,
    decrypt_vault_backup,
    make_big_input,
    spool_files,
)
from polling import wait_until
from s3server import S3Bucket
from support.cli import VAULT, Cli
from support.files import UsageSampler

PREFIX = fs.PREFIX
MiB = 1 << 20
TIMESTAMP = "2026-12-01T03:00:00Z"


@pytest.fixture(scope="module")
def big_input() -> bytes:
    return make_big_input()


def backup_command(s3: fs.S3Freeze, key: oracles.KeyPair, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cryophile", "backup", "-c", str(s3.config), "-v", VAULT,
            "-p", PREFIX, "-k", str(key.cert), "-s", "5M", "--spool-limit", "15M",
            "--freeze", "--json", *extra]


def test_backup_freeze_streams_41_fragments_through_a_3_fragment_spool(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        big_input: bytes) -> None:
    s3 = fs.make_s3(cli, s3_bucket, tmp_path, max_bandwidth="40M")
    with UsageSampler(cli.spool) as sampler:
        completed = subprocess.run(backup_command(s3, gpg_key, "-j", "2", "--progress"),
                                   input=big_input, capture_output=True, timeout=240,
                                   env=cli.environment(s3.env), check=False)
    stderr = completed.stderr.decode(errors="replace")
    assert completed.returncode == 0, stderr
    document = json.loads(completed.stdout)
    assert document["fragments"] >= 40
    assert "waiting for upload: spool " in stderr
    assert sampler.samples > 100
    assert sampler.peak <= BUDGET, (sampler.peak, BUDGET)
    # Exit 0 means complete in the vault: nothing left to wait for, nothing left locally.
    ulid = document["ulid"]
    listing = s3.listing(ulid)
    assert sorted(listing) == sorted(f"chunk.{i}" for i in range(document["fragments"] + 1))
    assert spool_files(cli.spool) == []
    assert list((cli.spool / "uploads").rglob("*.json")) == []
    # No daemon was announced by it: other backups must not count on it.
    status = json.loads(cli.run(["status", "--json", "-c", s3.config]).stdout)
    assert status["daemons"]["freeze"] is None
    assert decrypt_vault_backup(s3, ulid, gpg_key, tmp_path) == big_input


def _wait_record(spool: Path) -> bool:
    directory = spool / "run" / "backup-wait"
    return directory.is_dir() and any(directory.glob("*.json"))


def _manifest_queued(spool: Path) -> bool:
    return any((spool / "freeze").rglob("chunk.0"))


# (name, the condition to kill at, or a seeded delay)
KILL_POINTS = ["seeded delay", "while waiting for space", "manifest queued, upload running"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_of_backup_freeze_then_a_rerun_completes(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        big_input: bytes, point: str) -> None:
    s3 = fs.make_s3(cli, s3_bucket, tmp_path, max_bandwidth="20M")
    data = big_input[:10 * FRAGMENT + 12345]
    source = tmp_path / "input"
    source.write_bytes(data)
    command = backup_command(s3, gpg_key, "-t", TIMESTAMP, "-i", str(source))
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=cli.environment(s3.env))
    try:
        if point == "seeded delay":
            time.sleep(random.Random(14).uniform(0.5, 2.0))
        elif point == "while waiting for space":
            wait_until(lambda: _wait_record(cli.spool) or process.poll() is not None,
                       "the backup waits for space", timeout=120, interval=0.01)
        else:
            wait_until(lambda: _manifest_queued(cli.spool) or process.poll() is not None,
                       "the manifest is queued", timeout=120, interval=0.01)
        first_exit = process.poll()
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.close()
        process.stderr.close()
    if first_exit is None:
        assert process.returncode == -signal.SIGKILL
    complete_before = any(key.endswith("/chunk.0") for key in s3.all_keys())
    manifest_queued = _manifest_queued(cli.spool)
    print(f"\n{point}: exit {first_exit}, complete in the vault {complete_before}, "
          f"manifest queued {manifest_queued}")
    rerun = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=240, env=cli.environment(s3.env), check=False)
    stderr = rerun.stderr.decode(errors="replace")
    if complete_before:
        # Finished (or killed after its last upload): the id is taken, never overwritten.
        assert rerun.returncode == 73, stderr
        assert "is already complete in vault" in stderr
    else:
        assert rerun.returncode == 0, stderr
        if manifest_queued:
            assert "is complete in the spool" in stderr
    ulid = _ulid_of(s3)
    manifest = json.loads(s3.client.get_object(
        Bucket=s3.bucket.name, Key=f"{PREFIX}/{ulid}/chunk.0")["Body"].read())
    assert sorted(s3.listing(ulid)) == sorted(
        f"chunk.{i}" for i in range(len(manifest["fragments"]) + 1))
    assert spool_files(cli.spool) == []
    restored = tmp_path / "restored"
    result = cli.run(["restore", "-c", s3.config, "-v", VAULT, "-p", PREFIX, "-t", TIMESTAMP,
                      "-k", gpg_key.secret, "--thaw", "-o", restored], env=s3.env, timeout=240)
    assert result.returncode == 0, result.stderr
    assert restored.read_bytes() == data


def _ulid_of(s3: fs.S3Freeze) -> str:
    keys = s3.all_keys()
    assert keys
    return keys[0].removeprefix(f"{PREFIX}/").split("/")[0]


def test_sigterm_of_backup_freeze_leaves_nothing_in_spool_or_vault(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        big_input: bytes) -> None:
    s3 = fs.make_s3(cli, s3_bucket, tmp_path, max_bandwidth="20M")
    source = tmp_path / "input"
    source.write_bytes(big_input[:10 * FRAGMENT])
    command = backup_command(s3, gpg_key, "-t", TIMESTAMP, "-i", str(source))
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=cli.environment(s3.env))
    try:
        # Waiting for space means fragments were uploaded already: they must go again.
        wait_until(lambda: (_wait_record(cli.spool) and bool(s3.all_keys()))
                   or process.poll() is not None, "uploads and a wait", timeout=120,
                   interval=0.01)
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0, stderr
    assert spool_files(cli.spool) == []
    assert list((cli.spool / "uploads").rglob("*.json")) == []
    assert s3.all_keys() == []

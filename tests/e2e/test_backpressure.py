"""Backpressure in ``backup`` (issue 14): a stream many times larger than the spool's budget.

Through the real CLI against the real SeaweedFS, uploads capped with the
vault's ``max_bandwidth`` below the input rate: with a budget of three 5 MiB
fragments, a backup of 40+ fragments completes while the freeze daemon
uploads; a thread sums the spool's usage all along and it never exceeds the
budget; the vault's objects decrypt with the real ``gpg -d | zstd -d`` to the
input. Without a freezer the backup fails at once with the fix, leaving
nothing; with a freezer that cannot upload (every request refused by the fault
proxy) it fails after ``--stall-timeout``, exit 75, leaving nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import oracles
from e2e import test_freeze_s3 as fs
from faultproxy import Fault, FaultProxy, always
from polling import wait_until
from s3server import S3Bucket
from support.cli import VAULT, Cli
from support.files import UsageSampler, prepare_spool

MiB = 1 << 20
FRAGMENT = 5 * MiB
BUDGET = 3 * FRAGMENT
PREFIX = fs.PREFIX
NO_FREEZER = ("and no freeze daemon is running to upload it: start `cryophile freeze` "
              "(systemd: cryophile-freeze.service) or run backup with --freeze")


def make_big_input() -> bytes:
    """41 fragments' worth of incompressible bytes, with a compressible tail."""
    rng = random.Random(14)
    return rng.randbytes(40 * FRAGMENT + 2 * MiB) + b"backpressure\n" * 50_000


@pytest.fixture(scope="module")
def big_input() -> bytes:
    return make_big_input()


def spool_files(spool: Path) -> list[str]:
    return sorted(str(path.relative_to(spool)) for queue in ("backup", "freeze", "restore")
                  for path in (spool / queue).rglob("*") if path.is_file())


def _feed(process: subprocess.Popen[bytes], data: bytes) -> None:
    assert process.stdin is not None
    try:
        process.stdin.write(data)
    except BrokenPipeError:
        pass  # the backup failed and stopped reading: what the test expects
    finally:
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()


def decrypt_vault_backup(s3: fs.S3Freeze, ulid: str, key: oracles.KeyPair,
                         workdir: Path) -> bytes:
    """``cat chunk.1 … chunk.N | gpg -d | zstd -d`` of the vault's objects, by the real tools."""
    manifest = json.loads(s3.client.get_object(Bucket=s3.bucket.name,
                                               Key=f"{PREFIX}/{ulid}/chunk.0")["Body"].read())
    message = workdir / "message.gpg"
    with message.open("wb") as out:
        for entry in manifest["fragments"]:
            body = s3.client.get_object(Bucket=s3.bucket.name,
                                        Key=f"{PREFIX}/{ulid}/chunk.{entry['index']}")["Body"]
            data = body.read()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            out.write(data)
    compressed = workdir / "message.zst"
    oracles.gpg_decrypt(message, key, compressed)
    plain = subprocess.run(["zstd", "-d", "-c", str(compressed)], capture_output=True,
                           check=True).stdout
    message.unlink()
    compressed.unlink()
    return plain


@pytest.fixture
def daemon(cli: Cli, s3_bucket: S3Bucket, tmp_path: Path) -> Iterator[fs.S3Freeze]:
    """A throttled S3 vault and a freeze daemon serving the spool."""
    s3 = fs.make_s3(cli, s3_bucket, tmp_path, max_bandwidth="40M")
    prepare_spool(cli.spool)
    process = s3.popen_daemon("--rescan", "2")
    try:
        wait_until(lambda: (cli.spool / "run" / "freeze.pid").exists()
                   and (cli.spool / "run" / "freeze.pid").stat().st_size > 0,
                   "the freeze daemon announced itself")
        yield s3
    finally:
        process.terminate()
        process.wait(timeout=60)


def run_backup(s3: fs.S3Freeze, key: oracles.KeyPair, data: bytes, *extra: str,
               timeout: float = 240) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "cryophile", "backup", "-c", str(s3.config), "-v", VAULT,
               "-p", PREFIX, "-k", str(key.cert), "-s", "5M", "--json", *extra]
    return subprocess.run(command, input=data, capture_output=True, timeout=timeout,
                          env=s3.cli.environment(s3.env), check=False)


def test_a_stream_of_41_fragments_through_a_3_fragment_spool_with_the_daemon(
        daemon: fs.S3Freeze, gpg_key: oracles.KeyPair, big_input: bytes,
        tmp_path: Path) -> None:
    cli = daemon.cli
    with UsageSampler(cli.spool) as sampler:
        completed = run_backup(daemon, gpg_key, big_input, "--spool-limit", "15M",
                               "--progress")
    stderr = completed.stderr.decode(errors="replace")
    assert completed.returncode == 0, stderr
    document = json.loads(completed.stdout)
    assert document["fragments"] >= 40
    assert document["spool_budget_bytes"] == BUDGET
    # The uploads are slower than the input: the backup did wait, and said so.
    assert "waiting for upload: spool " in stderr
    assert "/15.0 MiB" in stderr
    assert sampler.samples > 100
    assert sampler.peak <= BUDGET, (sampler.peak, BUDGET)
    ulid = document["ulid"]
    wait_until(lambda: "chunk.0" in daemon.listing(ulid), "the daemon uploaded the manifest",
               timeout=120)
    assert decrypt_vault_backup(daemon, ulid, gpg_key, tmp_path) == big_input
    wait_until(lambda: spool_files(cli.spool) == [], "the spool emptied")


def test_no_freezer_fails_at_once_with_the_fix_and_leaves_nothing(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        big_input: bytes) -> None:
    s3 = fs.make_s3(cli, s3_bucket, tmp_path)
    started = time.monotonic()
    completed = run_backup(s3, gpg_key, big_input[:8 * FRAGMENT], "--spool-limit", "15M")
    seconds = time.monotonic() - started
    stderr = completed.stderr.decode(errors="replace")
    assert completed.returncode == 69, stderr
    assert "the spool is full (" in stderr
    assert "of 15.0 MiB" in stderr
    assert NO_FREEZER in stderr
    assert seconds < 60  # "at once": no stall timeout (30 minutes by default) was waited out
    assert spool_files(cli.spool) == []
    assert list((cli.spool / "uploads").rglob("*.json")) == []
    assert s3.all_keys() == []
    # And `status` has nothing waiting or abandoned.
    status = json.loads(cli.run(["status", "--json"]).stdout)
    assert status["backup"] == []
    assert status["abandoned"] == []


def test_a_budget_below_two_fragments_is_refused_before_the_input_is_read(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    prepare_spool(cli.spool)
    fifo = tmp_path / "input.fifo"
    os.mkfifo(fifo)
    # Nobody writes the FIFO: opening it would block this backup forever.
    result = cli.run(["backup", "-v", VAULT, "-p", PREFIX, "-k", gpg_key.cert, "-s", "5M",
                      "--spool-limit", "8M", "-i", fifo], timeout=60)
    assert result.returncode == 78, result.stderr
    assert "fewer than 2 fragments" in result.stderr
    assert "set spool_limit to at least 10.0 MiB" in result.stderr
    assert spool_files(cli.spool) == []
    bad = cli.run(["backup", "-v", VAULT, "-p", PREFIX, "-k", gpg_key.cert,
                   "--spool-limit", "lots"], stdin=b"x")
    assert bad.returncode == 64, bad.stderr
    assert "--spool-limit 'lots'" in bad.stderr


def test_uploads_that_make_no_progress_fail_after_the_stall_timeout(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        big_input: bytes) -> None:
    with FaultProxy(fs.s3_port(s3_bucket), always(Fault.SLOW_DOWN)) as proxy:
        s3 = fs.make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url, max_attempts=1)
        prepare_spool(cli.spool)
        process = s3.popen_daemon("--rescan", "2")
        try:
            wait_until(lambda: (cli.spool / "run" / "freeze.pid").exists()
                       and (cli.spool / "run" / "freeze.pid").stat().st_size > 0,
                       "the freeze daemon announced itself")
            command = [sys.executable, "-m", "cryophile", "backup", "-c", str(s3.config),
                       "-v", VAULT, "-p", PREFIX, "-k", str(gpg_key.cert), "-s", "5M",
                       "--spool-limit", "15M", "--stall-timeout", "3", "--json"]
            out, err = tmp_path / "stdout", tmp_path / "stderr"
            with out.open("wb") as out_file, err.open("wb") as err_file:
                backup = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out_file,
                                          stderr=err_file, env=cli.environment(s3.env))
            feeder = threading.Thread(target=_feed, args=(backup, big_input[:8 * FRAGMENT]),
                                      daemon=True)
            feeder.start()

            def waiting() -> bool:
                document = json.loads(cli.run(["status", "--json"]).stdout)
                return any(entry["state"] == "waiting" for entry in document["backup"])

            # `status` shows it waiting, with the spool's fill against the budget.
            wait_until(waiting, "status shows the backup waiting", timeout=60, interval=0.1)
            shown = cli.run(["status"]).stdout.decode()
            assert "waiting for upload: spool " in shown
            assert "/15.0 MiB (spool_limit 15.0 MiB)" in shown
            backup.wait(timeout=120)
            feeder.join()
            completed = subprocess.CompletedProcess(command, backup.returncode,
                                                    out.read_bytes(), err.read_bytes())
        finally:
            process.terminate()
            process.wait(timeout=60)
    stderr = completed.stderr.decode(errors="replace")
    assert completed.returncode == 75, stderr
    assert "uploads made no progress for" in stderr
    assert "stall timeout 3 s" in stderr
    assert spool_files(cli.spool) == []
    assert s3.all_keys() == []

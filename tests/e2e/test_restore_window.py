"""Restore through a bounded window (issue 14), through the real CLI.

A backup of 41 fragments of 5 MiB in the real SeaweedFS is restored through a
spool whose budget holds three fragments, with ``restore --thaw`` and with the
thaw daemon serving a waiting ``restore``: the output is identical to the input,
and the spool's usage, sampled all along by a thread, never exceeds the budget.
``--keep`` without room for the whole backup is refused up front. Kill -9 of
``restore --thaw`` at seeded read positions: the rerun completes identically.
(The full spool is in test_restore_space.py, Glacier in test_thaw_glacier.py.)
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import oracles
from e2e import test_freeze_s3 as fs
from polling import wait_until
from s3server import S3Bucket
from support.cli import VAULT, Cli
from support.files import UsageSampler, prepare_spool

MiB = 1 << 20
FRAGMENT = 5 * MiB
BUDGET = 3 * FRAGMENT
PREFIX = fs.PREFIX


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(MiB):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """41 fragments' worth of incompressible bytes, in a file."""
    path = tmp_path_factory.mktemp("input") / "input.bin"
    rng = random.Random(1414)
    with path.open("wb") as out:
        for _ in range(41):
            out.write(rng.randbytes(FRAGMENT))
        out.write(b"window\n" * 100_000)
    return path


@pytest.fixture
def s3_backup(cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
              big_input: Path) -> tuple[fs.S3Freeze, str]:
    """The big input backed up with ``backup --freeze`` into SeaweedFS; the spool empty."""
    s3 = fs.make_s3(cli, s3_bucket, tmp_path)
    prepare_spool(cli.spool)
    with big_input.open("rb") as stdin:
        completed = subprocess.run(
            [sys.executable, "-m", "cryophile", "backup", "-c", str(s3.config), "-v", VAULT,
             "-p", PREFIX, "-k", str(gpg_key.cert), "-s", "5M", "-C", "none", "--freeze",
             "--spool-limit", "15M", "--json"],
            stdin=stdin, capture_output=True, env=cli.environment(s3.env), timeout=240,
            check=False)
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    document = json.loads(completed.stdout)
    assert document["fragments"] >= 40
    return s3, document["ulid"]


def restore_command(s3: fs.S3Freeze, ulid: str, key: oracles.KeyPair, output: Path,
                    *extra: str) -> list[str]:
    return [sys.executable, "-m", "cryophile", "restore", "-c", str(s3.config), "-v", VAULT,
            "-p", PREFIX, "-u", ulid, "-k", str(key.secret), "-o", str(output),
            "--spool-limit", "15M", *extra]


def leftovers(spool: Path) -> list[str]:
    return sorted(str(path.relative_to(spool)) for queue in ("thaw", "restore")
                  for path in (spool / queue).rglob("*") if path.is_file())


def test_restore_thaw_and_the_daemon_stay_within_three_fragments(
        s3_backup: tuple[fs.S3Freeze, str], gpg_key: oracles.KeyPair, big_input: Path,
        tmp_path: Path) -> None:
    s3, ulid = s3_backup
    cli = s3.cli
    expected = sha256(big_input)

    # restore --thaw: the thaw work in this process.
    output = tmp_path / "restored-thaw"
    with UsageSampler(cli.spool) as sampler:
        completed = subprocess.run(restore_command(s3, ulid, gpg_key, output, "--thaw"),
                                   capture_output=True, env=cli.environment(s3.env),
                                   timeout=240, check=False)
    stderr = completed.stderr.decode(errors="replace")
    assert completed.returncode == 0, stderr
    assert "restoring through a window of 2 fragment(s) in the spool" in stderr
    assert sha256(output) == expected
    assert sampler.samples > 50
    assert 0 < sampler.peak <= BUDGET, (sampler.peak, BUDGET)
    assert leftovers(cli.spool) == []

    # The thaw daemon serving a waiting restore obeys the same window.
    (cli.spool / "thaw" / VAULT / PREFIX).mkdir(parents=True, exist_ok=True)
    log = tmp_path / "thaw.log"
    with log.open("wb") as log_file:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "cryophile", "thaw", "-c", str(s3.config), "--json"],
            env=cli.environment(s3.env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=log_file)
    try:
        wait_until(lambda: "thaw daemon started" in log.read_text(), "the thaw daemon")
        output = tmp_path / "restored-daemon"
        with UsageSampler(cli.spool) as sampler:
            completed = subprocess.run(restore_command(s3, ulid, gpg_key, output),
                                       capture_output=True, env=cli.environment(s3.env),
                                       timeout=240, check=False)
        stderr = completed.stderr.decode(errors="replace")
        assert completed.returncode == 0, stderr
        assert "the thaw daemon (pid " in stderr
        assert "thawing in this process" not in stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, log.read_text()[-2000:]
    assert sha256(output) == expected
    assert 0 < sampler.peak <= BUDGET, (sampler.peak, BUDGET)
    events = [json.loads(line) for line in log.read_text().splitlines()
              if line.startswith("{")]
    assert [entry for entry in events if entry.get("level") == "error"] == []
    assert sum(1 for entry in events if entry.get("event") == "downloaded") >= 41
    assert leftovers(cli.spool) == []


def test_keep_without_room_for_the_whole_backup_is_refused_up_front(
        s3_backup: tuple[fs.S3Freeze, str], gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    s3, ulid = s3_backup
    output = tmp_path / "restored"
    completed = subprocess.run(restore_command(s3, ulid, gpg_key, output, "--thaw", "--keep"),
                               capture_output=True, env=s3.cli.environment(s3.env),
                               timeout=120, check=False)
    stderr = completed.stderr.decode(errors="replace")
    assert completed.returncode == 78, stderr
    assert "restore --keep keeps the whole backup" in stderr
    assert "the spool's budget is 15.0 MiB (spool_limit 15.0 MiB)" in stderr
    assert "or restore without --keep" in stderr
    assert not output.exists()
    assert leftovers(s3.cli.spool) == []  # nothing filed, nothing downloaded


@pytest.mark.parametrize("seed", [3, 11])
def test_kill_9_of_restore_thaw_at_a_seeded_point_then_a_rerun_completes(
        s3_backup: tuple[fs.S3Freeze, str], gpg_key: oracles.KeyPair, big_input: Path,
        tmp_path: Path, seed: int) -> None:
    s3, ulid = s3_backup
    cli = s3.cli
    point = random.Random(seed).randrange(1, 38)
    output = tmp_path / "restored"
    position = cli.spool / "thaw" / VAULT / PREFIX / ulid / "position.json"

    def released() -> int:
        try:
            return int(json.loads(position.read_text())["released"])
        except (FileNotFoundError, ValueError):
            return 0

    process = subprocess.Popen(restore_command(s3, ulid, gpg_key, output, "--thaw"),
                               env=cli.environment(s3.env), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: released() >= point or process.poll() is not None,
                   f"the restore to read {point} fragment(s)", timeout=120, interval=0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not output.exists()
    # The rerun starts from the beginning: what the killed one read and removed is
    # downloaded again, within the same window.
    with UsageSampler(cli.spool) as sampler:
        completed = subprocess.run(restore_command(s3, ulid, gpg_key, output, "--thaw"),
                                   capture_output=True, env=cli.environment(s3.env),
                                   timeout=240, check=False)
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    assert sha256(output) == sha256(big_input)
    assert sampler.peak <= BUDGET, (sampler.peak, BUDGET)
    assert leftovers(cli.spool) == []

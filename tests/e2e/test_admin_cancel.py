"""Issue 17, point 1: a way out of every stuck restore — ``thaw --cancel``, ``restore
--cancel`` and the leftovers ``status`` names — through the real CLI, in subprocesses.

A restore killed while it waits leaves its thaw request; ``status`` names it with the
command that removes it; that command, pasted, removes it; the thaw daemon then
downloads nothing. Cancelling is refused while the restore runs, says so when there is
nothing to cancel, and finishes the job of a cancel killed half-way.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import oracles
from polling import live_files, wait_until
from s3server import S3Bucket
from support.cli import VAULT, Cli

PREFIX = "hosts/db1"
DATA = os.urandom(1 << 20) * 3


def frozen_backup(cli: Cli, key: oracles.KeyPair) -> str:
    ulid = cli.backup(key, DATA, prefix=PREFIX)
    assert cli.run(["freeze", "--once"]).returncode == 0
    return ulid


def request_dir(cli: Cli, ulid: str) -> Path:
    return cli.spool / "thaw" / VAULT / PREFIX / ulid


def waiting_restore(cli: Cli, key: oracles.KeyPair, ulid: str,
                    tmp_path: Path) -> subprocess.Popen[bytes]:
    """A restore that filed its request and waits for a thaw daemon (there is none)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cryophile", "restore", "-v", VAULT, "-p", PREFIX, "-u", ulid,
         "-k", str(key.secret), "--no-thaw", "-o", str(tmp_path / "out")],
        env=cli.environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until((request_dir(cli, ulid) / "state.json").exists, "the thaw request")
    return process


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def status(cli: Cli) -> dict[str, Any]:
    result = cli.run(["status", "--json"])
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def leftovers_of(cli: Cli, ulid: str) -> list[dict[str, Any]]:
    return [entry for entry in status(cli)["leftovers"]
            if entry["backup"] is not None and entry["backup"].endswith("/" + ulid)]


def paste(cli: Cli, command: str) -> tuple[int, str]:
    """Run a command as status printed it (``cryophile`` is this checkout's)."""
    words = shlex.split(command)
    assert words[0] == "cryophile", command
    result = cli.run(words[1:])
    return result.returncode, result.stderr


def test_killed_restore_request_is_named_removed_and_never_downloaded(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    ulid = frozen_backup(cli, gpg_key)
    kill(waiting_restore(cli, gpg_key, ulid, tmp_path))

    [leftover] = list(leftovers_of(cli, ulid))
    backup = f"{VAULT}/{PREFIX}/{ulid}"
    assert leftover == {"kind": "thaw_request", "path": str(request_dir(cli, ulid)),
                        "backup": backup,
                        "command": f"cryophile -S {cli.spool} thaw --cancel --id {backup}"}
    human = cli.run(["status"])
    assert f"remove: {leftover['command']}" in human.stdout.decode()

    code, err = paste(cli, leftover["command"])
    assert code == 0, err
    assert f"cancelled the restore of {backup}" in err
    assert "cannot be withdrawn" in err
    document = status(cli)
    assert document["thaw"] == []
    assert document["restore"] == []
    assert leftovers_of(cli, ulid) == []
    assert not any(entry["kind"] == "restore_lock" for entry in document["leftovers"])

    thaw = cli.run(["thaw", "--once"])
    assert thaw.returncode == 0, thaw.stderr
    assert live_files(cli.spool / "restore") == []
    assert live_files(cli.spool / "thaw") == []


def test_restore_queue_left_by_a_killed_restore_is_removed_by_restore_cancel(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    ulid = frozen_backup(cli, gpg_key)
    kill(waiting_restore(cli, gpg_key, ulid, tmp_path))
    # The thaw daemon serves the orphaned request: everything lands in the restore queue.
    assert cli.run(["thaw", "--once"]).returncode == 0
    assert (cli.restore_dir(ulid, PREFIX) / "chunk.1").exists()

    [leftover] = leftovers_of(cli, ulid)
    assert leftover["kind"] == "restore_queue"
    assert leftover["command"].endswith(f"restore --cancel --id {VAULT}/{PREFIX}/{ulid}")
    code, err = paste(cli, leftover["command"])
    assert code == 0, err
    assert "its restore queue (2 file(s)" in err
    assert not cli.restore_dir(ulid, PREFIX).exists()
    assert leftovers_of(cli, ulid) == []


def test_cancel_is_refused_while_the_restore_runs(cli: Cli, gpg_key: oracles.KeyPair,
                                                 tmp_path: Path) -> None:
    ulid = frozen_backup(cli, gpg_key)
    restore = waiting_restore(cli, gpg_key, ulid, tmp_path)
    try:
        assert leftovers_of(cli, ulid) == []  # a restore waits on it: not a leftover
        for command in ("thaw", "restore"):
            result = cli.run([command, "--cancel", "--id", f"{VAULT}/{PREFIX}/{ulid}"])
            assert result.returncode == 75, result.stderr
            assert f"is running (pid {restore.pid}): stop it first" in result.stderr
            assert (request_dir(cli, ulid) / "state.json").exists()
    finally:
        kill(restore)


def test_cancel_of_nothing_says_so_and_exits_0(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    ulid = frozen_backup(cli, gpg_key)
    result = cli.run(["restore", "--cancel", "-v", VAULT, "-p", PREFIX, "-u", ulid])
    assert result.returncode == 0, result.stderr
    assert (f"nothing to cancel for {VAULT}/{PREFIX}/{ulid}: no thaw request and no restore "
            "queue of it in this spool") in result.stderr
    assert cli.run(["thaw", "--cancel", "-v", VAULT]).returncode == 64


def test_a_cancel_killed_after_withdrawing_the_request_is_finished_by_running_it_again(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    ulid = frozen_backup(cli, gpg_key)
    kill(waiting_restore(cli, gpg_key, ulid, tmp_path))
    # Where a cancel killed right after its first step leaves the spool: the request
    # renamed out of the queue (with a partial download in it), the restore queue there.
    request = request_dir(cli, ulid)
    staged = request.parent / f".{ulid}.cancelled"
    request.rename(staged)
    (staged / "chunk.1.part").write_bytes(b"partial")
    assert "cancelled_request" in {entry["kind"] for entry in leftovers_of(cli, ulid)}
    thaw = cli.run(["thaw", "--once"])  # a withdrawn request is no request to the daemon
    assert thaw.returncode == 0, thaw.stderr
    assert live_files(cli.restore_dir(ulid, PREFIX)) == []

    [withdrawn] = [entry for entry in leftovers_of(cli, ulid)
                   if entry["kind"] == "cancelled_request"]
    assert withdrawn["command"].endswith(f"thaw --cancel --id {VAULT}/{PREFIX}/{ulid}")
    code, err = paste(cli, withdrawn["command"])
    assert code == 0, err
    assert "1 partial download(s) (7 bytes)" in err
    assert leftovers_of(cli, ulid) == []
    assert live_files(cli.spool / "thaw") == []
    assert live_files(cli.spool / "restore") == []


def test_cancel_waits_for_a_thaw_pass_holding_the_request(cli: Cli, gpg_key: oracles.KeyPair,
                                                          tmp_path: Path) -> None:
    ulid = frozen_backup(cli, gpg_key)
    kill(waiting_restore(cli, gpg_key, ulid, tmp_path))
    request = request_dir(cli, ulid)
    # What a thaw pass holds while it serves the request (thaw_request.lock).
    lock = os.open(request / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        cancel = subprocess.Popen(
            [sys.executable, "-m", "cryophile", "thaw", "--cancel", "--id",
             f"{VAULT}/{PREFIX}/{ulid}"], env=cli.environment(), stderr=subprocess.PIPE)
        assert cancel.stderr is not None
        line = cancel.stderr.readline().decode()
        assert "waiting for the thaw pass serving" in line, line
        # Withdrawn already: no thaw pass can start on it any more.
        assert not request.exists()
        assert cancel.poll() is None
    finally:
        os.close(lock)
    assert cancel.wait(timeout=60) == 0
    assert cancel.stderr.read().decode().startswith("cryophile: cancelled the restore")
    cancel.stderr.close()
    assert live_files(cli.spool / "thaw") == []


def test_cancel_during_a_glacier_restore_stops_the_downloads(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path, moto_bucket: S3Bucket,
        moto_slow_restore: None) -> None:
    config = tmp_path / "glacier.toml"
    config.write_text(
        f'[[vault]]\nid = "{VAULT}"\nprovider = "s3"\nbucket = "{moto_bucket.name}"\n'
        f'endpoint_url = "{moto_bucket.endpoint.url}"\n'
        f'region = "{moto_bucket.endpoint.region}"\nstorage_class = "GLACIER"\n')
    missing = tmp_path / "no-aws"
    env = {"AWS_ACCESS_KEY_ID": moto_bucket.endpoint.access_key,
           "AWS_SECRET_ACCESS_KEY": moto_bucket.endpoint.secret_key,
           "AWS_CONFIG_FILE": str(missing / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(missing / "credentials"),
           "AWS_EC2_METADATA_DISABLED": "true", "CRYOPHILE_CONFIG": str(config)}
    cli.config = config
    ulid = cli.backup(gpg_key, DATA, prefix=PREFIX)
    assert cli.run(["freeze", "--once"], env=env).returncode == 0
    filed = cli.run(["restore", "-v", VAULT, "-p", PREFIX, "-u", ulid, "-k", gpg_key.secret,
                     "--no-thaw", "--timeout", "0", "-o", tmp_path / "out"], env=env)
    assert filed.returncode == 75, filed.stderr
    assert cli.run(["thaw", "--once"], env=env).returncode == 0  # Glacier restore requested
    [thaw] = status(cli)["thaw"]
    assert thaw["restoring"] >= 1
    assert thaw["downloaded"] < thaw["fragments_total"]

    [leftover] = leftovers_of(cli, ulid)
    assert leftover["kind"] == "thaw_request"
    result = cli.run(shlex.split(leftover["command"])[1:], env=env)
    assert result.returncode == 0, result.stderr
    assert "Glacier restores already requested cannot be withdrawn" in result.stderr
    for _ in range(3):  # the restored copies would be readable now: nothing fetches them
        assert cli.run(["thaw", "--once"], env=env).returncode == 0
    assert live_files(cli.spool / "restore") == []
    assert status(cli)["thaw"] == []

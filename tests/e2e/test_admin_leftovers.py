"""Issue 17, point 1: ``status`` names every leftover with the command that removes it
— an abandoned backup (its writer SIGKILLed), a stale backup-wait record, an
interrupted prune's journal — and each command, pasted as printed, removes it (the
real CLI, in subprocesses; thaw requests and restore queues: test_admin_cancel.py)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import oracles
from polling import wait_until
from support.cli import VAULT, Cli

PREFIX = "hosts/db1"


def leftovers(cli: Cli) -> list[dict[str, Any]]:
    result = cli.run(["status", "--json"])
    assert result.returncode == 0, result.stderr
    found: list[dict[str, Any]] = json.loads(result.stdout)["leftovers"]
    return found


def paste(cli: Cli, command: str) -> subprocess.CompletedProcess[bytes]:
    words = shlex.split(command)
    if words[0] == "cryophile":
        words = [sys.executable, "-m", "cryophile", *words[1:]]
    return subprocess.run(words, env=cli.environment(), capture_output=True, check=False,
                          timeout=120)


def test_abandoned_backup_is_named_with_prune_abandoned(cli: Cli, gpg_key: oracles.KeyPair,
                                                        tmp_path: Path) -> None:
    fifo = tmp_path / "input"
    os.mkfifo(fifo)
    writer = subprocess.Popen(
        [sys.executable, "-m", "cryophile", "backup", "-v", VAULT, "-p", PREFIX, "-k",
         str(gpg_key.cert), "-s", "5M", "-i", str(fifo)],
        env=cli.environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        feed = os.open(fifo, os.O_WRONLY)  # blocks until the backup opened its input
        os.write(feed, b"some bytes, never a manifest\n")
        claimed = cli.spool / "backup" / VAULT / PREFIX
        wait_until(lambda: claimed.is_dir() and any(claimed.iterdir()), "the claimed backup")
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        os.close(feed)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    [leftover] = leftovers(cli)
    assert leftover["kind"] == "abandoned"
    assert leftover["command"] == (f"cryophile -S {cli.spool} prune -v {VAULT} -p {PREFIX} "
                                   "--abandoned")
    removed = paste(cli, leftover["command"])
    assert removed.returncode == 0, removed.stderr
    assert b"removed 1 abandoned backup(s)" in removed.stdout
    assert leftovers(cli) == []


def test_stale_backup_wait_record_is_named_with_rm(cli: Cli) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    records = cli.spool / "run" / "backup-wait"
    records.mkdir(parents=True, mode=0o700)
    record = records / ("0" * 32 + ".json")
    record.write_text(json.dumps({"version": 1, "pid": dead.pid, "id": f"{VAULT}/x/y"}))
    [leftover] = leftovers(cli)
    assert leftover == {"kind": "backup_wait", "path": str(record), "backup": None,
                        "command": f"rm -- {record}"}
    assert paste(cli, leftover["command"]).returncode == 0
    assert leftovers(cli) == []
    # A record of a live backup is no leftover.
    record.write_text(json.dumps({"version": 1, "pid": os.getpid(), "id": f"{VAULT}/x/y"}))
    assert leftovers(cli) == []


def test_interrupted_prune_is_finished_by_the_named_command(cli: Cli,
                                                            gpg_key: oracles.KeyPair) -> None:
    kept = cli.backup(gpg_key, b"kept\n" * 1000, "-t", "2026-11-01T00:00:00Z", prefix=PREFIX)
    half = cli.backup(gpg_key, b"half\n" * 1000, "-t", "2026-11-02T00:00:00Z", prefix=PREFIX)
    assert cli.run(["freeze", "--once"]).returncode == 0
    vault = cli.spool.parent / f"{cli.spool.name}-vaults" / VAULT
    # Where a prune killed after deleting the manifest leaves it: a journal naming the
    # backup, its fragments still in the vault.
    (vault / PREFIX / half / "chunk.0").unlink()
    journal = cli.spool / "prune" / f"{VAULT}.json"
    journal.parent.mkdir(mode=0o700)
    journal.write_text(json.dumps({"deleting": [{"prefix": PREFIX, "ulid": half}]}))
    [leftover] = leftovers(cli)
    assert leftover["kind"] == "prune_journal"
    assert leftover["path"] == str(journal)
    finished = paste(cli, leftover["command"])
    assert finished.returncode == 0, finished.stderr
    assert f"{half}: finished an interrupted deletion".encode() in finished.stdout
    assert not (vault / PREFIX / half).exists()
    assert (vault / PREFIX / kept / "chunk.0").exists()  # it deleted nothing else
    assert leftovers(cli) == []


@pytest.mark.parametrize("suffix", [".new", ".closing"])
def test_a_request_a_killed_restore_was_still_filing_is_named_with_rm(
        cli: Cli, suffix: str) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    ulid = "01JDX5Z8Q8K4M2N6P7R9S0T1V2"
    parent = cli.spool / "thaw" / VAULT / PREFIX
    parent.mkdir(parents=True, mode=0o700)
    for directory in (cli.spool / "thaw", cli.spool / "thaw" / VAULT, parent.parent):
        directory.chmod(0o700)
    # .new: being filed; .closing: being removed (thaw_request.close renames it first).
    staged = parent / f".{ulid}.{dead.pid}{suffix}"
    staged.mkdir(mode=0o700)
    (staged / "state.json").write_text("{}")
    [leftover] = leftovers(cli)
    assert leftover == {"kind": "staged_request", "path": str(staged), "backup": None,
                        "command": f"rm -r -- {staged}"}
    text = cli.run(["status"])
    assert text.returncode == 0, text.stderr
    assert b"a thaw request a killed process was still filing or removing" in text.stdout
    assert f"rm -r -- {staged}".encode() in text.stdout
    assert paste(cli, leftover["command"]).returncode == 0
    assert not staged.exists()
    assert leftovers(cli) == []
    # One being filed right now (its process is alive) is no leftover.
    (parent / f".{ulid}.{os.getpid()}{suffix}").mkdir(mode=0o700)
    assert leftovers(cli) == []

"""The whole CLI in-process, with injected stdin/stdout/stderr (no subprocess for the CLI)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import oracles
from cryophile.cli.main import Environment, run
from support.cli import VAULT


def environment(spool: Path, stdin_fd: int, stdout_fd: int, stderr: io.StringIO) -> Environment:
    return Environment(env={"CRYOPHILE_SPOOL": str(spool), "HOME": str(spool.parent)},
                       stdin_fd=stdin_fd, stdout_fd=stdout_fd, stderr=stderr)


def test_in_process_round_trip(spool: Path, tmp_path: Path, gpg_key: oracles.KeyPair,
                               tar_stream: bytes) -> None:
    source = tmp_path / "in.tar"
    source.write_bytes(tar_stream)
    report = tmp_path / "report.json"
    stderr = io.StringIO()
    with source.open("rb") as stdin, report.open("wb") as stdout:
        code = run(["backup", "-v", VAULT, "-p", "etc", "-k", str(gpg_key.cert), "--json"],
                   environment(spool, stdin.fileno(), stdout.fileno(), stderr))
    assert code == 0, stderr.getvalue()
    document = json.loads(report.read_text())
    assert document["input_bytes"] == len(tar_stream)
    assert 0 < document["stored_bytes"] < len(tar_stream)  # a tar compresses
    assert document["fragments"] == 1
    ulid = document["ulid"]
    frozen = spool / "freeze" / VAULT / "etc" / ulid
    restore_dir = spool / "restore" / VAULT / "etc" / ulid
    restore_dir.mkdir(parents=True)
    for item in frozen.iterdir():
        os.link(item, restore_dir / item.name)
    restored = tmp_path / "out.tar"
    with restored.open("wb") as stdout:
        code = run(["restore", "-v", VAULT, "-p", "etc", "-u", ulid, "-k", str(gpg_key.secret)],
                   environment(spool, 0, stdout.fileno(), stderr))
    assert code == 0, stderr.getvalue()
    assert restored.read_bytes() == tar_stream


def test_help_version_and_usage_errors(spool: Path) -> None:
    stderr = io.StringIO()
    env = environment(spool, 0, 1, stderr)
    assert run(["--version"], env) == 0
    assert run(["backup", "--help"], env) == 0
    assert run([], env) == 64
    assert "required" in stderr.getvalue()
    assert run(["frobnicate"], env) == 64

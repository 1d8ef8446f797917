"""``cryophile list``, ``verify`` and ``status`` through the real CLI, in subprocesses.

The states are produced by the real commands (a backup blocked on a FIFO, a
freeze while a backup is written, a writer killed with SIGKILL, a restore
request left waiting, thaw passes against a vault missing a fragment), on the
embedded directory vault, on SeaweedFS (a real S3 server) and on moto (Glacier
semantics: archived objects cannot be downloaded until restored). The JSON
output is validated against the schemas the README documents, and list,
status and verify without ``-k`` run with no key anywhere in reach.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import pytest

import oracles
from cryophile.spool import Queue, Spool
from faultproxy import Fault, FaultProxy, Request
from polling import live_files, wait_until
from s3server import S3Bucket
from support.cli import VAULT, Cli, Result
from support.files import REPO

PREFIX = "hosts/db1"
MiB = 1 << 20
OLD_TIME = "2020-01-01T00:00:00Z"  # older than any backup made from the clock

ULID_PATTERN = "^[0-9A-HJKMNP-TV-Z]{26}$"
UUID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
TIME_PATTERN = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"
STATES = ["writing", "incomplete", "queued", "partly_frozen", "frozen", "damaged",
          "unreadable", "thaw_requested", "thawing", "thaw_failed", "restored"]


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


IDENTITY = {
    "id": {"type": "string", "minLength": 1},
    "vault": {"type": "string", "pattern": UUID_PATTERN},
    "prefix": {"type": "string"},
    "ulid": {"type": "string", "pattern": ULID_PATTERN},
}


def _record(properties: dict[str, Any]) -> dict[str, Any]:
    every = {**IDENTITY, **properties}
    return {"type": "object", "additionalProperties": False, "required": sorted(every),
            "properties": every}


#: The ``list --json`` schema as the README documents it (an oracle independent of the code).
LIST_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": _record({
        "time": {"type": "string", "pattern": TIME_PATTERN},
        "created": {"type": "string", "pattern": TIME_PATTERN},
        "paste_id": {"type": "string"},
        "state": {"enum": STATES},
        "stored_bytes": _nullable("integer", minimum=1),
        "fragments": _nullable("integer", minimum=1),
        "compression": {"enum": ["none", "lz4", "zstd", None]},
        "storage_class": _nullable("string"),
        "in_vault": {"type": "boolean"},
        "queues": {"type": "array", "uniqueItems": True,
                   "items": {"enum": ["backup", "freeze", "thaw", "restore"]}},
        "error": _nullable("string"),
        "parent": _nullable("string"),
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "chain": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "chain_problem": _nullable("string"),
    }),
}

_COUNT = {"type": "integer", "minimum": 0}

#: The ``status --json`` schema as the README documents it.
STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["spool", "backup", "freeze", "thaw", "restore", "abandoned", "totals",
                 "uploading", "daemons", "withdrawn", "leftovers"],
    "properties": {
        "spool": {"type": "string"},
        "daemons": {"type": "object", "additionalProperties": False,
                    "required": ["freeze", "thaw"],
                    "properties": {"freeze": {"type": ["integer", "null"]},
                                   "thaw": {"type": ["integer", "null"]}}},
        "withdrawn": {"type": "array", "items": _record({"objects": _COUNT})},
        "uploading": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["key", "bytes", "started"],
            "properties": {"key": {"type": "string"}, "bytes": _COUNT,
                           "started": {"type": "string", "pattern": TIME_PATTERN}}}},
        "backup": {"type": "array", "items": _record({
            "state": {"enum": ["writing", "incomplete"]},
            "bytes": _COUNT})},
        "freeze": {"type": "array", "items": _record({
            "state": {"enum": ["writing", "incomplete", "queued", "partly_frozen"]},
            "fragments_waiting": _COUNT,
            "bytes_waiting": _COUNT,
            "fragments_total": _nullable("integer", minimum=1),
            "error": _nullable("string")})},
        "thaw": {"type": "array", "items": _record({
            "state": {"enum": ["thaw_requested", "thawing", "thaw_failed"]},
            "tier": _nullable("string"),
            "days": _nullable("integer", minimum=1),
            "requested": _nullable("string", pattern=TIME_PATTERN),
            "fragments_total": _nullable("integer", minimum=1),
            "cold": _COUNT, "restoring": _COUNT, "downloaded": _COUNT,
            "error": _nullable("string"),
            "waiting_for_space": {"oneOf": [{"type": "null"}, {
                "type": "object", "additionalProperties": False,
                "required": ["since", "fragment", "needed", "free"],
                "properties": {"since": {"type": "string", "pattern": TIME_PATTERN},
                               "fragment": {"type": "integer", "minimum": 1},
                               "needed": _COUNT, "free": _COUNT}}]}})},
        "restore": {"type": "array", "items": _record({
            "complete": {"type": "boolean"},
            "fragments_present": _COUNT,
            "fragments_total": _nullable("integer", minimum=1),
            "bytes": _COUNT})},
        "abandoned": {"type": "array", "items": {"type": "string"}},
        "leftovers": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["kind", "path", "backup", "command"],
            "properties": {"kind": {"enum": ["thaw_request", "cancelled_request",
                                             "restore_queue", "abandoned", "backup_wait",
                                             "restore_lock", "prune_journal"]},
                           "path": {"type": "string", "minLength": 1},
                           "backup": _nullable("string"),
                           "command": {"type": "string", "minLength": 1}}}},
        "totals": {"type": "object", "additionalProperties": False,
                   "required": ["writing", "freeze_backups", "freeze_fragments_waiting",
                                "freeze_bytes_waiting", "thaw_requests", "thaw_failed",
                                "restore_backups", "restore_bytes", "abandoned"],
                   "properties": dict.fromkeys((
                       "writing", "freeze_backups", "freeze_fragments_waiting",
                       "freeze_bytes_waiting", "thaw_requests", "thaw_failed",
                       "restore_backups", "restore_bytes", "abandoned"), _COUNT)},
    },
}


# -- running the read-only commands without any key -------------------------------------


@pytest.fixture
def keyless(tmp_path: Path) -> dict[str, str]:
    """An environment in which no secret key could be found: empty HOME and GnuPG home."""
    home = tmp_path / "keyless-home"
    (home / ".gnupg").mkdir(parents=True)
    return {"HOME": str(home), "GNUPGHOME": str(home / ".gnupg"),
            "XDG_CONFIG_HOME": str(home / ".config")}


def run_keyless(cli: Cli, args: list[str], env: dict[str, str]) -> Result:
    """Run list, status or verify with no ``-k`` and no key in reach."""
    assert args[0] in ("list", "status", "verify")
    assert "-k" not in args
    assert "--keyring" not in args
    return cli.run(args, env=env)


def list_json(cli: Cli, env: dict[str, str], *args: str,
              expect: int = 0) -> list[dict[str, Any]]:
    result = run_keyless(cli, ["list", "--json", *args], env)
    assert result.returncode == expect, result.stderr
    document = json.loads(result.stdout)
    jsonschema.validate(document, LIST_SCHEMA)
    assert isinstance(document, list)
    return document


def states(cli: Cli, env: dict[str, str], *args: str) -> dict[str, str]:
    """ULID → state of every listed backup."""
    return {entry["ulid"]: entry["state"] for entry in list_json(cli, env, *args)}


def status_json(cli: Cli, env: dict[str, str]) -> dict[str, Any]:
    result = run_keyless(cli, ["status", "--json"], env)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    jsonschema.validate(document, STATUS_SCHEMA)
    assert isinstance(document, dict)
    return document


def by_ulid(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["ulid"]: entry for entry in entries}


# -- helpers: real backups in odd states ---------------------------------------------------


def vault_dir(cli: Cli) -> Path:
    """The embedded directory vault of ``VAULT``."""
    return cli.spool.parent / f"{cli.spool.name}-vaults" / VAULT


def wipe_spool(cli: Cli) -> None:
    for child in cli.spool.iterdir():
        shutil.rmtree(child)


def writer_dirs(cli: Cli) -> list[Path]:
    base = cli.spool / "backup" / VAULT / PREFIX
    return sorted(base.iterdir()) if base.exists() else []


@contextlib.contextmanager
def backup_from_fifo(cli: Cli, key: oracles.KeyPair, fifo: Path,
                     *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``cryophile backup`` reading a FIFO; killed if still running at the end."""
    os.mkfifo(fifo)
    process = subprocess.Popen(
        [sys.executable, "-m", "cryophile", "backup", "-v", VAULT, "-p", PREFIX, "-k",
         str(key.cert), "-s", "5M", "-C", "none", "-i", str(fifo), "--json", *extra],
        env=cli.environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)


@contextlib.contextmanager
def fifo_writer(fifo: Path, reader: subprocess.Popen[bytes]) -> Iterator[Any]:
    """Open ``fifo`` for writing once ``reader`` opened it; fail (not hang) if it never does."""
    deadline = time.monotonic() + 60
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as error:
            if error.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        assert reader.poll() is None, f"the backup exited with status {reader.returncode}"
        assert time.monotonic() < deadline, "the backup never opened its input FIFO"
        time.sleep(0.05)
    os.set_blocking(fd, True)
    with os.fdopen(fd, "wb") as writer:
        yield writer


def restore_request(cli: Cli, key: oracles.KeyPair, ulid: str,
                    env: dict[str, str] | None = None) -> None:
    """File a thaw request the way a user does: a restore that leaves the thaw to the
    daemon and gives up waiting at once."""
    result = cli.run(["restore", "-v", VAULT, "-p", PREFIX, "-u", ulid, "-k", key.secret,
                      "--no-thaw", "--timeout", "0"], env=env)
    assert result.returncode == 75, result.stderr


# -- list and status across a backup's life, on the embedded vault ---------------------------


def test_states_across_backup_freeze_wipe_restore(cli: Cli, gpg_key: oracles.KeyPair,
                                                  tar_stream: bytes, tmp_path: Path,
                                                  keyless: dict[str, str]) -> None:
    # A backup being written; a freeze uploads its first fragments meanwhile.
    with backup_from_fifo(cli, gpg_key, tmp_path / "x.fifo") as writer_x:
        with fifo_writer(tmp_path / "x.fifo", writer_x) as fifo:
            fifo.write(random.Random(3).randbytes(16 * MiB))
            fifo.flush()
            wait_until(lambda: len(live_files(cli.spool / "freeze", "chunk.*")) >= 2,
                       "two fragments in the freeze queue")
            assert cli.run(["freeze", "--once"]).returncode == 0
            x = writer_dirs(cli)[0].name
            assert states(cli, keyless) == {x: "writing"}
            status = status_json(cli, keyless)
            assert [entry["ulid"] for entry in status["backup"]] == [x]
            assert status["backup"][0]["state"] == "writing"
            assert status["freeze"][0]["state"] == "writing"
            assert status["freeze"][0]["fragments_total"] is None
            assert status["totals"]["writing"] == 1
            assert status["abandoned"] == []
            fifo.write(b"the end")
        stdout, stderr = writer_x.communicate(timeout=120)
        assert writer_x.returncode == 0, stderr.decode()
    assert json.loads(stdout)["ulid"] == x

    # Complete, some fragments in the vault, the rest and the manifest queued.
    entry = by_ulid(list_json(cli, keyless))[x]
    assert entry["state"] == "partly_frozen"
    assert entry["queues"] == ["freeze"]
    assert entry["fragments"] == 4
    assert entry["compression"] == "none"
    assert entry["in_vault"] is False
    manifest_x = json.loads((cli.freeze_dir(x) / "chunk.0").read_bytes())
    assert entry["stored_bytes"] == sum(f["size"] for f in manifest_x["fragments"])
    status = status_json(cli, keyless)
    (freeze_x,) = status["freeze"]
    waiting = sorted(cli.freeze_dir(x).glob("chunk.[1-9]*"))
    assert freeze_x["state"] == "partly_frozen"
    assert 1 <= freeze_x["fragments_waiting"] == len(waiting) < 4
    assert freeze_x["bytes_waiting"] == sum(path.stat().st_size for path in waiting)
    assert freeze_x["fragments_total"] == 4
    assert status["totals"]["freeze_bytes_waiting"] == freeze_x["bytes_waiting"]

    # A complete backup, nothing uploaded; and a writer that dies before its first byte.
    y = cli.backup(gpg_key, tar_stream, "-t", OLD_TIME)
    with backup_from_fifo(cli, gpg_key, tmp_path / "z.fifo") as writer_z:
        wait_until(lambda: len(writer_dirs(cli)) == 1, "the writer's directory")
        z_dir = writer_dirs(cli)[0]
        z = z_dir.name
        wait_until((z_dir / ".lock").exists, "the writer's lock")
        writer_z.send_signal(signal.SIGKILL)
        writer_z.wait(timeout=30)
    assert states(cli, keyless) == {x: "partly_frozen", y: "queued", z: "incomplete"}
    status = status_json(cli, keyless)
    assert status["abandoned"] == [f"{VAULT}/{PREFIX}/{z}"]
    assert {e["ulid"]: e["state"] for e in status["backup"]} == {z: "incomplete"}
    freeze_y = next(e for e in status["freeze"] if e["ulid"] == y)
    assert freeze_y["state"] == "queued"
    assert freeze_y["fragments_waiting"] == freeze_y["fragments_total"] >= 1
    human = run_keyless(cli, ["status"], keyless)
    assert human.returncode == 0
    assert "abandoned: 1 backup(s)" in human.stdout.decode()
    assert f"{VAULT}/{PREFIX}/{z}" in human.stdout.decode()

    # Frozen: both complete backups are in the vault; the dead one stays local.
    assert cli.run(["freeze", "--once"]).returncode == 0
    entries = by_ulid(list_json(cli, keyless, "-v", VAULT))
    assert {u: e["state"] for u, e in entries.items()} == {x: "frozen", y: "frozen",
                                                           z: "incomplete"}
    assert entries[x]["in_vault"] is True
    assert entries[x]["queues"] == []
    assert entries[x]["storage_class"] is None  # a directory vault has no storage classes
    assert entries[x]["stored_bytes"] == sum(f["size"] for f in manifest_x["fragments"])
    assert entries[y]["compression"] == "zstd"
    assert entries[z]["queues"] == ["backup", "freeze"]
    assert entries[z]["in_vault"] is False

    # The spool is lost: the vault (found beside the spool, no -v needed) still has both.
    wipe_spool(cli)
    listed = list_json(cli, keyless)
    # Newest first by the backup's own time: y's -t names an older time than x's ULID,
    # so y is listed after x although it was written later (issue 17).
    assert [(e["ulid"], e["state"]) for e in listed] == [(x, "frozen"), (y, "frozen")]
    assert listed[0]["created"] < listed[1]["created"]
    assert listed[0]["time"] > listed[1]["time"]
    table = run_keyless(cli, ["list", "--utc"], keyless)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.decode().splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "WRITTEN", "STATE", "SIZE", "FRAGS", "COMP"]
    assert lines[2] == f"  {VAULT}/{PREFIX}/{x}"
    assert lines[4] == f"  {VAULT}/{PREFIX}/{y}"
    day, minute, _, _, state, size, unit, count, compression = lines[1].split()
    assert f"{day}T{minute}" == listed[0]["time"][:16]
    assert (state, count, compression) == ("frozen", "4", "none")
    assert unit == "MiB"
    assert float(size) == pytest.approx(entries[x]["stored_bytes"] / MiB, abs=0.05)
    # -p selects a prefix and what is below it, component by component.
    assert len(list_json(cli, keyless, "-p", "hosts")) == 2
    assert list_json(cli, keyless, "-p", "host") == []

    # A restore request, then the thaw daemon's pass: restored locally.
    restore_request(cli, gpg_key, x)
    assert states(cli, keyless)[x] == "thaw_requested"
    (thaw_x,) = status_json(cli, keyless)["thaw"]
    assert thaw_x["state"] == "thaw_requested"
    assert (thaw_x["cold"], thaw_x["restoring"], thaw_x["downloaded"]) == (0, 0, 0)
    assert thaw_x["tier"] == "Bulk"
    assert thaw_x["days"] == 1
    assert cli.run(["thaw", "--once"]).returncode == 0
    entry = by_ulid(list_json(cli, keyless))[x]
    assert entry["state"] == "restored"
    assert entry["queues"] == ["restore"]
    assert entry["in_vault"] is True
    status = status_json(cli, keyless)
    assert status["thaw"] == []
    (restore_x,) = status["restore"]
    assert restore_x["complete"] is True
    assert restore_x["fragments_present"] == restore_x["fragments_total"] == 4
    assert restore_x["bytes"] == entry["stored_bytes"]

    # A request whose fragment is gone from the vault: thaw retries, then gives up.
    restore_request(cli, gpg_key, y)
    (vault_dir(cli) / PREFIX / y / "chunk.1").unlink()
    for expected in (0, 0, 65):
        assert cli.run(["thaw", "--once"]).returncode == expected
    entry = by_ulid(list_json(cli, keyless))[y]
    assert entry["state"] == "thaw_failed"
    assert "fragment 1" in entry["error"]
    thaw_y = next(e for e in status_json(cli, keyless)["thaw"] if e["ulid"] == y)
    assert thaw_y["state"] == "thaw_failed"
    assert "fragment 1" in thaw_y["error"]
    assert thaw_y["fragments_total"] == 1
    assert "fragment 1" in run_keyless(cli, ["status"], keyless).stdout.decode()


def test_list_reports_a_vault_it_cannot_read_and_still_lists_the_spool(
        cli: Cli, gpg_key: oracles.KeyPair, tar_stream: bytes, keyless: dict[str, str],
        tmp_path: Path) -> None:
    y = cli.backup(gpg_key, tar_stream)
    config = tmp_path / "broken-vault.toml"
    config.write_text(f'[[vault]]\nid = "{VAULT}"\nprovider = "dir"\n'
                      f'path = "{tmp_path / "not-mounted"}"\n')
    result = run_keyless(cli, ["list", "--json", "-c", str(config)], keyless)
    assert result.returncode == 69
    assert f"vault {VAULT} could not be read" in result.stderr
    assert "not-mounted" in result.stderr
    document = json.loads(result.stdout)
    jsonschema.validate(document, LIST_SCHEMA)
    assert [(e["ulid"], e["state"]) for e in document] == [(y, "queued")]


# -- verify on the embedded vault ------------------------------------------------------------


@pytest.fixture
def frozen(cli: Cli, gpg_key: oracles.KeyPair, tar_stream: bytes) -> tuple[str, bytes]:
    """A backup of 3+ fragments, frozen into the embedded vault; its ULID and data."""
    data = random.Random(9).randbytes(11 * MiB) + tar_stream
    ulid = cli.backup(gpg_key, data, "-C", "lz4")
    assert cli.run(["freeze", "--once"]).returncode == 0
    return ulid, data


def verify(cli: Cli, env: dict[str, str], ulid: str, *extra: str) -> Result:
    return run_keyless(cli, ["verify", "-v", VAULT, "-p", PREFIX, "-u", ulid, *extra], env)


def test_verify_directory_vault_healthy_decrypts_and_names_damage(
        cli: Cli, gpg_key: oracles.KeyPair, frozen: tuple[str, bytes],
        keyless: dict[str, str]) -> None:
    ulid, data = frozen
    everything = run_keyless(cli, ["verify", "-v", VAULT, "--all"], keyless)
    assert everything.returncode == 0, everything.stderr
    assert f"{VAULT}/{PREFIX}/{ulid}: healthy" in everything.stdout.decode()
    assert "1 backup(s): 1 healthy, 0 damaged, 0 not checkable now" in everything.stdout.decode()
    downloaded = verify(cli, keyless, ulid, "--download")
    assert downloaded.returncode == 0, downloaded.stderr
    assert "3 downloaded and hashed" in downloaded.stdout.decode()

    # With the secret key: decrypted and decompressed to nowhere, every byte accounted for.
    decrypted = cli.run(["verify", "-v", VAULT, "-p", PREFIX, "-u", ulid, "--download",
                         "-k", gpg_key.secret])
    assert decrypted.returncode == 0, decrypted.stderr
    assert f"decrypted and decompressed: {len(data)} bytes" in decrypted.stdout.decode()
    assert decrypted.stdout.count(b"\n") == 1
    # -k needs --download; nothing is left in the spool by any of these runs.
    refused = cli.run(["verify", "-v", VAULT, "-u", ulid, "-p", PREFIX, "-k", gpg_key.secret])
    assert refused.returncode == 64
    assert "--download" in refused.stderr
    assert not [p for p in cli.spool.rglob("*") if p.is_file()]

    # A flipped byte inside an object: the vault's record still matches (metadata cannot
    # see it), the download does.
    chunk2 = vault_dir(cli) / PREFIX / ulid / "chunk.2"
    damaged = bytearray(chunk2.read_bytes())
    damaged[1000] ^= 0x40
    chunk2.write_bytes(bytes(damaged))
    assert verify(cli, keyless, ulid).returncode == 0
    result = verify(cli, keyless, ulid, "--download")
    assert result.returncode == 65
    out = result.stdout.decode()
    assert f"{VAULT}/{PREFIX}/{ulid}: DAMAGED" in out
    assert f"fragment 2 ({PREFIX}/{ulid}/chunk.2)" in out
    assert "chunk.1" not in out
    assert "chunk.3" not in out
    result = cli.run(["verify", "-v", VAULT, "-p", PREFIX, "-u", ulid, "--download", "-k",
                      gpg_key.secret])
    assert result.returncode == 65
    assert f"fragment 2 ({PREFIX}/{ulid}/chunk.2)" in result.stdout.decode()
    assert "decryption stopped at fragment 2" in result.stdout.decode()

    # A fragment deleted: named without downloading anything.
    (vault_dir(cli) / PREFIX / ulid / "chunk.3").unlink()
    result = verify(cli, keyless, ulid)
    assert result.returncode == 65
    assert f"fragment 3 ({PREFIX}/{ulid}/chunk.3): missing from the vault" in (
        result.stdout.decode())
    assert run_keyless(cli, ["verify", "-v", VAULT, "--all"], keyless).returncode == 65
    listed = by_ulid(list_json(cli, keyless))[ulid]
    assert listed["state"] == "damaged"
    assert "3" in listed["error"]
    assert not [p for p in cli.spool.rglob("*") if p.is_file()]


def test_verify_of_what_the_vault_does_not_have(cli: Cli, keyless: dict[str, str],
                                                frozen: tuple[str, bytes]) -> None:
    missing = verify(cli, keyless, "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert missing.returncode == 66
    assert "is not in vault" in missing.stderr
    ulid, _ = frozen
    manifest = vault_dir(cli) / PREFIX / ulid / "chunk.0"
    manifest.write_bytes(manifest.read_bytes().replace(b'"compression"', b'"compresion"'))
    damaged = verify(cli, keyless, ulid)
    assert damaged.returncode == 65
    assert f"manifest ({PREFIX}/{ulid}/chunk.0)" in damaged.stdout.decode()
    assert by_ulid(list_json(cli, keyless))[ulid]["state"] == "damaged"
    manifest.unlink()
    incomplete = verify(cli, keyless, ulid)
    assert incomplete.returncode == 66
    assert "fragments of it but no manifest" in incomplete.stderr
    assert by_ulid(list_json(cli, keyless))[ulid]["state"] == "incomplete"


def test_only_decryption_catches_a_forged_manifest(cli: Cli, gpg_key: oracles.KeyPair,
                                                  tar_stream: bytes,
                                                  keyless: dict[str, str]) -> None:
    """Fragments rewritten together with their manifest: every checksum agrees, only the
    OpenPGP integrity check (verify -k) sees that the backup does not restore."""
    ulid = cli.backup(gpg_key, tar_stream)
    assert cli.run(["freeze", "--once"]).returncode == 0
    objects = vault_dir(cli) / PREFIX / ulid
    fragment = bytearray((objects / "chunk.1").read_bytes())
    fragment[len(fragment) // 2] ^= 0x10
    (objects / "chunk.1").write_bytes(bytes(fragment))
    manifest = json.loads((objects / "chunk.0").read_bytes())
    manifest["fragments"][0]["sha256"] = hashlib.sha256(fragment).hexdigest()
    (objects / "chunk.0").write_text(json.dumps(manifest))
    # The directory vault's sidecars record the old checksums: without them it hashes.
    shutil.rmtree(vault_dir(cli) / ".cryophile" / "meta")
    assert verify(cli, keyless, ulid, "--download").returncode == 0
    result = cli.run(["verify", "-v", VAULT, "-p", PREFIX, "-u", ulid, "--download", "-k",
                      gpg_key.secret])
    assert result.returncode == 65
    assert "decryption failed, although the fragments read match the manifest" in (
        result.stdout.decode())


def test_read_only_commands_take_no_key_option(cli: Cli, keyless: dict[str, str]) -> None:
    for command in (["list"], ["status"]):
        result = cli.run([*command, "-k", "some.key"], env=keyless)
        assert result.returncode == 64, result.stderr
    assert run_keyless(cli, ["status"], keyless).returncode == 0
    assert run_keyless(cli, ["list"], keyless).returncode == 0


def test_readme_documents_every_json_field() -> None:
    readme = (REPO / "README.md").read_text()
    sections = {}
    for name in ("list", "verify", "status"):
        match = re.search(rf"^### cryophile {name}\n(.*?)(?=^### )", readme, re.S | re.M)
        assert match is not None, f"README has no '### cryophile {name}' section"
        sections[name] = match.group(1)
    for field in LIST_SCHEMA["items"]["properties"]:
        assert f"`{field}`" in sections["list"], field
    for state in STATES:
        assert f"`{state}`" in sections["list"], state
    status_fields = set(STATUS_SCHEMA["properties"]) | set(
        STATUS_SCHEMA["properties"]["totals"]["properties"])
    for queue in ("backup", "freeze", "thaw", "restore"):
        status_fields |= set(STATUS_SCHEMA["properties"][queue]["items"]["properties"])
    for field in status_fields:
        assert f"`{field}`" in sections["status"], field
    for code in ("0", "3", "65", "75"):
        assert f"| {code} |" in sections["verify"], code
    codes = readme[readme.index("### Exit codes"):readme.index("## Keys with")]
    assert "| 3 | partial: some backups could not be read" in codes
    contents = readme[readme.index("## Contents"):readme.index("## Install")]
    for name in ("list", "verify", "status"):
        assert f"(#cryophile-{name})" in contents


# -- S3: SeaweedFS (a real S3 server) and moto (Glacier semantics) ---------------------------


def configure_s3_vault(cli: Cli, bucket: S3Bucket, tmp_path: Path, storage_class: str, *,
                       endpoint_url: str | None = None, extra: str = "") -> dict[str, str]:
    """Make ``VAULT`` the S3 ``bucket`` in the user's config (reached at ``endpoint_url``,
    by default the bucket's server; ``extra`` adds lines to its table); return the AWS
    environment.

    The environment has credentials for the vault and nothing else: no key of any kind.
    """
    config = cli.home / ".config" / "cryophile" / "cryophile.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'[[vault]]\nid = "{VAULT}"\nprovider = "s3"\nbucket = "{bucket.name}"\n'
        f'endpoint_url = "{endpoint_url or bucket.endpoint.url}"\n'
        f'region = "{bucket.endpoint.region}"\n'
        f'storage_class = "{storage_class}"\nrestore_days = 2\n{extra}')
    missing = tmp_path / "no-such-aws-dir"
    return {"AWS_ACCESS_KEY_ID": bucket.endpoint.access_key,
            "AWS_SECRET_ACCESS_KEY": bucket.endpoint.secret_key,
            "AWS_CONFIG_FILE": str(missing / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(missing / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "HOME": str(cli.home), "XDG_CONFIG_HOME": str(cli.home / ".config"),
            "GNUPGHOME": str(tmp_path / "no-gnupg")}


def test_list_and_verify_on_seaweedfs(cli: Cli, gpg_key: oracles.KeyPair,
                                      s3_bucket: S3Bucket, tmp_path: Path) -> None:
    env = configure_s3_vault(cli, s3_bucket, tmp_path, "STANDARD_IA")
    data = random.Random(5).randbytes(11 * MiB)
    ulid = cli.backup(gpg_key, data, "-C", "none")
    assert cli.run(["freeze", "--once"], env=env).returncode == 0
    (entry,) = list_json(cli, env, "-v", VAULT)
    assert entry["ulid"] == ulid
    assert entry["state"] == "frozen"
    assert entry["storage_class"] == "STANDARD_IA"
    assert entry["fragments"] == 3
    assert entry["in_vault"] is True
    result = run_keyless(cli, ["verify", "-v", VAULT, "-p", PREFIX, "-u", ulid, "--download"],
                         env)
    assert result.returncode == 0, result.stderr
    assert f"{VAULT}/{PREFIX}/{ulid}: healthy" in result.stdout.decode()
    assert "3 downloaded and hashed" in result.stdout.decode()

    client = s3_bucket.endpoint.client()

    def key(index: int) -> str:
        return f"{PREFIX}/{ulid}/chunk.{index}"

    # Bit rot in fragment 2: the content changes, the recorded checksum stays, so only
    # the download sees it.
    head = client.head_object(Bucket=s3_bucket.name, Key=key(2))
    content = bytearray(client.get_object(Bucket=s3_bucket.name, Key=key(2))["Body"].read())
    content[12345] ^= 0x01
    client.put_object(Bucket=s3_bucket.name, Key=key(2), Body=bytes(content),
                      Metadata=head["Metadata"], StorageClass="STANDARD_IA")
    # Fragment 1 replaced by other content with its own valid checksum: metadata shows it.
    other = os.urandom(len(content))
    digest = hashlib.sha256(other).digest()
    client.put_object(Bucket=s3_bucket.name, Key=key(1), Body=other,
                      Metadata={"sha256": digest.hex()}, ChecksumAlgorithm="SHA256",
                      ChecksumSHA256=base64.b64encode(digest).decode())
    # Fragment 3 deleted.
    client.delete_object(Bucket=s3_bucket.name, Key=key(3))
    result = run_keyless(cli, ["verify", "-v", VAULT, "-p", "hosts", "--all", "--download"],
                         env)
    assert result.returncode == 65
    out = result.stdout.decode()
    assert f"fragment 1 ({key(1)}): SHA-256 {digest.hex()} in the vault" in out
    assert f"fragment 2 ({key(2)}): downloaded content is damaged" in out
    assert f"fragment 3 ({key(3)}): missing from the vault" in out
    assert "1 backup(s): 0 healthy, 1 damaged" in out


def test_glacier_thawing_state_and_verify_not_checkable(
        cli: Cli, gpg_key: oracles.KeyPair, moto_bucket: S3Bucket, tmp_path: Path,
        tar_stream: bytes) -> None:
    env = configure_s3_vault(cli, moto_bucket, tmp_path, "GLACIER")
    data = random.Random(6).randbytes(6 * MiB) + tar_stream
    ulid = cli.backup(gpg_key, data, "-C", "none")
    assert cli.run(["freeze", "--once"], env=env).returncode == 0
    (entry,) = list_json(cli, env)
    assert (entry["state"], entry["storage_class"]) == ("frozen", "GLACIER")
    fragments = entry["fragments"]
    assert fragments >= 2
    # Metadata is checkable in Glacier; the content is not until thawed.
    assert run_keyless(cli, ["verify", "-v", VAULT, "-p", PREFIX, "-u", ulid],
                       env).returncode == 0
    result = run_keyless(cli, ["verify", "-v", VAULT, "-p", PREFIX, "-u", ulid, "--download"],
                         env)
    assert result.returncode == 75, result.stderr
    out = result.stdout.decode()
    assert "not checkable now" in out
    assert f"fragment 1 ({PREFIX}/{ulid}/chunk.1): archived (GLACIER, cold)" in out

    wipe_spool(cli)
    restore_request(cli, gpg_key, ulid, env=env)
    assert cli.run(["thaw", "--once"], env=env).returncode == 0
    assert states(cli, env) == {ulid: "thawing"}
    (thaw,) = status_json(cli, env)["thaw"]
    assert thaw["state"] == "thawing"
    assert thaw["fragments_total"] == fragments
    assert thaw["restoring"] == fragments
    assert thaw["cold"] == thaw["downloaded"] == 0
    assert thaw["days"] == 2



# -- one unreadable backup is one row, not an empty vault -------------------------------------


def frozen_backups(cli: Cli, key: oracles.KeyPair, env: dict[str, str], count: int) -> list[str]:
    """``count`` small one-fragment backups, oldest first, frozen into ``VAULT``."""
    ulids = [cli.backup(key, random.Random(20 + i).randbytes(64 * 1024), "-C", "none")
             for i in range(count)]
    assert cli.run(["freeze", "--once"], env=env).returncode == 0
    return ulids


def table_states(output: bytes) -> dict[str, str]:
    """ULID → STATE of every row of ``list``'s table."""
    header, *lines = output.decode().splitlines()
    assert header.split()[:6] == ["TIME", "(UTC)", "WRITTEN", "STATE", "SIZE", "FRAGS"]
    # Each row's id is on the line below it (issue 17: rows fit 80 columns).
    rows, ids = lines[0::2], lines[1::2]
    return {backup_id.rsplit("/", 1)[-1]: row.split()[4] for row, backup_id in zip(rows, ids,
                                                                                  strict=True)}


def test_an_archived_manifest_is_one_unreadable_backup_not_an_empty_vault(
        cli: Cli, gpg_key: oracles.KeyPair, moto_bucket: S3Bucket, tmp_path: Path) -> None:
    """A lifecycle rule moved one manifest to GLACIER (moto, like AWS, then refuses
    to GET it): list and verify --all show the other two, name the third with what
    to do, and exit 3."""
    env = configure_s3_vault(cli, moto_bucket, tmp_path, "STANDARD")
    first, archived, last = frozen_backups(cli, gpg_key, env, 3)
    key = f"{PREFIX}/{archived}/chunk.0"
    client = moto_bucket.endpoint.client()
    client.copy_object(Bucket=moto_bucket.name, Key=key, StorageClass="GLACIER",
                       CopySource={"Bucket": moto_bucket.name, "Key": key})
    with pytest.raises(client.exceptions.ClientError, match="InvalidObjectState"):
        client.get_object(Bucket=moto_bucket.name, Key=key)
    backup = f"{VAULT}/{PREFIX}/{archived}"
    advice = (f"manifest chunk.0 of {backup} is in GLACIER (a lifecycle rule?): cryophile "
              f"keeps manifests in STANDARD; restore it (aws s3api restore-object --bucket "
              f"{moto_bucket.name} --key {key} --restore-request Days=1), then copy it back "
              f"to STANDARD (aws s3api copy-object --bucket {moto_bucket.name} --key {key} "
              f"--copy-source {moto_bucket.name}/{key} --storage-class STANDARD); and exclude "
              f"*/chunk.0 and */chunk.0.sig from the rule")

    result = run_keyless(cli, ["list", "--utc"], env)
    assert result.returncode == 3, result.stderr
    assert table_states(result.stdout) == {first: "frozen", archived: "unreadable",
                                           last: "frozen"}
    assert f"cryophile: error: {backup} is unreadable: {advice}" in result.stderr
    assert "no backups found" not in result.stderr

    entries = by_ulid(list_json(cli, env, expect=3))
    assert {ulid: entry["state"] for ulid, entry in entries.items()} == {
        first: "frozen", archived: "unreadable", last: "frozen"}
    assert entries[archived]["error"] == advice
    assert entries[archived]["in_vault"] is True
    assert entries[archived]["fragments"] is None
    assert entries[archived]["storage_class"] == "STANDARD"  # chunk.1's class
    assert entries[first]["error"] is entries[last]["error"] is None
    assert entries[first]["fragments"] == 1

    result = run_keyless(cli, ["verify", "-v", VAULT, "--all"], env)
    assert result.returncode == 3, result.stderr
    out = result.stdout.decode()
    assert f"{VAULT}/{PREFIX}/{first}: healthy" in out
    assert f"{VAULT}/{PREFIX}/{last}: healthy" in out
    assert f"{backup}: not checkable: manifest unreadable\n  manifest ({key}): {advice}" in out
    assert "3 backup(s): 2 healthy, 0 damaged, 0 not checkable now, 1 unreadable" in out
    # That one backup alone is "not checkable now", as any archived object is.
    single = run_keyless(cli, ["verify", "-v", VAULT, "-p", PREFIX, "-u", archived], env)
    assert single.returncode == 75, single.stderr
    assert advice in single.stdout.decode()


def s3_port(bucket: S3Bucket) -> int:
    port = urlsplit(bucket.endpoint.url).port
    assert port is not None
    return port


def test_a_server_failing_on_one_object_or_on_everything(
        cli: Cli, gpg_key: oracles.KeyPair, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """SeaweedFS behind a fault proxy. 500 for one manifest, always: that backup is
    unreadable (the message names the object), the rest is listed and verified, exit 3.
    500 for every object but the listing: the vault is down, found out after three
    backups, not after one try per backup, exit 75. 500 for everything: 75, never 69."""
    with FaultProxy(s3_port(s3_bucket)) as proxy:
        env = configure_s3_vault(cli, s3_bucket, tmp_path, "STANDARD", endpoint_url=proxy.url,
                                 extra="max_attempts = 2\n")
        ulids = frozen_backups(cli, gpg_key, env, 4)
        failing = ulids[1]
        key = f"{PREFIX}/{failing}/chunk.0"

        def one_object(request: Request) -> Fault:
            return Fault.ERROR_500 if key in request.target else Fault.NONE

        proxy.schedule = one_object
        expected = dict.fromkeys(ulids, "frozen") | {failing: "unreadable"}
        result = run_keyless(cli, ["list", "--utc"], env)
        assert result.returncode == 3, result.stderr
        assert table_states(result.stdout) == expected
        # The manifest's size is looked at (HEAD) before it is downloaded.
        reason = (f"the vault failed on it; try again later: stat "
                  f"s3://{s3_bucket.name}/{key}: server error 500: Internal Server Error")
        assert f"{VAULT}/{PREFIX}/{failing} is unreadable: {reason}" in result.stderr
        entries = by_ulid(list_json(cli, env, expect=3))
        assert {ulid: entry["state"] for ulid, entry in entries.items()} == expected
        assert entries[failing]["error"].startswith(reason)
        result = run_keyless(cli, ["verify", "-v", VAULT, "--all"], env)
        assert result.returncode == 3, result.stderr
        out = result.stdout.decode()
        assert (f"{VAULT}/{PREFIX}/{failing}: not checkable: manifest unreadable\n"
                f"  manifest ({key}): {reason}") in out
        assert "4 backup(s): 3 healthy, 0 damaged, 0 not checkable now, 1 unreadable" in out

        def all_but_the_listing(request: Request) -> Fault:
            return Fault.NONE if "list-type=2" in request.target else Fault.ERROR_500

        proxy.schedule = all_but_the_listing
        for command in (["verify", "-v", VAULT, "--all"], ["list", "--json"]):
            seen = proxy.requests
            result = run_keyless(cli, command, env)
            assert result.returncode == 75, (command, result.stderr)
            assert "3 backups in a row" in result.stderr or "3 manifests in a row" in (
                result.stderr), command
            assert not [target for _, _, target, _ in proxy.log[seen:]
                        if ulids[3] in target], command
        document = json.loads(result.stdout)
        jsonschema.validate(document, LIST_SCHEMA)
        listed = by_ulid(document)
        assert {entry["state"] for entry in listed.values()} == {"unreadable"}
        assert listed[ulids[3]]["error"].startswith("not read: the vault stopped answering")

        def everything(request: Request) -> Fault:
            return Fault.ERROR_500

        proxy.schedule = everything
        for command in (["list"], ["list", "--json"], ["verify", "-v", VAULT, "--all"],
                        ["verify", "-v", VAULT, "-p", PREFIX, "-u", ulids[0]]):
            result = run_keyless(cli, command, env)
            assert result.returncode == 75, (command, result.stderr)
            assert "server error" in result.stderr, command
        assert f"vault {VAULT} could not be read" in run_keyless(cli, ["list"], env).stderr
        prune = cli.run(["prune", "-v", VAULT, "--keep-last", "1", "--dry-run"], env=env)
        assert prune.returncode == 75, prune.stderr
        assert run_keyless(cli, ["status"], env).returncode == 0


def test_list_and_status_create_nothing_and_need_no_spool(cli: Cli, tmp_path: Path) -> None:
    # A mistyped -S, or a monitoring user's first run: read-only commands must not
    # leave queue directories behind, nor create the default spool.
    elsewhere = tmp_path / "not-a-spool"
    elsewhere.mkdir()
    for command in (["status"], ["status", "--json"], ["list"], ["list", "--json"]):
        result = cli.run([*command, "-S", elsewhere])
        assert result.returncode == 0, result.stderr
        assert list(elsewhere.iterdir()) == [], command
    status = json.loads(cli.run(["status", "--json", "-S", elsewhere]).stdout)
    assert status["backup"] == status["freeze"] == status["thaw"] == status["restore"] == []
    # The default location (root: /var/spool/cryophile) is not created by them either.
    missing = tmp_path / "default" / "spool"
    spool = Spool.open(missing, create_root=True, read_only=True)
    assert not list(spool.backups(Queue.FREEZE))
    assert not missing.exists()
    # A command that writes still creates its queues.
    assert cli.run(["freeze", "--once", "-S", elsewhere]).returncode == 0
    assert (elsewhere / "freeze").is_dir()

"""Issue 12, points 2–4 and what ``status`` and ``prune`` say about them, through the real CLI.

Every test runs the real ``cryophile`` in subprocesses against the session's
SeaweedFS (or a configured directory vault) and asserts what a user sees: the
exit code, the key words of the message, what the bucket or directory holds,
what the spool holds, the restored bytes.

- Point 2, no silent misroute: a backup queued for an S3 vault is refused (78,
  naming the bucket and the embedded directory) by a ``freeze`` that runs
  without its configuration; nothing moves, nothing is written anywhere, and
  the right configuration then freezes it.
- Point 3, a typo in the vault id: with a configuration file listing vaults,
  an id it does not list is refused by ``backup`` and ``list`` (78, naming the
  listed ids), nothing is queued, no embedded directory appears, and ``list``
  shows only the configured vaults; without any configuration the embedded
  vault says once that it is on this host, not off-site.
- Point 4, an interrupted backup does not poison its retry: a backup stopped
  by SIGTERM after fragments were uploaded is listed as withdrawn; its retry
  under the same ``-t`` lands (the earlier attempt's objects replaced or
  removed) and restores; without a retry, the next freeze pass removes what it
  uploaded. Two hosts writing the same id: the second gets a permanent error
  naming the id, the objects and the way out, and the first backup stays
  intact. ``prune --abandoned`` removes only what this spool uploaded of a
  killed backup; ``prune --incomplete --older-than`` removes manifest-less
  objects nobody claims, once old enough.
- ``status`` shows the error that stopped a backup's upload and since when, and
  which daemons serve the spool.

Waits poll for a state (``polling.wait_until``), never for a time.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import oracles
from cryophile.backup_id import parse_timestamp, ulid_for_timestamp
from e2e import test_freeze_s3 as fs
from polling import live_files, wait_until
from s3server import S3Bucket
from support.cli import VAULT, Cli, Result
from support.files import snapshot

PREFIX = fs.PREFIX
MiB = 1 << 20
#: The README's cron pattern: one backup a night, named by its time.
WHEN = "2026-12-01T19:00:00Z"
ULID_OF_WHEN = str(ulid_for_timestamp(parse_timestamp(WHEN)))
TWO_DAYS = 2 * 86400


# -- helpers ---------------------------------------------------------------------------


@dataclass
class RunningBackup:
    """A real ``cryophile backup`` reading a pipe that the test feeds."""

    cli: Cli
    process: subprocess.Popen[bytes]

    def feed(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def queued(self) -> list[Path]:
        """The fragments this spool's freeze queue holds now."""
        return live_files(self.cli.spool / "freeze", "chunk.*")

    @property
    def ulid(self) -> str:
        return next((self.cli.spool / "backup" / VAULT / PREFIX).iterdir()).name

    def stop(self, signum: signal.Signals) -> Result:
        """Send ``signum`` while the backup waits for more input; its exit and stderr."""
        self.process.send_signal(signum)
        _, stderr = self.process.communicate(timeout=60)
        return Result(self.process.returncode, b"", stderr.decode(errors="replace"))


@pytest.fixture
def s3(cli: Cli, s3_bucket: S3Bucket, tmp_path: Path) -> fs.S3Freeze:
    """This spool, a fresh bucket, and a configuration naming it (``cli.backup`` passes it)."""
    return fs.make_s3(cli, s3_bucket, tmp_path)


@pytest.fixture
def start_backup(gpg_key: oracles.KeyPair) -> Iterator[Any]:
    """``start_backup(cli, *extra)``: a backup of ``-s 5M -C none`` from a pipe."""
    running: list[subprocess.Popen[bytes]] = []

    def start(cli: Cli, *extra: str, env: dict[str, str] | None = None) -> RunningBackup:
        config = ["-c", str(cli.config)] if cli.config is not None else []
        process = subprocess.Popen(
            [sys.executable, "-m", "cryophile", "backup", "-v", VAULT, "-p", PREFIX, "-k",
             str(gpg_key.cert), "-s", "5M", "-C", "none", "--json", *config, *extra],
            env=cli.environment(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        running.append(process)
        return RunningBackup(cli, process)

    yield start
    for process in running:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)


def two_fragments_uploaded(backup: RunningBackup, freeze: Any, seed: int) -> None:
    """Feed 12 MiB, wait for two fragments in the freeze queue, freeze them while
    the writer waits for more input."""
    backup.feed(random.Random(seed).randbytes(12 * MiB))
    wait_until(lambda: len(backup.queued()) >= 2, "two fragments in the freeze queue",
               interval=0.05)
    result = freeze()
    assert result.returncode == 0, result.stderr
    assert backup.process.poll() is None, "the backup ended before it was stopped"


def upload_record(cli: Cli, ulid: str) -> Path:
    return cli.spool / "uploads" / VAULT / PREFIX / f"{ulid}.json"


def status_of(s3: fs.S3Freeze) -> dict[str, Any]:
    result = s3.run("status", "--json")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def restore(s3: fs.S3Freeze, key: oracles.KeyPair, *selector: str) -> Result:
    return s3.run("restore", "-v", VAULT, "-p", PREFIX, *selector, "-k", key.secret,
                  "--thaw", "--poll", "0.2", timeout=120)


def one_digit_changed(vault_id: str) -> str:
    index = next(i for i, char in enumerate(vault_id) if char.isdigit())
    return vault_id[:index] + str((int(vault_id[index]) + 1) % 10) + vault_id[index + 1:]


def write_dir_config(path: Path, vault_id: str, vault_dir: Path) -> Path:
    vault_dir.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[[vault]]\nid = "{vault_id}"\nprovider = "dir"\npath = "{vault_dir}"\n')
    return path


def files_below(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in live_files(root)) if root.exists() \
        else []


# -- point 2: a backup goes where it was queued for, or nowhere -----------------------------


def test_freeze_without_the_configuration_refuses_to_send_an_s3_backup_to_a_local_directory(
        s3: fs.S3Freeze, gpg_key: oracles.KeyPair) -> None:
    ulid = s3.cli.backup(gpg_key, random.Random(2).randbytes(7 * MiB))
    manifest = fs.manifest_of(s3.cli, ulid)
    queued = fs.queued_files(s3.cli, ulid)
    embedded_root = s3.cli.spool.parent / f"{s3.cli.spool.name}-vaults"

    # A systemd unit that reads /etc/cryophile while the file is in ~/.config: no -c.
    result = s3.cli.run(["freeze", "--once"], env=s3.env)
    assert result.returncode == 78, result.stderr
    assert f"was queued for s3://{s3.bucket.name} at {s3.bucket.endpoint.url}" in result.stderr
    assert f"the embedded directory vault {embedded_root / VAULT}" in result.stderr
    assert "nothing was uploaded" in result.stderr
    assert fs.queued_files(s3.cli, ulid) == queued
    assert s3.all_keys() == []
    assert files_below(embedded_root) == []

    result = s3.freeze()
    assert result.returncode == 0, result.stderr
    fs.assert_vault_holds(s3, ulid, manifest)
    fs.assert_queue_empty(s3.cli)
    assert files_below(embedded_root) == []


# -- point 3: a vault id the configuration does not list ----------------------------------


def test_the_embedded_vault_says_once_that_it_is_not_off_site(
        cli: Cli, gpg_key: oracles.KeyPair) -> None:
    embedded = cli.spool.parent / f"{cli.spool.name}-vaults" / VAULT
    first = cli.run(["backup", "-v", VAULT, "-p", PREFIX, "-k", gpg_key.cert],
                    stdin=b"first night")
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("not off-site") == 1, first.stderr
    assert str(embedded) in first.stderr
    assert "said once" in first.stderr
    second = cli.run(["backup", "-v", VAULT, "-p", PREFIX, "-k", gpg_key.cert],
                     stdin=b"second night")
    assert second.returncode == 0, second.stderr
    assert "not off-site" not in second.stderr
    assert "embedded" not in second.stderr


def test_a_vault_id_the_configuration_does_not_list_is_refused_and_nothing_is_queued(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    # Before any configuration: a backup in the embedded directory vault.
    embedded_parent = cli.spool.parent / f"{cli.spool.name}-vaults"
    old = cli.backup(gpg_key, b"from before the configuration existed")
    assert cli.run(["freeze", "--once"]).returncode == 0
    assert files_below(embedded_parent / VAULT)

    configured = str(uuid.uuid4())
    typo = one_digit_changed(configured)
    # The file the commands find on their own: no -c anywhere below.
    write_dir_config(cli.home / ".config" / "cryophile" / "cryophile.toml", configured,
                     tmp_path / "backup-disk")
    before = snapshot(cli.spool)

    result = cli.run(["backup", "-v", typo, "-p", PREFIX, "-k", gpg_key.cert],
                     stdin=b"this must not go anywhere")
    assert result.returncode == 78, result.stderr
    assert f"vault {typo} is not in the configuration" in result.stderr
    assert f"it lists: {configured}" in result.stderr
    assert "typo" in result.stderr
    assert snapshot(cli.spool) == before
    assert not (embedded_parent / typo).exists()
    assert sorted(path.name for path in embedded_parent.iterdir()) == [VAULT]

    listed = cli.run(["list", "-v", typo])
    assert listed.returncode == 78, listed.stderr
    assert f"it lists: {configured}" in listed.stderr
    assert listed.stdout == b""
    # The embedded vault does not serve any more either: it is not configured.
    assert cli.run(["list", "-v", VAULT]).returncode == 78

    made = cli.run(["backup", "-v", configured, "-p", PREFIX, "-k", gpg_key.cert, "--json"],
                   stdin=b"to the backup disk")
    assert made.returncode == 0, made.stderr
    assert "not off-site" not in made.stderr
    ulid = json.loads(made.stdout)["ulid"]
    assert cli.run(["freeze", "--once"]).returncode == 0
    everything = cli.run(["list", "--json"])
    assert everything.returncode == 0, everything.stderr
    assert [(entry["id"], entry["state"]) for entry in json.loads(everything.stdout)] == [
        (f"{configured}/{PREFIX}/{ulid}", "frozen")]
    assert old not in everything.stdout.decode()


# -- point 4: an interrupted backup does not poison its retry ------------------------------


def test_a_retry_after_sigterm_lands_in_place_of_what_the_stopped_backup_uploaded(
        s3: fs.S3Freeze, gpg_key: oracles.KeyPair, start_backup: Any) -> None:
    backup = start_backup(s3.cli, "-t", WHEN)
    two_fragments_uploaded(backup, s3.freeze, seed=41)
    ulid = backup.ulid
    assert ulid == ULID_OF_WHEN
    uploaded = s3.listing(ulid)
    assert len(uploaded) >= 2, sorted(uploaded)
    assert "chunk.0" not in uploaded

    stopped = backup.stop(signal.SIGTERM)
    assert stopped.returncode == 130, stopped.stderr
    assert not s3.cli.freeze_dir(ulid).exists()
    status = status_of(s3)
    assert status["withdrawn"] == [{"id": f"{VAULT}/{PREFIX}/{ulid}", "vault": VAULT,
                                    "prefix": PREFIX, "ulid": ulid,
                                    "objects": len(uploaded)}]
    assert status["freeze"] == []
    assert status["abandoned"] == []
    text = s3.run("status").stdout.decode()
    assert (f"withdrawn {VAULT}/{PREFIX}/{ulid}: its writer removed it; the next freeze pass "
            f"removes the {len(uploaded)} object(s)") in text

    # The cron job's retry: same -t, other data, one fragment (fewer than were uploaded).
    retry_data = random.Random(42).randbytes(3 * MiB)
    assert s3.cli.backup(gpg_key, retry_data, "-t", WHEN, "-C", "none") == ulid
    manifest = fs.manifest_of(s3.cli, ulid)
    assert len(manifest["fragments"]) == 1
    result = s3.freeze()
    assert result.returncode == 0, result.stderr
    assert "not overwritten" not in result.stderr
    # chunk.1 replaced, the rest of the stopped attempt's fragments removed.
    assert f"replaced {PREFIX}/{ulid}/chunk.1, left by an earlier attempt" in result.stderr
    assert f"removed {', '.join(sorted(set(uploaded) - {'chunk.1'}))} left in the vault by an " \
        "earlier attempt" in result.stderr
    fs.assert_vault_holds(s3, ulid, manifest)
    fs.assert_queue_empty(s3.cli)
    assert not upload_record(s3.cli, ulid).exists()
    assert status_of(s3)["withdrawn"] == []

    restored = restore(s3, gpg_key, "-t", WHEN)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == retry_data


def test_the_next_freeze_pass_removes_what_it_uploaded_of_a_withdrawn_backup(
        s3: fs.S3Freeze, start_backup: Any) -> None:
    backup = start_backup(s3.cli, "-t", WHEN)
    two_fragments_uploaded(backup, s3.freeze, seed=43)
    ulid = backup.ulid
    uploaded = s3.listing(ulid)
    assert len(uploaded) >= 2
    assert upload_record(s3.cli, ulid).exists()
    assert backup.stop(signal.SIGTERM).returncode == 130

    result = s3.freeze()
    assert result.returncode == 0, result.stderr
    assert f"backup {VAULT}/{PREFIX}/{ulid} was withdrawn by its writer; removed" in (
        result.stderr)
    assert s3.listing(ulid) == {}
    assert s3.all_keys() == []
    assert not upload_record(s3.cli, ulid).exists()
    assert status_of(s3)["withdrawn"] == []
    # Nothing left to do: the next pass touches nothing.
    again = s3.freeze()
    assert again.returncode == 0, again.stderr
    assert "withdrawn" not in again.stderr


def test_a_second_host_with_the_same_id_gets_a_permanent_error_and_the_first_stays_intact(
        s3: fs.S3Freeze, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    """Two hosts, one prefix, the same -t: host B's spool holds only the certificate."""
    a_data = random.Random(51).randbytes(12 * MiB)
    a_ulid = s3.cli.backup(gpg_key, a_data, "-t", WHEN, "-C", "none")
    a_manifest = fs.manifest_of(s3.cli, a_ulid)
    assert s3.freeze().returncode == 0
    a_objects = {name: (entry["ETag"], entry["Size"], entry["LastModified"])
                 for name, entry in s3.listing(a_ulid).items()}
    fs.assert_vault_holds(s3, a_ulid, a_manifest)

    (tmp_path / "spool-b").mkdir()
    (tmp_path / "home-b").mkdir()
    host_b = fs.S3Freeze(Cli(tmp_path / "spool-b", tmp_path / "home-b", config=s3.config),
                         s3.bucket, s3.config, s3.env)
    # More data than host A's: B has a fragment that A's backup does not.
    b_ulid = host_b.cli.backup(gpg_key, random.Random(52).randbytes(17 * MiB), "-t", WHEN,
                               "-C", "none")
    assert b_ulid == a_ulid
    b_queued = fs.queued_files(host_b.cli, b_ulid)
    assert len(b_queued) > len(a_objects)

    result = host_b.freeze()
    assert result.returncode == 73, result.stderr
    backup_id = f"{VAULT}/{PREFIX}/{a_ulid}"
    assert f"under backup {backup_id}, which this spool did not upload" in result.stderr
    # It names host A's objects (all of them, and only them: nothing of B's went up).
    assert f"already holds {', '.join(sorted(a_objects))} under backup" in result.stderr
    assert "same -p and -t" in result.stderr
    assert "Nothing was overwritten" in result.stderr
    # A's backup is complete (its manifest is there): not a leftover to prune.
    assert "another host's complete backup has the same id" in result.stderr
    assert "must not be removed" in result.stderr
    assert "prune" not in result.stderr
    assert "another -t/-u" in result.stderr
    # Host A's backup: the same objects, and it restores to A's bytes.
    assert {name: (entry["ETag"], entry["Size"], entry["LastModified"])
            for name, entry in s3.listing(a_ulid).items()} == a_objects
    fs.assert_vault_holds(s3, a_ulid, a_manifest)
    assert fs.queued_files(host_b.cli, b_ulid) == b_queued
    # Refused again, the same way, on the next pass: nothing was half-done.
    assert host_b.freeze().returncode == 73
    assert fs.queued_files(host_b.cli, b_ulid) == b_queued
    restored = restore(s3, gpg_key, "-t", WHEN)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == a_data


# -- prune --abandoned and --incomplete ----------------------------------------------------


def test_prune_abandoned_removes_what_this_spool_uploaded_and_leaves_another_hosts_object(
        s3: fs.S3Freeze, start_backup: Any) -> None:
    backup = start_backup(s3.cli)
    two_fragments_uploaded(backup, s3.freeze, seed=61)
    ulid = backup.ulid
    uploaded = sorted(s3.listing(ulid))
    # One more fragment that stays in the spool, then the writer dies.
    backup.feed(random.Random(62).randbytes(6 * MiB))
    wait_until(backup.queued, "a fragment not uploaded yet", interval=0.05)
    assert backup.stop(signal.SIGKILL).returncode == -signal.SIGKILL
    foreign = f"{PREFIX}/{ulid}/chunk.9"
    s3.client.put_object(Bucket=s3.bucket.name, Key=foreign, Body=b"another host's")
    backup_id = f"{VAULT}/{PREFIX}/{ulid}"
    assert status_of(s3)["abandoned"] == [backup_id]

    result = s3.run("prune", "-v", VAULT, "--abandoned", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    [entry] = document["abandoned"]
    assert (entry["id"], entry["action"]) == (backup_id, "removed")
    assert entry["vault_objects"] == len(uploaded)
    assert entry["foreign_objects"] == 1
    assert entry["spool_fragments"] >= 1
    assert sorted(s3.listing(ulid)) == ["chunk.9"]
    body = s3.client.get_object(Bucket=s3.bucket.name, Key=foreign)["Body"].read()
    assert body == b"another host's"
    assert ulid not in json.dumps(snapshot(s3.cli.spool))
    assert not upload_record(s3.cli, ulid).exists()
    status = status_of(s3)
    assert status["abandoned"] == []
    assert status["withdrawn"] == []


def test_prune_incomplete_needs_a_valid_older_than(cli: Cli) -> None:
    missing = cli.run(["prune", "-v", VAULT, "--incomplete"])
    assert missing.returncode == 64, missing.stderr
    assert "--incomplete needs --older-than" in missing.stderr
    bad = cli.run(["prune", "-v", VAULT, "--incomplete", "--older-than", "7x"])
    assert bad.returncode == 64, bad.stderr
    assert "invalid duration '7x'" in bad.stderr


def test_prune_incomplete_leaves_objects_younger_than_older_than(s3: fs.S3Freeze) -> None:
    """What a host that lost its spool mid-backup left: fragments, no manifest."""
    ulid = str(ulid_for_timestamp(datetime(2026, 11, 30, 19, tzinfo=UTC)))
    keys = [f"{PREFIX}/{ulid}/chunk.{index}" for index in (1, 2)]
    for key in keys:
        s3.client.put_object(Bucket=s3.bucket.name, Key=key, Body=os.urandom(1000))
    result = s3.run("prune", "-v", VAULT, "--incomplete", "--older-than", "1h", "--json")
    assert result.returncode == 0, result.stderr
    [entry] = json.loads(result.stdout)["incomplete"]
    assert (entry["id"], entry["objects"], entry["action"]) == (
        f"{VAULT}/{PREFIX}/{ulid}", 2, "keep")
    assert "an upload may still be running" in entry["reason"]
    assert sorted(s3.all_keys()) == keys


def test_prune_incomplete_removes_old_unclaimed_objects_and_leaves_this_spools_own(
        cli: Cli, tmp_path: Path, start_backup: Any) -> None:
    vault_dir = tmp_path / "backup-disk"
    cli.config = write_dir_config(tmp_path / "dir.toml", VAULT, vault_dir)
    # A host that lost its spool mid-backup: fragments uploaded, then the host and
    # its spool gone.
    (tmp_path / "lost-spool").mkdir()
    (tmp_path / "lost-home").mkdir()
    lost = Cli(tmp_path / "lost-spool", tmp_path / "lost-home", config=cli.config)
    lost_backup = start_backup(lost, "-t", "2026-11-01T19:00:00Z")
    two_fragments_uploaded(lost_backup, lambda: lost.run(["freeze", "--once", "-c",
                                                          cli.config]), seed=71)
    lost_ulid = lost_backup.ulid
    assert lost_backup.stop(signal.SIGKILL).returncode == -signal.SIGKILL
    shutil.rmtree(lost.spool)
    # This spool's own abandoned backup: it is prune --abandoned's business.
    own_backup = start_backup(cli, "-t", "2026-11-02T19:00:00Z")
    two_fragments_uploaded(own_backup, lambda: cli.run(["freeze", "--once", "-c", cli.config]),
                           seed=72)
    own_ulid = own_backup.ulid
    assert own_backup.stop(signal.SIGKILL).returncode == -signal.SIGKILL
    lost_files = files_below(vault_dir / PREFIX / lost_ulid)
    own_files = files_below(vault_dir / PREFIX / own_ulid)
    assert len(lost_files) >= 2
    assert len(own_files) >= 2
    assert "chunk.0" not in lost_files + own_files

    young = cli.run(["prune", "-v", VAULT, "--incomplete", "--older-than", "1d", "-c",
                     cli.config])
    assert young.returncode == 0, young.stderr
    assert (f"{VAULT}/{PREFIX}/{lost_ulid}: left alone: its newest object was stored"
            in young.stdout.decode())
    assert "an upload may still be running" in young.stdout.decode()
    # Two days later.
    past = time.time() - TWO_DAYS
    for path in live_files(vault_dir / PREFIX):
        os.utime(path, (past, past))
    before = snapshot(vault_dir)

    dry = cli.run(["prune", "-v", VAULT, "--incomplete", "--older-than", "1d", "--dry-run",
                   "-c", cli.config])
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout.decode()
    assert (f"{VAULT}/{PREFIX}/{lost_ulid}: would remove {len(lost_files)} object(s) without "
            "a manifest") in out
    assert f"{VAULT}/{PREFIX}/{own_ulid}: left alone: this spool is still working on it" in out
    assert "would remove 1 incomplete backup(s) (dry run: nothing deleted); left 1" in out
    assert snapshot(vault_dir) == before

    real = cli.run(["prune", "-v", VAULT, "--incomplete", "--older-than", "1d", "--json",
                    "-c", cli.config])
    assert real.returncode == 0, real.stderr
    entries = {entry["ulid"]: entry for entry in json.loads(real.stdout)["incomplete"]}
    assert entries[lost_ulid]["action"] == "removed"
    assert entries[own_ulid]["action"] == "keep"
    assert "prune --abandoned" in entries[own_ulid]["reason"]
    assert files_below(vault_dir / PREFIX / lost_ulid) == []
    assert files_below(vault_dir / PREFIX / own_ulid) == own_files
    # And prune --abandoned does take this spool's own.
    gone = cli.run(["prune", "-v", VAULT, "--abandoned", "--json", "-c", cli.config])
    assert gone.returncode == 0, gone.stderr
    assert files_below(vault_dir / PREFIX) == []


# -- status: the error that stops a backup, and the daemons --------------------------------


def test_status_shows_the_upload_error_since_when_and_the_running_freeze_daemon(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair) -> None:
    missing_bucket = f"missing-{os.urandom(6).hex()}"
    s3 = fs.make_s3(cli, s3_bucket, tmp_path, bucket_name=missing_bucket)
    ulid = cli.backup(gpg_key, b"tonight's dump")
    status = status_of(s3)
    assert status["daemons"] == {"freeze": None, "thaw": None}
    assert [entry["error"] for entry in status["freeze"]] == [None]

    result = s3.freeze(timeout=120)
    assert result.returncode == 69, result.stderr
    problem = f"bucket {missing_bucket!r} does not exist"
    assert problem in result.stderr
    [entry] = status_of(s3)["freeze"]
    assert entry["ulid"] == ulid
    assert problem in entry["error"]
    assert re.search(r"\(since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)$", entry["error"]), entry
    text = s3.run("status").stdout.decode()
    assert "freeze daemon: not running" in text
    [line] = [line for line in text.splitlines() if ulid in line]
    assert "; error: " in line
    assert problem in line
    assert "(since " in line

    log = tmp_path / "freeze-daemon.log"
    with log.open("wb") as stderr:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "cryophile", "freeze", "-c", str(s3.config)],
            env=cli.environment(s3.env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=stderr)
    try:
        wait_until(lambda: "freeze daemon started" in log.read_text(), "the daemon's start",
                   interval=0.05)
        wait_until(lambda: status_of(s3)["daemons"]["freeze"] == daemon.pid,
                   "status to show the daemon", interval=0.05)
        assert status_of(s3)["daemons"] == {"freeze": daemon.pid, "thaw": None}
        assert f"freeze daemon: running (pid {daemon.pid})" in s3.run("status").stdout.decode()
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
    assert daemon.returncode == 0, log.read_text()
    assert status_of(s3)["daemons"] == {"freeze": None, "thaw": None}

"""Restores and daemons that never lie, hang or spin: issue 12, through the real CLI.

Each test runs the real ``cryophile`` in subprocesses (the ``cli`` fixture) against a
directory vault or the session's SeaweedFS (``test_freeze_s3.make_s3``), with real gpg
keys, and asserts what a user sees: exit codes, the key words of messages, what the
spool and the vault hold, the restored bytes, and a daemon's CPU time.

- point 6: a spool root or queue directory that is group/world-writable is refused
  (exit 74) by ``restore``, ``backup`` and ``list``, one owned by another uid (as root)
  by ``restore`` and ``backup`` (``list`` only reads: it checks modes, not owners),
  naming the directory and the ``chmod``/``chown`` that fixes it; nothing is written;
- point 8 and "a missing fragment in a directory vault takes 180 s": a missing fragment
  fails the restore in seconds, naming it; once it is back, a plain rerun restores
  (the failed request is retried, nobody cleans ``SPOOL/thaw`` by hand);
- point 9: a freeze daemon facing a missing bucket, a thaw daemon whose request failed
  for good and one whose vault is unreachable use < 1 s of CPU over 30 s, stay alive
  and back off (errors logged a handful of times, not thousands); the failed request is
  served again once its fragment is back;
- point 10: SIGTERM stops the freeze daemon after the one upload in flight (``-j 1``,
  uploads paced by ``max_bandwidth``); what was not uploaded stays queued, intact, and
  a later ``freeze --once`` sends it;
- point 12: a second restore of the same backup exits 75 at once naming the first's
  pid; without a thaw daemon ``restore`` thaws in-process and says so;
  ``--no-thaw --timeout 0`` files the request and exits 75; a hanging
  ``CRYOPHILE_ASKPASS`` is bounded by ``--timeout``;
- "the manifest's 64 MiB limit is checked after downloading": ``list`` and ``restore``
  report a 65 MiB ``chunk.0`` as damaged, naming its size, and never GET it (the fault
  proxy's log);
- "kill -9 of restore -o leaves a plaintext .part": the leftover of a dead restore is
  removed and said; one of a live process is left alone;
- "the thaw daemon logs an error when a restore closes its request": restores served by
  a thaw daemon leave no error in its log or its metrics.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

import oracles
from e2e import test_freeze_s3 as fs
from faultproxy import FaultProxy
from polling import wait_until
from s3server import S3Bucket
from support.cli import VAULT, Cli
from support.files import prepare_spool, snapshot

PREFIX = "hosts/db1"
MiB = 1 << 20
#: A ULID no backup of these tests has: for commands that must fail before looking.
SOME_ULID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


# -- helpers ---------------------------------------------------------------------------


def vault_dir(cli: Cli) -> Path:
    """The embedded directory vault of ``VAULT`` beside the spool."""
    return cli.spool.parent / f"{cli.spool.name}-vaults" / VAULT


def restore_args(ulid: str, key: oracles.KeyPair, *extra: str | os.PathLike[str],
                 ) -> list[str | os.PathLike[str]]:
    return ["restore", "-v", VAULT, "-p", PREFIX, "-u", ulid, "-k", key.secret, *extra]


def new_cli(tmp_path: Path, name: str) -> Cli:
    """Another spool and home in this test (a second host, or a second daemon)."""
    spool, home = tmp_path / name / "spool", tmp_path / name / "home"
    spool.mkdir(parents=True)
    home.mkdir()
    return Cli(spool, home)


def frozen_backup(cli: Cli, key: oracles.KeyPair, data: bytes, *extra: str,
                  size: str = "5M") -> str:
    """Back ``data`` up and freeze it to the embedded directory vault; its ULID."""
    ulid = cli.backup(key, data, "-C", "none", *extra, size=size)
    frozen = cli.run(["freeze", "--once"])
    assert frozen.returncode == 0, frozen.stderr
    assert not cli.freeze_dir(ulid).exists()
    return ulid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After "pid (comm)": state is field 3 of stat(5), utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pid_alive(pid: int) -> bool:
    """The process runs: it exists and is not a zombie (dead, not reaped yet: an orphan
    waits for whatever reaps orphans in this container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Daemon:
    """A cryophile process in the background, its stderr (JSON log lines) in a file."""

    def __init__(self, cli: Cli, args: Sequence[str | os.PathLike[str]], log: Path, *,
                 env: Mapping[str, str] | None = None) -> None:
        self.log = log
        self._stderr: IO[bytes] = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cryophile", *map(str, args)], env=cli.environment(env),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr)

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The complete JSON log lines so far."""
        events = []
        for line in self.text().splitlines(keepends=True):
            if line.startswith("{") and line.endswith("\n"):
                events.append(json.loads(line))
        return events

    def count(self, event: str) -> int:
        return sum(1 for entry in self.events() if entry.get("event") == event)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait (at most ``timeout`` s) for it to exit; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """Make sure it is gone (teardown)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._stderr.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts; any still running at the end is killed (by its pid)."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


def start(daemons: list[Daemon], cli: Cli, args: Sequence[str | os.PathLike[str]], log: Path,
          *, env: Mapping[str, str] | None = None) -> Daemon:
    daemon = Daemon(cli, args, log, env=env)
    daemons.append(daemon)
    return daemon


def thawed(daemon: Daemon, ulid: str) -> bool:
    """Whether ``daemon`` logged the end of its work on backup ``ulid``."""
    return any(entry.get("event") == "thawed" and ulid in entry.get("backup", "")
               for entry in daemon.events())


def thaw_states(cli: Cli) -> list[dict[str, Any]]:
    """Every thaw request's state.json in the spool."""
    return [json.loads(path.read_text()) for path in (cli.spool / "thaw").rglob("state.json")]


# -- point 6: a spool that is not ours ---------------------------------------------------

#: As root the tests can also hand a directory to another uid; as anyone else they cannot.
FAULTS = ["chmod-0777", "chmod-0770"] + (["chown"] if os.geteuid() == 0 else [])


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("where", ["root", "queue"])
def test_a_spool_others_can_write_or_own_is_refused(cli: Cli, gpg_key: oracles.KeyPair,
                                                    where: str, fault: str) -> None:
    prepare_spool(cli.spool)
    directory = cli.spool if where == "root" else cli.spool / "restore"
    if fault == "chown":
        os.chown(directory, 65534, 65534)
        fix = f"chown {os.geteuid()} {directory}"
        said = "owned by uid 65534"
    else:
        directory.chmod(int(fault.removeprefix("chmod-"), 8))
        fix = f"chmod go-w {directory}"
        said = "writable by others"
    before = snapshot(cli.spool)
    commands: dict[str, tuple[list[str | os.PathLike[str]], bytes]] = {
        "restore": (restore_args(SOME_ULID, gpg_key), b""),
        "backup": (["backup", "-v", VAULT, "-p", PREFIX, "-k", gpg_key.cert], b"secret data"),
    }
    if fault != "chown":
        # list and status only read: another user's (root's daemon's) spool may be looked at,
        # but never one that anybody can write to.
        commands["list"] = (["list", "-v", VAULT], b"")
    for name, (args, stdin) in commands.items():
        result = cli.run(args, stdin=stdin)
        assert result.returncode == 74, (name, result.stderr)
        assert str(directory) in result.stderr, name
        assert said in result.stderr, name
        assert fix in result.stderr, name
        assert snapshot(cli.spool) == before, name
    assert not vault_dir(cli).parent.exists()  # no vault was even opened


# -- point 8: a missing fragment, reported in seconds, and the rerun that works ----------------


def test_missing_fragment_fails_in_seconds_and_the_rerun_restores_once_it_is_back(
        cli: Cli, gpg_key: oracles.KeyPair) -> None:
    data = random.Random(8).randbytes(12 * MiB)
    ulid = frozen_backup(cli, gpg_key, data)
    fragment = vault_dir(cli) / PREFIX / ulid / "chunk.2"
    aside = cli.home / "chunk.2"
    fragment.rename(aside)

    started = time.monotonic()
    failed = cli.run(restore_args(ulid, gpg_key), timeout=120)
    elapsed = time.monotonic() - started
    assert failed.returncode == 65, failed.stderr
    assert "thawing in this process" in failed.stderr
    assert re.search(r"fragment 2 \(\S+/chunk\.2\) is missing from vault", failed.stderr), \
        failed.stderr
    # The old behaviour waited for the 180 s default --poll; retries now take seconds.
    assert elapsed < 60, elapsed
    assert [state["status"] for state in thaw_states(cli)] == ["failed"]

    aside.rename(fragment)
    again = cli.run(restore_args(ulid, gpg_key), timeout=120)
    assert again.returncode == 0, again.stderr
    assert "retrying the thaw request" in again.stderr
    assert again.stdout == data
    assert not (cli.spool / "thaw" / VAULT).exists()
    assert not (cli.spool / "restore" / VAULT).exists()


# -- point 9: daemons never spin ----------------------------------------------------------

#: How long the daemons are watched, and the CPU they may use meanwhile.
OUTAGE_SECONDS = 30.0
MAX_CPU_SECONDS = 1.0


def test_daemons_in_an_outage_back_off_without_spinning_or_dying(
        cli: Cli, gpg_key: oracles.KeyPair, s3_bucket: S3Bucket, tmp_path: Path,
        daemons: list[Daemon]) -> None:
    data = random.Random(9).randbytes(7 * MiB)

    # A freeze daemon whose vault's bucket does not exist, with a backup queued.
    missing = fs.make_s3(cli, s3_bucket, tmp_path, bucket_name=f"{s3_bucket.name}-missing")
    cli.backup(gpg_key, data, "-C", "none")
    freezer = start(daemons, cli, ["freeze", "--json", "-c", missing.config],
                    tmp_path / "freeze.log", env=missing.env)

    # A thaw daemon serving a request that fails for good: a fragment missing from the
    # directory vault (the request ends failed, and stays so).
    lacking = new_cli(tmp_path, "lacking")
    ulid = frozen_backup(lacking, gpg_key, data)
    fragment = vault_dir(lacking) / PREFIX / ulid / "chunk.1"
    aside = lacking.home / "chunk.1"
    fragment.rename(aside)
    filed = lacking.run(restore_args(ulid, gpg_key, "--no-thaw", "--timeout", "0"))
    assert filed.returncode == 75, filed.stderr
    failing = start(daemons, lacking, ["thaw", "--json"], tmp_path / "thaw-failing.log")

    # A thaw daemon whose vault is unreachable: the endpoint is a port nobody listens on
    # (bound here, never listening, so connections are refused for the whole test), and
    # one try per request, so that only the daemon's own back-off spaces its attempts.
    offline = new_cli(tmp_path, "offline")
    reachable = fs.make_s3(offline, s3_bucket, tmp_path)
    offline_ulid = offline.backup(gpg_key, data, "-C", "none")
    assert reachable.freeze().returncode == 0
    filed = reachable.run(*restore_args(offline_ulid, gpg_key, "--no-thaw", "--timeout", "0"))
    assert filed.returncode == 75, filed.stderr
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down = fs.make_s3(offline, s3_bucket, tmp_path,
                          endpoint_url=f"http://127.0.0.1:{closed.getsockname()[1]}")
        with down.config.open("a") as config:
            config.write("max_attempts = 1\n")
        unreachable = start(daemons, offline, ["thaw", "--json", "-c", down.config],
                            tmp_path / "thaw-offline.log", env=down.env)

        # Measured once each is past its start-up (imports cost CPU) and has met its outage.
        wait_until(lambda: freezer.count("error") >= 1, "the freeze daemon's first error")
        wait_until(lambda: "missing from vault" in failing.text(),
                   "the thaw daemon to find the fragment missing")
        wait_until(lambda: unreachable.count("error") >= 1, "the offline thaw daemon's "
                   "first error")
        watched = [freezer, failing, unreachable]
        before = [cpu_seconds(daemon.pid) for daemon in watched]
        time.sleep(OUTAGE_SECONDS)
        used = [cpu_seconds(daemon.pid) - earlier
                for daemon, earlier in zip(watched, before, strict=True)]
        alive = [daemon.process.poll() is None for daemon in watched]

    assert alive == [True, True, True], [daemon.text()[-2000:] for daemon in watched]
    assert max(used) < MAX_CPU_SECONDS, used
    # Back-off of 5 s, doubling: a handful of attempts in the window, not thousands.
    assert 1 <= freezer.count("error") <= 5, freezer.count("error")
    [first_error] = [entry for entry in freezer.events() if entry.get("event") == "error"][:1]
    assert f"bucket '{s3_bucket.name}-missing' does not exist" in first_error["message"]
    assert 1 <= unreachable.count("error") <= 5, unreachable.count("error")
    assert [state["status"] for state in thaw_states(lacking)] == ["failed"]
    assert "OverflowError" not in "".join(daemon.text() for daemon in watched)

    # Still serving: once the fragment is back, a restore retries the failed request and
    # the daemon (which only looks at a failed request every few seconds) serves it.
    aside.rename(fragment)
    started = time.monotonic()
    retried = lacking.run(restore_args(ulid, gpg_key, "--no-thaw", "--timeout", "60"),
                          timeout=120)
    assert retried.returncode == 0, retried.stderr
    assert "retrying the thaw request" in retried.stderr
    assert retried.stdout == data
    assert time.monotonic() - started < 30
    for daemon in watched:
        assert daemon.stop() == 0, daemon.text()[-2000:]


# -- point 10: SIGTERM stops after the uploads in flight ------------------------------------


def test_sigterm_stops_the_freeze_daemon_after_the_upload_in_flight(
        cli: Cli, gpg_key: oracles.KeyPair, s3_bucket: S3Bucket, tmp_path: Path,
        daemons: list[Daemon]) -> None:
    # 2 MiB/s: each 5 MiB fragment waits 2.5 s for its turn, so uploads take seconds.
    slow = fs.make_s3(cli, s3_bucket, tmp_path, max_bandwidth="2M")
    manifests: dict[str, dict[str, Any]] = {}
    for seed in range(3):
        ulid = cli.backup(gpg_key, random.Random(seed).randbytes(11 * MiB), "-C", "none")
        manifests[ulid] = fs.manifest_of(cli, ulid)
        assert len(manifests[ulid]["fragments"]) == 3
    queued = {ulid: fs.queued_files(cli, ulid) for ulid in manifests}

    freezer = start(daemons, cli, ["freeze", "--json", "-j", "1", "-c", slow.config],
                    tmp_path / "freeze.log", env=slow.env)
    wait_until(lambda: freezer.count("uploaded") >= 1, "the first upload")
    uploaded_before = freezer.count("uploaded")
    freezer.process.send_signal(signal.SIGTERM)
    assert freezer.process.wait(timeout=60) == 0, freezer.text()[-2000:]
    assert "stopping after the transfers in flight" in freezer.text()
    uploaded = [entry["key"] for entry in freezer.events() if entry.get("event") == "uploaded"]
    # -j 1: at most the one upload in flight finishes after the signal.
    assert len(uploaded) - uploaded_before <= 1, uploaded

    in_vault = set(slow.all_keys())
    assert in_vault == set(uploaded)
    still_queued = 0
    for ulid, files in queued.items():
        # What was not uploaded is still queued, byte for byte as backup left it.
        left = fs.queued_files(cli, ulid)
        assert left.items() <= files.items(), ulid
        local = {f"{PREFIX}/{ulid}/{name}" for name in left}
        assert local | (in_vault & {f"{PREFIX}/{ulid}/{name}" for name in files}) == {
            f"{PREFIX}/{ulid}/{name}" for name in files}, ulid
        assert not local & in_vault, ulid
        still_queued += len(left)
    assert still_queued == sum(len(files) for files in queued.values()) - len(uploaded)

    fast = fs.make_s3(cli, s3_bucket, tmp_path)  # the same bucket, no bandwidth cap
    finished = fast.freeze()
    assert finished.returncode == 0, finished.stderr
    for ulid, manifest in manifests.items():
        assert not cli.freeze_dir(ulid).exists()
        stored = fast.listing(ulid)
        assert set(stored) == {f"chunk.{i}" for i in range(4)}
        for entry in manifest["fragments"]:
            key = f"{PREFIX}/{ulid}/chunk.{entry['index']}"
            assert fast.download_sha256(key) == (entry["size"], entry["sha256"]), key


# -- point 12: one restore at a time, thaw in-process, bounded waits ----------------------


@pytest.fixture
def small_data() -> bytes:
    return random.Random(12).randbytes(6 * MiB)


def test_a_second_restore_of_the_same_backup_exits_75_at_once_naming_the_first(
        cli: Cli, gpg_key: oracles.KeyPair, small_data: bytes, tmp_path: Path,
        daemons: list[Daemon]) -> None:
    ulid = frozen_backup(cli, gpg_key, small_data)
    first = start(daemons, cli, restore_args(ulid, gpg_key, "--no-thaw", "--timeout", "120"),
                  tmp_path / "first.log")
    locks = cli.spool / "run" / "restore"
    wait_until(lambda: thaw_states(cli) and any(
        path.read_text().strip() == str(first.pid) for path in locks.glob("*.lock")),
        "the first restore to file its request and hold the lock")

    started = time.monotonic()
    second = cli.run(restore_args(ulid, gpg_key), timeout=120)
    assert time.monotonic() - started < 30
    assert second.returncode == 75, second.stderr
    assert "another restore of" in second.stderr
    assert f"(pid {first.pid})" in second.stderr
    assert second.stdout == b""
    assert first.process.poll() is None  # the first one was not disturbed

    assert first.stop() == 130, first.text()
    assert not list(locks.glob("*.lock")) if locks.exists() else True
    # The lock went with the first: the request it filed is served now, in-process.
    after = cli.run(restore_args(ulid, gpg_key), timeout=120)
    assert after.returncode == 0, after.stderr
    assert after.stdout == small_data


def test_restore_without_a_thaw_daemon_thaws_in_process_and_says_so(
        cli: Cli, gpg_key: oracles.KeyPair, small_data: bytes) -> None:
    ulid = frozen_backup(cli, gpg_key, small_data)
    result = cli.run(restore_args(ulid, gpg_key), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no thaw daemon is running on this spool: thawing in this process" in result.stderr
    assert result.stdout == small_data
    assert not (cli.spool / "thaw" / VAULT).exists()
    assert not (cli.spool / "restore" / VAULT).exists()


def test_restore_no_thaw_timeout_0_files_the_request_and_exits_75(
        cli: Cli, gpg_key: oracles.KeyPair, small_data: bytes) -> None:
    ulid = frozen_backup(cli, gpg_key, small_data)
    started = time.monotonic()
    filed = cli.run(restore_args(ulid, gpg_key, "--no-thaw", "--timeout", "0"), timeout=120)
    assert time.monotonic() - started < 30
    assert filed.returncode == 75, filed.stderr
    assert filed.stdout == b""
    assert "thawing in this process" not in filed.stderr
    states = thaw_states(cli)
    assert [(state["status"], state["tier"]) for state in states] == [("active", "Bulk")]
    # The request is real: a thaw pass serves it and the restore then finds it all local.
    served = cli.run(["thaw", "--once"])
    assert served.returncode == 0, served.stderr
    done = cli.run(restore_args(ulid, gpg_key, "--no-thaw"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == small_data


def test_a_hanging_askpass_is_bounded_by_the_timeout(
        cli: Cli, gpg_key_protected: oracles.KeyPair, small_data: bytes,
        tmp_path: Path) -> None:
    ulid = frozen_backup(cli, gpg_key_protected, small_data)
    pid_file = tmp_path / "askpass.pid"
    askpass = tmp_path / "askpass"
    # exec: the shell becomes the sleep, so the process cryophile starts is the one hanging.
    askpass.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 1000\n")
    askpass.chmod(0o700)
    output = tmp_path / "out" / "restored.bin"
    output.parent.mkdir()
    started = time.monotonic()
    result = cli.run(restore_args(ulid, gpg_key_protected, "--timeout", "3", "-o", output),
                     env={"CRYOPHILE_ASKPASS": str(askpass)}, timeout=120)
    assert time.monotonic() - started < 60
    assert result.returncode == 77, result.stderr
    assert "CRYOPHILE_ASKPASS" in result.stderr
    assert "gave no passphrase within 3 s" in result.stderr
    assert list(output.parent.iterdir()) == []  # no output, no .part
    assert not pid_alive(int(pid_file.read_text()))  # the askpass program was stopped
    assert not (cli.spool / "thaw" / VAULT).exists()  # nothing filed before the key


def test_a_hanging_askpass_whose_child_holds_the_pipe_is_stopped_with_its_children(
        cli: Cli, gpg_key_protected: oracles.KeyPair, small_data: bytes,
        tmp_path: Path) -> None:
    ulid = frozen_backup(cli, gpg_key_protected, small_data)
    pid_file = tmp_path / "child.pid"
    askpass = tmp_path / "askpass"
    # No exec: the shell waits on a child that inherited its stdout, so killing the
    # shell alone would leave the pipe open and the restore reading it forever.
    askpass.write_text(f"#!/bin/sh\nsleep 1000 &\necho $! > {pid_file}\nwait\n")
    askpass.chmod(0o700)
    result = cli.run(restore_args(ulid, gpg_key_protected, "--timeout", "3", "--no-thaw"),
                     env={"CRYOPHILE_ASKPASS": str(askpass)}, timeout=120)
    assert result.returncode == 77, result.stderr
    assert "gave no passphrase within 3 s" in result.stderr
    assert not pid_alive(int(pid_file.read_text()))  # the askpass's child went too


# -- the manifest's 64 MiB limit is checked before downloading ------------------------------


def test_an_oversized_manifest_is_reported_by_its_size_and_never_downloaded(
        cli: Cli, gpg_key: oracles.KeyPair, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    size = 65 * MiB
    with FaultProxy(fs.s3_port(s3_bucket)) as proxy:
        s3 = fs.make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url)
        key = f"{PREFIX}/{SOME_ULID}/chunk.0"
        s3.client.put_object(Bucket=s3_bucket.name, Key=key, Body=bytes(size))

        listed = s3.run("list", "-v", VAULT, "--json")
        assert listed.returncode == 0, listed.stderr
        [entry] = json.loads(listed.stdout)
        assert entry["state"] == "damaged"
        assert f"{size} bytes" in entry["error"]
        assert "more than any manifest" in entry["error"]

        restored = s3.run(*restore_args(SOME_ULID, gpg_key))
        assert restored.returncode == 65, restored.stderr
        assert f"{size} bytes" in restored.stderr
        assert restored.stdout == b""
        requests = [(verb, target) for _index, verb, target, _fault in list(proxy.log)
                    if re.search(r"/chunk\.0(\?|$)", target)]
    assert ("HEAD" in {verb for verb, _target in requests}), requests
    assert [target for verb, target in requests if verb == "GET"] == []


# -- kill -9 of restore -o leaves a plaintext .part ------------------------------------------


def test_restore_o_removes_the_part_file_of_a_dead_restore_and_keeps_a_live_ones(
        cli: Cli, gpg_key: oracles.KeyPair, small_data: bytes, tmp_path: Path) -> None:
    ulid = frozen_backup(cli, gpg_key, small_data)
    output = tmp_path / "restored.bin"
    # Process ids are below pid_max: one equal to it is never running.
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text())
    dead = tmp_path / f".restored.bin.cryophile-{dead_pid}.part"
    dead.write_bytes(b"plaintext of a killed restore")
    live = tmp_path / f".restored.bin.cryophile-{os.getpid()}.part"
    live.write_bytes(b"a restore still running")
    result = cli.run(restore_args(ulid, gpg_key, "-o", output), timeout=120)
    assert result.returncode == 0, result.stderr
    assert output.read_bytes() == small_data
    assert not dead.exists()
    assert f"removed {dead}" in result.stderr
    assert f"killed (pid {dead_pid})" in result.stderr
    assert live.read_bytes() == b"a restore still running"
    assert str(live) not in result.stderr


# -- the thaw daemon and a restore that closes its request ------------------------------------


def test_restores_served_by_a_thaw_daemon_leave_no_error_in_its_log_or_metrics(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path, daemons: list[Daemon]) -> None:
    backups = {}
    for seed in range(3):
        data = random.Random(100 + seed).randbytes(16 * MiB)
        backups[frozen_backup(cli, gpg_key, data)] = data
    fragments = sum(len(json.loads((vault_dir(cli) / PREFIX / ulid / "chunk.0").read_bytes())[
        "fragments"]) for ulid in backups)
    metrics = tmp_path / "metrics" / "cryophile.prom"
    metrics.parent.mkdir()
    thaw = start(daemons, cli, ["thaw", "--json", "--metrics", metrics], tmp_path / "thaw.log")
    wait_until(lambda: "thaw daemon started" in thaw.text(), "the thaw daemon")
    for ulid, data in backups.items():
        result = cli.run(restore_args(ulid, gpg_key, "--no-thaw", "--timeout", "120"),
                         timeout=180)
        assert result.returncode == 0, result.stderr
        assert "thawing in this process" not in result.stderr
        assert result.stdout == data
        # The daemon's pass over this request is over (completed, or closed by the restore).
        wait_until(functools.partial(thawed, thaw, ulid), f"the daemon to finish {ulid}")
    wait_until(metrics.exists, "the metrics file")
    assert thaw.stop() == 0, thaw.text()[-2000:]
    events = thaw.events()
    assert [entry for entry in events if entry.get("level") == "error"] == []
    assert sum(1 for entry in events if entry.get("event") == "downloaded") == fragments
    samples = metrics.read_text()
    assert 'cryophile_last_pass_timestamp_seconds{daemon="thaw"}' in samples
    errors = [float(line.rsplit(" ", 1)[1]) for line in samples.splitlines()
              if line.startswith('cryophile_errors_total{') and 'daemon="thaw"' in line]
    assert sum(errors) == 0, samples


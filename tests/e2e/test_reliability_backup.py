"""Reliability of ``cryophile backup`` (issue 6, faults 1 and 4).

1. SIGKILL at seeded random points of a real backup fed through a pipe: from
   start-up through every fragment to the manifest and the clean-up after it,
   sometimes while a second backup writes to the same spool. Whatever the
   instant, a consumer never sees a partial fragment, a backup without its
   manifest is never shown or uploaded as complete, what was published is a
   faithful prefix of the message (``gpg`` decrypts it to a prefix of the
   input), and the spool keeps working: a new backup, ``freeze --once`` and a
   byte-identical restore.
2. The spool's disk full: a file size limit (``ulimit -f``, with SIGXFSZ
   ignored or at its default), and where this machine can mount one a small
   tmpfs, out of blocks or out of inodes. The backup exits 74 with one line
   naming the problem, leaves nothing behind that anybody could take for a
   backup, and the same id works once there is room again.
3. Two writers of one prefix creating and removing the same queue
   directories at once (the spool's ``mkdir -p`` against the other's
   clean-up).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard
from ulid import ULID

import oracles
from cryophile.backup_id import BackupId
from cryophile.durable import remove_empty_dirs
from cryophile.spool import LOCK_NAME, Queue, Spool
from e2e.test_freeze_thaw_local import restore_args, vault_objects
from stress import pick
from support.cli import VAULT, Cli
from support.files import snapshot

PREFIX = "hosts/db1"
MiB = 1 << 20
FRAGMENT = 5 * MiB
FINAL_NAME = re.compile(r"chunk\.(0|[1-9][0-9]*)(\.sig)?")  # what consumers read
PART_NAME = re.compile(r"chunk\.(0|[1-9][0-9]*)(\.sig)?\.part")  # the writer's own files
Decrypt = Callable[[bytes], tuple[int, bytes]]


# -- a backup fed through a pipe -----------------------------------------------------------


def _feed(fd: int, data: bytes) -> None:
    """Write ``data`` into the pipe ``fd``; the reader may be killed at any moment."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view[:MiB]):]
    except BrokenPipeError:
        pass  # the backup died: what it did not read dies with it
    finally:
        os.close(fd)


@dataclass
class Writer:
    """A running ``cryophile backup -u ULID`` reading ``data`` from a pipe fed by a thread."""

    ulid: str
    process: subprocess.Popen[bytes]
    feeder: threading.Thread
    output: Path

    def finish(self, timeout: float = 120) -> tuple[int, bytes, str]:
        """Wait for the process; its exit status, stdout and stderr."""
        returncode = self.process.wait(timeout=timeout)
        self.feeder.join(timeout=timeout)
        assert not self.feeder.is_alive()
        stdout = (self.output / f"{self.ulid}.out").read_bytes()
        stderr = (self.output / f"{self.ulid}.err").read_text(errors="replace")
        return returncode, stdout, stderr


def start_backup(cli: Cli, key: oracles.KeyPair, data: bytes, output: Path, *extra: str,
                 ulid: str | None = None, size: int = FRAGMENT) -> Writer:
    """Start ``cryophile backup`` of ``data`` (through a pipe) into ``cli.spool``."""
    ulid = ulid or str(ULID())
    read_fd, write_fd = os.pipe()
    try:
        with (output / f"{ulid}.out").open("wb") as stdout, \
                (output / f"{ulid}.err").open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "cryophile", "backup", "-v", VAULT, "-p", PREFIX,
                 "-u", ulid, "-k", str(key.cert), "-s", str(size), "--json", *extra],
                stdin=read_fd, stdout=stdout, stderr=stderr, env=cli.environment())
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    feeder = threading.Thread(target=_feed, args=(write_fd, data), daemon=True)
    feeder.start()
    return Writer(ulid, process, feeder, output)


@contextlib.contextmanager
def reaped(*writers: Writer | None) -> Iterator[None]:
    """When the block fails, kill and reap whatever of ``writers`` still runs (a failed
    assertion must not leave backups running)."""
    try:
        yield
    except BaseException:
        for writer in writers:
            if writer is not None and writer.process.poll() is None:
                writer.process.kill()
                writer.process.wait(timeout=60)
        raise


def work_dir(cli: Cli, ulid: str) -> Path:
    """``SPOOL/backup/ID``: the writer's own directory."""
    return cli.spool / "backup" / VAULT / PREFIX / ulid


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


# -- kill points ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    """SIGKILL ``after`` seconds once ``event`` happened (``fragment``: which one), in a
    backup with fragments of ``size`` bytes.

    Events: ``start`` (the process was started), ``claimed`` (``backup/ID``
    exists), ``writing`` (``chunk.N.part`` exists: mid-fragment),
    ``published`` (``freeze/ID/chunk.N`` exists: publish time; the last one is
    just before the manifest), ``manifest`` (``chunk.0`` exists: the clean-up).
    """

    event: str
    fragment: int
    after: float
    size: int
    compression: str
    concurrent: bool


EVENTS = ("start", "claimed", "writing", "start", "published", "manifest")


def kill_points(rng: random.Random, count: int, run_seconds: float,
                stream_bytes: int) -> list[KillPoint]:
    """``count`` seeded points spread over a whole run of ``run_seconds``.

    The first kills before the interpreter even starts; then the events take
    turns (``start`` twice as often, with a delay anywhere in the run), with
    fragments of 5, 6 or 7 MiB, so that the cuts fall at other places of the
    compressor's and encryptor's blocks.
    """
    points = [KillPoint("start", 0, 0.0, FRAGMENT, "zstd", concurrent=False)]
    for number in range(1, count):
        event = EVENTS[number % len(EVENTS)]
        size = rng.choice([5, 6, 7]) * MiB
        fragment = rng.randint(1, stream_bytes // size + 1)
        after = {"start": rng.uniform(0.0, 1.1 * run_seconds), "claimed": rng.uniform(0, 0.05),
                 "writing": rng.uniform(0, 0.03)}.get(event, 0.0)
        points.append(KillPoint(event, fragment, after, size, rng.choice(["zstd", "none"]),
                                concurrent=number % 4 == 3))
    return points


def happened(cli: Cli, ulid: str, point: KillPoint) -> bool:
    queued = cli.freeze_dir(ulid)
    checks: dict[str, Callable[[], bool]] = {
        "start": lambda: True,
        "claimed": work_dir(cli, ulid).exists,
        "writing": (work_dir(cli, ulid) / f"chunk.{point.fragment}.part").exists,
        "published": (queued / f"chunk.{point.fragment}").exists,
        "manifest": (queued / "chunk.0").exists,
    }
    return checks[point.event]()


def kill_at(cli: Cli, writer: Writer, point: KillPoint) -> None:
    """Poll (every 0.5 ms) for the point's event, wait its delay, SIGKILL the writer.

    A writer that finished before the event is simply not killed.
    """
    deadline = time.monotonic() + 120
    while not happened(cli, writer.ulid, point):
        if writer.process.poll() is not None:
            return
        assert time.monotonic() < deadline, f"{point} never happened"
        time.sleep(0.0005)
    time.sleep(point.after)
    writer.process.send_signal(signal.SIGKILL)  # a no-op once it was reaped


# -- what a killed backup may leave ----------------------------------------------------------


@contextlib.contextmanager
def gpg_decryptor(key: oracles.KeyPair) -> Iterator[Decrypt]:
    """``gpg --decrypt`` of a message on stdin, the key imported once: (status, plaintext).

    gpg streams: for a truncated message it writes the plaintext before the
    cut, then fails (no MDC). That is the oracle for "published fragments are
    the start of the real message".
    """
    with oracles._gpg_home() as (home, env):
        oracles._run([*oracles._gpg(home), "--import", key.secret], env=env)

        def decrypt(message: bytes) -> tuple[int, bytes]:
            done = subprocess.run([*oracles._gpg(home), "--decrypt"], input=message,
                                  capture_output=True, env=env, timeout=120, check=False)
            return done.returncode, done.stdout

        yield decrypt


def decompress_prefix(compression: str, data: bytes) -> bytes:
    """As much of the stream as ``data`` (possibly cut anywhere) holds: zstd frame after
    frame (the compressor may write several)."""
    if compression == "none":
        return data
    pieces = []
    while data:
        frame = zstandard.ZstdDecompressor().decompressobj()
        pieces.append(frame.decompress(data))
        if not frame.eof:
            break
        data = frame.unused_data
    return b"".join(pieces)


def check_killed(cli: Cli, ulid: str, data: bytes, point: KillPoint, finished: bool,
                 decrypt: Decrypt) -> str:
    """Assert what the spool shows of a backup killed at any instant; name the stage it reached.

    Consumers read only final names (``chunk.N``): each is a complete
    fragment, in order, every one but the last exactly the fragment size, and
    together they decrypt to a prefix of the input. A manifest means the
    backup is complete and lists exactly what is there.
    """
    work, queued = work_dir(cli, ulid), cli.freeze_dir(ulid)
    queued_names, work_names = names(queued), names(work)
    assert all(FINAL_NAME.fullmatch(name) for name in queued_names), queued_names
    assert all(name == ".lock" or PART_NAME.fullmatch(name) for name in work_names), work_names
    fragments = {int(name.split(".")[1]): queued / name for name in queued_names
                 if FINAL_NAME.fullmatch(name) and not name.endswith(".sig")}
    manifest_path = fragments.pop(0, None)
    assert sorted(fragments) == list(range(1, len(fragments) + 1)), sorted(fragments)
    contents = [fragments[index].read_bytes() for index in sorted(fragments)]
    if manifest_path is not None:
        manifest = json.loads(manifest_path.read_bytes())
        assert [(entry["index"], entry["size"], entry["sha256"]) for entry in manifest["fragments"]
                ] == [(index, len(content), hashlib.sha256(content).hexdigest())
                      for index, content in enumerate(contents, start=1)]
        return "finished before the kill" if finished else "manifest published, killed after"
    assert not finished, "a backup that exited 0 left no manifest"
    assert all(len(content) == point.size for content in contents[:-1])
    if contents:
        status, plain = decrypt(b"".join(contents))
        plain = decompress_prefix(point.compression, plain)
        if len(contents[-1]) < point.size:  # the whole message was out: only the manifest missed
            assert status == 0
            assert plain == data
            return "all fragments, no manifest"
        assert status != 0  # a cut message never passes for a whole one
        assert len(contents[-1]) == point.size
        assert len(plain) >= len(contents) * point.size - MiB
        assert data.startswith(plain)
    if not work.exists() and not queued.exists():
        return "killed before the claim"
    if any(name.endswith(".part") for name in work_names):
        return "mid-fragment"
    return "between fragments" if contents else "claimed, nothing written"


def list_json(cli: Cli) -> dict[str, dict[str, Any]]:
    """ULID → ``cryophile list --json`` entry."""
    result = cli.run(["list", "--json", "-v", VAULT])
    assert result.returncode == 0, result.stderr
    return {entry["ulid"]: entry for entry in json.loads(result.stdout)}


def assert_frozen_whole(cli: Cli, ulid: str, manifest: dict[str, Any]) -> None:
    """The vault holds the manifest and every fragment it lists, with their SHA-256."""
    stored = vault_objects(cli, ulid)
    assert set(stored) == {f"chunk.{n}" for n in range(len(manifest["fragments"]) + 1)}
    for entry in manifest["fragments"]:
        assert stored[f"chunk.{entry['index']}"] == entry["sha256"]


# -- 1. SIGKILL at random points -----------------------------------------------------------------


@pytest.mark.stress
def test_backup_killed_at_random_points_never_shows_as_complete(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    rng = random.Random(6)
    data = rng.randbytes(40 * MiB)
    output = tmp_path / "output"
    output.mkdir()
    manifests: dict[str, dict[str, Any]] = {}  # every backup that completed
    expected_data: dict[str, bytes] = {}

    # A complete backup first: the spool is not empty, and it times a whole run.
    started = time.monotonic()
    first = start_backup(cli, gpg_key, data, output)
    status, _, stderr = first.finish()
    run_seconds = time.monotonic() - started
    assert status == 0, stderr
    manifests[first.ulid] = json.loads((cli.freeze_dir(first.ulid) / "chunk.0").read_bytes())
    assert len(manifests[first.ulid]["fragments"]) == 9  # 8 of 5 MiB and the short rest

    stages: collections.Counter[str] = collections.Counter()
    incomplete: list[str] = []
    with gpg_decryptor(gpg_key) as decrypt:
        for point in kill_points(rng, pick(20, 200), run_seconds, len(data)):
            other = None
            if point.concurrent:  # another backup of the same prefix, to the same spool
                expected = rng.randbytes(3 * MiB)
                other = start_backup(cli, gpg_key, expected, output, "-C", "none")
                expected_data[other.ulid] = expected
            writer = start_backup(cli, gpg_key, data, output, "-C", point.compression,
                                  size=point.size)
            with reaped(writer, other):
                kill_at(cli, writer, point)
                status, stdout, stderr = writer.finish()
                assert status in (0, -signal.SIGKILL), stderr
                stage = check_killed(cli, writer.ulid, data, point, status == 0, decrypt)
            stages[stage] += 1
            manifest_path = cli.freeze_dir(writer.ulid) / "chunk.0"
            if manifest_path.exists():
                manifests[writer.ulid] = json.loads(manifest_path.read_bytes())
                expected_data[writer.ulid] = data
            elif stage != "killed before the claim":
                incomplete.append(writer.ulid)
            if other is not None:
                status, stdout, stderr = other.finish()
                assert status == 0, stderr
                assert json.loads(stdout)["ulid"] == other.ulid
                manifests[other.ulid] = json.loads(
                    (cli.freeze_dir(other.ulid) / "chunk.0").read_bytes())
    print("\nkill points by the stage the backup reached:", dict(stages))
    # The points really were spread: before the claim, inside a fragment, after the manifest.
    assert {"killed before the claim", "mid-fragment"} <= set(stages)
    assert stages["manifest published, killed after"] + stages["finished before the kill"] >= 1
    assert len(stages) >= 4
    assert incomplete

    # Never shown as complete: list says incomplete (writer gone), never queued.
    listed = list_json(cli)
    for ulid in incomplete:
        assert listed[ulid]["state"] == "incomplete", listed[ulid]
        assert listed[ulid]["in_vault"] is False
        assert listed[ulid]["fragments"] is None
    for ulid in manifests:
        assert listed[ulid]["state"] == "queued", listed[ulid]

    # Nothing blocks a new backup of the same prefix; a dead one's id stays taken.
    taken = cli.run(["backup", "-v", VAULT, "-p", PREFIX, "-u", incomplete[0], "-k",
                     gpg_key.cert], stdin=b"again")
    assert taken.returncode == 73, taken.stderr
    assert f"{incomplete[0]} already exists" in taken.stderr
    assert "its writer died before the manifest: remove" in taken.stderr
    last = cli.backup(gpg_key, data)
    manifests[last] = json.loads((cli.freeze_dir(last) / "chunk.0").read_bytes())
    expected_data[last] = data

    # freeze uploads every complete backup and leaves every dead one where it is.
    dead = {ulid: (snapshot(cli.freeze_dir(ulid)) if cli.freeze_dir(ulid).exists() else None,
                   snapshot(work_dir(cli, ulid)) if work_dir(cli, ulid).exists() else None)
            for ulid in incomplete}
    frozen = cli.run(["freeze", "--once"])
    assert frozen.returncode == 0, frozen.stderr
    for ulid, (queued_before, work_before) in dead.items():
        if queued_before is not None:
            assert ulid in frozen.stderr  # reported: incomplete, its writer gone
        assert vault_objects(cli, ulid) == {}
        assert (snapshot(cli.freeze_dir(ulid)) if cli.freeze_dir(ulid).exists()
                else None) == queued_before
        assert (snapshot(work_dir(cli, ulid)) if work_dir(cli, ulid).exists()
                else None) == work_before
    for ulid, manifest in manifests.items():
        assert_frozen_whole(cli, ulid, manifest)
    listed = list_json(cli)
    assert {ulid for ulid, entry in listed.items() if entry["state"] == "frozen"} == set(manifests)
    assert {ulid for ulid, entry in listed.items() if entry["state"] == "incomplete"} == set(
        incomplete)
    # Only the dead backups are left to a person; a frozen one is nobody's business any more.
    status_result = cli.run(["status", "--json"])
    assert status_result.returncode == 0, status_result.stderr
    abandoned = json.loads(status_result.stdout)["abandoned"]
    assert sorted(abandoned) == sorted(f"{VAULT}/{PREFIX}/{ulid}" for ulid in incomplete)

    # Byte-identical restores: the last backup, and one written beside a killed one.
    concurrent = [ulid for ulid, value in expected_data.items() if len(value) == 3 * MiB]
    for ulid in [last, concurrent[-1]]:
        restored = cli.run([*restore_args(ulid, gpg_key), "--thaw", "--poll", "0.2"])
        assert restored.returncode == 0, restored.stderr
        assert restored.stdout == expected_data[ulid]


# -- 2. the spool's disk full ------------------------------------------------------------------


def tmpfs_works() -> bool:
    """Whether a tmpfs can be mounted here (root outside a locked-down container)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(tempfile.mkdtemp(prefix="cryophile-tmpfs-probe-"))
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                                 capture_output=True, timeout=30, check=False)
        if mounted.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], capture_output=True, timeout=30, check=True)
        return True
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


# The file size limit always runs; the tmpfs variants only where mount works (never a skip).
FULL_DISKS = ["ulimit-sigxfsz-ignored", "ulimit-sigxfsz-default",
              *(["tmpfs-blocks", "tmpfs-inodes"] if tmpfs_works() else [])]


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[None]:
    """``path`` is a fresh tmpfs mounted with ``options`` while the block runs."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"mode=0700,{options}", "tmpfs", str(path)],
                   capture_output=True, timeout=30, check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], capture_output=True, timeout=30, check=True)


def run_backup(cli: Cli, key: oracles.KeyPair, ulid: str, data: bytes,
               limit: Callable[[], None] | None = None,
               *extra: str) -> subprocess.CompletedProcess[bytes]:
    """``cryophile backup -u ULID`` of ``data`` on stdin, ``limit`` run in the child first."""
    return subprocess.run(
        [sys.executable, "-m", "cryophile", "backup", "-v", VAULT, "-p", PREFIX, "-u", ulid,
         "-k", str(key.cert), "-s", str(FRAGMENT), "--json", *extra],
        input=data, capture_output=True, env=cli.environment(), timeout=300, check=False,
        preexec_fn=limit)


def assert_failed_cleanly(cli: Cli, ulid: str, result: subprocess.CompletedProcess[bytes],
                          problem: str) -> None:
    """Exit 74 (I/O error, as README's table says for a full disk), one line naming the
    problem, no traceback, and nothing of the backup left in any queue."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 74, stderr
    assert result.stdout == b""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("cryophile: error: "), stderr
    assert problem in lines[0]
    assert "spool" in lines[0] or str(cli.spool) in lines[0]
    assert "Traceback" not in stderr
    for queue in ("backup", "freeze"):
        assert not list((cli.spool / queue).rglob(ulid)), f"{ulid} left in {queue}/"
    assert not list((cli.spool / "freeze").rglob("chunk.0"))


def assert_not_frozen(cli: Cli, ulid: str) -> None:
    """``freeze --once`` succeeds and uploads nothing of the failed backup."""
    frozen = cli.run(["freeze", "--once"])
    assert frozen.returncode == 0, frozen.stderr
    assert vault_objects(cli, ulid) == {}
    assert ulid not in list_json(cli)


def fill_limited(kind: str) -> Callable[[], None]:
    """In the child: a 4 MiB file size limit, below the 5 MiB fragments."""
    disposition = signal.SIG_IGN if kind == "ulimit-sigxfsz-ignored" else signal.SIG_DFL

    def limit() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 * MiB, hard))
        signal.signal(signal.SIGXFSZ, disposition)

    return limit


def freeze_and_check(cli: Cli, ulid: str) -> None:
    """``freeze --once`` uploads the backup whole."""
    manifest = json.loads((cli.freeze_dir(ulid) / "chunk.0").read_bytes())
    frozen = cli.run(["freeze", "--once"])
    assert frozen.returncode == 0, frozen.stderr
    assert_frozen_whole(cli, ulid, manifest)


@pytest.mark.parametrize("full", FULL_DISKS)
def test_spool_disk_full_fails_cleanly_and_the_id_works_again(
        cli: Cli, gpg_key: oracles.KeyPair, full: str) -> None:
    ulid = str(ULID())
    if full.startswith("ulimit"):
        # A user under `ulimit -f` gets SIGXFSZ by default: cryophile must still
        # report EFBIG in one line (CPython ignores SIGXFSZ at start-up).
        data = random.Random(4).randbytes(12 * MiB)
        failed = run_backup(cli, gpg_key, ulid, data, fill_limited(full))
        assert_failed_cleanly(cli, ulid, failed, "File too large")
        assert_not_frozen(cli, ulid)
        retried = run_backup(cli, gpg_key, ulid, data)  # no limit: room again
        assert retried.returncode == 0, retried.stderr.decode()
        freeze_and_check(cli, ulid)
    elif full == "tmpfs-blocks":
        data = random.Random(4).randbytes(40 * MiB)
        with tmpfs(cli.spool, "size=16m"):
            # Three fragments fit, the fourth does not: full midway. A spool_limit
            # beyond the disk: with the default budget (free space less a reserve)
            # the backup would stop at the budget instead (exit 69, no freezer);
            # this is the disk filling up for real, which is still 74.
            failed = run_backup(cli, gpg_key, ulid, data, None, "--spool-limit", "1G")
            assert_failed_cleanly(cli, ulid, failed, "No space left on device")
            assert_not_frozen(cli, ulid)
            subprocess.run(["mount", "-o", "remount,size=64m", str(cli.spool)],
                           capture_output=True, timeout=30, check=True)
            retried = run_backup(cli, gpg_key, ulid, data)
            assert retried.returncode == 0, retried.stderr.decode()
            freeze_and_check(cli, ulid)
        restored = cli.run([*restore_args(ulid, gpg_key), "--thaw", "--poll", "0.2"])
        assert restored.returncode == 0, restored.stderr
        assert restored.stdout == data
    else:
        out_of_inodes(cli, gpg_key, ulid)


def out_of_inodes(cli: Cli, gpg_key: oracles.KeyPair, ulid: str) -> None:
    """Give the spool one more inode at a time until the backup fits: every step that
    creates a directory, a file or a link (claim, lock, freeze queue, fragment,
    manifest; tmpfs counts links) meets a full file system once, and each must fail
    cleanly and leave the id free."""
    data = random.Random(5).randbytes(64 * 1024)
    failures = 0
    for inodes in range(5, 30):  # 5: the root and the four queues
        with tmpfs(cli.spool, f"size=16m,nr_inodes={inodes}"):
            result = run_backup(cli, gpg_key, ulid, data)
            if result.returncode == 0:
                freeze_and_check(cli, ulid)
                break
            assert_failed_cleanly(cli, ulid, result, "No space left on device")
            failures += 1
    assert result.returncode == 0, result.stderr.decode()
    assert failures >= 10  # backup/VAULT … ULID, .lock, freeze/VAULT … ULID, chunk.1, chunk.0


# -- 3. two writers creating and removing the same queue directories ----------------------------


def _claim_and_release(root: str, rounds: int, errors: Any) -> None:
    """What a backup does to the spool's directories, minus the data: claim an id of
    PREFIX, then release it and remove the directories it leaves empty."""
    spool = Spool.open(Path(root), create_root=False)
    failures: list[str] = []
    for _ in range(rounds):
        backup_id = BackupId(uuid.UUID(VAULT), PREFIX, ULID())
        try:
            lock = spool.create_backup(backup_id)
            lock.release()
            work = spool.backup_dir(Queue.BACKUP, backup_id)
            (work / LOCK_NAME).unlink()
            remove_empty_dirs(work, spool.queue_dir(Queue.BACKUP))
            remove_empty_dirs(spool.backup_dir(Queue.FREEZE, backup_id),
                              spool.queue_dir(Queue.FREEZE))
        except Exception as error:  # reported to the test, which fails on any
            failures.append(f"{type(error).__name__}: {error}")
    errors.put(failures)


@pytest.mark.stress
def test_concurrent_writers_of_one_prefix_never_trip_over_each_others_directories(
        spool: Path) -> None:
    """Found by this file: a backup finishing removed ``backup/VAULT/PREFIX`` just as
    another one was about to ``mkdir`` its id in it (FileNotFoundError, exit 70), or
    fsynced a parent the other had just removed, after its manifest was published."""
    rounds = pick(100, 2000)
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    workers = [context.Process(target=_claim_and_release, args=(str(spool), rounds, errors))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    results = [errors.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert results == [[], []]
    assert not list((spool / "backup").iterdir())
    assert not list((spool / "freeze").iterdir())

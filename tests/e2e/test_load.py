"""Load (issue 6): concurrent backups with both daemons running, one big stream with its
memory measured, and a restore whose fragments arrive in random order over time.

Every scenario is marked ``stress``: it runs shortened in the normal suite and at
full size under ``scripts/stress`` (``CRYOPHILE_STRESS=full``: 20 GiB stream,
bigger concurrent backups, minutes of random arrival). Inputs are never stored:
a generator process streams deterministic, partly compressible data (AES-CTR
keystream interleaved with text) into ``cryophile backup`` and writes the
SHA-256 of what it emitted; restores are compared by streaming SHA-256.

Memory: the peak of the summed VmRSS of the backup process and all its
descendants, sampled every 0.1 s from ``/proc``. The README/issue bound is
256 MiB for a backup, whatever the stream size; flatness is checked against a
run eight times smaller.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

import oracles
from e2e import test_freeze_s3 as fs
from polling import live_files, wait_until
from s3server import S3Bucket
from stress import full, pick
from support.cli import VAULT, Cli

pytestmark = pytest.mark.stress

MiB = 1 << 20
#: The documented bound on a backup's memory (README "Speed and memory", issue 2).
BACKUP_RSS_BOUND = 256 * MiB

#: Writes ``size`` bytes to stdout, then their hex SHA-256 to the file ``argv[3]``.
#: Per 64 KiB: 32 KiB of AES-CTR keystream (seeded) and 32 KiB of text, so zstd
#: has about half of it to compress, like real data; ~1 GB/s on one core.
GENERATOR = r"""
import hashlib, sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
size, seed, digest_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
key = hashlib.sha256(b"cryophile-load-%d" % seed).digest()
keystream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
line = b"cryophile load test, stream %d: the quick brown fox jumps over the lazy dog\n" % seed
text = (line * (32768 // len(line) + 1))[:32768]
zeros = bytes(512 * 1024)
digest = hashlib.sha256()
out = sys.stdout.buffer
left = size
while left > 0:
    noise = keystream.update(zeros)
    block = b"".join(noise[i:i + 32768] + text for i in range(0, len(noise), 32768))[:left]
    digest.update(block)
    out.write(block)
    left -= len(block)
out.flush()
with open(digest_path, "w") as handle:
    handle.write(digest.hexdigest())
"""


# -- streams and memory ---------------------------------------------------------------------


@dataclass
class Stream:
    """A generator process and where it leaves the SHA-256 of what it wrote."""

    process: subprocess.Popen[bytes]
    digest_file: Path

    @property
    def stdout(self) -> IO[bytes]:
        assert self.process.stdout is not None
        return self.process.stdout

    def sha256(self) -> str:
        assert self.process.wait(timeout=600) == 0
        return self.digest_file.read_text()


def generate(size: int, seed: int, directory: Path) -> Stream:
    digest_file = directory / f"input-{seed}.sha256"
    process = subprocess.Popen([sys.executable, "-c", GENERATOR, str(size), str(seed),
                                str(digest_file)], stdout=subprocess.PIPE)
    return Stream(process, digest_file)


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it, from the ppid links in ``/proc/*/stat``
    (``/proc/PID/task/*/children`` needs a kernel option that not every kernel has)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                # The command name may hold spaces and parentheses: split after the last ")".
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending += children.get(pid, [])
    return found


def tree_rss(root: int) -> tuple[int, int]:
    """Summed VmRSS (bytes) of ``root`` and all its descendants now, and how many
    processes that is."""
    total = 0
    tree = _descendants(root)
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total, len(tree)


@dataclass
class RssSampler:
    """Samples :func:`tree_rss` of a process every ``interval`` seconds in a thread."""

    pid: int
    interval: float = 0.02
    peak: int = 0
    samples: int = 0
    processes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, processes = tree_rss(self.pid)
            if rss:
                self.peak = max(self.peak, rss)
                self.processes = max(self.processes, processes)
                self.samples += 1
            self._stop.wait(self.interval)


def sha256_of_pipe(pipe: IO[bytes]) -> tuple[int, str]:
    """Read ``pipe`` to its end: byte count and hex SHA-256."""
    digest = hashlib.sha256()
    size = 0
    while block := pipe.read(MiB):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


@dataclass
class Measured:
    ulid: str
    input_sha256: str
    peak_rss: int
    samples: int
    processes: int
    seconds: float
    stored_bytes: int


def measured_backup(cli: Cli, key: oracles.KeyPair, size: int, seed: int, prefix: str,
                    tmp_path: Path) -> Measured:
    """Stream ``size`` generated bytes into ``cryophile backup`` (default options but
    the prefix) while sampling the backup's process tree."""
    stream = generate(size, seed, tmp_path)
    started = time.monotonic()
    backup = subprocess.Popen([sys.executable, "-m", "cryophile", "backup", "-v", VAULT, "-p",
                               prefix, "-k", str(key.cert), "--json"], stdin=stream.stdout,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=cli.environment())
    stream.stdout.close()  # the backup holds the read end now
    with RssSampler(backup.pid) as sampler:
        stdout, stderr = backup.communicate(timeout=3600)
    seconds = time.monotonic() - started
    assert backup.returncode == 0, stderr.decode()
    document = json.loads(stdout)
    assert document["input_bytes"] == size
    return Measured(document["ulid"], stream.sha256(), sampler.peak, sampler.samples,
                    sampler.processes, seconds, document["stored_bytes"])


def restore_sha256(cli: Cli, key: oracles.KeyPair, ulid: str, prefix: str,
                   *extra: str, env: dict[str, str] | None = None) -> tuple[int, str, int]:
    """Run ``cryophile restore`` to stdout, hashing the output as it streams; return
    its size, SHA-256 and the restore's peak RSS."""
    restore = subprocess.Popen([sys.executable, "-m", "cryophile", "restore", "-v", VAULT, "-p",
                                prefix, "-u", ulid, "-k", str(key.secret), *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=cli.environment(env))
    assert restore.stdout is not None
    stderr = restore.stderr
    assert stderr is not None
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(stderr.read()), daemon=True)
    reader.start()
    with RssSampler(restore.pid) as sampler:
        size, digest = sha256_of_pipe(restore.stdout)
        code = restore.wait(timeout=3600)
    reader.join(timeout=30)
    restore.stdout.close()
    stderr.close()
    assert code == 0, b"".join(errors).decode(errors="replace")
    return size, digest, sampler.peak


# -- one big stream ---------------------------------------------------------------------------


def test_big_backup_memory_stays_flat_and_under_the_bound_and_restores_identically(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path,
        record_property: Callable[[str, object], None]) -> None:
    big = pick(512, 20 * 1024) * MiB
    small = big // 8
    prefix = "load/big"
    reference = measured_backup(cli, gpg_key, small, 1, prefix, tmp_path)
    measured = measured_backup(cli, gpg_key, big, 2, prefix, tmp_path)
    figures = {
        "small_bytes": small, "small_peak_rss_mib": round(reference.peak_rss / MiB, 1),
        "big_bytes": big, "big_peak_rss_mib": round(measured.peak_rss / MiB, 1),
        "big_seconds": round(measured.seconds, 1),
        "big_mb_per_s": round(big / measured.seconds / 1e6, 1),
        "big_stored_ratio": round(measured.stored_bytes / big, 3),
        "samples": measured.samples, "backup_processes": measured.processes,
    }
    # Sampled at all (how many samples a run gets depends on the machine's speed).
    assert measured.samples >= 1, figures
    assert reference.samples >= 1, figures
    assert measured.peak_rss <= BACKUP_RSS_BOUND, figures
    # Flat: eight times the input, at most a little more memory.
    assert measured.peak_rss <= reference.peak_rss * 1.25 + 16 * MiB, figures

    try:
        cli.stage_for_restore(measured.ulid, prefix)
        size, digest, restore_peak = restore_sha256(cli, gpg_key, measured.ulid, prefix)
    finally:
        # Up to ~11 GiB of fragments in the full run: not for pytest's kept temp dirs.
        shutil.rmtree(cli.spool)
    figures["restore_peak_rss_mib"] = round(restore_peak / MiB, 1)
    record_property("figures", figures)
    print(f"load figures: {json.dumps(figures)}")
    assert size == big
    assert digest == measured.input_sha256


# -- concurrent backups while the daemons run ---------------------------------------------


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        text = self.log.read_text()
        assert code == 0, text
        return text


def start_daemon(s3: fs.S3Freeze, args: list[str], log: Path) -> Daemon:
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "cryophile", *args, "-c",
                                    str(s3.config), "--json"],
                                   env=s3.cli.environment(s3.env), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    return Daemon(process, log)


@pytest.fixture
def daemons(cli: Cli, s3_bucket: S3Bucket, tmp_path: Path) -> Iterator[
        tuple[fs.S3Freeze, list[Daemon]]]:
    s3 = fs.make_s3(cli, s3_bucket, tmp_path)
    running = [start_daemon(s3, ["freeze", "-j", "2"], tmp_path / "freeze.log"),
               start_daemon(s3, ["thaw", "--poll", "0.2"], tmp_path / "thaw.log")]
    try:
        yield s3, running
    finally:
        for daemon in running:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait()


def test_four_concurrent_backups_while_freeze_and_thaw_daemons_run(
        daemons: tuple[fs.S3Freeze, list[Daemon]], gpg_key: oracles.KeyPair,
        tmp_path: Path) -> None:
    s3, running = daemons
    cli = s3.cli
    wait_until(lambda: all("daemon started" in d.log.read_text() for d in running),
               timeout=60, what="the daemons to start")
    size = pick(24, 1024) * MiB
    # Two prefixes of their own and two backups in one prefix.
    prefixes = ["load/a", "load/b", "load/same", "load/same"]
    streams = [generate(size + seed * 12345, seed, tmp_path) for seed in range(4)]
    backups = []
    for prefix, stream in zip(prefixes, streams, strict=True):
        backups.append(subprocess.Popen(
            [sys.executable, "-m", "cryophile", "-c", str(s3.config), "backup", "-v", VAULT,
             "-p", prefix, "-k",
             str(gpg_key.cert), "-s", "8M", "--json"], stdin=stream.stdout,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli.environment()))
        stream.stdout.close()
    results: list[tuple[str, str, str]] = []  # prefix, ULID, input SHA-256
    for prefix, stream, backup in zip(prefixes, streams, backups, strict=True):
        stdout, stderr = backup.communicate(timeout=1800)
        assert backup.returncode == 0, stderr.decode()
        results.append((prefix, json.loads(stdout)["ulid"], stream.sha256()))
    assert len({ulid for _, ulid, _ in results}) == 4

    # The freeze daemon, woken by inotify, uploads everything.
    wait_until(lambda: not live_files(cli.spool / "freeze", "chunk.*"),
               timeout=pick(120, 1800), what="the freeze daemon to empty its queue")
    # The bucket holds exactly each backup's manifest and the fragments it lists.
    expected: dict[str, int] = {}
    for prefix, ulid, _ in results:
        manifest_key = f"{prefix}/{ulid}/chunk.0"
        manifest = json.loads(s3.client.get_object(Bucket=s3.bucket.name,
                                                   Key=manifest_key)["Body"].read())
        expected[manifest_key] = bucket_objects(s3, manifest_key)[manifest_key]
        expected.update({f"{prefix}/{ulid}/chunk.{entry['index']}": entry["size"]
                         for entry in manifest["fragments"]})
    assert bucket_objects(s3, "") == expected

    # Four restores at once, served by the thaw daemon, each byte-identical.
    outcomes: dict[str, tuple[int, str, int]] = {}

    def restore(prefix: str, ulid: str) -> None:
        outcomes[ulid] = restore_sha256(cli, gpg_key, ulid, prefix, "-c", str(s3.config),
                                        "--timeout", str(pick(180, 3600)), env=s3.env)

    threads = [threading.Thread(target=restore, args=(prefix, ulid))
               for prefix, ulid, _ in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=pick(300, 7200))
    freeze_log, thaw_log = (daemon.stop() for daemon in running)
    for prefix, ulid, digest in results:
        assert ulid in outcomes, (prefix, ulid, thaw_log[-3000:])
        assert outcomes[ulid][:2] == (size + results.index((prefix, ulid, digest)) * 12345,
                                      digest), prefix
    frozen = [json.loads(line) for line in freeze_log.splitlines() if line.startswith("{")]
    assert sum(1 for event in frozen if event.get("event") == "frozen") == 4
    assert not [event for event in frozen if event.get("level") == "error"]
    thawed = [json.loads(line) for line in thaw_log.splitlines() if line.startswith("{")]
    assert not [event for event in thawed if event.get("level") == "error"]
    assert not list((cli.spool / "thaw").rglob("state.json"))
    assert not list((cli.spool / "restore").rglob("chunk.*"))


def bucket_objects(s3: fs.S3Freeze, prefix: str) -> dict[str, int]:
    objects: dict[str, int] = {}
    for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket.name,
                                                                     Prefix=prefix):
        for entry in page.get("Contents", []):
            objects[entry["Key"]] = entry["Size"]
    return objects


# -- fragments arriving in random order -----------------------------------------------------


def test_restore_started_first_gets_its_fragments_in_random_order_over_time(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    """``restore --wait`` runs before anything is there; the manifest and the fragments
    are then published into the restore queue one at a time (a hard link, atomic,
    as thaw's ``publish`` does), in a seeded random order with random delays:
    seconds in the normal run, minutes under stress."""
    data = random.Random(50).randbytes(pick(38, 150) * MiB)
    prefix = "load/arrival"
    ulid = cli.backup(gpg_key, data, "-C", "none", prefix=prefix, size="5M")
    source = cli.freeze_dir(ulid, prefix)
    names = sorted(path.name for path in source.iterdir())
    assert len(names) >= 9
    target = cli.restore_dir(ulid, prefix)
    target.mkdir(parents=True, mode=0o700)
    # Seeded so that the manifest comes 4th, chunk.1 5th, and chunk.2 last.
    rng = random.Random(5054)
    order = list(names)
    rng.shuffle(order)
    most = pick(800, 40_000) / 1000  # seconds between two arrivals, at most
    streams_early = {"chunk.0", "chunk.1"} <= set(order[:-1])
    assert streams_early or full()

    output, log = tmp_path / "restored", tmp_path / "restore.log"
    with output.open("wb") as stdout, log.open("wb") as stderr:
        restore = subprocess.Popen(
            [sys.executable, "-m", "cryophile", "restore", "-v", VAULT, "-p", prefix, "-u", ulid,
             "-k", str(gpg_key.secret), "--wait", "--timeout", str(pick(120, 3600))],
            stdout=stdout, stderr=stderr, env=cli.environment())
    try:
        for position, name in enumerate(order):
            time.sleep(rng.uniform(0.0, most))
            assert restore.poll() is None, (position, log.read_text())
            if position == len(order) - 1 and streams_early:
                # The manifest and chunk.1 came earlier: the output streams
                # before the backup is complete.
                wait_until(lambda: output.stat().st_size > 0, timeout=60,
                           what="restore to write the first fragment's data")
            os.link(source / name, target / name)
        code = restore.wait(timeout=120)
    finally:
        if restore.poll() is None:
            restore.kill()
            restore.wait()
    assert code == 0, log.read_text()
    assert output.read_bytes() == data
    assert not target.exists()  # cleaned up after success
    print(f"arrival order: {order}")

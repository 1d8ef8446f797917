#!/usr/bin/env python3
"""Benchmark cryophile backup/restore against the do-it-yourself OpenPGP pipelines.

Default mode, on one input (half random, half a real tar stream), alternating the
commands in every round:

* cryophile backup      ``cryophile backup … < input``
* DIY backup            ``zstd -3 -T2 -c < input | gpg -e --compress-algo none
                        --recipient-file CERT | split -b 256M - OUT/chunk.``
* cryophile restore     ``cryophile restore … > /dev/null`` (after ``cp -al`` of the
                        freeze directory into the restore queue)
* DIY restore           ``cat OUT/chunk.* | gpg -d | zstd -d > /dev/null``

It reports median wall time, MB/s of input, and the peak RSS summed over every
process of the command (sampled from /proc every 20 ms), then the ratios
DIY time ÷ cryophile time against the targets: issue 14's for ``--engine fast``
(the default), issue 2's for ``--engine reference``.

``--diy-guarantees`` also times the DIY pipelines given what cryophile
guarantees and they do not — ``sync`` of every fragment after the backup,
``sha256sum -c`` of every fragment before the restore — and reports those
ratios too (with ``--engine fast`` the verified restore has a target: ≥ 2.5).

``--rss-scaling`` runs only cryophile backup and restore at two input sizes
(default 512M and 4G) and reports how much the peak RSS grows.

See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CRYOPHILE = REPO / ".venv" / "bin" / "cryophile"
VAULT = "6f1c2c7e-3b1a-4c55-9a0e-0000be4c0001"
PREFIX = "bench"
MIB = 1 << 20
BLOCK = MIB

# Targets of issue 2 ("Speed and memory"), for the reference engine.
TARGET_BACKUP_RATIO = 0.6
TARGET_RESTORE_RATIO = 0.3
TARGET_BACKUP_RSS_MIB = 192.0
TARGET_RESTORE_RSS_MIB = 256.0
TARGET_RSS_GROWTH = 0.10
ENGINES = ("fast", "reference")


@dataclasses.dataclass(frozen=True)
class Targets:
    """What one engine must reach: DIY time ÷ cryophile time, and peak RSS in MiB."""

    issue: str
    backup_ratio: float
    restore_ratio: float
    backup_rss_mib: float = 0.0
    restore_rss_mib: float = 0.0
    #: Against the DIY restore that checks every fragment first (--diy-guarantees).
    verified_restore_ratio: float | None = None


def targets_for(engine: str, compression: str) -> Targets:
    """Issue 2's targets for the reference engine, issue 14's for the fast one.

    Issue 14 decided what issue 7 left open: backup ≥ 1.25× the zstd DIY
    pipeline and ≥ 1.5× the lz4 one (``none`` is held to zstd's ratio);
    restore, with the per-fragment verification kept, ≥ 1.0× the plain DIY
    restore and ≥ 2.5× the DIY restore that verifies (``--diy-guarantees``).
    Memory stays issue 7's: ≤ 256 MiB for a zstd backup (zstd's threads),
    ≤ 96 MiB for lz4 and none, ≤ 128 MiB for a restore.
    """
    if engine == "reference":
        return Targets("issue 2", TARGET_BACKUP_RATIO, TARGET_RESTORE_RATIO,
                       backup_rss_mib=TARGET_BACKUP_RSS_MIB,
                       restore_rss_mib=TARGET_RESTORE_RSS_MIB)
    return Targets("issue 14", 1.5 if compression == "lz4" else 1.25, 1.0,
                   backup_rss_mib=256.0 if compression == "zstd" else 96.0,
                   restore_rss_mib=128.0, verified_restore_ratio=2.5)

CRYO_BACKUP = "cryophile backup"
DIY_BACKUP = "DIY backup"
CRYO_RESTORE = "cryophile restore"
DIY_RESTORE = "DIY restore"
COMMANDS = (CRYO_BACKUP, DIY_BACKUP, CRYO_RESTORE, DIY_RESTORE)
# --diy-guarantees: the DIY pipelines given what cryophile guarantees and they do not.
DIY_BACKUP_SYNCED = "DIY backup + sync"
DIY_RESTORE_VERIFIED = "DIY verify+restore"
GUARANTEE_COMMANDS = (DIY_BACKUP_SYNCED, DIY_RESTORE_VERIFIED)

GPG_KEY_PARAMETERS = """\
Key-Type: eddsa
Key-Curve: ed25519
Key-Usage: sign
Subkey-Type: ecdh
Subkey-Curve: cv25519
Subkey-Usage: encrypt
Name-Real: cryophile benchmark
Name-Email: bench@cryophile.invalid
Expire-Date: 0
%no-protection
%commit
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """Binary units: 512M, 1G, 4GiB, 1048576."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512M, 1G)")
    number = int(match.group(1))
    unit = match.group(2).upper()
    value = number << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[unit]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def format_size(size: int) -> str:
    for shift, unit in ((40, "T"), (30, "G"), (20, "M"), (10, "K")):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


# --------------------------------------------------------------------------- RSS sampling


@dataclasses.dataclass
class ProcessShare:
    """One process in the snapshot taken at the peak."""

    pid: int
    label: str
    rss: int
    anon: int
    file: int


@dataclasses.dataclass
class _Status:
    rss: int
    anon: int
    file: int


class TreeSampler:
    """Sum VmRSS over a process and all its descendants, every ``interval`` seconds.

    Descendants are found from the ppid field of /proc/PID/stat (this kernel has no
    /proc/PID/task/TID/children). The ppid of a pid is read once, when the pid first
    appears, so a process whose parent exits stays in the tree. ``extra`` pids
    (e.g. a gpg-agent that daemonised earlier) are added to every sample.
    """

    def __init__(self, root: int, extra: Sequence[int] = (), interval: float = 0.02) -> None:
        self.root = root
        self.extra = tuple(extra)
        self.interval = interval
        self.peak = 0
        self.peak_anon = 0
        self.peak_snapshot: list[ProcessShare] = []
        self.samples = 0
        self.max_processes = 0
        self._parents: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def _pids(self) -> list[int]:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
        alive = set(pids)
        for gone in [pid for pid in self._parents if pid not in alive]:
            del self._parents[gone]
        for pid in pids:
            if pid not in self._parents:
                parent = _read_ppid(pid)
                if parent is not None:
                    self._parents[pid] = parent
        return pids

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for pid in self._pids():
            parent = self._parents.get(pid)
            if parent is not None:
                children.setdefault(parent, []).append(pid)
        tree: list[int] = []
        todo = [self.root, *self.extra]
        seen: set[int] = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            tree.append(pid)
            todo.extend(children.get(pid, ()))
        return tree

    def sample(self) -> None:
        shares: list[ProcessShare] = []
        for pid in self._tree():
            status = _read_status(pid)
            if status is None:
                continue
            shares.append(ProcessShare(pid, "", status.rss, status.anon, status.file))
        total = sum(share.rss for share in shares)
        self.samples += 1
        self.max_processes = max(self.max_processes, len(shares))
        self.peak_anon = max(self.peak_anon, sum(share.anon for share in shares))
        if total > self.peak:
            self.peak = total
            # Read the command lines now, not when the pid appeared: a child seen
            # between fork and exec still shows its parent's command line.
            for share in shares:
                share.label = _read_label(share.pid)
            self.peak_snapshot = sorted(shares, key=lambda share: -share.rss)


def _read_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # "pid (comm) state ppid …"; comm may contain spaces and parentheses.
    fields = data[data.rfind(b")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


def _read_status(pid: int) -> _Status | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            data = status.read()
    except OSError:
        return None
    values = {b"VmRSS:": 0, b"RssAnon:": 0, b"RssFile:": 0, b"RssShmem:": 0}
    for line in data.splitlines():
        key, _, rest = line.partition(b"\t")
        key = key.strip()
        if key in values:
            values[key] = int(rest.split()[0]) * 1024
    return _Status(values[b"VmRSS:"], values[b"RssAnon:"],
                   values[b"RssFile:"] + values[b"RssShmem:"])


def _read_label(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            argv = [part.decode(errors="replace")
                    for part in cmdline.read().split(b"\0") if part]
    except OSError:
        return "?"
    if not argv:
        return "?"
    words = [os.path.basename(argv[0])]
    for word in argv[1:]:
        if word.startswith("/") and len(word) > 24:
            word = "…/" + os.path.basename(word)
        words.append(word)
    label = " ".join(words)
    return label if len(label) <= 70 else label[:69] + "…"


# --------------------------------------------------------------------------- CPU accounting


def _busy_cpu_seconds() -> float:
    """CPU time used by the whole machine so far (all CPUs), from /proc/stat."""
    with open("/proc/stat", "rb") as stat:
        fields = stat.readline().split()
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    busy = sum(int(fields[index]) for index in (1, 2, 3, 6, 7, 8))
    return busy / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- measured runs


class CommandFailedError(RuntimeError):
    """A benchmarked command exited non-zero."""

    def __init__(self, name: str, command: str, status: int, stderr: str) -> None:
        super().__init__(f"{name} failed (exit status {status})")
        self.name = name
        self.command = command
        self.status = status
        self.stderr = stderr


@dataclasses.dataclass
class Measurement:
    """One timed run of one command."""

    name: str
    seconds: float
    peak_rss: int
    peak_anon: int
    peak_snapshot: list[ProcessShare]
    cpu_seconds: float
    other_cpu_seconds: float
    bench_cpu_seconds: float
    processes: int
    stdout: bytes


IDLE = {"max_wait": 60.0, "threshold": 0.25}


def wait_for_idle() -> None:
    """Wait (at most IDLE["max_wait"] s) until other processes use < threshold of one CPU.

    Other people's test runs on a 2-CPU machine distort the timings; this lowers the
    odds, and the 'other load' column shows what was left.
    """
    deadline = time.monotonic() + IDLE["max_wait"]
    waited = False
    while True:
        busy_before, own_before = _busy_cpu_seconds(), _self_cpu()
        time.sleep(0.5)
        load = (_busy_cpu_seconds() - busy_before - (_self_cpu() - own_before)) / 0.5
        if load < IDLE["threshold"] or time.monotonic() > deadline:
            if waited:
                log(f"    (waited for the machine to calm down; other load now {load:.2f} CPU)")
            return
        waited = True


def other_load(result: Measurement) -> float:
    """The share of all CPUs that processes outside the benchmark used during a run."""
    return result.other_cpu_seconds / (result.seconds * (os.cpu_count() or 1))


def measured(name: str, argv: Sequence[str], *, stdin: Path | None, stdout_to_null: bool,
             stderr_path: Path, extra_pids: Sequence[int] = (),
             interval: float = 0.02) -> Measurement:
    """Run ``argv`` once: wall time, peak summed RSS of its process tree, CPU time."""
    os.sync()  # earlier runs' dirty pages are not this run's cost
    if IDLE["max_wait"] > 0:
        wait_for_idle()
    stdin_file: IO[bytes] | None = open(stdin, "rb") if stdin else None  # noqa: SIM115
    try:
        with open(stderr_path, "wb") as stderr_file:
            busy_before = _busy_cpu_seconds()
            children_before = _children_cpu()
            self_before = _self_cpu()
            started = time.perf_counter()
            process = subprocess.Popen(
                list(argv), stdin=stdin_file if stdin_file else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if stdout_to_null else subprocess.PIPE,
                stderr=stderr_file)
            with TreeSampler(process.pid, extra_pids, interval) as sampler:
                output = b"" if stdout_to_null else process.communicate()[0]
                status = process.wait()
            seconds = time.perf_counter() - started
            children = _children_cpu() - children_before
            busy = _busy_cpu_seconds() - busy_before
            own = _self_cpu() - self_before
    finally:
        if stdin_file:
            stdin_file.close()
    if status != 0:
        raise CommandFailedError(name, shlex.join(argv), status,
                            stderr_path.read_text(errors="replace"))
    return Measurement(name, seconds, sampler.peak, sampler.peak_anon,
                       sampler.peak_snapshot, children, max(0.0, busy - children - own),
                       own, sampler.max_processes, output)


def hashed_output(name: str, argv: Sequence[str], stderr_path: Path) -> str:
    """Run ``argv`` untimed and return the SHA-256 of its stdout."""
    digest = hashlib.sha256()
    with open(stderr_path, "wb") as stderr_file:
        process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=stderr_file)
        assert process.stdout is not None
        while block := process.stdout.read(BLOCK):
            digest.update(block)
        status = process.wait()
    if status != 0:
        raise CommandFailedError(name, shlex.join(argv), status,
                            stderr_path.read_text(errors="replace"))
    return digest.hexdigest()


# --------------------------------------------------------------------------- set-up


def build_input(path: Path, size: int) -> str:
    """Write SIZE bytes: the first half random, the second a tar of /usr and /etc.

    The tar stream is repeated if it is shorter than needed. Returns the SHA-256.
    Reuses an existing file of the right size with its .sha256 beside it.
    """
    sidecar = path.with_name(path.name + ".sha256")
    if path.exists() and sidecar.exists() and path.stat().st_size == size:
        log(f"reusing input {path}")
        return sidecar.read_text().strip()
    log(f"building input {path} ({format_size(size)}: half random, half tar of /usr /etc) …")
    started = time.perf_counter()
    digest = hashlib.sha256()
    random_part = size // 2
    with open(path, "wb") as out:
        left = random_part
        while left:
            block = os.urandom(min(BLOCK, left))
            out.write(block)
            digest.update(block)
            left -= len(block)
        left = size - random_part
        tar = subprocess.Popen(["tar", "-c", "-f", "-", "--ignore-failed-read", "usr", "etc"],
                               cwd="/", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert tar.stdout is not None
        try:
            while left:
                block = tar.stdout.read(min(BLOCK, left))
                if not block:
                    break
                out.write(block)
                digest.update(block)
                left -= len(block)
        finally:
            tar.kill()
            tar.stdout.close()
            tar.wait()
        tar_length = size - random_part - left
        if left and tar_length == 0:
            raise RuntimeError("tar -c /usr /etc produced no output")
        out.flush()
        # Repeat the tar stream we got until the file is full.
        with open(path, "rb") as source:
            while left:
                source.seek(random_part)
                copied = 0
                while left and copied < tar_length:
                    block = source.read(min(BLOCK, left, tar_length - copied))
                    out.write(block)
                    digest.update(block)
                    left -= len(block)
                    copied += len(block)
                out.flush()
    sidecar.write_text(digest.hexdigest() + "\n")
    log(f"  built in {time.perf_counter() - started:.1f} s")
    return digest.hexdigest()


@dataclasses.dataclass
class Keys:
    homedir: Path
    cert: Path
    secret: Path


def make_key(directory: Path) -> Keys:
    homedir = directory / "gnupg"
    if homedir.exists():
        shutil.rmtree(homedir)
    homedir.mkdir(mode=0o700, parents=True)
    parameters = directory / "key-parameters"
    parameters.write_text(GPG_KEY_PARAMETERS)
    subprocess.run(["gpg", "--batch", "--homedir", str(homedir), "--gen-key", str(parameters)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cert = directory / "cert.pgp"
    secret = directory / "secret-key.pgp"
    with open(cert, "wb") as out:
        subprocess.run(["gpg", "--batch", "--homedir", str(homedir), "--export"],
                       check=True, stdout=out)
    with open(secret, "wb") as out:
        subprocess.run(["gpg", "--batch", "--homedir", str(homedir), "--export-secret-keys"],
                       check=True, stdout=out)
    return Keys(homedir, cert, secret)


def launch_agent(homedir: Path) -> list[int]:
    """Start the gpg-agent now (not inside a timed run); return its pid if found."""
    subprocess.run(["gpgconf", "--homedir", str(homedir), "--launch", "gpg-agent"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"gpg-agent") and str(homedir).encode() in argv:
            pids.append(int(name))
    return pids


def kill_agent(homedir: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(homedir), "--kill", "gpg-agent"],
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# --------------------------------------------------------------------------- the commands


@dataclasses.dataclass
class Setup:
    cryophile: str
    workdir: Path
    input: Path
    input_size: int
    input_sha256: str
    keys: Keys
    fragment_size: int
    compression: str
    level: int
    interval: float
    agent_pids: list[int]
    engine: str = "fast"
    diy_guarantees: bool = False

    @property
    def commands(self) -> tuple[str, ...]:
        return COMMANDS + (GUARANTEE_COMMANDS if self.diy_guarantees else ())

    @property
    def spool(self) -> Path:
        return self.workdir / "spool"

    @property
    def diy_out(self) -> Path:
        return self.workdir / "diy"

    @property
    def diy_sums(self) -> Path:
        """``sha256sum`` of the DIY fragments (absolute paths), for the verified DIY restore."""
        return self.workdir / "diy.sha256"

    def stderr(self, name: str) -> Path:
        return self.workdir / (name.replace(" ", "-") + ".stderr")


def fresh_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def cryophile_backup_argv(setup: Setup) -> list[str]:
    argv = [setup.cryophile, "backup", "-S", str(setup.spool), "-v", VAULT, "-p", PREFIX,
            "-k", str(setup.keys.cert), "-s", str(setup.fragment_size),
            "-C", setup.compression, "--engine", setup.engine, "--json"]
    if setup.compression == "zstd":
        argv += ["-L", str(setup.level)]
    return argv


def cryophile_restore_argv(setup: Setup, ulid: str) -> list[str]:
    return [setup.cryophile, "restore", "-S", str(setup.spool), "-v", VAULT, "-p", PREFIX,
            "-u", ulid, "-k", str(setup.keys.secret), "--engine", setup.engine]


def _compressor(setup: Setup) -> tuple[str, str]:
    if setup.compression == "zstd":
        return f"zstd -{setup.level} -T2 -q -c", "zstd -d -q -c"
    if setup.compression == "lz4":
        return "lz4 -1 -q -c", "lz4 -d -q -c"
    return "cat", "cat"


def diy_backup_argv(setup: Setup, *, synced: bool = False) -> list[str]:
    """The DIY backup; ``synced``: then fsync every fragment, as cryophile does before
    publishing one (GNU ``sync FILE…`` fsyncs each file)."""
    compress, _ = _compressor(setup)
    q = shlex.quote
    out = q(str(setup.diy_out))
    script = (f"{compress} < {q(str(setup.input))}"
              f" | gpg --homedir {q(str(setup.keys.homedir))} --batch -e --compress-algo none"
              f" --recipient-file {q(str(setup.keys.cert))}"
              f" | split -b {setup.fragment_size} - {out}/chunk."
              + (f" && sync -- {out}/chunk.*" if synced else ""))
    return ["bash", "-o", "pipefail", "-c", script]


def diy_restore_argv(setup: Setup, *, to_null: bool = True, verified: bool = False) -> list[str]:
    """The DIY restore; ``verified``: first check every fragment's SHA-256, as cryophile
    does before it uses a fragment."""
    _, decompress = _compressor(setup)
    q = shlex.quote
    check = f"sha256sum --quiet --strict -c {q(str(setup.diy_sums))} && " if verified else ""
    script = (f"{check}cat {q(str(setup.diy_out))}/chunk.*"
              f" | gpg --homedir {q(str(setup.keys.homedir))} --batch -q -d"
              f" | {decompress}" + (" > /dev/null" if to_null else ""))
    return ["bash", "-o", "pipefail", "-c", script]


def run_cryophile_backup(setup: Setup) -> tuple[Measurement, str, int]:
    fresh_dir(setup.spool)
    result = measured(CRYO_BACKUP, cryophile_backup_argv(setup), stdin=setup.input,
                      stdout_to_null=False, stderr_path=setup.stderr(CRYO_BACKUP),
                      interval=setup.interval)
    try:
        report: dict[str, Any] = json.loads(result.stdout)
        ulid = str(report["ulid"])
        stored = int(report["stored_bytes"])
    except (ValueError, KeyError) as error:
        raise RuntimeError(f"cannot read cryophile backup --json output: {result.stdout!r}"
                           ) from error
    return result, ulid, stored


def stage_restore(setup: Setup, ulid: str) -> None:
    source = setup.spool / "freeze" / VAULT / PREFIX / ulid
    target = setup.spool / "restore" / VAULT / PREFIX / ulid
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(source), str(target)], check=True)


def run_cryophile_restore(setup: Setup, ulid: str) -> Measurement:
    return measured(CRYO_RESTORE, cryophile_restore_argv(setup, ulid), stdin=None,
                    stdout_to_null=True, stderr_path=setup.stderr(CRYO_RESTORE),
                    interval=setup.interval)


def run_diy_backup(setup: Setup, *, synced: bool = False) -> tuple[Measurement, int]:
    name = DIY_BACKUP_SYNCED if synced else DIY_BACKUP
    fresh_dir(setup.diy_out)
    result = measured(name, diy_backup_argv(setup, synced=synced), stdin=None,
                      stdout_to_null=True, stderr_path=setup.stderr(name),
                      interval=setup.interval)
    chunks = sorted(setup.diy_out.glob("chunk.*"))
    stored = sum(path.stat().st_size for path in chunks)
    if synced:
        # Untimed: the sums a careful user would have kept beside the fragments.
        setup.diy_sums.write_text("".join(f"{_sha256_of(path)}  {path}\n" for path in chunks))
    return result, stored


def _sha256_of(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def run_diy_restore(setup: Setup, *, verified: bool = False) -> Measurement:
    name = DIY_RESTORE_VERIFIED if verified else DIY_RESTORE
    return measured(name, diy_restore_argv(setup, verified=verified), stdin=None,
                    stdout_to_null=True, stderr_path=setup.stderr(name),
                    extra_pids=setup.agent_pids, interval=setup.interval)


def verify(setup: Setup, ulid: str) -> dict[str, str]:
    """Both restores, untimed, hashed against the input."""
    log("verifying both restores against the input (SHA-256, untimed) …")
    stage_restore(setup, ulid)
    hashes = {
        "input": setup.input_sha256,
        CRYO_RESTORE: hashed_output(CRYO_RESTORE, cryophile_restore_argv(setup, ulid),
                                    setup.stderr("verify cryophile restore")),
        DIY_RESTORE: hashed_output(DIY_RESTORE, diy_restore_argv(setup, to_null=False),
                                   setup.stderr("verify DIY restore")),
    }
    for name in (CRYO_RESTORE, DIY_RESTORE):
        if hashes[name] != setup.input_sha256:
            raise RuntimeError(f"{name} does not reproduce the input: sha256 {hashes[name]}"
                               f" != {setup.input_sha256}")
    log(f"  OK: both restores = input, sha256 {setup.input_sha256}")
    return hashes


# --------------------------------------------------------------------------- summaries


@dataclasses.dataclass
class Summary:
    name: str
    runs: list[Measurement]
    input_size: int
    stored: int | None = None

    @property
    def median(self) -> float:
        return statistics.median(run.seconds for run in self.runs)

    @property
    def mb_per_s(self) -> float:
        return self.input_size / self.median / 1e6

    @property
    def peak_mib(self) -> float:
        return max(run.peak_rss for run in self.runs) / MIB

    @property
    def peak_anon_mib(self) -> float:
        return max(run.peak_anon for run in self.runs) / MIB

    @property
    def peak_run(self) -> Measurement:
        return max(self.runs, key=lambda run: run.peak_rss)

    @property
    def cpu_median(self) -> float:
        return statistics.median(run.cpu_seconds for run in self.runs)

    @property
    def other_load(self) -> float:
        """Worst CPU share used by processes outside the benchmark, of all CPUs."""
        return max(other_load(run) for run in self.runs)

    def as_json(self) -> dict[str, Any]:
        return {
            "runs_seconds": [round(run.seconds, 3) for run in self.runs],
            "median_seconds": round(self.median, 3),
            "mb_per_s": round(self.mb_per_s, 1),
            "peak_rss_mib": round(self.peak_mib, 1),
            "peak_rss_anon_mib": round(self.peak_anon_mib, 1),
            "peak_rss_runs_mib": [round(run.peak_rss / MIB, 1) for run in self.runs],
            "cpu_seconds_median": round(self.cpu_median, 2),
            "other_load_max": round(self.other_load, 3),
            "sampler_cpu_seconds_max": round(max(run.bench_cpu_seconds for run in self.runs), 3),
            "max_processes": max(run.processes for run in self.runs),
            "stored_bytes": self.stored,
            "peak_snapshot": [
                {"pid": share.pid, "process": share.label, "rss_mib": round(share.rss / MIB, 1),
                 "anon_mib": round(share.anon / MIB, 1), "file_mib": round(share.file / MIB, 1)}
                for share in self.peak_run.peak_snapshot],
        }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def summary_table(summaries: Sequence[Summary]) -> list[str]:
    lines = [f"{'command':<18} {'median s':>8} {'min s':>7} {'max s':>7} {'MB/s':>7}"
             f" {'peak RSS MiB':>12} {'(anon)':>7} {'CPU s':>6} {'procs':>5} {'other load':>10}"]
    for summary in summaries:
        seconds = [run.seconds for run in summary.runs]
        lines.append(
            f"{summary.name:<18} {summary.median:>8.2f} {min(seconds):>7.2f} {max(seconds):>7.2f}"
            f" {summary.mb_per_s:>7.0f} {summary.peak_mib:>12.1f} {summary.peak_anon_mib:>7.1f}"
            f" {summary.cpu_median:>6.1f} {max(run.processes for run in summary.runs):>5}"
            f" {summary.other_load:>9.0%}")
    return lines


def snapshot_lines(summary: Summary) -> list[str]:
    run = summary.peak_run
    lines = [f"  {summary.name}: {run.peak_rss / MIB:.1f} MiB at its peak sample ="]
    for share in run.peak_snapshot:
        lines.append(f"    {share.rss / MIB:7.1f} MiB (anon {share.anon / MIB:6.1f},"
                     f" file {share.file / MIB:5.1f})  {share.label}")
    return lines


# --------------------------------------------------------------------------- the two modes


def one_round(setup: Setup, *, cryophile_first: bool, verify_restores: bool
              ) -> tuple[list[Measurement], dict[str, int], dict[str, str]]:
    """Both backups, then both restores, in the given order; spools deleted after."""
    results: list[Measurement] = []
    stored: dict[str, int] = {}
    hashes: dict[str, str] = {}
    ulid = ""
    order = ("cryo", "diy") if cryophile_first else ("diy", "cryo")

    def done(result: Measurement) -> None:
        results.append(result)
        log(f"  {result.name:<18} {result.seconds:6.2f} s  {result.peak_rss / MIB:6.1f} MiB"
            f"  (other load {other_load(result):.0%})")

    for which in order:
        if which == "cryo":
            result, ulid, stored[CRYO_BACKUP] = run_cryophile_backup(setup)
        else:
            result, stored[DIY_BACKUP] = run_diy_backup(setup)
            if setup.diy_guarantees:
                done(result)
                # Overwrites the plain DIY fragments: same sizes, another session key.
                result, stored[DIY_BACKUP_SYNCED] = run_diy_backup(setup, synced=True)
        done(result)
    if verify_restores:
        hashes = verify(setup, ulid)
    for which in order:
        if which == "cryo":
            stage_restore(setup, ulid)
            done(run_cryophile_restore(setup, ulid))
        else:
            done(run_diy_restore(setup))
            if setup.diy_guarantees:
                done(run_diy_restore(setup, verified=True))
    shutil.rmtree(setup.spool)
    shutil.rmtree(setup.diy_out)
    return results, stored, hashes


def compare_mode(args: argparse.Namespace, workdir: Path, cryophile: str) -> int:
    size: int = args.size
    input_path = workdir / f"input-{format_size(size)}.bin"
    sha = build_input(input_path, size)
    keys = make_key(workdir)
    setup = Setup(cryophile, workdir, input_path, size, sha, keys, args.fragment_size,
                  args.compression, args.level, args.interval, [], args.engine,
                  args.diy_guarantees)
    try:
        setup.agent_pids = launch_agent(keys.homedir)
        runs: dict[str, list[Measurement]] = {name: [] for name in setup.commands}
        stored: dict[str, int] = {}
        hashes: dict[str, str] = {}
        attempts = 0
        discarded = 0
        while len(runs[CRYO_BACKUP]) < args.runs:
            cryophile_first = attempts % 2 == 0
            attempts += 1
            log(f"round {len(runs[CRYO_BACKUP]) + 1}/{args.runs}"
                f" ({'cryophile' if cryophile_first else 'DIY'} first)")
            results, round_stored, round_hashes = one_round(
                setup, cryophile_first=cryophile_first, verify_restores=not hashes)
            hashes = hashes or round_hashes
            stored.update(round_stored)
            noise = max(other_load(result) for result in results)
            if noise > args.max_other_load and attempts < args.runs + args.retries:
                discarded += 1
                log(f"  round discarded: other processes used {noise:.0%} of the CPUs"
                    f" (more than --max-other-load {args.max_other_load:.0%}); repeating it")
                continue
            for result in results:
                runs[result.name].append(result)
    finally:
        kill_agent(keys.homedir)

    summaries = {name: Summary(name, runs[name], size, stored.get(name))
                 for name in setup.commands}
    backup_ratio = summaries[DIY_BACKUP].median / summaries[CRYO_BACKUP].median
    restore_ratio = summaries[DIY_RESTORE].median / summaries[CRYO_RESTORE].median
    backup_rss = summaries[CRYO_BACKUP].peak_mib
    restore_rss = summaries[CRYO_RESTORE].peak_mib
    goal = targets_for(args.engine, args.compression)
    targets = [
        ("backup ratio (DIY time ÷ cryophile time)", f"{backup_ratio:.2f}",
         f"≥ {goal.backup_ratio}", backup_ratio >= goal.backup_ratio),
        ("restore ratio (DIY time ÷ cryophile time)", f"{restore_ratio:.2f}",
         f"≥ {goal.restore_ratio}", restore_ratio >= goal.restore_ratio),
        ("cryophile backup peak RSS", f"{backup_rss:.1f} MiB",
         f"≤ {goal.backup_rss_mib:.0f} MiB", backup_rss <= goal.backup_rss_mib),
        ("cryophile restore peak RSS", f"{restore_rss:.1f} MiB",
         f"≤ {goal.restore_rss_mib:.0f} MiB", restore_rss <= goal.restore_rss_mib),
    ]
    if setup.diy_guarantees and goal.verified_restore_ratio is not None:
        verified_ratio = (summaries[DIY_RESTORE_VERIFIED].median
                          / summaries[CRYO_RESTORE].median)
        targets.append(("restore ratio against DIY verify+restore", f"{verified_ratio:.2f}",
                        f"≥ {goal.verified_restore_ratio}",
                        verified_ratio >= goal.verified_restore_ratio))
    # What the ratios are when the DIY side fsyncs and verifies too.
    guarantee_ratios: dict[str, float] = {}
    if setup.diy_guarantees:
        guarantee_ratios = {
            "backup ratio against DIY + sync": (summaries[DIY_BACKUP_SYNCED].median
                                                / summaries[CRYO_BACKUP].median),
            "restore ratio against DIY verify+restore": (summaries[DIY_RESTORE_VERIFIED].median
                                                         / summaries[CRYO_RESTORE].median),
        }
    commands = {
        CRYO_BACKUP: shlex.join(cryophile_backup_argv(setup)) + " < INPUT",
        DIY_BACKUP: diy_backup_argv(setup)[-1],
        CRYO_RESTORE: shlex.join(cryophile_restore_argv(setup, "ULID")) + " > /dev/null",
        DIY_RESTORE: diy_restore_argv(setup)[-1],
    }
    if setup.diy_guarantees:
        commands[DIY_BACKUP_SYNCED] = diy_backup_argv(setup, synced=True)[-1]
        commands[DIY_RESTORE_VERIFIED] = diy_restore_argv(setup, verified=True)[-1]
    if args.json:
        print(json.dumps({
            "mode": "compare",
            "input_bytes": size,
            "input": "half os.urandom, half tar -c /usr /etc",
            "input_sha256": sha,
            "restores_verified": hashes,
            "compression": args.compression,
            "level": args.level,
            "engine": args.engine,
            "targets_of": goal.issue,
            "fragment_size": args.fragment_size,
            "runs": args.runs,
            "noisy_rounds_discarded": discarded,
            "cpus": os.cpu_count(),
            "commands": commands,
            "results": {name: summary.as_json() for name, summary in summaries.items()},
            "targets": {label: {"value": value, "target": target, "pass": ok}
                        for label, value, target, ok in targets},
            "guarantee_ratios": {label: round(ratio, 3)
                                 for label, ratio in guarantee_ratios.items()},
        }, indent=2, ensure_ascii=False))
        return 0

    level = f"-{args.level}" if args.compression == "zstd" else ""
    cryo_stored = summaries[CRYO_BACKUP].stored or 0
    diy_stored = summaries[DIY_BACKUP].stored or 0
    lines = [
        f"cryophile benchmark: input {format_size(size)} ({size} bytes; half random, half tar"
        f" of /usr /etc), {args.compression}{level}, fragments {format_size(args.fragment_size)},"
        f" engine {args.engine} (targets of {goal.issue}),"
        f" {args.runs} rounds alternating, {os.cpu_count()} CPUs"
        + (f" ({discarded} noisy round(s) discarded and repeated)" if discarded else ""),
        f"stored: cryophile {cryo_stored / MIB:.1f} MiB, DIY {diy_stored / MIB:.1f} MiB;"
        f" restores verified byte for byte (sha256 {sha[:16]}…)",
        "",
        *summary_table(list(summaries.values())),
        "",
        *(f"{label:<44} {value:>10}   target {target:<10} {verdict(ok)}"
          for label, value, target, ok in targets),
        *(["", "the DIY side given cryophile's guarantees: every fragment fsynced;"
           " every fragment's SHA-256 checked before use",
           *(f"{label:<44} {ratio:>10.2f}" for label, ratio in guarantee_ratios.items())]
          if guarantee_ratios else []),
        "",
        "peak RSS breakdown (the sample at which the summed RSS was highest):",
    ]
    for summary in summaries.values():
        lines += snapshot_lines(summary)
    lines += ["", "MB/s = input bytes / median seconds / 10^6; RSS in MiB summed over the"
              " process tree (VmRSS, so shared library pages count once per process);"
              " 'other load' = worst share of all CPUs used by processes outside the"
              " benchmark during a run (noise)."]
    print("\n".join(lines))
    return 0


def scaling_mode(args: argparse.Namespace, workdir: Path, cryophile: str) -> int:
    sizes: list[int] = args.scaling_sizes
    keys = make_key(workdir)
    rows: list[tuple[int, Summary, Summary]] = []
    try:
        for size in sizes:
            input_path = workdir / f"input-{format_size(size)}.bin"
            sha = build_input(input_path, size)
            setup = Setup(cryophile, workdir, input_path, size, sha, keys, args.fragment_size,
                          args.compression, args.level, args.interval, [], args.engine)
            backups: list[Measurement] = []
            restores: list[Measurement] = []
            stored = 0
            for round_index in range(args.runs):
                log(f"{format_size(size)} round {round_index + 1}/{args.runs}")
                result, ulid, stored = run_cryophile_backup(setup)
                backups.append(result)
                log(f"  {result.name:<18} {result.seconds:6.2f} s"
                    f"  {result.peak_rss / MIB:6.1f} MiB")
                stage_restore(setup, ulid)
                result = run_cryophile_restore(setup, ulid)
                restores.append(result)
                log(f"  {result.name:<18} {result.seconds:6.2f} s"
                    f"  {result.peak_rss / MIB:6.1f} MiB")
                shutil.rmtree(setup.spool)
            rows.append((size, Summary(CRYO_BACKUP, backups, size, stored),
                         Summary(CRYO_RESTORE, restores, size)))
            if not args.keep_inputs:
                input_path.unlink()
                input_path.with_name(input_path.name + ".sha256").unlink()
    finally:
        kill_agent(keys.homedir)

    first, last = rows[0], rows[-1]
    backup_growth = last[1].peak_mib / first[1].peak_mib - 1
    restore_growth = last[2].peak_mib / first[2].peak_mib - 1
    growth_label = f"{format_size(first[0])} → {format_size(last[0])}"
    if args.json:
        print(json.dumps({
            "mode": "rss-scaling",
            "compression": args.compression,
            "engine": args.engine,
            "level": args.level,
            "fragment_size": args.fragment_size,
            "runs": args.runs,
            "sizes": {format_size(size): {CRYO_BACKUP: backup.as_json(),
                                          CRYO_RESTORE: restore.as_json()}
                      for size, backup, restore in rows},
            "growth": {"from": format_size(first[0]), "to": format_size(last[0]),
                       "backup": round(backup_growth, 4), "restore": round(restore_growth, 4),
                       "target": TARGET_RSS_GROWTH,
                       "pass": max(backup_growth, restore_growth) <= TARGET_RSS_GROWTH},
        }, indent=2, ensure_ascii=False))
        return 0
    level = f"-{args.level}" if args.compression == "zstd" else ""
    lines = [
        f"cryophile peak-RSS scaling: {args.compression}{level}, engine {args.engine}, fragments"
        f" {format_size(args.fragment_size)}, {args.runs} run(s) per size, {os.cpu_count()} CPUs",
        "",
        f"{'input':>6} {'backup s':>9} {'MB/s':>6} {'peak RSS':>9} {'(anon)':>7}"
        f" {'restore s':>10} {'MB/s':>6} {'peak RSS':>9} {'(anon)':>7} {'other load':>10}",
    ]
    for size, backup, restore in rows:
        lines.append(
            f"{format_size(size):>6} {backup.median:>9.2f} {backup.mb_per_s:>6.0f}"
            f" {backup.peak_mib:>9.1f} {backup.peak_anon_mib:>7.1f}"
            f" {restore.median:>10.2f} {restore.mb_per_s:>6.0f} {restore.peak_mib:>9.1f}"
            f" {restore.peak_anon_mib:>7.1f} {max(backup.other_load, restore.other_load):>9.0%}")
    lines += [
        "",
        f"backup peak RSS growth {growth_label}:  {backup_growth:+7.1%}   target ≤ +10 %"
        f"   {verdict(backup_growth <= TARGET_RSS_GROWTH)}",
        f"restore peak RSS growth {growth_label}: {restore_growth:+7.1%}   target ≤ +10 %"
        f"   {verdict(restore_growth <= TARGET_RSS_GROWTH)}",
        "",
        "peak RSS breakdown at the largest input:",
        *snapshot_lines(last[1]),
        *snapshot_lines(last[2]),
    ]
    print("\n".join(lines))
    return 0


def add_noise_options(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark here shares: waiting for quiet, repeating noisy rounds, JSON."""
    parser.add_argument("--wait-idle", type=float, default=60.0, metavar="SECONDS",
                        help="before each timed run, wait up to this long until other"
                             " processes use < 0.25 CPU (default 60; 0 = never wait)")
    parser.add_argument("--max-other-load", type=float, default=0.15, metavar="SHARE",
                        help="repeat a round when, in one of its runs, other processes used"
                             " more than this share of the CPUs (default 0.15)")
    parser.add_argument("--retries", type=int, default=3,
                        help="at most this many rounds are repeated for noise (default 3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark cryophile backup/restore against zstd | gpg | split.",
        epilog="See bench/README.md.")
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"),
                        help="input size, binary units (default 1G)")
    parser.add_argument("--runs", type=int, default=3,
                        help="rounds (default 3); medians are reported")
    parser.add_argument("--fragment-size", type=parse_size, default=parse_size("256M"),
                        help="fragment size for cryophile -s and split -b (default 256M)")
    parser.add_argument("--compression", choices=("zstd", "lz4", "none"), default="zstd",
                        help="compression on both sides (default zstd)")
    parser.add_argument("--level", type=int, default=3,
                        help="zstd level on both sides (default 3)")
    parser.add_argument("--engine", choices=ENGINES, default="fast",
                        help="cryophile's OpenPGP engine, passed to backup and restore; the"
                             " targets are issue 14's for fast, issue 2's for reference"
                             " (default fast)")
    parser.add_argument("--workdir", type=Path,
                        help="working directory, kept afterwards, inputs reused (default: a"
                             " temporary directory under /var/tmp, removed afterwards)")
    parser.add_argument("--cryophile", default=str(DEFAULT_CRYOPHILE),
                        help=f"the cryophile command (default {DEFAULT_CRYOPHILE})")
    parser.add_argument("--interval", type=float, default=0.02,
                        help="RSS sampling interval in seconds (default 0.02)")
    parser.add_argument("--diy-guarantees", action="store_true",
                        help="also time the DIY pipelines with cryophile's guarantees: backup"
                             " followed by 'sync' of every fragment, restore preceded by"
                             " 'sha256sum -c' of every fragment; reports their ratios (no"
                             " target)")
    parser.add_argument("--rss-scaling", action="store_true",
                        help="measure cryophile's peak RSS at two input sizes instead")
    parser.add_argument("--scaling-sizes", type=lambda text: [parse_size(part)
                                                              for part in text.split(",")],
                        default=[parse_size("512M"), parse_size("4G")],
                        help="comma-separated sizes for --rss-scaling (default 512M,4G)")
    parser.add_argument("--keep-inputs", action="store_true",
                        help="--rss-scaling: keep the input files in --workdir")
    add_noise_options(parser)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.rss_scaling and len(args.scaling_sizes) < 2:
        parser.error("--scaling-sizes needs at least two sizes")
    return args


@contextlib.contextmanager
def working_directory(requested: Path | None) -> Iterator[Path]:
    if requested is not None:
        requested.mkdir(parents=True, exist_ok=True)
        yield requested.resolve()
        return
    path = Path(tempfile.mkdtemp(prefix="cryophile-bench-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def precompile(cryophile: str) -> None:
    """Run cryophile as installed: with its modules' bytecode cached.

    ``pip install`` compiles a package's bytecode; a source checkout writes
    it on first import, unless PYTHONDONTWRITEBYTECODE is set (as on the
    machines this was written on): then every start compiles every module
    again (~0.1 s a run), a cost no installed copy pays. So the variable is
    dropped for the timed commands and the package is compiled once here.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    script = Path(shutil.which(cryophile) or cryophile)
    try:
        first_line = script.read_bytes().split(b"\n", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        first_line = ""
    interpreter = first_line[2:].strip() if first_line.startswith("#!") else ""
    found = subprocess.run([interpreter, "-c", "import cryophile; print(cryophile.__path__[0])"],
                           capture_output=True, text=True, check=False) if interpreter else None
    if found is None or found.returncode != 0:
        log(f"cannot find cryophile's package from {script}: its bytecode is not precompiled")
        return
    subprocess.run([interpreter, "-m", "compileall", "-q", found.stdout.strip()], check=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    IDLE["max_wait"] = args.wait_idle
    cryophile = args.cryophile
    if shutil.which(cryophile) is None:
        log(f"cryophile command not found: {cryophile}")
        return 2
    precompile(cryophile)
    for tool in ("gpg", "gpgconf", "tar", "split", "zstd", "lz4"):
        if shutil.which(tool) is None:
            log(f"{tool} not found")
            return 2
    with working_directory(args.workdir) as workdir:
        try:
            if args.rss_scaling:
                return scaling_mode(args, workdir, cryophile)
            return compare_mode(args, workdir, cryophile)
        except CommandFailedError as failure:
            log(f"{failure}\ncommand: {failure.command}\nstderr:\n{failure.stderr}")
            return 1


if __name__ == "__main__":
    sys.exit(main())

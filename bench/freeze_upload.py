#!/usr/bin/env python3
"""Benchmark ``cryophile freeze --once`` against a plain boto3 ``upload_file`` loop.

Both upload the same queued fragments to a local SeaweedFS (started here
exactly as the tests start it, by ``SeaweedFS`` from ``tests/s3server.py``),
alternating in every round:

* cryophile freeze   ``cryophile freeze --once -S SPOOL -c CONFIG`` on a spool
                     re-populated (``cp -al``, untimed) from a saved copy of
                     the freeze queue, into a fresh bucket;
* boto3 upload_file  a fresh Python process that uploads the same files with
                     ``client.upload_file(path, bucket, key, ExtraArgs=
                     {"ChecksumAlgorithm": "SHA256", "StorageClass": ...})``,
                     default ``TransferConfig``, one file after the other
                     (fragments in GLACIER, the manifest last in STANDARD, as
                     cryophile does), into a fresh bucket.

Both times include interpreter start-up and imports. The queue is made once:
``cryophile backup -C none -s 256M`` of ``--size`` random bytes, encrypted
to a throwaway GnuPG cv25519 key (``bench/backup_restore.py``'s helpers).
Each bucket is checked (keys and sizes) after its run and then deleted.

Prints the median times, MB/s (stored bytes ÷ median s ÷ 10⁶), the client
and server CPU time, and the ratio boto3 time ÷ cryophile time against the
target of issue 3 (≥ 0.9). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CRYOPHILE = REPO / ".venv" / "bin" / "cryophile"
VAULT = "6f1c2c7e-3b1a-4c55-9a0e-0000be4c0002"
PREFIX = "bench"
MIB = 1 << 20
TARGET_RATIO = 0.9

CRYOPHILE = "cryophile freeze --once"
BOTO3 = "boto3 upload_file loop"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- boto3 side


def boto3_upload(endpoint: str, region: str, bucket: str, prefix: str,
                 files: Sequence[Path]) -> None:
    """The reference: what a careful script would do with boto3 alone.

    Runs in its own process (``--boto3-upload``), so its time includes
    start-up and imports like cryophile's. Credentials come from the
    environment, as for cryophile.
    """
    import boto3  # noqa: PLC0415 - only the worker process needs it

    client = boto3.session.Session(region_name=region).client(
        "s3", endpoint_url=endpoint, region_name=region)
    for path in files:
        storage_class = "STANDARD" if path.name == "chunk.0" else "GLACIER"
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}",
                           ExtraArgs={"ChecksumAlgorithm": "SHA256",
                                      "StorageClass": storage_class})


# --------------------------------------------------------------------------- measuring


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        data = stat.read()
    fields = data[data.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Run:
    name: str
    seconds: float
    client_cpu: float
    server_cpu: float
    other_cpu: float

    @property
    def other_load(self) -> float:
        """The share of all CPUs that processes outside the benchmark used."""
        return self.other_cpu / (self.seconds * (os.cpu_count() or 1))


@dataclasses.dataclass
class Summary:
    name: str
    runs: list[Run]
    stored: int

    @property
    def median(self) -> float:
        return statistics.median(run.seconds for run in self.runs)

    @property
    def mb_per_s(self) -> float:
        return self.stored / self.median / 1e6

    def cpu(self, side: str) -> float:
        return float(statistics.median(getattr(run, side) for run in self.runs))

    @property
    def other_load(self) -> float:
        return max(run.other_load for run in self.runs)


@dataclasses.dataclass
class Bench:
    """Everything the timed runs need."""

    cryophile: str
    workdir: Path
    saved_spool: Path
    files: list[Path]
    ulid: str
    endpoint: Any  # s3server.S3Endpoint
    server_pid: int
    env: dict[str, str]
    parallel: int | None

    @property
    def stored(self) -> int:
        return sum(path.stat().st_size for path in self.files)

    def new_bucket(self) -> str:
        name = f"bench-{uuid.uuid4().hex[:16]}"
        self.endpoint.client().create_bucket(Bucket=name)
        return name

    def check_and_drop(self, bucket: str, name: str) -> None:
        """The bucket holds every file with its size; then it goes (to free the disk)."""
        client = self.endpoint.client()
        found: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for entry in page.get("Contents", []):
                found[entry["Key"]] = entry["Size"]
        expected = {f"{PREFIX}/{self.ulid}/{path.name}": path.stat().st_size
                    for path in self.files}
        if found != expected:
            raise RuntimeError(f"{name}: bucket {bucket} holds {found}, expected {expected}")
        client.delete_bucket(Bucket=bucket)

    def timed(self, name: str, argv: Sequence[str], stderr_path: Path) -> Run:
        os.sync()  # the previous run's dirty pages are not this run's cost
        wait_for_idle()
        server_before = process_cpu(self.server_pid)
        children_before = _children_cpu()
        busy_before, own_before = _busy_cpu_seconds(), _self_cpu()
        with open(stderr_path, "wb") as stderr:
            started = time.perf_counter()
            completed = subprocess.run(list(argv), env=self.env, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=stderr, check=False)
            seconds = time.perf_counter() - started
        if completed.returncode != 0:
            raise RuntimeError(f"{name} failed (exit status {completed.returncode}):\n"
                               + stderr_path.read_text(errors="replace"))
        client = _children_cpu() - children_before
        server = process_cpu(self.server_pid) - server_before
        busy = _busy_cpu_seconds() - busy_before
        own = _self_cpu() - own_before
        return Run(name, seconds, client, server, max(0.0, busy - client - server - own))

    def run_cryophile(self, round_number: int) -> Run:
        bucket = self.new_bucket()
        spool = self.workdir / "spool"
        if spool.exists():
            shutil.rmtree(spool)
        subprocess.run(["cp", "-al", str(self.saved_spool), str(spool)], check=True)
        config = self.workdir / "cryophile.toml"
        config.write_text("\n".join([
            "[[vault]]", f'id = "{VAULT}"', 'provider = "s3"', f'bucket = "{bucket}"',
            f'endpoint_url = "{self.endpoint.url}"', f'region = "{self.endpoint.region}"',
        ]) + "\n")
        argv = [self.cryophile, "freeze", "--once", "-S", str(spool), "-c", str(config)]
        if self.parallel is not None:
            argv += ["-j", str(self.parallel)]
        result = self.timed(CRYOPHILE, argv, self.workdir / f"cryophile-{round_number}.stderr")
        self.check_and_drop(bucket, CRYOPHILE)
        leftovers = [path for path in (spool / "freeze").rglob("*") if path.is_file()]
        if leftovers:
            raise RuntimeError(f"cryophile left fragments in the queue: {leftovers}")
        shutil.rmtree(spool)
        return result

    def run_boto3(self, round_number: int) -> Run:
        bucket = self.new_bucket()
        argv = [sys.executable, str(Path(__file__).resolve()), "--boto3-upload",
                self.endpoint.url, self.endpoint.region, bucket, f"{PREFIX}/{self.ulid}",
                *map(str, self.files)]
        result = self.timed(BOTO3, argv, self.workdir / f"boto3-{round_number}.stderr")
        self.check_and_drop(bucket, BOTO3)
        return result


def wait_for_idle() -> None:
    """backup_restore's wait: SeaweedFS may still be deleting the last bucket."""
    import backup_restore  # noqa: PLC0415 - bench/ is put on sys.path by main()

    backup_restore.wait_for_idle()


def _busy_cpu_seconds() -> float:
    import backup_restore  # noqa: PLC0415 - bench/ is put on sys.path by main()

    return backup_restore._busy_cpu_seconds()


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- set-up


def isolated_aws_environment(workdir: Path) -> None:
    """No AWS setting of the user's reaches boto3 here or in the children."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            del os.environ[name]
    os.environ["AWS_CONFIG_FILE"] = str(workdir / "no-aws" / "config")
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(workdir / "no-aws" / "credentials")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


def make_queue(cryophile: str, workdir: Path, size: int, fragment_size: int,
               keys: Any) -> tuple[Path, str, list[Path]]:
    """A spool whose freeze queue holds one backup of ``size`` random bytes."""
    spool = workdir / "saved-spool"
    spool.mkdir()
    source = workdir / "input"
    log(f"writing {size >> 20} MiB of random input …")
    with open(source, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(MIB, left))
            out.write(block)
            left -= len(block)
    log("cryophile backup -C none (untimed) …")
    with open(source, "rb") as stdin:
        completed = subprocess.run(
            [cryophile, "backup", "-S", str(spool), "-v", VAULT, "-p", PREFIX, "-k",
             str(keys.cert), "-s", str(fragment_size), "-C", "none", "--json"],
            stdin=stdin, capture_output=True, check=False)
    source.unlink()
    if completed.returncode != 0:
        raise RuntimeError("cryophile backup failed:\n" + completed.stderr.decode())
    ulid = str(json.loads(completed.stdout)["ulid"])
    queue = spool / "freeze" / VAULT / PREFIX / ulid
    fragments = sorted((path for path in queue.iterdir() if path.name != "chunk.0"),
                       key=lambda path: int(path.name.split(".")[1]))
    return spool, ulid, [*fragments, queue / "chunk.0"]


@contextlib.contextmanager
def working_directory(requested: Path | None) -> Iterator[Path]:
    if requested is not None:
        requested.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="freeze-upload-", dir=requested))
    else:
        path = Path(tempfile.mkdtemp(prefix="cryophile-bench-freeze-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- report


def report(summaries: dict[str, Summary], args: argparse.Namespace, files: Sequence[Path],
           weed_version: str) -> list[str]:
    cryophile, boto3 = summaries[CRYOPHILE], summaries[BOTO3]
    ratio = boto3.median / cryophile.median
    fragments = len(files) - 1
    lines = [
        f"freeze upload: {args.size >> 20} MiB random input → {fragments} fragment(s) of "
        f"≤ {args.fragment_size >> 20} MiB + manifest = {cryophile.stored / 1e6:.0f} MB "
        f"stored; SeaweedFS {weed_version} on 127.0.0.1; {args.runs} round(s); "
        f"{os.cpu_count()} CPUs",
        "",
        f"{'command':<24} {'median s':>8} {'min s':>7} {'max s':>7} {'MB/s':>7}"
        f" {'client CPU s':>12} {'server CPU s':>12} {'other load':>10}",
    ]
    for summary in (cryophile, boto3):
        times = [run.seconds for run in summary.runs]
        lines.append(
            f"{summary.name:<24} {summary.median:>8.2f} {min(times):>7.2f} {max(times):>7.2f}"
            f" {summary.mb_per_s:>7.0f} {summary.cpu('client_cpu'):>12.2f}"
            f" {summary.cpu('server_cpu'):>12.2f} {summary.other_load:>9.0%}")
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    lines += [
        "",
        f"runs (s): cryophile {', '.join(f'{run.seconds:.2f}' for run in cryophile.runs)};"
        f" boto3 {', '.join(f'{run.seconds:.2f}' for run in boto3.runs)}",
        f"ratio boto3 time ÷ cryophile time: {ratio:.2f}   target ≥ {TARGET_RATIO}   {verdict}",
    ]
    return lines


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    import backup_restore  # noqa: PLC0415 - bench/ is put on sys.path by main()

    parser = argparse.ArgumentParser(
        description="Benchmark cryophile freeze --once against a boto3 upload_file loop "
                    "on a local SeaweedFS.", epilog="See bench/README.md.")
    parser.add_argument("--size", type=backup_restore.parse_size,
                        default=backup_restore.parse_size("2G"),
                        help="random input to back up and queue (default 2G)")
    parser.add_argument("--runs", type=int, default=3,
                        help="rounds (default 3); medians are reported")
    parser.add_argument("--fragment-size", type=backup_restore.parse_size,
                        default=backup_restore.parse_size("256M"),
                        help="cryophile backup -s (default 256M)")
    parser.add_argument("-j", "--parallel", type=int, default=None,
                        help="cryophile freeze -j (default: cryophile's own default)")
    parser.add_argument("--workdir", type=Path,
                        help="make the working directory inside this one (default /var/tmp);"
                             " removed afterwards")
    parser.add_argument("--cryophile", default=str(DEFAULT_CRYOPHILE),
                        help=f"the cryophile command (default {DEFAULT_CRYOPHILE})")
    backup_restore.add_noise_options(parser)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    backup_restore.IDLE["max_wait"] = args.wait_idle
    return args


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--boto3-upload"]:
        url, region, bucket_name, prefix, *names = arguments[1:]
        boto3_upload(url, region, bucket_name, prefix, [Path(name) for name in names])
        return 0
    sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]
    import backup_restore  # noqa: PLC0415 - bench/ is on sys.path only now
    import s3server  # noqa: PLC0415 - tests/ is on sys.path only now

    args = parse_arguments(arguments)
    if shutil.which(args.cryophile) is None:
        log(f"cryophile command not found: {args.cryophile}")
        return 2
    with working_directory(args.workdir) as workdir:
        isolated_aws_environment(workdir)
        keys = backup_restore.make_key(workdir)
        (workdir / "seaweedfs").mkdir()
        server = s3server.SeaweedFS(workdir / "seaweedfs")
        try:
            saved, ulid, files = make_queue(args.cryophile, workdir, args.size,
                                            args.fragment_size, keys)
            log("starting SeaweedFS …")
            endpoint = server.start()
            assert server.process is not None
            weed = subprocess.run([str(s3server.weed_binary()), "version"],
                                  capture_output=True, text=True, check=False).stdout
            weed_version = weed.split()[2] if len(weed.split()) > 2 else "?"
            env = dict(os.environ, AWS_ACCESS_KEY_ID=endpoint.access_key,
                       AWS_SECRET_ACCESS_KEY=endpoint.secret_key)
            bench = Bench(args.cryophile, workdir, saved, files, ulid, endpoint,
                          server.process.pid, env, args.parallel)
            runs: dict[str, list[Run]] = {CRYOPHILE: [], BOTO3: []}
            round_number = repeated = 0
            while len(runs[CRYOPHILE]) < args.runs:
                round_number += 1
                order = ((bench.run_cryophile, bench.run_boto3) if round_number % 2
                         else (bench.run_boto3, bench.run_cryophile))
                results = [step(round_number) for step in order]
                for result in results:
                    log(f"round {round_number}: {result.name:<24} {result.seconds:6.2f} s"
                        f"  (other load {result.other_load:.0%})")
                noisy = max(result.other_load for result in results) > args.max_other_load
                if noisy and repeated < args.retries:
                    repeated += 1
                    log(f"    round {round_number} was noisy: repeating it")
                    continue
                for result in results:
                    runs[result.name].append(result)
        except RuntimeError as failure:
            log(str(failure))
            return 1
        finally:
            server.stop()
            backup_restore.kill_agent(keys.homedir)
        summaries = {name: Summary(name, results, bench.stored)
                     for name, results in runs.items()}
        if args.json:
            print(json.dumps({
                name: {"runs_seconds": [round(run.seconds, 3) for run in summary.runs],
                       "median_seconds": round(summary.median, 3),
                       "mb_per_s": round(summary.mb_per_s, 1),
                       "client_cpu_seconds_median": round(summary.cpu("client_cpu"), 2),
                       "server_cpu_seconds_median": round(summary.cpu("server_cpu"), 2),
                       "other_load_max": round(summary.other_load, 3)}
                for name, summary in summaries.items()} | {
                "stored_bytes": bench.stored, "fragments": len(files) - 1,
                "ratio_boto3_over_cryophile": round(
                    summaries[BOTO3].median / summaries[CRYOPHILE].median, 3)}, indent=2))
        else:
            print("\n".join(report(summaries, args, files, weed_version)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""End-to-end benchmark: a stream into the vault and back, against the DIY pipelines.

Issue 14's four comparisons, each alternating cryophile and the do-it-yourself
pipeline in every round, on one input (half random, half a tar of /usr and /etc,
``bench/backup_restore.py``'s input), to a real SeaweedFS (``tests/s3server.py``)
and to a directory vault on the same disk as the spool:

``s3-backup``
    cryophile: ``backup --freeze`` (when this cryophile has it; else ``backup`` then
    ``freeze --once``, timed together) from an empty spool;
    DIY: ``zstd -3 -T2 | gpg -e | aws s3 cp - s3://BUCKET/KEY`` (aws-cli).
``s3-restore``
    cryophile: ``restore --thaw > /dev/null`` from an empty spool, every fragment
    verified against the manifest before its plaintext is released;
    DIY: ``for each chunk: aws s3 cp s3://…/chunk.N - ; done | gpg -d | zstd -d``.
``dir-backup``
    cryophile: as ``s3-backup``, into a directory vault;
    DIY: ``zstd | gpg -e | split`` into that directory.
``dir-restore``
    cryophile: ``restore --thaw`` from the directory vault;
    DIY: ``cat VAULT/…/chunk.1 … chunk.N | gpg -d | zstd -d``.

Reported per scenario: median wall time of each side, the ratio DIY ÷ cryophile
(> 1: cryophile is faster) against issue 14's target, the peak RSS summed over
every process of the command, and cryophile's peak spool use (sampled every 50 ms)
against the spool's budget. Every restore's output is hashed against the input
once, untimed. aws-cli is taken from ``--aws`` (default ``aws`` on PATH; a venv
with ``pip install awscli`` works). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CRYOPHILE = REPO / ".venv" / "bin" / "cryophile"
VAULT_S3 = "6f1c2c7e-3b1a-4c55-9a0e-0000be4c0003"
VAULT_DIR = "6f1c2c7e-3b1a-4c55-9a0e-0000be4c0004"
PREFIX = "bench"
MIB = 1 << 20

#: Issue 14's targets: DIY time ÷ cryophile time.
TARGETS = {"s3-backup": 1.3, "s3-restore": 1.2, "dir-backup": 0.9, "dir-restore": 1.0}
#: Issue 14's memory target, summed over the processes of one command.
TARGET_RSS_MIB = 160.0
SCENARIOS = tuple(TARGETS)


def no_server_cpu() -> float:
    """The CPU of a server that runs elsewhere (``--endpoint``): not counted here."""
    return 0.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class SpoolSampler:
    """Peak bytes of fragments in a spool (cryophile.spool_budget.spool_usage), sampled."""

    def __init__(self, root: Path, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from cryophile.spool_budget import spool_usage  # noqa: PLC0415 - the venv's cryophile

        while not self._stop.wait(self.interval):
            if self.root.exists():
                self.peak = max(self.peak, spool_usage(self.root).total)

    def __enter__(self) -> SpoolSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclasses.dataclass
class Sample:
    seconds: float
    peak_rss: int
    peak_spool: int = 0
    #: CPU seconds of the command's processes, and of the S3 server meanwhile.
    cpu: float = 0.0
    server_cpu: float = 0.0


@dataclasses.dataclass
class Scenario:
    """One comparison: how to prepare, run and check each side."""

    name: str
    cryophile: Callable[[int], Sample]
    diy: Callable[[int], Sample]
    samples: dict[str, list[Sample]] = dataclasses.field(
        default_factory=lambda: {"cryophile": [], "diy": []})

    def median(self, side: str) -> float:
        return statistics.median(sample.seconds for sample in self.samples[side])

    def median_cpu(self, side: str, *, server: bool = False) -> float:
        return statistics.median(sample.server_cpu if server else sample.cpu
                                 for sample in self.samples[side])

    def peak_rss_mib(self, side: str) -> float:
        return max(sample.peak_rss for sample in self.samples[side]) / MIB

    @property
    def ratio(self) -> float:
        return self.median("diy") / self.median("cryophile")


class Bench:
    """The set-up every scenario shares: keys, input, server, configuration."""

    def __init__(self, args: argparse.Namespace, workdir: Path, endpoint: Any,
                 backup_restore: Any, server_cpu: Callable[[], float]) -> None:
        self.args = args
        #: CPU seconds the S3 server has used so far (0 for a server elsewhere).
        self.server_cpu = server_cpu
        self.workdir = workdir
        self.endpoint = endpoint
        self.br = backup_restore
        self.keys = backup_restore.make_key(workdir)
        self.agent_pids: list[int] = backup_restore.launch_agent(self.keys.homedir)
        self.input = workdir / "input"
        self.input_sha256 = backup_restore.build_input(self.input, args.size)
        self.bucket = f"bench-{uuid.uuid4().hex[:12]}"
        endpoint.client().create_bucket(Bucket=self.bucket)
        # The first write into a new bucket makes SeaweedFS grow the volumes of its
        # collection: 3-4 CPU-seconds of the server's, charged to whichever side
        # ran first. Paid here, untimed.
        endpoint.client().put_object(Bucket=self.bucket, Key="warm-up",
                                     Body=os.urandom(16 * MIB))
        endpoint.client().delete_object(Bucket=self.bucket, Key="warm-up")
        self.vault_dir = workdir / "vault"
        self.vault_dir.mkdir()
        self.config = workdir / "cryophile.toml"
        budget = f'spool_limit = "{args.spool_limit}"\n' if args.spool_limit else ""
        self.config.write_text(budget + "\n".join([
            "[[vault]]", f'id = "{VAULT_S3}"', 'provider = "s3"', f'bucket = "{self.bucket}"',
            f'endpoint_url = "{endpoint.url}"', f'region = "{endpoint.region}"',
            'storage_class = "STANDARD"',
            "[[vault]]", f'id = "{VAULT_DIR}"', 'provider = "dir"', f'path = "{self.vault_dir}"',
        ]) + "\n")
        # The measured commands inherit this process's environment.
        os.environ.update(AWS_ACCESS_KEY_ID=endpoint.access_key,
                          AWS_SECRET_ACCESS_KEY=endpoint.secret_key,
                          AWS_DEFAULT_REGION=endpoint.region)
        self.env = dict(os.environ)
        help_text = subprocess.run([args.cryophile, "backup", "--help"], capture_output=True,
                                   text=True, check=False).stdout
        self.has_freeze = "--freeze" in help_text
        self.ulids: dict[str, str] = {}
        self.fragments: dict[str, int] = {}

    # -- running ---------------------------------------------------------------------

    def spool(self, tag: str) -> Path:
        path = self.workdir / f"spool-{tag}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(mode=0o700)
        return path

    def run(self, name: str, argv: Sequence[str], *, stdin: Path | None = None,
            spool: Path | None = None, to_null: bool = False) -> tuple[Sample, bytes]:
        sampler = SpoolSampler(spool) if spool is not None else contextlib.nullcontext()
        server_before = self.server_cpu()
        with sampler:
            result = self.br.measured(name, argv, stdin=stdin, stdout_to_null=to_null,
                                      stderr_path=self.workdir / f"{name}.stderr",
                                      extra_pids=self.agent_pids)
        peak_spool = sampler.peak if isinstance(sampler, SpoolSampler) else 0
        server_cpu = self.server_cpu() - server_before
        return Sample(result.seconds, result.peak_rss, peak_spool, result.cpu_seconds,
                      server_cpu), result.stdout

    @staticmethod
    def env_script(script: str) -> list[str]:
        return ["bash", "-o", "pipefail", "-c", script]

    # -- cryophile ---------------------------------------------------------------------

    def cryophile_backup(self, vault: str, round_number: int) -> Sample:
        spool = self.spool("backup")
        tag = "s3" if vault == VAULT_S3 else "dir"
        moment = f"2026-01-01T00:{round_number:02d}:00Z"
        backup = [self.args.cryophile, "backup", "-S", str(spool), "-c", str(self.config),
                  "-v", vault, "-p", f"{PREFIX}-{tag}", "-k", str(self.keys.cert),
                  "-s", str(self.args.fragment_size), "-t", moment, "--json"]
        if self.has_freeze:
            argv = [*backup, "--freeze"]
        else:
            freeze = [self.args.cryophile, "freeze", "--once", "-S", str(spool),
                      "-c", str(self.config)]
            argv = ["bash", "-o", "pipefail", "-c",
                    f"{shlex.join(backup)} && {shlex.join(freeze)} >&2"]
        sample, output = self.run(f"cryophile-{tag}-backup", argv, stdin=self.input,
                                  spool=spool)
        report = json.loads(output)
        self.ulids[tag] = str(report["ulid"])
        shutil.rmtree(spool)
        return sample

    def cryophile_restore(self, vault: str, tag: str) -> Sample:
        spool = self.spool("restore")
        argv = [self.args.cryophile, "restore", "--thaw", "-S", str(spool), "-c",
                str(self.config), "-v", vault, "-p", f"{PREFIX}-{tag}", "-u", self.ulids[tag],
                "-k", str(self.keys.secret)]
        sample, _ = self.run(f"cryophile-{tag}-restore", argv, spool=spool, to_null=True)
        shutil.rmtree(spool)
        return sample

    # -- DIY ---------------------------------------------------------------------------

    def gpg(self, action: str) -> str:
        home = shlex.quote(str(self.keys.homedir))
        if action == "encrypt":
            return (f"gpg --homedir {home} --batch -e --compress-algo none "
                    f"--recipient-file {shlex.quote(str(self.keys.cert))}")
        return f"gpg --homedir {home} --batch -q -d"

    def diy_s3_backup(self, round_number: int) -> Sample:
        url = shlex.quote(self.endpoint.url)
        script = (f"zstd -3 -T2 -q -c < {shlex.quote(str(self.input))} | {self.gpg('encrypt')}"
                  f" | {shlex.quote(self.args.aws)} --endpoint-url {url} s3 cp --only-show-errors"
                  f" - s3://{self.bucket}/diy/{round_number}/stream.zst.gpg")
        sample, _ = self.run("diy-s3-backup", self.env_script(script))
        return sample

    def chunk_names(self, tag: str) -> list[str]:
        return [f"chunk.{index}" for index in range(1, self.fragments[tag] + 1)]

    def diy_s3_restore(self, _round: int) -> Sample:
        url = shlex.quote(self.endpoint.url)
        key = f"{PREFIX}-s3/{self.ulids['s3']}"
        loop = "; ".join(f"{shlex.quote(self.args.aws)} --endpoint-url {url} s3 cp"
                         f" --only-show-errors s3://{self.bucket}/{key}/{name} -"
                         for name in self.chunk_names("s3"))
        script = f"( {loop} ) | {self.gpg('decrypt')} | zstd -d -q -c > /dev/null"
        sample, _ = self.run("diy-s3-restore", self.env_script(script))
        return sample

    def diy_dir_backup(self, round_number: int) -> Sample:
        out = self.vault_dir / "diy" / str(round_number)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        script = (f"zstd -3 -T2 -q -c < {shlex.quote(str(self.input))} | {self.gpg('encrypt')}"
                  f" | split -b {self.args.fragment_size} - {shlex.quote(str(out))}/chunk.")
        sample, _ = self.run("diy-dir-backup", self.env_script(script))
        shutil.rmtree(out)
        return sample

    def diy_dir_restore(self, _round: int) -> Sample:
        directory = self.vault_dir / f"{PREFIX}-dir" / self.ulids["dir"]
        files = " ".join(shlex.quote(str(directory / name)) for name in self.chunk_names("dir"))
        script = f"cat {files} | {self.gpg('decrypt')} | zstd -d -q -c > /dev/null"
        sample, _ = self.run("diy-dir-restore", self.env_script(script))
        return sample

    # -- checks --------------------------------------------------------------------------

    def count_fragments(self, tag: str) -> None:
        """How many data fragments the last cryophile backup of ``tag`` stored."""
        if tag == "dir":
            directory = self.vault_dir / f"{PREFIX}-dir" / self.ulids["dir"]
            names = [path.name for path in directory.iterdir()]
        else:
            listing = self.endpoint.client().list_objects_v2(
                Bucket=self.bucket, Prefix=f"{PREFIX}-s3/{self.ulids['s3']}/")
            names = [entry["Key"].rsplit("/", 1)[1] for entry in listing.get("Contents", [])]
        data = [name for name in names if name.startswith("chunk.") and name != "chunk.0"
                and name.split(".")[1].isdigit() and len(name.split(".")) == 2]
        if "chunk.0" not in names:
            raise RuntimeError(f"the {tag} backup has no manifest in the vault: {names}")
        self.fragments[tag] = len(data)

    def check_restore(self, vault: str, tag: str) -> None:
        """Untimed: cryophile's and the DIY restore both give the input back."""
        spool = self.spool("check")
        ours = self.br.hashed_output(
            "check cryophile restore",
            [self.args.cryophile, "restore", "--thaw", "-S", str(spool), "-c", str(self.config),
             "-v", vault, "-p", f"{PREFIX}-{tag}", "-u", self.ulids[tag],
             "-k", str(self.keys.secret)], self.workdir / "check.stderr")
        shutil.rmtree(spool)
        if ours != self.input_sha256:
            raise RuntimeError(f"cryophile restore from {tag} is not the input")
        log(f"  OK: cryophile restore from the {tag} vault = input (sha256)")


def scenarios(bench: Bench) -> dict[str, Scenario]:
    return {
        "s3-backup": Scenario("s3-backup", lambda n: bench.cryophile_backup(VAULT_S3, n),
                              bench.diy_s3_backup),
        "s3-restore": Scenario("s3-restore", lambda _n: bench.cryophile_restore(VAULT_S3, "s3"),
                               bench.diy_s3_restore),
        "dir-backup": Scenario("dir-backup", lambda n: bench.cryophile_backup(VAULT_DIR, n),
                               bench.diy_dir_backup),
        "dir-restore": Scenario("dir-restore",
                                lambda _n: bench.cryophile_restore(VAULT_DIR, "dir"),
                                bench.diy_dir_restore),
    }


def run_all(bench: Bench, chosen: Sequence[str]) -> list[Scenario]:
    table = scenarios(bench)
    done = []
    for name in chosen:
        scenario = table[name]
        tag = name.split("-")[0]
        if name.endswith("-restore") and tag not in bench.ulids:
            log(f"{name}: making the backup to restore (untimed) …")
            bench.cryophile_backup(VAULT_S3 if tag == "s3" else VAULT_DIR, 0)
        if name.endswith("-restore"):
            bench.count_fragments(tag)
            bench.check_restore(VAULT_S3 if tag == "s3" else VAULT_DIR, tag)
        for round_number in range(1, bench.args.runs + 1):
            order = (("cryophile", scenario.cryophile), ("diy", scenario.diy))
            if round_number % 2 == 0:
                order = order[::-1]
            for side, step in order:
                sample = step(round_number)
                scenario.samples[side].append(sample)
                log(f"{name} round {round_number}: {side:<9} {sample.seconds:6.2f} s "
                    f"cpu {sample.cpu:5.1f} s server {sample.server_cpu:5.1f} s "
                    f"rss {sample.peak_rss / MIB:6.1f} MiB"
                    + (f" spool {sample.peak_spool / MIB:6.1f} MiB" if side == "cryophile"
                       else ""))
        if name.endswith("-backup"):
            bench.count_fragments(tag)
        done.append(scenario)
    return done


def report(done: Sequence[Scenario], bench: Bench) -> list[str]:
    size = bench.args.size
    lines = [f"input {size / MIB:.0f} MiB (half random, half tar), -s "
             f"{bench.args.fragment_size / MIB:.0f} MiB, {bench.args.runs} alternating pairs,"
             f" cryophile backup {'--freeze' if bench.has_freeze else '+ freeze --once'}",
             f"{'scenario':<12} {'cryophile s':>11} {'DIY s':>7} {'ratio':>6} {'target':>6}"
             f" {'ok':>3} {'RSS MiB':>8} {'DIY RSS':>8} {'spool MiB':>9}"
             f" {'CPU s':>6} {'DIY CPU':>7} {'server':>6} {'DIY srv':>7}"]
    for scenario in done:
        target = TARGETS[scenario.name]
        peak_spool = max(sample.peak_spool for sample in scenario.samples["cryophile"]) / MIB
        ok = scenario.ratio >= target and scenario.peak_rss_mib("cryophile") <= TARGET_RSS_MIB
        lines.append(f"{scenario.name:<12} {scenario.median('cryophile'):11.2f} "
                     f"{scenario.median('diy'):7.2f} {scenario.ratio:6.2f} {target:6.2f} "
                     f"{'yes' if ok else 'NO':>3} {scenario.peak_rss_mib('cryophile'):8.1f} "
                     f"{scenario.peak_rss_mib('diy'):8.1f} {peak_spool:9.1f} "
                     f"{scenario.median_cpu('cryophile'):6.1f} {scenario.median_cpu('diy'):7.1f} "
                     f"{scenario.median_cpu('cryophile', server=True):6.1f} "
                     f"{scenario.median_cpu('diy', server=True):7.1f}")
    lines.append("ratio = DIY median ÷ cryophile median (> 1: cryophile faster); "
                 f"RSS target ≤ {TARGET_RSS_MIB:.0f} MiB summed over processes; CPU s: "
                 "the command's processes; server: SeaweedFS meanwhile (medians)")
    return lines


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cryophile", default=str(DEFAULT_CRYOPHILE))
    parser.add_argument("--aws", default=shutil.which("aws") or "aws",
                        help="the aws-cli executable (pip install awscli)")
    parser.add_argument("--size", type=lambda text: int(float(text.rstrip("M")) * MIB),
                        default=1024 * MIB, help="input size in MiB, e.g. 1024M (default)")
    parser.add_argument("--fragment-size", type=lambda text: int(float(text.rstrip("M")) * MIB),
                        default=64 * MIB, help="cryophile -s and the DIY split size")
    parser.add_argument("--spool-limit", default="",
                        help="spool_limit for cryophile's spool (default: its own default)")
    parser.add_argument("--runs", type=int, default=3, help="alternating pairs per scenario")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="run only these (repeatable; default all)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--endpoint", metavar="URL", default=None,
                        help="an S3 server that runs elsewhere (other cores, another host) "
                             "instead of a SeaweedFS started here on the same cores; "
                             "credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                             "region from AWS_DEFAULT_REGION (default us-east-1); a bucket "
                             "bench-… is made and left there")
    return parser.parse_args(argv)


@contextlib.contextmanager
def working_directory(requested: Path | None) -> Iterator[Path]:
    base = requested or Path("/var/tmp")
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="cryophile-bench-e2e-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]
    import backup_restore  # noqa: PLC0415 - bench/ is on sys.path only now
    import freeze_upload  # noqa: PLC0415
    import s3server  # noqa: PLC0415 - tests/ is on sys.path only now

    for tool in (args.cryophile, args.aws, "zstd", "gpg"):
        if shutil.which(tool) is None:
            log(f"{tool}: command not found")
            return 2
    external = None
    if args.endpoint:
        try:
            external = s3server.S3Endpoint(args.endpoint, os.environ["AWS_ACCESS_KEY_ID"],
                                           os.environ["AWS_SECRET_ACCESS_KEY"],
                                           os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        except KeyError as missing:
            log(f"--endpoint needs {missing} in the environment")
            return 2
    with working_directory(args.workdir) as workdir:
        freeze_upload.isolated_aws_environment(workdir)
        (workdir / "seaweedfs").mkdir()
        server = s3server.SeaweedFS(workdir / "seaweedfs")
        bench = None
        try:
            server_cpu: Callable[[], float] = no_server_cpu
            if external is not None:
                endpoint = external
            else:
                log("starting SeaweedFS …")
                endpoint = server.start()
                if server.process is not None:
                    server_cpu = functools.partial(freeze_upload.process_cpu,
                                                   server.process.pid)
            bench = Bench(args, workdir, endpoint, backup_restore, server_cpu)
            done = run_all(bench, args.scenario or SCENARIOS)
        except (RuntimeError, backup_restore.CommandFailedError) as failure:
            log(str(failure))
            if isinstance(failure, backup_restore.CommandFailedError):
                log(failure.stderr[-4000:])
            return 1
        finally:
            if external is None:
                server.stop()
            if bench is not None:
                backup_restore.kill_agent(bench.keys.homedir)
        if args.json:
            print(json.dumps({scenario.name: {
                "cryophile_median_s": round(scenario.median("cryophile"), 3),
                "diy_median_s": round(scenario.median("diy"), 3),
                "ratio_diy_over_cryophile": round(scenario.ratio, 3),
                "target": TARGETS[scenario.name],
                "cryophile_peak_rss_mib": round(scenario.peak_rss_mib("cryophile"), 1),
                "diy_peak_rss_mib": round(scenario.peak_rss_mib("diy"), 1),
                "cryophile_cpu_s": round(scenario.median_cpu("cryophile"), 2),
                "diy_cpu_s": round(scenario.median_cpu("diy"), 2),
                "server_cpu_s": round(scenario.median_cpu("cryophile", server=True), 2),
                "diy_server_cpu_s": round(scenario.median_cpu("diy", server=True), 2),
                "cryophile_peak_spool_mib": round(max(
                    sample.peak_spool for sample in scenario.samples["cryophile"]) / MIB, 1),
            } for scenario in done}, indent=2))
        else:
            print("\n".join(report(done, bench)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

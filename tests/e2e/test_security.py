"""Security properties a user relies on (issue 6, "Security"), through the real CLI.

1. Private modes: everything cryophile creates in the spool and in the embedded
   directory vault is 0700 (directories) / 0600 (files), even under umask 0; the
   restore output file is 0600, created exclusively, never through a symlink.
2. No plaintext on disk: backup and restore never write the stream in the clear to
   the spool, the vault, ``TMPDIR`` or ``HOME``.
3. The passphrase never shows: not in any process's argv or environment (the
   reference engine's worker included), not in logs (plain or JSON, debug level),
   not in the errors of restores that fail after it was read.
4. Public certificates suffice for backup, freeze, thaw, list, status and verify:
   no secret key, no GnuPG home, an empty HOME.
5. Object keys stay below the backup's prefix: hostile prefixes are refused before
   anything is written, and what is written has no ``..`` or empty segment; a
   directory vault writes nothing outside its root.
6. Symlinks planted in the spool are never followed: no command uploads, modifies or
   deletes what they point to, and each says so (or ignores them) in one line.

Related tests elsewhere (not repeated here): spool modes after a plain backup
(test_cli_roundtrip.py), a symlinked fragment in the restore queue
(test_cli_errors.py), passphrase sources and a wrong passphrase
(test_cli_roundtrip.py), list/status/verify without ``-k`` (test_list_verify_status.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import resource
import secrets
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import oracles
from polling import live_files, wait_until
from s3server import S3Bucket
from support.cli import VAULT, Cli, Result
from support.files import snapshot

PREFIX = "hosts/db1"
MiB = 1 << 20


# -- helpers --------------------------------------------------------------------------------


def run(cli: Cli, args: Sequence[str | os.PathLike[str]], *, stdin: bytes = b"",
        env: Mapping[str, str] | None = None, pass_fds: Sequence[int] = (),
        preexec: Callable[[], None] | None = None, timeout: float = 300) -> Result:
    """``cli.run`` with an optional ``preexec_fn`` (a umask, a resource limit)."""
    completed = subprocess.run([sys.executable, "-m", "cryophile", *map(str, args)],
                               input=stdin, capture_output=True, env=cli.environment(env),
                               pass_fds=tuple(pass_fds), preexec_fn=preexec, timeout=timeout,
                               check=False)
    return Result(completed.returncode, completed.stdout, completed.stderr.decode(errors="replace"))


def umask_zero() -> None:
    os.umask(0)


def vault_root(cli: Cli) -> Path:
    """The embedded directory vault of ``VAULT``."""
    return cli.spool.parent / f"{cli.spool.name}-vaults" / VAULT


def restore_args(ulid: str, key: oracles.KeyPair, prefix: str = PREFIX) -> list[str]:
    return ["restore", "-v", VAULT, "-p", prefix, "-u", ulid, "-k", str(key.secret)]


def modes_below(root: Path) -> dict[str, int]:
    """Relative path → permission bits of everything below ``root`` (not ``root`` itself)."""
    return {str(path.relative_to(root)): stat.S_IMODE(path.lstat().st_mode)
            for path in root.rglob("*")}


def assert_private(root: Path, what: str) -> int:
    """Every directory below ``root`` is 0700, every file 0600; return how many were checked."""
    modes = modes_below(root)
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o700 if (root / name).is_dir() else 0o600)}
    assert not wrong, f"{what}: not private: {wrong}"
    return len(modes)


def files_containing(roots: Sequence[Path], marker: bytes) -> list[Path]:
    """Every regular file below ``roots`` whose bytes contain ``marker``."""
    found = []
    for root in roots:
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
                    if marker in handle.read():
                        found.append(path)
    return found


def file_request(cli: Cli, key: oracles.KeyPair, ulid: str, *extra: str,
                 env: Mapping[str, str] | None = None, prefix: str = PREFIX) -> None:
    """File a thaw request the way a user does: a restore that leaves the thaw to the
    daemon and gives up waiting at once."""
    result = cli.run([*restore_args(ulid, key, prefix), "--no-thaw", "--timeout", "0", *extra],
                     env=env)
    assert result.returncode == 75, result.stderr


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "internal error" not in result.stderr, result.stderr


# -- 1. permissions --------------------------------------------------------------------------


def test_everything_created_is_private_even_under_umask_zero(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    data = random.Random(1).randbytes(11 * MiB)
    result = run(cli, ["backup", "-v", VAULT, "-p", PREFIX, "-k", gpg_key.cert, "-s", "5M",
                       "--json"], stdin=data, preexec=umask_zero)
    assert result.returncode == 0, result.stderr
    ulid = json.loads(result.stdout)["ulid"]
    checked = assert_private(cli.spool, "spool after backup")

    result = run(cli, ["freeze", "--once"], preexec=umask_zero)
    assert result.returncode == 0, result.stderr
    # The embedded vault: its own directory, the data directory beside the spool that
    # holds it, every object and sidecar.
    vaults = vault_root(cli).parent
    assert stat.S_IMODE(vaults.stat().st_mode) == 0o700, oct(vaults.stat().st_mode)
    checked += assert_private(vaults, "embedded vault after freeze")

    # A restore request (thaw/ID/state.json, its lock), then thaw's downloads.
    result = run(cli, [*restore_args(ulid, gpg_key), "--no-thaw", "--timeout", "0"],
                 preexec=umask_zero)
    assert result.returncode == 75, result.stderr
    assert (cli.spool / "thaw" / VAULT / PREFIX / ulid / "state.json").exists()
    checked += assert_private(cli.spool, "spool with a thaw request")
    result = run(cli, ["thaw", "--once"], preexec=umask_zero)
    assert result.returncode == 0, result.stderr
    assert (cli.restore_dir(ulid) / "chunk.3").exists()
    checked += assert_private(cli.spool, "spool after thaw")

    out = tmp_path / "out" / "restored.bin"
    out.parent.mkdir()
    result = run(cli, [*restore_args(ulid, gpg_key), "-o", out, "--keep"], preexec=umask_zero)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == data
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert os.listdir(out.parent) == ["restored.bin"]  # no temporary left beside it
    checked += assert_private(cli.spool, "spool after restore")
    checked += assert_private(vaults, "embedded vault after restore")
    assert checked > 30


def test_restore_output_is_exclusive_and_never_follows_a_symlink(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    data = random.Random(2).randbytes(3 * MiB)
    ulid = cli.backup(gpg_key, data)
    cli.stage_for_restore(ulid)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"precious")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cases: dict[str, Callable[[Path], object]] = {
        "an existing file": lambda p: p.write_bytes(b"mine"),
        "a symlink to a file": lambda p: p.symlink_to(victim),
        "a dangling symlink": lambda p: p.symlink_to(outside / "would-be-created"),
        "a symlink to a directory": lambda p: p.symlink_to(outside),
    }
    for number, (what, plant) in enumerate(cases.items()):
        target = out_dir / f"target{number}"
        plant(target)
        before_out, before_outside = snapshot(out_dir), snapshot(outside)
        link = os.readlink(target) if target.is_symlink() else None
        result = cli.run([*restore_args(ulid, gpg_key), "-o", target, "--keep"])
        assert result.returncode == 73, (what, result.stderr)
        assert str(target) in result.stderr, what
        assert "already exists" in result.stderr, what
        assert result.stderr.count("\n") == 1, result.stderr  # one line, no traceback
        assert snapshot(out_dir) == before_out, what
        assert snapshot(outside) == before_outside, what
        assert victim.read_bytes() == b"precious"
        assert not (outside / "would-be-created").exists()
        if link is not None:
            assert os.readlink(target) == link
    # The backup itself restores fine to a new name.
    fresh = out_dir / "fresh"
    result = cli.run([*restore_args(ulid, gpg_key), "-o", fresh])
    assert result.returncode == 0, result.stderr
    assert fresh.read_bytes() == data
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


# -- 2. no plaintext on disk -----------------------------------------------------------------


@dataclass
class Places:
    """Where plaintext must never land: the spool, the vault, TMPDIR and HOME."""

    cli: Cli
    tmpdir: Path

    @property
    def env(self) -> dict[str, str]:
        return {"TMPDIR": str(self.tmpdir), "HOME": str(self.cli.home)}

    def roots(self) -> list[Path]:
        return [self.cli.spool, vault_root(self.cli).parent, self.tmpdir, self.cli.home]

    def assert_clean(self, marker: bytes, when: str) -> None:
        found = files_containing(self.roots(), marker)
        assert not found, f"{when}: plaintext found in {found}"


@contextlib.contextmanager
def cryophile(cli: Cli, args: Sequence[str | os.PathLike[str]], env: Mapping[str, str],
              **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A running ``cryophile`` (stdout and stderr piped); killed if still alive at the end."""
    process = subprocess.Popen([sys.executable, "-m", "cryophile", *map(str, args)],
                               env=cli.environment(env), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, **kwargs)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)


def read_exactly(stream: Any, count: int) -> bytes:
    """``count`` bytes from a pipe, unbuffered (``communicate`` reads the rest from the fd)."""
    data = bytearray()
    while len(data) < count:
        chunk = os.read(stream.fileno(), count - len(data))
        assert chunk, f"the stream ended after {len(data)} of {count} bytes"
        data.extend(chunk)
    return bytes(data)


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_no_plaintext_reaches_the_disk_during_backup_and_restore(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path, engine: str) -> None:
    marker = b"CRYOPHILE-PLAINTEXT-" + secrets.token_hex(16).encode()
    data = (marker + b"\n") * (12 * MiB // (len(marker) + 1))
    places = Places(cli, tmp_path / "tmpdir")
    places.tmpdir.mkdir()
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    args: list[str | os.PathLike[str]] = [
        "backup", "-v", VAULT, "-p", PREFIX, "-k", gpg_key.cert, "-s", "5M", "-C", "none",
        "--engine", engine, "-i", fifo, "--json"]
    with cryophile(cli, args, places.env) as backup:
        with open(fifo, "wb") as writer:
            writer.write(data[:8 * MiB])
            writer.flush()
            # Mid-stream: the first fragment is out, the rest is in flight.
            wait_until(lambda: live_files(cli.spool / "freeze" / VAULT / PREFIX, "chunk.1"),
                       "the first fragment")
            places.assert_clean(marker, "during the backup")
            writer.write(data[8 * MiB:])
        stdout, stderr = backup.communicate(timeout=120)
        assert backup.returncode == 0, stderr.decode()
    ulid = json.loads(stdout)["ulid"]
    places.assert_clean(marker, "after the backup")
    if engine == "fast":  # the engine plays no part in freeze and thaw: once is enough
        assert run(cli, ["freeze", "--once"], env=places.env).returncode == 0
        file_request(cli, gpg_key, ulid, env=places.env)
        assert run(cli, ["thaw", "--once"], env=places.env).returncode == 0
        places.assert_clean(marker, "after freeze and thaw")
    else:
        cli.stage_for_restore(ulid)

    with cryophile(cli, [*restore_args(ulid, gpg_key), "--engine", engine, "--keep"],
                   places.env) as restore:
        assert restore.stdout is not None
        head = read_exactly(restore.stdout, 2 * MiB)
        # We stopped reading: the restore is blocked on its output with most of the
        # stream still to come.
        assert restore.poll() is None
        places.assert_clean(marker, "during the restore")
        rest, stderr = restore.communicate(timeout=120)
        assert restore.returncode == 0, stderr.decode()
    assert head + rest == data
    assert (cli.restore_dir(ulid) / "chunk.0").exists()  # --keep: the queue is scanned too
    places.assert_clean(marker, "after the restore")


# -- 3. the passphrase never shows -----------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(text.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


@dataclass
class Sample:
    """What /proc showed of one process."""

    pid: int
    cmdline: bytes
    environ: bytes


def sample_tree(root: int) -> list[Sample]:
    samples = []
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            samples.append(Sample(pid, Path(f"/proc/{pid}/cmdline").read_bytes(),
                                  Path(f"/proc/{pid}/environ").read_bytes()))
    return samples


def secret_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\nprintf '%s\\n' '{text}'\n")
    path.chmod(0o700)
    return path


@pytest.fixture
def protected_backup(cli: Cli, gpg_key_protected: oracles.KeyPair) -> tuple[str, bytes]:
    """A 48 MiB backup to the protected key, staged in the restore queue.

    Larger than what restore holds in flight (two 4 MiB zstd frames being
    decompressed, the queues before them), so the decryptor is still at work
    when the test samples the process tree mid-stream.
    """
    data = random.Random(3).randbytes(48 * MiB)
    ulid = cli.backup(gpg_key_protected, data)
    cli.stage_for_restore(ulid)
    return ulid, data


@pytest.mark.parametrize(("engine", "source", "style"), [
    ("fast", "pass-fd", "plain"), ("reference", "askpass", "json")])
def test_passphrase_is_not_in_any_argv_or_environment_nor_in_debug_logs(
        cli: Cli, gpg_key_protected: oracles.KeyPair, protected_backup: tuple[str, bytes],
        tmp_path: Path, engine: str, source: str, style: str) -> None:
    ulid, data = protected_backup
    passphrase = gpg_key_protected.passphrase
    assert passphrase is not None
    secret = passphrase.encode()
    env = {"CRYOPHILE_LOG": "debug", "CRYOPHILE_LOG_STYLE": style}
    args: list[str | os.PathLike[str]] = [*restore_args(ulid, gpg_key_protected), "-dd",
                                          "--engine", engine, "--keep"]
    pass_fds: tuple[int, ...] = ()
    if source == "pass-fd":
        read_end, write_end = os.pipe()
        os.write(write_end, secret + b"\n")
        os.close(write_end)
        args += ["--pass-fd", str(read_end)]
        pass_fds = (read_end,)
    else:
        env["CRYOPHILE_ASKPASS"] = str(secret_file(tmp_path, "askpass", passphrase))
    samples: list[Sample] = []
    try:
        with cryophile(cli, args, env, pass_fds=pass_fds) as restore:
            assert restore.stdout is not None
            head = read_exactly(restore.stdout, MiB)
            # Blocked on its output, mid-stream: sample the whole process tree a few times.
            for _ in range(5):
                samples += sample_tree(restore.pid)
                time.sleep(0.05)
            assert restore.poll() is None
            rest, stderr = restore.communicate(timeout=120)
            assert restore.returncode == 0, stderr.decode()
    finally:
        for fd in pass_fds:
            os.close(fd)
    assert head + rest == data
    assert {s.pid for s in samples} >= {restore.pid}
    if engine == "reference":
        # The pysequoia worker was alive and sampled.
        assert any(b"openpgp_worker" in s.cmdline for s in samples), samples
    for sample in samples:
        assert secret not in sample.cmdline, sample
        assert secret not in sample.environ, sample
    assert secret not in stderr
    assert secret not in head + rest
    assert b"debug" in stderr  # the debug log really was on
    if style == "json":
        # Log records are JSON (the closing summary line is not a log record).
        records = [json.loads(line) for line in stderr.decode().splitlines()
                   if line.startswith("{")]
        assert any(record["level"] == "debug" for record in records)


def damage_keeping_the_manifest_consistent(directory: Path, index: int) -> None:
    """Flip a byte inside fragment ``index`` and record the new SHA-256 in the manifest, so
    the damage reaches the decryptor (its integrity check), not the manifest check."""
    fragment = directory / f"chunk.{index}"
    content = bytearray(fragment.read_bytes())
    content[len(content) // 2] ^= 0x40
    fragment.unlink()  # hard-linked to the freeze queue: replace, don't edit
    fragment.write_bytes(bytes(content))
    manifest_path = directory / "chunk.0"
    manifest = json.loads(manifest_path.read_bytes())
    for entry in manifest["fragments"]:
        if entry["index"] == index:
            entry["sha256"] = hashlib.sha256(content).hexdigest()
    manifest_path.unlink()
    manifest_path.write_text(json.dumps(manifest))


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, MiB))


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_passphrase_is_not_in_the_errors_of_restores_that_fail_after_reading_it(
        cli: Cli, gpg_key_protected: oracles.KeyPair, protected_backup: tuple[str, bytes],
        tmp_path: Path, engine: str) -> None:
    ulid, _ = protected_backup
    passphrase = gpg_key_protected.passphrase
    assert passphrase is not None
    wrong = "wrong-" + secrets.token_hex(8)
    right_askpass = secret_file(tmp_path, "right", passphrase)
    wrong_askpass = secret_file(tmp_path, "wrong", wrong)
    base = [*restore_args(ulid, gpg_key_protected), "--engine", engine, "--keep", "-dd"]
    outcomes: dict[str, Result] = {}
    debug = {"CRYOPHILE_LOG": "debug"}
    outcomes["wrong passphrase"] = result = run(
        cli, base, env={**debug, "CRYOPHILE_ASKPASS": str(wrong_askpass)})
    assert result.returncode == 77, result.stderr
    assert "wrong passphrase" in result.stderr
    outcomes["output file too large"] = result = run(
        cli, [*base, "-o", tmp_path / "out"], preexec=limit_file_size,
        env={**debug, "CRYOPHILE_ASKPASS": str(right_askpass), "CRYOPHILE_LOG_STYLE": "json"})
    assert result.returncode == 74, result.stderr
    assert "cannot write the output" in result.stderr
    # The environment is no passphrase source (README: never argv or environment): with
    # no terminal, no --pass-fd and no askpass, a passphrase variable is not picked up.
    outcomes["passphrase in the environment"] = result = run(
        cli, base, env={**debug, "CRYOPHILE_PASSPHRASE": passphrase, "PASSPHRASE": passphrase},
        preexec=os.setsid)
    assert result.returncode == 77, result.stderr
    assert "--pass-fd" in result.stderr
    # Damage that only the decryptor sees (the manifest is made to agree with it).
    damage_keeping_the_manifest_consistent(cli.restore_dir(ulid), 2)
    outcomes["damaged fragment"] = result = run(
        cli, base, env={**debug, "CRYOPHILE_ASKPASS": str(right_askpass),
                        "CRYOPHILE_LOG_STYLE": "json" if engine == "fast" else "plain"})
    assert result.returncode == 65, result.stderr
    assert "output is incomplete" in result.stderr
    for what, result in outcomes.items():
        no_traceback(result)
        assert passphrase not in result.stderr, what
        assert wrong not in result.stderr, what
        assert passphrase.encode() not in result.stdout, what


# -- 4. public certificates suffice ---------------------------------------------------------


@dataclass
class Keyless:
    """A backup host's environment: one public certificate, no secret anywhere it looks."""

    cert: Path
    env: dict[str, str]
    home: Path
    gnupg: Path
    config: list[str]

    def run(self, cli: Cli, *args: str | os.PathLike[str], stdin: bytes = b"") -> Result:
        assert "-k" not in args or args[0] == "backup"
        return cli.run([*args, *self.config], stdin=stdin, env=self.env)

    def assert_untouched(self) -> None:
        assert not list(self.home.iterdir()), list(self.home.iterdir())
        assert not list(self.gnupg.iterdir()), list(self.gnupg.iterdir())


def keyless_host(tmp_path: Path, key: oracles.KeyPair, config: Path | None,
                 extra: Mapping[str, str]) -> Keyless:
    cert = tmp_path / "host" / "backup.cert"
    cert.parent.mkdir()
    shutil.copy(key.cert, cert)
    assert b"PRIVATE KEY" not in cert.read_bytes()
    home = tmp_path / "host" / "home"
    gnupg = tmp_path / "host" / "gnupg"
    home.mkdir()
    gnupg.mkdir(mode=0o700)
    env = {"HOME": str(home), "GNUPGHOME": str(gnupg), "XDG_CONFIG_HOME": str(home / ".config"),
           **extra}
    return Keyless(cert, env, home, gnupg, ["-c", str(config)] if config else [])


def s3_config(tmp_path: Path, bucket: S3Bucket, storage_class: str) -> tuple[Path, dict[str, str]]:
    config = tmp_path / "s3.toml"
    config.write_text(
        f'[[vault]]\nid = "{VAULT}"\nprovider = "s3"\nbucket = "{bucket.name}"\n'
        f'endpoint_url = "{bucket.endpoint.url}"\nregion = "{bucket.endpoint.region}"\n'
        f'storage_class = "{storage_class}"\nrestore_days = 1\nrestore_tier = "Expedited"\n')
    missing = tmp_path / "no-such-aws-dir"
    return config, {"AWS_ACCESS_KEY_ID": bucket.endpoint.access_key,
                    "AWS_SECRET_ACCESS_KEY": bucket.endpoint.secret_key,
                    "AWS_CONFIG_FILE": str(missing / "config"),
                    "AWS_SHARED_CREDENTIALS_FILE": str(missing / "credentials"),
                    "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.mark.parametrize("vault", ["directory", "moto-glacier"])
def test_backup_freeze_thaw_list_status_verify_need_only_a_public_certificate(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path, vault: str,
        request: pytest.FixtureRequest) -> None:
    config: Path | None = None
    aws: dict[str, str] = {}
    if vault == "moto-glacier":
        bucket: S3Bucket = request.getfixturevalue("moto_bucket")
        config, aws = s3_config(tmp_path, bucket, "GLACIER")
    host = keyless_host(tmp_path, gpg_key, config, aws)
    data = random.Random(4).randbytes(7 * MiB)

    result = host.run(cli, "backup", "-v", VAULT, "-p", PREFIX, "-k", host.cert, "-s", "5M",
                      "--json", stdin=data)
    assert result.returncode == 0, result.stderr
    ulid = json.loads(result.stdout)["ulid"]
    result = host.run(cli, "freeze", "--once")
    assert result.returncode == 0, result.stderr
    s3 = vault != "directory"  # list/status/verify of a directory vault: test_list_verify_status
    if s3:
        result = host.run(cli, "list", "--json")
        assert result.returncode == 0, result.stderr
        assert [(e["ulid"], e["state"]) for e in json.loads(result.stdout)] == [(ulid, "frozen")]
        result = host.run(cli, "verify", "-v", VAULT, "-p", PREFIX, "-u", ulid)
        assert result.returncode == 0, result.stderr
        assert "healthy" in result.stdout.decode()

    # The restore host (with the secret key) files a request; the keyless host thaws it.
    file_request(cli, gpg_key, ulid, *host.config, env=aws)
    wait_until(lambda: host.run(cli, "thaw", "--once").returncode == 0
               and (cli.restore_dir(ulid) / "chunk.2").exists(), "thaw to finish")
    if s3:
        result = host.run(cli, "status", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["restore"][0]["complete"] is True
        # With the fragments thawed, a full download check works keyless too.
        result = host.run(cli, "verify", "-v", VAULT, "-p", PREFIX, "-u", ulid, "--download")
        assert result.returncode == 0, result.stderr
        assert "healthy" in result.stdout.decode()
    host.assert_untouched()

    # And what the keyless host stored is the backup: the secret key restores it.
    result = cli.run([*restore_args(ulid, gpg_key), *host.config], env=aws)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data


# -- 5. object keys stay below the backup's prefix ------------------------------------------


HOSTILE_PREFIXES = {
    "../escape": "climbs above",
    "a/../../escape": "climbs above",
    "/etc/cron.d": "relative",
    "ünï/cøde": "is not allowed",
    "a\\..\\b": "is not allowed",
    "%2e%2e/x": "is not allowed",
    "x/01ARZ3NDEKTSV4RRFFQ69G5FAV/y": "looks like a ULID",
    "p" * 990: "key limit",
}


def test_hostile_prefixes_are_refused_before_anything_is_written_or_read(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    ulid = cli.backup(gpg_key, b"existing")  # the spool holds a backup: it stays as it is
    fifo = tmp_path / "input.fifo"
    os.mkfifo(fifo)  # no writer: a command that opened it would hang (and time out)
    before = snapshot(tmp_path)
    others: list[list[str | os.PathLike[str]]] = [
        ["freeze", "--once", "-v", VAULT, "-p"],
        ["thaw", "--once", "-v", VAULT, "-p"],
        ["list", "-v", VAULT, "-p"],
        ["verify", "-v", VAULT, "--all", "-p"],
        ["restore", "-v", VAULT, "-u", ulid, "-k", gpg_key.secret, "-o", tmp_path / "out", "-p"],
        ["prune", "-v", VAULT, "--keep-last", "1", "-p"],
    ]
    for number, (prefix, reason) in enumerate(HOSTILE_PREFIXES.items()):
        commands: list[list[str | os.PathLike[str]]] = [
            ["backup", "-v", VAULT, "-k", gpg_key.cert, "-i", fifo, "-p", prefix]]
        if number < len(others):
            commands.append([*others[number], prefix])
        for args in commands:
            result = cli.run(args, timeout=60)
            assert result.returncode == 64, (prefix, args[0], result.stderr)
            assert reason in result.stderr, (prefix, args[0], result.stderr)
            # The message names the value (quoted as repr, long ones shortened).
            assert "invalid prefix " + repr(prefix[:20])[:-1] in result.stderr, result.stderr
            no_traceback(result)
    assert snapshot(tmp_path) == before


LEGAL_PREFIXES = {
    "": "",
    "a//b/./c/": "a/b/c",
    "x/y/../z": "x/z",
    "...": "...",
    "a/.../b": "a/.../b",
    "(odd)!'*._-/Q": "(odd)!'*._-/Q",
}


def check_keys(keys: Sequence[str], made: Sequence[tuple[str, str]]) -> None:
    """Every key is PREFIX/ULID/chunk.N of a backup we made, with no escape in it."""
    assert keys
    homes = {f"{canonical}/{ulid}/" if canonical else f"{ulid}/": 0 for canonical, ulid in made}
    for key in keys:
        segments = key.split("/")
        assert not key.startswith("/"), key
        assert not {"", ".", ".."} & set(segments), key
        (home,) = [home for home in homes if key.startswith(home)]
        assert key.removeprefix(home) in ("chunk.0", "chunk.1"), key
        homes[home] += 1
    assert set(homes.values()) == {2}, homes  # manifest and one fragment each, nothing else


def back_up_under_legal_prefixes(cli: Cli, key: oracles.KeyPair,
                                 *config: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """One small backup per legal prefix; return (canonical prefix, ULID) of each."""
    made = []
    for prefix, canonical in LEGAL_PREFIXES.items():
        result = cli.run(["backup", "-v", VAULT, "-p", prefix, "-k", key.cert, "--json",
                          *config], stdin=prefix.encode())
        assert result.returncode == 0, (prefix, result.stderr)
        document = json.loads(result.stdout)
        assert document["prefix"] == canonical
        made.append((canonical, document["ulid"]))
    return made


def test_object_keys_on_s3_are_canonical_and_below_their_prefix(
        cli: Cli, gpg_key: oracles.KeyPair, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    config, aws = s3_config(tmp_path, s3_bucket, "STANDARD")
    made = back_up_under_legal_prefixes(cli, gpg_key, "-c", config)
    result = cli.run(["freeze", "--once", "-c", config], env=aws)
    assert result.returncode == 0, result.stderr
    client = s3_bucket.endpoint.client()
    keys = [entry["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=s3_bucket.name) for entry in page.get("Contents", [])]
    check_keys(keys, made)


def test_a_directory_vault_writes_nothing_outside_its_root(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    parent = tmp_path / "disk"
    root = parent / "vault"
    root.mkdir(parents=True)
    (parent / "neighbour").write_text("not the vault's")
    config = tmp_path / "dir.toml"
    config.write_text(f'[[vault]]\nid = "{VAULT}"\nprovider = "dir"\npath = "{root}"\n')
    before = snapshot(tmp_path)
    older = cli.run(["backup", "-v", VAULT, "-p", "x/z", "-k", gpg_key.cert, "--json", "-c",
                     config], stdin=b"older")
    assert older.returncode == 0, older.stderr
    made = back_up_under_legal_prefixes(cli, gpg_key, "-c", config)
    result = cli.run(["freeze", "--once", "-c", config])
    assert result.returncode == 0, result.stderr
    (ulid,) = [ulid for canonical, ulid in made if canonical == "a/.../b"]
    file_request(cli, gpg_key, ulid, "-c", str(config), prefix="a/.../b")
    assert cli.run(["thaw", "--once", "-c", config]).returncode == 0
    # prune deletes the older x/z backup (and the directories it leaves empty).
    result = cli.run(["prune", "-v", VAULT, "-p", "x", "--keep-last", "1", "-c", config,
                      "--allow-early-deletion"])
    assert result.returncode == 0, result.stderr
    assert not (root / "x" / "z" / json.loads(older.stdout)["ulid"]).exists()
    keys = sorted(str(path.relative_to(root)) for path in root.rglob("chunk.*")
                  if path.relative_to(root).parts[0] != ".cryophile")
    check_keys(keys, made)
    # Below tmp_path only the vault's root and the spool changed.
    after = snapshot(tmp_path)
    changed = (set(before) ^ set(after)) | {name for name in set(before) & set(after)
                                            if before[name] != after[name]}
    strays = sorted(name for name in changed if name.split("/")[0] not in ("spool",)
                    and not name.startswith("disk/vault/"))
    assert strays == [], strays
    assert (parent / "neighbour").read_text() == "not the vault's"
    assert sorted(os.listdir(parent)) == ["neighbour", "vault"]


def test_a_prefix_cannot_reach_the_directory_vaults_own_metadata(
        cli: Cli, gpg_key: oracles.KeyPair) -> None:
    """``.cryophile/`` below a directory vault's root holds its sidecars: a backup named
    into it is refused (at backup or at freeze), and the sidecars stay as they were."""
    cli.backup(gpg_key, b"first")
    assert cli.run(["freeze", "--once"]).returncode == 0
    meta = vault_root(cli) / ".cryophile"
    before = snapshot(meta)
    for prefix in (".cryophile/meta", "./.cryophile"):
        result = cli.run(["backup", "-v", VAULT, "-p", prefix, "-k", gpg_key.cert],
                         stdin=b"into the metadata")
        assert result.returncode in (0, 64), result.stderr
        result = cli.run(["freeze", "--once"])
        no_traceback(result)
        if result.returncode != 0:
            assert result.returncode == 64, result.stderr
            assert "reserved name '.cryophile'" in result.stderr
        assert snapshot(meta) == before


# -- 6. symlinks planted in the spool are never followed --------------------------------------


@dataclass(frozen=True)
class World:
    """A spool and its embedded vault with backups in every queue (built once, copied).

    ``restored`` (A) is in the vault and complete in the restore queue; ``requested`` (E) is
    in the vault with a thaw request waiting; ``queued`` (B) is complete in the freeze queue.
    """

    base: Path
    restored: str
    requested: str
    queued: str


def fingerprint(root: Path) -> dict[str, tuple[int, str]]:
    """Every path below ``root`` (symlinks not followed) → (mode, content hash or link)."""
    state: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                content = "-> " + os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = ""
            state[str(path.relative_to(root))] = (info.st_mode, content)
    return state


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, gpg_key: oracles.KeyPair) -> World:
    base = tmp_path_factory.mktemp("world")
    (base / "spool").mkdir()
    (base / "home").mkdir()
    cli = Cli(base / "spool", base / "home")
    restored = cli.backup(gpg_key, random.Random(5).randbytes(6 * MiB))
    requested = cli.backup(gpg_key, random.Random(6).randbytes(6 * MiB))
    assert cli.run(["freeze", "--once"]).returncode == 0
    file_request(cli, gpg_key, restored)
    assert cli.run(["thaw", "--once", "-u", restored, "-v", VAULT, "-p", PREFIX]).returncode == 0
    file_request(cli, gpg_key, requested)
    queued = cli.backup(gpg_key, random.Random(7).randbytes(6 * MiB))
    assert (cli.restore_dir(restored) / "chunk.2").exists()
    assert (cli.spool / "thaw" / VAULT / PREFIX / requested / "state.json").exists()
    return World(base, restored, requested, queued)


@dataclass
class Planted:
    """One copy of the world with a symlink planted in its spool."""

    cli: Cli
    world: World
    outside: Path
    key: oracles.KeyPair
    outcomes: dict[str, Result]

    def dir(self, queue: str, ulid: str) -> Path:
        return self.cli.spool / queue / VAULT / PREFIX / ulid

    def vault_objects(self) -> dict[str, str]:
        return {k: v[1] for k, v in fingerprint(vault_root(self.cli)).items()
                if "chunk." in k and not k.startswith(".cryophile")}

    def run_all(self, commands: Sequence[str]) -> None:
        w = self.world
        argv: dict[str, list[str | os.PathLike[str]]] = {
            "backup": ["backup", "-v", VAULT, "-p", PREFIX, "-k", self.key.cert],
            "backup-same-id": ["backup", "-v", VAULT, "-p", PREFIX, "-k", self.key.cert,
                               "-u", w.queued],
            "freeze": ["freeze", "--once"],
            "thaw": ["thaw", "--once"],
            "list": ["list"],
            "status": ["status"],
            "verify": ["verify", "-v", VAULT, "-p", PREFIX, "--all", "--download"],
            "restore": [*restore_args(w.restored, self.key), "--timeout", "1",
                        "-o", self.cli.home / "out"],
            "restore-requested": [*restore_args(w.requested, self.key), "--timeout", "1",
                                  "-o", self.cli.home / "out2"],
            "prune": ["prune", "-v", VAULT, "--keep-last", "1", "--allow-early-deletion"],
        }
        for name in commands:
            result = self.outcomes[name] = self.cli.run(argv[name], stdin=b"new backup",
                                                        timeout=120)
            no_traceback(result)


def plant(planted: Planted, link: Path, target: Path) -> None:
    """Replace ``link`` (a file or directory in the spool) with a symlink to ``target``."""
    if link.is_dir():
        shutil.rmtree(link)
    else:
        link.unlink()
    link.symlink_to(target)


def copy_outside(source: Path, outside: Path, name: str) -> Path:
    """A copy of ``source`` outside the spool (what a followed link would find there)."""
    target = outside / name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
    return target


#: case → command → (exit code, whether its stderr names the symbolic link). Exit 0 with
#: a mention: the link was skipped with a warning; without: it played no part.
SYMLINK_CASES: dict[str, dict[str, tuple[int, bool]]] = {
    "queue backup": {"backup": (74, True)},
    "queue freeze": {"freeze": (74, True), "status": (74, True)},
    "queue thaw": {"thaw": (74, True)},
    "queue restore": {"restore": (74, True), "list": (74, True)},
    "prefix directory in freeze": {"freeze": (0, True), "backup": (65, True),
                                   "list": (0, True)},
    "backup directory in freeze": {"freeze": (0, True), "backup-same-id": (65, True),
                                   "status": (0, True)},
    "fragment in freeze": {"freeze": (65, True), "status": (0, False)},
    "manifest in freeze": {"freeze": (65, True), "list": (0, False)},
    "request directory in thaw": {"thaw": (0, True), "restore-requested": (65, True),
                                  "prune": (0, False)},
    "state.json in thaw": {"thaw": (65, True), "restore-requested": (65, True)},
    "download part in thaw": {"thaw": (0, False)},
    "lock in thaw": {"thaw": (74, True), "status": (0, False)},
    "backup directory in restore": {"restore": (65, True), "prune": (65, True),
                                    "verify": (0, False), "status": (0, True)},
    "manifest in restore": {"restore": (65, True)},
}


def set_up_case(case: str, p: Planted) -> set[str]:
    """Plant the symlink of ``case``; return the object names it must keep out of the vault."""
    w, spool, outside = p.world, p.cli.spool, p.outside
    queued = p.dir("freeze", w.queued)
    queued_keys = {f"{PREFIX}/{w.queued}/chunk.{i}" for i in range(3)}
    if case.startswith("queue "):
        queue = spool / case.split()[1]
        plant(p, queue, copy_outside(queue, outside, "queue"))
        return queued_keys
    if case == "prefix directory in freeze":
        hosts = spool / "freeze" / VAULT / "hosts"
        plant(p, hosts, copy_outside(hosts, outside, "hosts"))
        return queued_keys
    if case == "backup directory in freeze":
        plant(p, queued, copy_outside(queued, outside, w.queued))
        return queued_keys
    if case == "fragment in freeze":
        plant(p, queued / "chunk.2", outside / "canary")
        return {f"{PREFIX}/{w.queued}/chunk.2", f"{PREFIX}/{w.queued}/chunk.0"}
    if case == "manifest in freeze":
        plant(p, queued / "chunk.0", copy_outside(queued / "chunk.0", outside, "chunk.0"))
        return {f"{PREFIX}/{w.queued}/chunk.0"}
    request = p.dir("thaw", w.requested)
    if case == "request directory in thaw":
        plant(p, request, copy_outside(request, outside, w.requested))
        return set()
    if case == "state.json in thaw":
        plant(p, request / "state.json", copy_outside(request / "state.json", outside,
                                                      "state.json"))
        return set()
    if case == "download part in thaw":
        for index in (1, 2):
            (request / f"chunk.{index}.part").symlink_to(outside / "canary")
        return set()
    if case == "lock in thaw":  # dangling: O_CREAT through it would create the target
        (request / ".lock").symlink_to(outside / "created-by-lock")
        return set()
    restored = p.dir("restore", w.restored)
    if case == "backup directory in restore":
        plant(p, restored, copy_outside(restored, outside, w.restored))
        return set()
    if case == "manifest in restore":
        plant(p, restored / "chunk.0", copy_outside(restored / "chunk.0", outside, "chunk.0"))
        return set()
    raise AssertionError(case)


@pytest.mark.parametrize("case", list(SYMLINK_CASES))
def test_symlinks_planted_in_the_spool_are_never_followed(
        world: World, gpg_key: oracles.KeyPair, tmp_path: Path, case: str) -> None:
    shutil.copytree(world.base, tmp_path / "w", symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = b"CANARY-" + secrets.token_hex(16).encode()
    (outside / "canary").write_bytes(canary * 1000)
    p = Planted(Cli(tmp_path / "w" / "spool", tmp_path / "w" / "home"), world, outside,
                gpg_key, {})
    forbidden = set_up_case(case, p)
    outside_before = fingerprint(outside)
    vault_before = p.vault_objects()
    p.run_all(list(SYMLINK_CASES[case]))
    report = "\n".join(f"  {name}: exit {result.returncode}: "
                       f"{(result.stderr.strip().splitlines() or [''])[-1][:200]}"
                       for name, result in p.outcomes.items())
    print(f"\n{case}:\n{report}")  # the behaviour table (pytest -s)
    for name, (code, mentions) in SYMLINK_CASES[case].items():
        result = p.outcomes[name]
        assert result.returncode == code, (name, report)
        assert ("symbolic link" in result.stderr) == mentions, (name, result.stderr)
    assert fingerprint(outside) == outside_before, report
    vault_after = p.vault_objects()
    assert not files_containing([vault_root(p.cli)], canary), report
    assert not (set(vault_after) - set(vault_before)) & forbidden, report
    for name, digest in vault_before.items():
        assert vault_after.get(name, digest) == digest, name


def test_restore_wait_does_not_follow_a_manifest_symlinked_into_the_restore_queue(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    # restore --wait reads the restore queue without thaw's checks: a chunk.0
    # planted there as a symlink must be refused, not read from where it points.
    data = os.urandom(100_000)
    ulid = cli.backup(gpg_key, data, prefix=PREFIX)
    staged = cli.stage_for_restore(ulid, PREFIX)
    outside = tmp_path / "outside-manifest"
    (staged / "chunk.0").rename(outside)
    (staged / "chunk.0").symlink_to(outside)
    out = tmp_path / "out"
    result = cli.run([*restore_args(ulid, gpg_key), "--wait", "--timeout", "5", "-o", out])
    assert result.returncode == 65, result.stderr
    assert "symbolic link" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()

"""backup → ``cryophile freeze`` → a real S3 server (SeaweedFS), end to end.

Everything runs through the real CLI in a subprocess, against the session's
SeaweedFS (SigV4 auth and checksum checks on), configured the way a user
would: a TOML file with ``provider = "s3"``, bucket, endpoint and region, and
the credentials in ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (the AWS
config files point at paths that do not exist, so ``~/.aws`` is never read).

What is checked on the bucket itself, with boto3: object keys
``<prefix>/<ULID>/chunk.N``, fragments in the vault's storage class and the
manifest in STANDARD, sizes, SHA-256 of the downloaded bytes and the checksum
the server verified, nothing uploaded twice, multipart for big fragments. Then
the hard parts: ``kill -9`` of the daemon in the middle of uploads, and a
fault-injecting proxy (``faultproxy.py``) that resets connections, answers
500 and 503 SlowDown, stalls, and drops answers to requests the server did
carry out; permanent refusals (no such bucket, bad credentials), a fragment
damaged in the queue, a foreign object under our key, and two freezers
working on one spool at once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import oracles
from faultproxy import Fault, FaultProxy, Request, always, capped, cycle
from s3server import S3Bucket
from support.cli import VAULT, Cli, Result

PREFIX = "hosts/db1"
MiB = 1 << 20
#: The S3 vault's default multipart threshold (cryophile.vault.s3); not configurable.
MULTIPART_THRESHOLD = 64 * MiB


@dataclass
class S3Freeze:
    """One spool, one bucket, one config file, and the credentials for them."""

    cli: Cli
    bucket: S3Bucket
    config: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def client(self) -> Any:
        return self.bucket.endpoint.client()

    def run(self, *args: str | os.PathLike[str], timeout: float = 300) -> Result:
        return self.cli.run([*args, "-c", self.config], env=self.env, timeout=timeout)

    def freeze(self, *args: str, timeout: float = 300) -> Result:
        return self.run("freeze", "--once", *args, timeout=timeout)

    def popen_daemon(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "cryophile", "freeze", "-c", str(self.config), *args],
            env=self.cli.environment(self.env), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listing(self, ulid: str) -> dict[str, dict[str, Any]]:
        """Object name (``chunk.N``) → its list_objects_v2 entry, for one backup."""
        prefix = f"{PREFIX}/{ulid}/"
        entries: dict[str, dict[str, Any]] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket.name, Prefix=prefix):
            for entry in page.get("Contents", []):
                entries[entry["Key"].removeprefix(prefix)] = entry
        return entries

    def all_keys(self) -> list[str]:
        response = self.client.list_objects_v2(Bucket=self.bucket.name)
        return [entry["Key"] for entry in response.get("Contents", [])]

    def download_sha256(self, key: str) -> tuple[int, str]:
        body = self.client.get_object(Bucket=self.bucket.name, Key=key)["Body"]
        digest = hashlib.sha256()
        size = 0
        for chunk in body.iter_chunks(MiB):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()

    def head(self, key: str) -> Any:
        return self.client.head_object(Bucket=self.bucket.name, Key=key, ChecksumMode="ENABLED")


def write_config(path: Path, bucket: str, endpoint_url: str, region: str,
                 **extra: str | float) -> Path:
    lines = ["[[vault]]", f'id = "{VAULT}"', 'provider = "s3"', f'bucket = "{bucket}"',
             f'endpoint_url = "{endpoint_url}"', f'region = "{region}"']
    lines += [f'{name} = "{value}"' if isinstance(value, str) else f"{name} = {value}"
              for name, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def credentials_env(bucket: S3Bucket, tmp_path: Path) -> dict[str, str]:
    """The server's credentials in the environment; no AWS config file exists."""
    missing = tmp_path / "no-such-aws-dir"
    return {
        "AWS_ACCESS_KEY_ID": bucket.endpoint.access_key,
        "AWS_SECRET_ACCESS_KEY": bucket.endpoint.secret_key,
        "AWS_CONFIG_FILE": str(missing / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(missing / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def make_s3(cli: Cli, bucket: S3Bucket, tmp_path: Path, *, endpoint_url: str | None = None,
            bucket_name: str | None = None, env: Mapping[str, str] | None = None,
            **extra: str | float) -> S3Freeze:
    config = write_config(tmp_path / f"cryophile-{len(list(tmp_path.glob('*.toml')))}.toml",
                          bucket_name or bucket.name, endpoint_url or bucket.endpoint.url,
                          bucket.endpoint.region, **extra)
    if cli.config is None:
        cli.config = config  # backups from now on are made for this vault
    return S3Freeze(cli, bucket, config, dict(env or credentials_env(bucket, tmp_path)))


def s3_port(bucket: S3Bucket) -> int:
    port = urlsplit(bucket.endpoint.url).port
    assert port is not None
    return port


@pytest.fixture
def s3(cli: Cli, s3_bucket: S3Bucket, tmp_path: Path) -> S3Freeze:
    return make_s3(cli, s3_bucket, tmp_path)


@pytest.fixture
def proxy(s3_bucket: S3Bucket) -> Iterator[FaultProxy]:
    """A fault proxy in front of SeaweedFS; tests set its ``schedule``."""
    with FaultProxy(s3_port(s3_bucket), stall_seconds=1.0) as running:
        yield running


@pytest.fixture
def data(tar_stream: bytes) -> bytes:
    """~12 MiB of random bytes and a real tar stream: three 5M fragments."""
    return random.Random(12).randbytes(12 * MiB) + tar_stream


def manifest_of(cli: Cli, ulid: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((cli.freeze_dir(ulid) / "chunk.0").read_bytes())
    return document


def queued_files(cli: Cli, ulid: str) -> dict[str, str]:
    """What is in one backup's freeze queue: file name → SHA-256."""
    directory = cli.freeze_dir(ulid)
    if not directory.exists():
        return {}
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in directory.iterdir()}


def assert_vault_holds(s3: S3Freeze, ulid: str, manifest: dict[str, Any],
                       manifest_bytes: bytes | None = None) -> None:
    """The bucket holds exactly chunk.0..N of the backup, each equal to the manifest."""
    listing = s3.listing(ulid)
    fragments = manifest["fragments"]
    assert sorted(listing) == sorted(f"chunk.{i}" for i in range(len(fragments) + 1))
    for entry in fragments:
        key = f"{PREFIX}/{ulid}/chunk.{entry['index']}"
        size, digest = s3.download_sha256(key)
        assert (size, digest) == (entry["size"], entry["sha256"]), key
        assert listing[f"chunk.{entry['index']}"]["Size"] == entry["size"], key
    size, digest = s3.download_sha256(f"{PREFIX}/{ulid}/chunk.0")
    if manifest_bytes is not None:
        assert (size, digest) == (len(manifest_bytes), hashlib.sha256(manifest_bytes).hexdigest())


def assert_queue_empty(cli: Cli) -> None:
    leftovers = [str(path) for path in (cli.spool / "freeze").rglob("*") if path.is_file()]
    assert leftovers == []


def assert_nothing_lost(s3: S3Freeze, ulid: str, manifest: dict[str, Any]) -> None:
    """At any instant, each fragment is still queued locally or confirmed in the vault."""
    queued = queued_files(s3.cli, ulid)
    listing = s3.listing(ulid)
    for entry in manifest["fragments"]:
        name = f"chunk.{entry['index']}"
        if name in queued:
            assert queued[name] == entry["sha256"], name
            continue
        assert name in listing, f"{name} is neither queued nor in the vault"
        head = s3.head(f"{PREFIX}/{ulid}/{name}")
        assert (head["ContentLength"], head["Metadata"]["sha256"]) == (
            entry["size"], entry["sha256"]), name


# -- the normal path -------------------------------------------------------------------


def test_freeze_puts_fragments_in_glacier_and_the_manifest_in_standard_once(
        s3: S3Freeze, gpg_key: oracles.KeyPair, data: bytes) -> None:
    ulid = s3.cli.backup(gpg_key, data)
    manifest_bytes = (s3.cli.freeze_dir(ulid) / "chunk.0").read_bytes()
    manifest = json.loads(manifest_bytes)
    assert len(manifest["fragments"]) >= 3

    result = s3.freeze()
    assert result.returncode == 0, result.stderr
    assert not s3.cli.freeze_dir(ulid).exists()
    assert_queue_empty(s3.cli)
    assert_vault_holds(s3, ulid, manifest, manifest_bytes)
    listing = s3.listing(ulid)
    for entry in manifest["fragments"]:
        name = f"chunk.{entry['index']}"
        assert listing[name]["StorageClass"] == "GLACIER", name
        head = s3.head(f"{PREFIX}/{ulid}/{name}")
        assert head["StorageClass"] == "GLACIER"
        # The server verified and kept the SHA-256 the upload carried.
        assert base64.b64decode(head["ChecksumSHA256"]).hex() == entry["sha256"]
        assert head["Metadata"]["sha256"] == entry["sha256"]
    assert listing["chunk.0"]["StorageClass"] == "STANDARD"
    head = s3.head(f"{PREFIX}/{ulid}/chunk.0")
    assert head.get("StorageClass", "STANDARD") == "STANDARD"
    assert base64.b64decode(head["ChecksumSHA256"]) == hashlib.sha256(manifest_bytes).digest()
    # The manifest went up last.
    assert listing["chunk.0"]["LastModified"] >= max(
        listing[f"chunk.{entry['index']}"]["LastModified"] for entry in manifest["fragments"])

    again = s3.freeze()
    assert again.returncode == 0, again.stderr
    assert "0 object(s)" in again.stderr
    after = s3.listing(ulid)
    assert {name: (entry["ETag"], entry["LastModified"], entry["Size"])
            for name, entry in after.items()} == {
        name: (entry["ETag"], entry["LastModified"], entry["Size"])
        for name, entry in listing.items()}


def test_a_fragment_above_the_multipart_threshold_arrives_intact(
        s3: S3Freeze, gpg_key: oracles.KeyPair) -> None:
    data = random.Random(70).randbytes(66 * MiB)
    ulid = s3.cli.backup(gpg_key, data, "-C", "none", size="70M")
    manifest = manifest_of(s3.cli, ulid)
    big = manifest["fragments"][0]
    assert big["size"] >= MULTIPART_THRESHOLD

    result = s3.freeze()
    assert result.returncode == 0, result.stderr
    assert_vault_holds(s3, ulid, manifest)
    head = s3.head(f"{PREFIX}/{ulid}/chunk.1")
    # An ETag "…-N" is what only a multipart upload produces.
    assert head["ETag"].strip('"').rsplit("-", 1)[-1].isdigit()
    assert "-" in head["ETag"]
    assert head["StorageClass"] == "GLACIER"
    assert head["Metadata"]["sha256"] == big["sha256"]
    uploads = s3.client.list_multipart_uploads(Bucket=s3.bucket.name).get("Uploads", [])
    assert uploads == []


def test_json_logs_one_uploaded_event_per_object_in_the_configured_class(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        data: bytes) -> None:
    s3 = make_s3(cli, s3_bucket, tmp_path, storage_class="STANDARD_IA")
    ulid = cli.backup(gpg_key, data)
    manifest = manifest_of(cli, ulid)
    manifest_size = (cli.freeze_dir(ulid) / "chunk.0").stat().st_size

    result = s3.freeze("--json")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(event, dict) for event in events)
    uploaded = [event for event in events if event.get("event") == "uploaded"]
    expected = {f"{PREFIX}/{ulid}/chunk.{entry['index']}": entry["size"]
                for entry in manifest["fragments"]}
    expected[f"{PREFIX}/{ulid}/chunk.0"] = manifest_size
    assert {event["key"]: event["bytes"] for event in uploaded} == expected
    assert len(uploaded) == len(expected)
    assert uploaded[-1]["key"].endswith("/chunk.0")
    assert any(event.get("event") == "frozen" for event in events)
    listing = s3.listing(ulid)
    assert {name: entry["StorageClass"] for name, entry in listing.items()} == {
        name: "STANDARD" if name == "chunk.0" else "STANDARD_IA" for name in listing}


def test_a_fragment_damaged_in_the_queue_is_refused_by_the_server_and_stays_queued(
        s3: S3Freeze, gpg_key: oracles.KeyPair, data: bytes) -> None:
    ulid = s3.cli.backup(gpg_key, data, "-C", "none")
    manifest = manifest_of(s3.cli, ulid)
    damaged = s3.cli.freeze_dir(ulid) / "chunk.2"
    content = bytearray(damaged.read_bytes())
    content[len(content) // 2] ^= 0x01
    damaged.write_bytes(bytes(content))

    result = s3.freeze()
    assert result.returncode == 65, result.stderr
    assert "chunk.2" in result.stderr
    # Refused before a byte went: the file no longer hashes to its manifest entry.
    assert "not stored as" in result.stderr
    listing = s3.listing(ulid)
    # The others went up; the damaged one and the manifest did not.
    assert "chunk.2" not in listing
    assert "chunk.0" not in listing
    assert damaged.read_bytes() == content
    assert (s3.cli.freeze_dir(ulid) / "chunk.0").exists()
    for entry in manifest["fragments"]:
        name = f"chunk.{entry['index']}"
        if name != "chunk.2":
            assert s3.download_sha256(f"{PREFIX}/{ulid}/{name}")[1] == entry["sha256"]


def test_an_object_with_other_content_under_the_key_is_not_overwritten(
        s3: S3Freeze, gpg_key: oracles.KeyPair, data: bytes) -> None:
    ulid = s3.cli.backup(gpg_key, data)
    key = f"{PREFIX}/{ulid}/chunk.2"
    s3.client.put_object(Bucket=s3.bucket.name, Key=key, Body=b"somebody else's object")
    result = s3.freeze()
    assert result.returncode == 73, result.stderr
    # Another host's object under this id: named, with what to do about it.
    assert f"already holds chunk.2 under backup {VAULT}/{PREFIX}/{ulid}" in result.stderr
    assert "which this spool did not upload" in result.stderr
    assert "Nothing was overwritten" in result.stderr
    body = s3.client.get_object(Bucket=s3.bucket.name, Key=key)["Body"].read()
    assert body == b"somebody else's object"
    # The fragment stays queued, and the backup is not marked complete.
    assert (s3.cli.freeze_dir(ulid) / "chunk.2").exists()
    assert "chunk.0" not in s3.listing(ulid)


# -- kill -9 -------------------------------------------------------------------------


def test_freeze_daemon_killed_during_uploads_then_once_completes_and_restores(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        proxy: FaultProxy) -> None:
    # A plain-forwarding proxy: it only tells us when uploads are in flight.
    s3 = make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url)
    data = random.Random(9).randbytes(40 * MiB)
    ulid = cli.backup(gpg_key, data, "-C", "none")
    manifest = manifest_of(cli, ulid)
    assert len(manifest["fragments"]) >= 8

    rng = random.Random(20261126)
    kills: list[str] = []
    for _round in range(8):
        if not cli.freeze_dir(ulid).exists():
            break
        puts_before = sum(1 for _i, method, _t, _f in list(proxy.log) if method == "PUT")
        wanted = rng.randint(1, 3)
        delay = rng.uniform(0.0, 0.08)
        daemon = s3.popen_daemon("-j", "2")
        try:
            deadline = time.monotonic() + 30
            # Until the daemon has started its wanted-th upload of this round
            # (or has finished everything: then this kill hits an idle daemon).
            while (sum(1 for _i, method, _t, _f in list(proxy.log) if method == "PUT")
                   - puts_before < wanted and cli.freeze_dir(ulid).exists()):
                assert daemon.poll() is None, "the daemon exited by itself"
                assert time.monotonic() < deadline, "no uploads seen"
                time.sleep(0.002)
            time.sleep(delay)
            in_flight = daemon.poll() is None and cli.freeze_dir(ulid).exists()
        finally:
            daemon.kill()
            daemon.wait()
        if in_flight:
            kills.append(f"after PUT #{wanted} + {delay * 1000:.0f} ms")
        assert_nothing_lost(s3, ulid, manifest)
    assert len(kills) >= 3, kills

    result = s3.freeze()
    assert result.returncode == 0, (kills, result.stderr)
    assert not cli.freeze_dir(ulid).exists()
    assert_queue_empty(cli)
    assert_vault_holds(s3, ulid, manifest)

    for child in cli.spool.iterdir():
        shutil.rmtree(child)
    restored = s3.run("restore", "-v", VAULT, "-p", PREFIX, "-u", ulid, "-k", gpg_key.secret,
                      "--thaw", "--poll", "0.2")
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == data


# -- network faults ----------------------------------------------------------------


def test_freeze_succeeds_through_resets_errors_slowdowns_stalls_and_lost_answers(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        proxy: FaultProxy, data: bytes) -> None:
    # Every other request fails (at most 3 times per request, so that the
    # order in which parallel requests arrive cannot exhaust botocore's retries).
    proxy.schedule = capped(cycle([Fault.NONE, Fault.RESET, Fault.NONE, Fault.ERROR_500,
                                   Fault.NONE, Fault.SLOW_DOWN, Fault.NONE, Fault.STALL,
                                   Fault.NONE, Fault.DROP_RESPONSE]), per_target=3)
    s3 = make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url)
    ulid = cli.backup(gpg_key, data)
    manifest_bytes = (cli.freeze_dir(ulid) / "chunk.0").read_bytes()
    manifest = json.loads(manifest_bytes)

    started = time.monotonic()
    result = s3.freeze(timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, (result.stderr, proxy.log)
    assert proxy.faults() > 0
    assert set(proxy.injected) == {Fault.RESET, Fault.ERROR_500, Fault.SLOW_DOWN, Fault.STALL,
                                   Fault.DROP_RESPONSE}, proxy.log
    # The failed attempts are logged (botocore retries them quietly otherwise).
    assert "retrying" in result.stderr or "trying again" in result.stderr
    assert not cli.freeze_dir(ulid).exists()
    assert_vault_holds(s3, ulid, manifest, manifest_bytes)
    assert elapsed < 60, elapsed


def test_multipart_upload_survives_faults_on_its_parts_and_its_completion(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        proxy: FaultProxy) -> None:
    seen: dict[str, int] = {}

    def schedule(request: Request) -> Fault:
        """The first try of: part 2 reset mid-body, part 3 → 500, part 4 → SlowDown,
        CreateMultipartUpload → 500; the completion is carried out but its answer lost."""
        query = request.target.partition("?")[2]
        if request.method == "POST" and "uploads" in query.split("&"):
            kind = "create"
        elif request.method == "POST" and "uploadId=" in query:
            kind = "complete"
        elif request.method == "PUT" and "partNumber=" in query:
            kind = "part-" + query.split("partNumber=")[1].split("&")[0]
        else:
            return Fault.NONE
        seen[kind] = seen.get(kind, 0) + 1
        if seen[kind] > 1:
            return Fault.NONE
        return {"create": Fault.ERROR_500, "complete": Fault.DROP_RESPONSE,
                "part-2": Fault.RESET, "part-3": Fault.ERROR_500,
                "part-4": Fault.SLOW_DOWN}.get(kind, Fault.NONE)

    proxy.schedule = schedule
    s3 = make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url)
    data = random.Random(71).randbytes(66 * MiB)
    ulid = cli.backup(gpg_key, data, "-C", "none", size="70M")
    manifest = manifest_of(cli, ulid)
    assert manifest["fragments"][0]["size"] >= MULTIPART_THRESHOLD

    result = s3.freeze(timeout=120)
    assert result.returncode == 0, (result.stderr, proxy.log)
    assert proxy.injected == {Fault.ERROR_500: 2, Fault.DROP_RESPONSE: 1, Fault.RESET: 1,
                              Fault.SLOW_DOWN: 1}, proxy.log
    assert_vault_holds(s3, ulid, manifest)
    uploads = s3.client.list_multipart_uploads(Bucket=s3.bucket.name).get("Uploads", [])
    assert uploads == []


def test_a_server_answering_500_to_everything_exits_75_and_keeps_the_queue(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        proxy: FaultProxy) -> None:
    proxy.schedule = always(Fault.ERROR_500)
    s3 = make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url)
    # One fragment: the pass lasts as long as its slowest retry chain, and the
    # chains' random back-offs dominate this test's time.
    ulid = cli.backup(gpg_key, random.Random(500).randbytes(MiB))
    before = queued_files(cli, ulid)
    assert sorted(before) == ["chunk.0", "chunk.1"]

    started = time.monotonic()
    result = s3.freeze(timeout=180)
    elapsed = time.monotonic() - started
    assert result.returncode == 75, result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr
    # The first request, the listing of the backup's id (another host's objects?),
    # meets the 500 first: S3's InternalError, "server error" either way.
    assert "server error" in errors[0]
    assert ulid in errors[0]
    # Every failed attempt is logged, the retries are botocore's.
    assert "attempt 2 of" in result.stderr
    assert queued_files(cli, ulid) == before
    assert s3.all_keys() == []
    assert proxy.injected[Fault.ERROR_500] >= 2  # retried, not given up at once
    # botocore's standard mode: 10 tries (max_attempts) with exponential back-off
    # (0.05 s doubling, capped at 20 s, times a random factor): at most 25.6 s.
    assert elapsed < 90, elapsed


def test_a_refusing_vault_exits_69_naming_the_problem_and_keeps_the_queue(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        data: bytes) -> None:
    good = credentials_env(s3_bucket, tmp_path)
    right = make_s3(cli, s3_bucket, tmp_path)
    ulid = cli.backup(gpg_key, data)
    before = queued_files(cli, ulid)
    mistakes: dict[str, tuple[S3Freeze, str]] = {
        "wrong secret key": (make_s3(cli, s3_bucket, tmp_path, env={
            **good, "AWS_SECRET_ACCESS_KEY": "not-the-secret-" + os.urandom(8).hex()}),
            "access denied"),
        # The first pass noted its upload, so this one first looks for incomplete
        # uploads of it: ListMultipartUploads has a body that names the problem.
        "unknown access key": (make_s3(cli, s3_bucket, tmp_path, env={
            **good, "AWS_ACCESS_KEY_ID": "AKNOBODY" + os.urandom(6).hex().upper()}),
            "credentials refused (InvalidAccessKeyId)"),
    }
    for mistake, (s3, message) in mistakes.items():
        result = s3.freeze(timeout=120)
        assert result.returncode == 69, (mistake, result.stderr)
        assert message in result.stderr, (mistake, result.stderr)
        assert queued_files(cli, ulid) == before, mistake
        assert s3.all_keys() == [], mistake
    # The queue is intact: with the mistake fixed, it all goes up.
    manifest = json.loads((cli.freeze_dir(ulid) / "chunk.0").read_bytes())
    result = right.freeze()
    assert result.returncode == 0, result.stderr
    assert_vault_holds(right, ulid, manifest)


def test_a_backup_queued_for_a_missing_bucket_goes_to_the_fixed_one_only_with_retarget(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        data: bytes) -> None:
    """A typo in the bucket name: freeze says the bucket does not exist (69); once the
    configuration is fixed, the queued backup is still bound for the bucket it was
    made for, so freeze refuses (78) until told to send it to the new one."""
    missing_bucket = f"missing-{os.urandom(6).hex()}"
    typo = make_s3(cli, s3_bucket, tmp_path, bucket_name=missing_bucket)
    ulid = cli.backup(gpg_key, data)
    before = queued_files(cli, ulid)
    result = typo.freeze(timeout=120)
    assert result.returncode == 69, result.stderr
    assert f"bucket {missing_bucket!r} does not exist" in result.stderr
    fixed = make_s3(cli, s3_bucket, tmp_path)
    result = fixed.freeze()
    assert result.returncode == 78, result.stderr
    assert f"was queued for s3://{missing_bucket} at {s3_bucket.endpoint.url}" in result.stderr
    assert f"would send it to s3://{s3_bucket.name}" in result.stderr
    assert "--retarget" in result.stderr
    assert queued_files(cli, ulid) == before
    assert fixed.all_keys() == []
    manifest = json.loads((cli.freeze_dir(ulid) / "chunk.0").read_bytes())
    result = fixed.freeze("--retarget")
    assert result.returncode == 0, result.stderr
    assert_vault_holds(fixed, ulid, manifest)


# -- two freezers at once -----------------------------------------------------------


def test_two_freezers_on_one_spool_do_not_fail_each_other(
        s3: S3Freeze, gpg_key: oracles.KeyPair) -> None:
    """The README suggests ``freeze --once`` from cron after the backup, and ships the
    daemon (which inotify wakes as soon as fragments land): two freezers then work on
    the same backup. Whichever design (tolerate it, or let the second one wait or step
    aside with 75), neither may fail with a bogus local I/O error, and the backup must
    end up complete in the vault."""
    data = random.Random(3).randbytes(40 * MiB)
    ulid = s3.cli.backup(gpg_key, data, "-C", "none")
    manifest = manifest_of(s3.cli, ulid)
    argv = [sys.executable, "-m", "cryophile", "freeze", "--once", "-c", str(s3.config)]
    freezers = [subprocess.Popen(argv, env=s3.cli.environment(s3.env),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE) for _ in range(2)]
    outcomes = []
    for freezer in freezers:
        _, stderr = freezer.communicate(timeout=120)
        outcomes.append((freezer.returncode, stderr.decode(errors="replace")))
    codes = sorted(code for code, _ in outcomes)
    assert set(codes) <= {0, 75}, outcomes
    assert codes[0] == 0, outcomes
    assert not s3.cli.freeze_dir(ulid).exists(), outcomes
    assert_vault_holds(s3, ulid, manifest)


def test_status_shows_the_uploads_in_flight_and_the_cap_paces_them(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair) -> None:
    # 3 fragments of 5 MiB at 4 MiB/s: the freeze lasts a few seconds, long enough to see.
    s3 = make_s3(cli, s3_bucket, tmp_path, max_bandwidth="4M")
    ulid = cli.backup(gpg_key, os.urandom(14 * 1024 * 1024), "-C", "none")
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "cryophile", "freeze", "--once", "-j", "1", "-c",
         str(s3.config)], env=cli.environment(s3.env), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: list[dict[str, Any]] = []
    while process.poll() is None and not seen:
        status = json.loads(s3.run("status", "--json").stdout)
        seen = status["uploading"]
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=120)
    elapsed = time.monotonic() - started
    assert process.returncode == 0, stderr.decode()
    assert seen, "status never showed an upload in flight"
    assert seen[0]["key"].startswith(f"{PREFIX}/{ulid}/chunk.")
    assert seen[0]["bytes"] > 0
    assert elapsed >= 2.0  # 15 MiB at 4 MiB/s, the first object going at once
    assert json.loads(s3.run("status", "--json").stdout)["uploading"] == []

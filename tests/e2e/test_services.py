"""S3 services beyond AWS (issue 15), through ``service_proxy.py`` in front of SeaweedFS.

No test reaches any of these services: each is emulated by the
refusals its documentation and its users' public reports describe. For each,
with the right ``service`` in the vault's entry, a backup with one multipart
fragment (64 MiB, at the S3 vault's multipart threshold) and one single-part
fragment freezes, lists, verifies and restores byte-identically through the
real CLI, and every upload carried an integrity header the service takes.
With the default settings (``service = "aws"``) the same commands fail within
seconds with exit 78 and a message naming the setting to change. Object lock
that a service ignores is caught by reading the retention back.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cryophile.services
import oracles
from cryophile.config import parse_config
from cryophile.errors import ConfigError
from cryophile.storage_classes import COLD_STORAGE_CLASSES
from e2e import test_freeze_s3 as fs
from s3server import S3Bucket
from service_proxy import ServiceProxy
from support.cli import VAULT, Cli, Result

PREFIX = fs.PREFIX
MiB = fs.MiB
#: A refusal must end the command well within this (botocore must not retry it
#: for minutes): a generous bound on a few requests on loopback.
REFUSAL_SECONDS = 30.0

#: Per service: the vault settings a user writes, the integrity header each upload
#: must carry (one the service verifies), and the emulation it is tested through
#: (``transparent`` for AWS, SeaweedFS and an unknown server: nothing refused).
SERVICES: dict[str, tuple[dict[str, Any], str, str]] = {
    "aws": ({}, "x-amz-checksum-sha256", "transparent"),
    "b2": ({"service": "b2"}, "content-md5", "b2"),
    "r2": ({"service": "r2"}, "x-amz-checksum-sha256", "r2"),
    # GCS's own class names (NEARLINE, ...) are configurable, but SeaweedFS behind
    # the proxy refuses them (InvalidStorageClass): the round trip uses STANDARD.
    "gcs": ({"service": "gcs"}, "content-md5", "gcs"),
    "wasabi": ({"service": "wasabi"}, "x-amz-checksum-sha256", "wasabi"),
    "minio": ({"service": "minio"}, "x-amz-checksum-sha256", "minio"),
    "ceph": ({"service": "ceph"}, "content-md5", "ceph"),
    "garage": ({"service": "garage"}, "content-md5", "garage"),
    # The emulated Scaleway allows 3 parts (the real one 1000: not reachable with a
    # test-sized fragment); max_parts = 3 must make the 64 MiB fragment fit, in parts
    # of 22 MiB instead of the usual 16 MiB.
    "scaleway": ({"service": "scaleway", "storage_class": "GLACIER", "max_parts": 3},
                 "x-amz-checksum-sha256", "scaleway"),
    # OVHcloud's archive class, with RestoreObject.
    "ovh": ({"service": "ovh", "storage_class": "DEEP_ARCHIVE"}, "x-amz-checksum-sha256",
            "ovh"),
    "hetzner": ({"service": "hetzner"}, "content-md5", "hetzner"),
    "seaweedfs": ({"service": "seaweedfs"}, "x-amz-checksum-sha256", "transparent"),
    "generic": ({"service": "generic"}, "content-md5", "transparent"),
}


def test_every_service_has_a_round_trip() -> None:
    assert sorted(SERVICES) == sorted(cryophile.services.SERVICES)


def service_line(endpoint: str) -> str:
    """The pointer to ``service`` in a refusal when the entry left it at the default."""
    return ("or set service (r2, b2, gcs, wasabi, minio, ceph, garage, scaleway, ovh, hetzner, "
            f"seaweedfs, generic) to the service behind {endpoint} in the vault's [[vault]] "
            "entry")


@pytest.fixture(scope="module")
def big_data() -> bytes:
    """Random bytes for one 64 MiB fragment (multipart) and one of ~2 MiB (one PUT)."""
    return random.Random(15).randbytes(66 * MiB)


@pytest.fixture
def small_data() -> bytes:
    return random.Random(16).randbytes(3 * MiB)


@contextlib.contextmanager
def emulated(bucket: S3Bucket, service: str, **options: Any) -> Iterator[ServiceProxy]:
    with ServiceProxy(fs.s3_port(bucket), service, **options) as proxy:
        yield proxy


def wipe_spool(cli: Cli) -> None:
    for child in cli.spool.iterdir():
        shutil.rmtree(child)


def restore(s3: fs.S3Freeze, ulid: str, key: oracles.KeyPair) -> Result:
    return s3.run("restore", "-v", VAULT, "-p", PREFIX, "-u", ulid, "-k", key.secret,
                  "--thaw", "--poll", "0.2", "--timeout", "120", timeout=240)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_backup_freezes_lists_verifies_and_restores_through_the_service(
        service: str, cli: Cli, s3_bucket: S3Bucket, tmp_path: Path,
        gpg_key: oracles.KeyPair, big_data: bytes) -> None:
    settings, integrity, emulation = SERVICES[service]
    storage_class = str(settings.get(
        "storage_class", cryophile.services.SERVICES[service].storage_class))
    options = {"max_parts": 3} if service == "scaleway" else {}
    with emulated(s3_bucket, emulation, **options) as proxy:
        s3 = fs.make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url, **settings)
        ulid = cli.backup(gpg_key, big_data, size="64M")
        manifest = fs.manifest_of(cli, ulid)
        assert manifest["fragments"][0]["size"] == 64 * MiB
        assert len(manifest["fragments"]) == 2

        frozen = s3.freeze()
        assert frozen.returncode == 0, frozen.stderr
        fs.assert_vault_holds(s3, ulid, manifest)

        listed = s3.run("list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [entry["ulid"] for entry in json.loads(listed.stdout)] == [ulid]
        if storage_class in COLD_STORAGE_CLASSES:
            # Cold: verify checks sizes and SHA-256 in the vault without a download.
            verified = s3.run("verify", "-v", VAULT, "-p", PREFIX, "-u", ulid)
            assert verified.returncode == 0, verified.stderr
            assert ": healthy" in verified.stdout.decode()
        else:
            verified = s3.run("verify", "-v", VAULT, "-p", PREFIX, "-u", ulid, "--download")
            assert verified.returncode == 0, verified.stderr
            assert "2 downloaded and hashed" in verified.stdout.decode()

        wipe_spool(cli)
        restored = restore(s3, ulid, gpg_key)
        assert restored.returncode == 0, restored.stderr
        assert restored.stdout == big_data

        assert proxy.refusals() == []
        uploads = proxy.uploads()
        parts = [seen for seen in uploads if "partNumber=" in seen.query]
        # 64 MiB in 16 MiB parts; on Scaleway (max_parts = 3) in 22 + 22 + 20 MiB.
        sizes = [22, 22, 20] if service == "scaleway" else [16] * 4
        assert sorted((int(seen.headers["content-length"]) for seen in parts),
                      reverse=True) == [size * MiB for size in sizes]
        assert len(uploads) - len(parts) == 2  # chunk.2 and the manifest, one PUT each
        for seen in uploads:
            assert integrity in seen.headers, (seen.method, seen.target)
    stored = s3.head(f"{PREFIX}/{ulid}/chunk.1")
    assert stored.get("StorageClass", "STANDARD") == storage_class


@pytest.mark.parametrize("service", ["ceph", "hetzner"])
def test_sha256_where_no_checksum_comes_back_still_freezes_and_restores(
        service: str, cli: Cli, s3_bucket: S3Bucket, tmp_path: Path,
        gpg_key: oracles.KeyPair, small_data: bytes) -> None:
    """Ceph and Hetzner take x-amz-checksum-sha256 and return none: the stored
    x-amz-meta-sha256 confirms the upload, and the download is hashed against it."""
    with emulated(s3_bucket, service) as proxy:
        s3 = fs.make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url, service=service,
                        checksum="sha256")
        ulid = cli.backup(gpg_key, small_data)
        frozen = s3.freeze()
        assert frozen.returncode == 0, frozen.stderr
        verified = s3.run("verify", "-v", VAULT, "-p", PREFIX, "-u", ulid)
        assert verified.returncode == 0, verified.stderr
        wipe_spool(cli)
        restored = restore(s3, ulid, gpg_key)
        assert restored.returncode == 0, restored.stderr
        assert restored.stdout == small_data
        assert proxy.rewritten > 0  # the server's checksums did not get through
        assert all("x-amz-checksum-sha256" in seen.headers for seen in proxy.uploads())


def test_nothing_is_added_behind_our_back_with_the_default_settings(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        small_data: bytes) -> None:
    """aws: SHA-256 on every upload, no CRC32 or SDK checksum headers from botocore on
    any request (RestoreObject included), response checksums asked for on HEAD only
    where trusted (aws: yes)."""
    with emulated(s3_bucket, "transparent") as proxy:
        s3 = fs.make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url)
        ulid = cli.backup(gpg_key, small_data)
        assert s3.freeze().returncode == 0
        wipe_spool(cli)
        restored = restore(s3, ulid, gpg_key)
        assert restored.returncode == 0, restored.stderr
        assert restored.stdout == small_data
    assert proxy.uploads()
    assert all("x-amz-checksum-sha256" in seen.headers for seen in proxy.uploads())
    assert any("restore" in seen.query for seen in proxy.seen)
    for seen in proxy.seen:
        added = [name for name in seen.headers
                 if name.startswith(("x-amz-checksum-crc", "x-amz-sdk-checksum", "x-amz-trailer"))]
        assert added == [], (seen.method, seen.target)


@pytest.mark.parametrize(("service", "setting", "words"), [
    ("r2", "storage_class", "Header 'x-amz-storage-class' with value 'GLACIER' not implemented"),
    ("b2", "checksum", "x-amz-checksum-mode"),
    ("gcs", "checksum", "x-amz-checksum-mode"),
    ("minio", "storage_class", "400 InvalidStorageClass"),
    ("ceph", "storage_class", "400 InvalidStorageClass"),
    ("wasabi", "storage_class", "400 InvalidStorageClass"),
    ("hetzner", "storage_class", "400 InvalidStorageClass"),
    ("ovh", "storage_class", "400 InvalidStorageClass"),
])
def test_default_settings_fail_at_once_with_78_naming_the_setting(
        service: str, setting: str, words: str, cli: Cli, s3_bucket: S3Bucket, tmp_path: Path,
        gpg_key: oracles.KeyPair, small_data: bytes) -> None:
    with emulated(s3_bucket, service) as proxy:
        s3 = fs.make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url)
        ulid = cli.backup(gpg_key, small_data)
        started = time.monotonic()
        frozen = s3.freeze()
        took = time.monotonic() - started
    assert frozen.returncode == 78, frozen.stderr
    assert took < REFUSAL_SECONDS, took
    assert f"set {setting}" in frozen.stderr
    assert words in frozen.stderr
    assert service_line(proxy.url) in frozen.stderr
    assert "Traceback" not in frozen.stderr
    # The request failed the same way without If-None-Match: not taken for a server
    # without conditional writes.
    assert "does not support conditional writes" not in frozen.stderr
    # Nothing lost: the backup waits in the queue for the fixed configuration.
    assert (cli.freeze_dir(ulid) / "chunk.0").exists()


def test_after_fixing_service_the_queued_backup_freezes(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        small_data: bytes) -> None:
    with emulated(s3_bucket, "r2") as proxy:
        s3 = fs.make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url)
        ulid = cli.backup(gpg_key, small_data)
        assert s3.freeze().returncode == 78
        # The user's fix: the same entry with service = "r2".
        s3.config.write_text(s3.config.read_text() + 'service = "r2"\n')
        frozen = s3.freeze()
        assert frozen.returncode == 0, frozen.stderr
    assert not cli.freeze_dir(ulid).exists()


def test_thaw_with_default_settings_against_b2_fails_with_78(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        small_data: bytes) -> None:
    with emulated(s3_bucket, "b2") as proxy:
        s3 = fs.make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url, service="b2")
        ulid = cli.backup(gpg_key, small_data)
        assert s3.freeze().returncode == 0
        wipe_spool(cli)
        s3.config.write_text(s3.config.read_text().replace('service = "b2"\n', ""))
        restored = restore(s3, ulid, gpg_key)
    assert restored.returncode == 78, restored.stderr
    assert "set checksum" in restored.stderr
    assert restored.stdout == b""


def test_garage_composite_checksum_without_its_suffix_does_not_fail_a_restore(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        big_data: bytes) -> None:
    """Default settings (sha256 on every part, ChecksumMode on HEAD) against Garage:
    its multipart checksum comes back without "-N", which botocore would check a
    body against and fail. Downloads never ask for response checksums; we hash them."""
    with emulated(s3_bucket, "garage") as proxy:
        s3 = fs.make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url)
        ulid = cli.backup(gpg_key, big_data, size="64M")
        frozen = s3.freeze()
        assert frozen.returncode == 0, frozen.stderr
        verified = s3.run("verify", "-v", VAULT, "-p", PREFIX, "-u", ulid)
        assert verified.returncode == 0, verified.stderr
        assert ": healthy" in verified.stdout.decode()
        wipe_spool(cli)
        restored = restore(s3, ulid, gpg_key)
        assert restored.returncode == 0, restored.stderr
        assert restored.stdout == big_data
        # The emulation did strip the suffix from what the server answered.
        assert proxy.rewritten > 0
        gets = [seen for seen in proxy.seen if seen.method == "GET" and "chunk." in seen.target]
    assert gets
    assert all("x-amz-checksum-mode" not in seen.headers for seen in gets)


def test_backup_freeze_with_default_settings_against_r2_fails_with_78(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        small_data: bytes) -> None:
    with emulated(s3_bucket, "r2") as proxy:
        s3 = fs.make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url)
        started = time.monotonic()
        backed_up = cli.run(["backup", "-v", VAULT, "-p", PREFIX, "-k", gpg_key.cert,
                             "--freeze", "-c", s3.config], stdin=small_data, env=s3.env)
        took = time.monotonic() - started
    assert backed_up.returncode == 78, backed_up.stderr
    assert took < REFUSAL_SECONDS, took
    assert "retrying cannot help: set storage_class" in backed_up.stderr
    assert service_line(proxy.url) in backed_up.stderr


def test_thaw_once_with_default_settings_against_b2_fails_with_78(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        small_data: bytes) -> None:
    with emulated(s3_bucket, "b2") as proxy:
        s3 = fs.make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url, service="b2")
        ulid = cli.backup(gpg_key, small_data)
        assert s3.freeze().returncode == 0
        wipe_spool(cli)
        # Filed while the entry was right; then the service line is lost.
        filed = s3.run("restore", "-v", VAULT, "-p", PREFIX, "-u", ulid, "-k", gpg_key.secret,
                       "--no-thaw", "--timeout", "0")
        assert filed.returncode == 75, filed.stderr
        s3.config.write_text(s3.config.read_text().replace('service = "b2"\n', ""))
        started = time.monotonic()
        thawed = s3.run("thaw", "--once")
        took = time.monotonic() - started
    assert thawed.returncode == 78, thawed.stderr
    assert took < REFUSAL_SECONDS, took
    assert "retrying cannot help: set checksum = 'md5'" in thawed.stderr
    assert "Traceback" not in thawed.stderr


def test_a_part_beyond_the_service_limit_is_a_78_naming_max_parts(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        big_data: bytes) -> None:
    # Emulated Scaleway allowing 3 parts; the vault says nothing about max_parts.
    with emulated(s3_bucket, "scaleway", max_parts=3) as proxy:
        s3 = fs.make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url, service="generic")
        cli.backup(gpg_key, big_data, size="64M")
        frozen = s3.freeze()
    assert frozen.returncode == 78, frozen.stderr
    assert "set max_parts" in frozen.stderr
    assert "Part number must be an integer between 1 and 3" in frozen.stderr


def test_parts_that_would_exceed_the_memory_limit_are_a_78_naming_max_parts_and_s(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        big_data: bytes) -> None:
    # One part of 65 MiB (max_parts = 1): above the 64 MiB a part may hold in memory.
    # backup refuses such fragments up front (the next test): here max_parts = 1 came
    # into the configuration after the backup was queued.
    fs.make_s3(cli, s3_bucket, tmp_path, service="seaweedfs")
    ulid = cli.backup(gpg_key, big_data, "-C", "none", size="65M")
    s3 = fs.make_s3(cli, s3_bucket, tmp_path, service="seaweedfs", max_parts=1)
    frozen = s3.freeze()
    assert frozen.returncode == 78, frozen.stderr
    assert "needs parts of 65 MiB with max_parts = 1, above cryophile's limit of 64 MiB" in (
        frozen.stderr)
    assert "raise max_parts" in frozen.stderr
    assert "backup -s at most 64M" in frozen.stderr
    assert "chunk.1" not in s3.listing(ulid)
    assert (cli.freeze_dir(ulid) / "chunk.1").exists()
    # No upload was started, so none is left behind.
    assert s3.client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []


def test_backup_refuses_fragments_beyond_max_parts_before_reading_its_input(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair) -> None:
    # The same 65 MiB parts, known from -s and the configuration before any input:
    # nothing is read, nothing queued, nothing uploaded.
    s3 = fs.make_s3(cli, s3_bucket, tmp_path, service="seaweedfs", max_parts=1)
    for extra in ([], ["--freeze"]):
        result = cli.run(["backup", "-v", VAULT, "-p", "hosts/db1", "-k", gpg_key.cert,
                          "-s", "65M", *extra, "-c", s3.config], stdin=b"never read",
                         env=s3.env)
        assert result.returncode == 78, result.stderr
        assert ("fragments of 65.0 MiB (-s) needs parts of 65 MiB with max_parts = 1"
                in result.stderr), result.stderr
        assert "backup -s at most 64M" in result.stderr
        assert [path for path in cli.spool.rglob("*") if path.is_file()
                and path.name != "lock"] == []
    assert s3.client.list_objects_v2(Bucket=s3_bucket.name).get("KeyCount", 0) == 0
    # 64 MiB fragments go up in one PutObject, which max_parts does not limit.
    small = cli.run(["backup", "-v", VAULT, "-p", "hosts/db1", "-k", gpg_key.cert,
                     "-s", "64M", "--freeze", "-c", s3.config], stdin=b"small", env=s3.env)
    assert small.returncode == 0, small.stderr


def test_gcs_412_on_complete_for_a_missing_key_is_a_78_naming_checksum(
        cli: Cli, s3_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        big_data: bytes) -> None:
    # service = "gcs" but checksum forced back to sha256: the parts go up, the
    # completion is refused with 412 although nothing is stored under the key.
    with emulated(s3_bucket, "gcs") as proxy:
        s3 = fs.make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url, service="gcs",
                        checksum="sha256")
        ulid = cli.backup(gpg_key, big_data, size="64M")
        started = time.monotonic()
        frozen = s3.freeze()
        took = time.monotonic() - started
        completions = [seen for seen in proxy.refusals() if seen.refused == 412]
    assert frozen.returncode == 78, frozen.stderr
    assert took < REFUSAL_SECONDS + 30, took
    assert "412 PreconditionFailed to CompleteMultipartUpload" in frozen.stderr
    assert "set checksum = 'md5'" in frozen.stderr
    # Asked twice: with If-None-Match, then without (not a conflict, not "try again").
    assert [("if-none-match" in seen.headers) for seen in completions] == [True, False]
    assert "try again" not in frozen.stderr
    assert fs.queued_files(cli, ulid)


@pytest.mark.parametrize(("checksum", "fix"), [("sha256", "set checksum = 'md5'"),
                                               ("md5", "set service to the service")])
def test_a_412_on_put_for_a_missing_key_is_a_78_not_try_again(
        checksum: str, fix: str, cli: Cli, s3_bucket: S3Bucket, tmp_path: Path,
        gpg_key: oracles.KeyPair, small_data: bytes) -> None:
    with emulated(s3_bucket, "transparent", put_412=True) as proxy:
        s3 = fs.make_s3(cli, s3_bucket, tmp_path, endpoint_url=proxy.url, checksum=checksum)
        ulid = cli.backup(gpg_key, small_data)
        started = time.monotonic()
        frozen = s3.freeze()
        took = time.monotonic() - started
        puts = [seen for seen in proxy.refusals() if seen.refused == 412]
    assert frozen.returncode == 78, frozen.stderr
    assert took < REFUSAL_SECONDS, took
    assert "412 PreconditionFailed to PutObject for a key that does not exist" in frozen.stderr
    assert fix in frozen.stderr
    assert "try again" not in frozen.stderr
    # Each PUT refused with If-None-Match was asked again without it (uploads may run
    # in parallel, so only the counts are certain).
    conditional = sum("if-none-match" in seen.headers for seen in puts)
    assert conditional >= 1
    assert len(puts) - conditional == conditional
    assert fs.queued_files(cli, ulid)


# -- object lock -------------------------------------------------------------------


@pytest.fixture
def lock_bucket(s3_bucket: S3Bucket) -> Iterator[S3Bucket]:
    """A bucket with object lock enabled (SeaweedFS applies retention in it)."""
    client = s3_bucket.endpoint.client()
    name = s3_bucket.name + "-lock"
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    yield S3Bucket(s3_bucket.endpoint, name)
    with contextlib.suppress(Exception):
        client.delete_bucket(Bucket=name)


def test_object_lock_is_read_back_and_confirmed(
        cli: Cli, lock_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        small_data: bytes) -> None:
    s3 = fs.make_s3(cli, lock_bucket, tmp_path, service="seaweedfs",
                    object_lock_mode="GOVERNANCE", object_lock_days=1)
    ulid = cli.backup(gpg_key, small_data)
    frozen = s3.freeze()
    assert frozen.returncode == 0, frozen.stderr
    assert "object lock confirmed" in frozen.stderr
    retention = s3.client.get_object_retention(Bucket=lock_bucket.name,
                                               Key=f"{PREFIX}/{ulid}/chunk.0")["Retention"]
    assert retention["Mode"] == "GOVERNANCE"


def test_object_lock_silently_ignored_stops_the_freeze(
        cli: Cli, lock_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        small_data: bytes) -> None:
    # Garage takes the lock headers and applies nothing; service = "garage" would
    # refuse object_lock_mode at once, so the user said "generic".
    with emulated(lock_bucket, "garage") as proxy:
        s3 = fs.make_s3(cli, lock_bucket, tmp_path, endpoint_url=proxy.url, service="generic",
                        object_lock_mode="GOVERNANCE", object_lock_days=1)
        ulid = cli.backup(gpg_key, small_data)
        frozen = s3.freeze()
    assert frozen.returncode == 78, frozen.stderr
    assert "NOT protected" in frozen.stderr
    assert "object_lock_mode" in frozen.stderr
    # The local copy stays until the vault holds what was asked for.
    assert (cli.freeze_dir(ulid) / "chunk.0").exists()


def test_a_policy_without_get_object_retention_is_named(
        cli: Cli, lock_bucket: S3Bucket, tmp_path: Path, gpg_key: oracles.KeyPair,
        small_data: bytes) -> None:
    with emulated(lock_bucket, "transparent", deny_retention=True) as proxy:
        s3 = fs.make_s3(cli, lock_bucket, tmp_path, endpoint_url=proxy.url,
                        service="seaweedfs", object_lock_mode="GOVERNANCE", object_lock_days=1)
        ulid = cli.backup(gpg_key, small_data)
        frozen = s3.freeze()
    assert frozen.returncode == 69, frozen.stderr
    assert "access denied" in frozen.stderr
    assert "need s3:GetObjectRetention" in frozen.stderr
    assert "Traceback" not in frozen.stderr
    # Not confirmed: the local copy stays.
    assert (cli.freeze_dir(ulid) / "chunk.0").exists()


# -- configuration -----------------------------------------------------------------


def config_of(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "cryophile.toml"
    path.write_text("\n".join(["[[vault]]", f'id = "{VAULT}"', 'provider = "s3"',
                               'bucket = "backups"', *lines]) + "\n")
    return path


def test_a_service_sets_its_defaults_and_each_stays_overridable(tmp_path: Path) -> None:
    path = config_of(tmp_path, 'service = "r2"')
    entry = parse_config(path.read_text(), path).vaults[0]
    assert (entry.storage_class, entry.region, entry.checksum.value, entry.max_parts) == (
        "STANDARD", "auto", "sha256", 10_000)
    path = config_of(tmp_path, 'service = "scaleway"', 'checksum = "md5"', "max_parts = 500",
                     'storage_class = "glacier"', 'region = "fr-par"')
    entry = parse_config(path.read_text(), path).vaults[0]
    assert (entry.storage_class, entry.region, entry.checksum.value, entry.max_parts) == (
        "GLACIER", "fr-par", "md5", 500)
    path = config_of(tmp_path)
    entry = parse_config(path.read_text(), path).vaults[0]
    assert (entry.service, entry.storage_class, entry.checksum.value) == (
        "aws", "GLACIER", "sha256")
    path = config_of(tmp_path, 'service = "gcs"', 'storage_class = "ARCHIVE"')
    assert parse_config(path.read_text(), path).vaults[0].storage_class == "ARCHIVE"


@pytest.mark.parametrize(("lines", "line", "key", "words"), [
    (['service = "r2"', 'storage_class = "GLACIER"'], 6, "storage_class",
     "not a storage class of Cloudflare R2"),
    (['service = "b2"', 'object_lock_mode = "GOVERNANCE"', "object_lock_days = 3"], 6,
     "object_lock_mode", None),
    (['service = "azure"'], 5, "service", "is not one of aws, r2, b2, gcs"),
    (['checksum = "crc32"'], 5, "checksum", "is not one of sha256, md5, none"),
    (["max_parts = 20000"], 5, "max_parts", "from 1 to 10000"),
    (['service = "r2"', 'object_lock_mode = "GOVERNANCE"', "object_lock_days = 3"], 6,
     "object_lock_mode", "does not apply object lock"),
    (['checksum = "none"', 'object_lock_mode = "GOVERNANCE"', "object_lock_days = 3"], 5,
     "checksum", 'checksum = "none" cannot go with object_lock_mode'),
    (['object_lock_mode = "GOVERNANCE"', "object_lock_days = 3", 'checksum = "none"'], 7,
     "checksum", "or remove object_lock_mode and object_lock_days"),
])
def test_a_setting_the_service_cannot_honour_is_refused_with_file_line_and_key(
        tmp_path: Path, lines: list[str], line: int, key: str, words: str | None) -> None:
    path = config_of(tmp_path, *lines)
    if words is None:  # B2 has object lock: accepted
        parse_config(path.read_text(), path)
        return
    with pytest.raises(ConfigError) as raised:
        parse_config(path.read_text(), path)
    message = str(raised.value)
    assert f"{path}: line {line}: [[vault]] #1: key {key!r}" in message
    assert words in message


# -- integrity without a header ------------------------------------------------------


@pytest.mark.parametrize("checksum", ["none", "md5", "sha256"])
def test_a_fragment_damaged_in_the_spool_is_refused_whatever_the_checksum(
        checksum: str, cli: Cli, s3_bucket: S3Bucket, tmp_path: Path,
        gpg_key: oracles.KeyPair) -> None:
    """checksum = "none" sends no integrity header, so the server checks nothing: the
    file is hashed against its manifest entry before the PUT (as with md5 and
    sha256), or freeze would confirm our own x-amz-meta-sha256 and delete the copy."""
    s3 = fs.make_s3(cli, s3_bucket, tmp_path, service="seaweedfs", checksum=checksum)
    ulid = cli.backup(gpg_key, random.Random(17).randbytes(12 * MiB), "-C", "none")
    damaged = cli.freeze_dir(ulid) / "chunk.2"
    content = bytearray(damaged.read_bytes())
    content[len(content) // 2] ^= 0x01
    damaged.write_bytes(bytes(content))
    frozen = s3.freeze()
    assert frozen.returncode == 65, frozen.stderr
    assert "chunk.2" in frozen.stderr
    assert "not stored as" in frozen.stderr
    listing = s3.listing(ulid)
    assert "chunk.2" not in listing  # nothing confirmed
    assert "chunk.0" not in listing  # the backup is not complete in the vault
    assert damaged.read_bytes() == content  # the local copy kept

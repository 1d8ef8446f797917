"""One contract suite for every Vault implementation (cryophile.vault.base).

Backends:

- ``dir``: DirectoryVault in a temporary directory;
- ``dir-capped``: the same inside the bandwidth cap (``max_bandwidth``), as
  :func:`cryophile.vault.factory.open_vault` composes it: the wrapper keeps the
  contract;
- ``memory``: the in-memory vault of the in-process tests
  (``support/memory_vault.py``), cold storage on a clock the test advances;
- ``seaweedfs``: S3Vault on a real SeaweedFS server (auth and checksums on);
- ``moto``: S3Vault on moto's server, the only server with Glacier semantics.

moto does not verify checksums, so the integrity cases run on the others
only; SeaweedFS and the directory have no cold storage, so the thaw cases run
on ``moto`` and ``memory``. Everything else runs on every backend.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cryophile.config import Config, VaultConfig
from cryophile.errors import (
    AlreadyExistsError,
    DataError,
    NoInputError,
    ServiceError,
    TryLaterError,
    UsageError,
    VaultUnavailableError,
)
from cryophile.vault.base import ObjectInfo, RestoreState, Vault
from cryophile.vault.factory import open_vault
from cryophile.vault.local import DirectoryVault
from cryophile.vault.s3 import S3Vault
from faultproxy import Fault, FaultProxy, Request
from s3server import S3Bucket, S3Endpoint
from support.memory_vault import MemoryVault

MiB = 1 << 20
ALL_BACKENDS = ["dir", "dir-capped", "memory", "seaweedfs", "moto"]
VERIFYING_BACKENDS = ["dir", "dir-capped", "memory", "seaweedfs"]
#: Backends that store cold class names but keep every object readable.
NO_COLD_STORAGE_BACKENDS = ["dir", "dir-capped", "seaweedfs"]
COLD_BACKENDS = ["moto", "memory"]
S3_BACKENDS = ["seaweedfs", "moto"]

VaultFactory = Callable[..., Vault]


def _capped_directory(root: Path, max_bandwidth: int) -> Vault:
    """A ``provider = "dir"`` vault with ``max_bandwidth``, opened by the factory."""
    root.mkdir(exist_ok=True)
    entry = VaultConfig(id=uuid.uuid4(), provider="dir", path=root, max_bandwidth=max_bandwidth)
    return open_vault(entry.id, Config(vaults=(entry,)), root.parent / "spool").vault


def _bucket(request: pytest.FixtureRequest) -> S3Bucket:
    name = {"seaweedfs": "s3_bucket", "moto": "moto_bucket"}[request.param]
    bucket = request.getfixturevalue(name)
    assert isinstance(bucket, S3Bucket)
    return bucket


def _factory(request: pytest.FixtureRequest, tmp_path: Path) -> VaultFactory:
    if request.param == "dir":
        # Transfer options of the S3 vault mean nothing to a directory.
        return lambda **_options: DirectoryVault(tmp_path / "vault", create=True)
    if request.param == "memory":
        # One store per test, as one directory: a second vault from the
        # factory (another writer) sees the same objects.
        shared = MemoryVault()
        return lambda **_options: shared
    if request.param == "dir-capped":
        # A cap far above what these tests move: the contract, not the pacing.
        return lambda **_options: _capped_directory(tmp_path / "vault", 1 << 30)
    bucket = _bucket(request)
    return bucket.vault


@pytest.fixture(params=ALL_BACKENDS)
def make_vault(request: pytest.FixtureRequest, tmp_path: Path) -> VaultFactory:
    return _factory(request, tmp_path)


@pytest.fixture(params=VERIFYING_BACKENDS)
def make_verifying_vault(request: pytest.FixtureRequest, tmp_path: Path) -> VaultFactory:
    return _factory(request, tmp_path)


@pytest.fixture(params=NO_COLD_STORAGE_BACKENDS)
def make_vault_without_cold_storage(request: pytest.FixtureRequest,
                                    tmp_path: Path) -> VaultFactory:
    return _factory(request, tmp_path)


@dataclass(frozen=True)
class ColdVault:
    """A vault with cold storage, and how to let time pass for its restores."""

    vault: Vault
    advance: Callable[[], None]


@pytest.fixture(params=COLD_BACKENDS)
def cold_vault(request: pytest.FixtureRequest) -> ColdVault:
    if request.param == "memory":
        memory = MemoryVault(restore_ticks=1)
        return ColdVault(memory, memory.clock.advance)
    # moto (with moto_slow_restore) moves a restore on at every HEAD.
    request.getfixturevalue("moto_slow_restore")
    bucket = request.getfixturevalue("moto_bucket")
    assert isinstance(bucket, S3Bucket)
    return ColdVault(bucket.vault(multipart_threshold=5 * MiB, part_size=5 * MiB),
                     lambda: None)


@pytest.fixture
def vault(make_vault: VaultFactory) -> Vault:
    return make_vault()


@pytest.fixture(params=S3_BACKENDS)
def bucket(request: pytest.FixtureRequest) -> S3Bucket:
    return _bucket(request)


class Files:
    """Local files to upload, each with its SHA-256."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir()
        self.count = 0

    def make(self, data: bytes) -> tuple[Path, str]:
        self.count += 1
        path = self.directory / f"file{self.count}"
        path.write_bytes(data)
        return path, hashlib.sha256(data).hexdigest()

    def dest(self) -> Path:
        self.count += 1
        return self.directory / f"download{self.count}"


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path / "files")


def _read_back(vault: Vault, key: str, files: Files) -> bytes:
    dest = files.dest()
    vault.get(key, dest)
    return dest.read_bytes()


# -- the contract, on every backend ----------------------------------------------


def test_implements_the_protocol(vault: Vault) -> None:
    assert isinstance(vault, Vault)


def test_round_trip(vault: Vault, files: Files) -> None:
    data = os.urandom(100_000)
    source, sha256 = files.make(data)
    key = "hosts/db1/01JABCDEFGHJKMNPQRSTVWXYZ0/chunk.1"

    before = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    vault.put(key, source, sha256=sha256, storage_class="STANDARD")

    info = vault.stat(key)
    assert info is not None
    # When it was stored: what prune --incomplete --older-than goes by.
    assert info.modified is not None
    assert before <= info.modified <= datetime.now(UTC) + timedelta(seconds=1)
    assert info == ObjectInfo(
        size=len(data),
        sha256=sha256,
        storage_class="STANDARD",
        restore_state=RestoreState.NOT_NEEDED,
        modified=info.modified,
    )
    assert _read_back(vault, key, files) == data


def test_empty_object(vault: Vault, files: Files) -> None:
    source, sha256 = files.make(b"")
    vault.put("empty", source, sha256=sha256, storage_class="STANDARD")
    info = vault.stat("empty")
    assert info is not None
    assert (info.size, info.sha256) == (0, sha256)
    assert _read_back(vault, "empty", files) == b""


def test_stat_of_missing_key_is_none(vault: Vault) -> None:
    assert vault.stat("no/such/key") is None


def test_get_of_missing_key_raises_and_leaves_no_file(vault: Vault, files: Files) -> None:
    dest = files.dest()
    with pytest.raises(NoInputError):
        vault.get("no/such/key", dest)
    assert not dest.exists()


def test_put_of_identical_object_is_a_no_op(vault: Vault, files: Files) -> None:
    source, sha256 = files.make(b"same content")
    vault.put("k", source, sha256=sha256, storage_class="STANDARD")
    before = vault.stat("k")

    again, _ = files.make(b"same content")
    vault.put("k", again, sha256=sha256, storage_class="STANDARD")

    assert vault.stat("k") == before
    assert list(vault.list("")) == ["k"]


def test_put_of_different_content_is_refused(vault: Vault, files: Files) -> None:
    source, sha256 = files.make(b"first version")
    vault.put("k", source, sha256=sha256, storage_class="STANDARD")
    before = vault.stat("k")

    # Same size, other bytes: size alone must not decide.
    other, other_sha256 = files.make(b"other version")
    with pytest.raises(AlreadyExistsError, match="already exists"):
        vault.put("k", other, sha256=other_sha256, storage_class="STANDARD")

    assert vault.stat("k") == before
    assert _read_back(vault, "k", files) == b"first version"


def _interleave(
    vault: Vault, monkeypatch: pytest.MonkeyPatch, writer: Callable[[], None]
) -> list[bool]:
    """Run ``writer`` once, just before ``vault`` makes its upload visible:
    after put has checked that the key is free. The list returned becomes
    non-empty when it ran."""
    fired: list[bool] = []

    def once() -> None:
        if not fired:
            fired.append(True)
            writer()

    if isinstance(vault, MemoryVault):
        vault.before_publish = once
    elif isinstance(vault, S3Vault):
        # Just before the request that creates the object (botocore's own
        # event hooks, so the real server sees the two writes in this order).
        def before_call(**_kwargs: Any) -> None:
            once()

        events = vault._client.meta.events
        events.register("before-call.s3.PutObject", before_call)
        events.register("before-call.s3.CompleteMultipartUpload", before_call)
    else:
        real_link = os.link

        def link_after_writer(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            once()
            real_link(src, dst, *args, **kwargs)

        monkeypatch.setattr("cryophile.vault.local.os.link", link_after_writer)
    return fired


@pytest.mark.parametrize("size", [1000, 11 * MiB], ids=["single", "multipart"])
@pytest.mark.parametrize("same", [True, False], ids=["same", "different"])
def test_concurrent_writer_is_never_overwritten(
    make_vault: VaultFactory,
    files: Files,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    same: bool,
) -> None:
    # Another writer stores the key after put checked it was free: the
    # conditional write (S3) or the non-clobbering link (dir) must still
    # refuse different content and accept identical content.
    vault = make_vault(multipart_threshold=5 * MiB, part_size=5 * MiB)
    other_writer = make_vault()
    data = os.urandom(size)
    source, sha256 = files.make(data)
    theirs = data if same else os.urandom(size)
    their_source, their_sha256 = files.make(theirs)
    raced = _interleave(
        vault,
        monkeypatch,
        lambda: other_writer.put("k", their_source, sha256=their_sha256, storage_class="STANDARD"),
    )

    if same:
        vault.put("k", source, sha256=sha256, storage_class="STANDARD")
    else:
        with pytest.raises(AlreadyExistsError):
            vault.put("k", source, sha256=sha256, storage_class="STANDARD")

    assert raced
    info = vault.stat("k")
    assert info is not None
    assert (info.size, info.sha256) == (size, their_sha256)
    dest = files.dest()
    vault.get("k", dest)
    assert dest.read_bytes() == theirs


@pytest.mark.parametrize("storage_class", ["STANDARD", "STANDARD_IA", "GLACIER_IR", "GLACIER"])
def test_storage_class_is_echoed(vault: Vault, files: Files, storage_class: str) -> None:
    source, sha256 = files.make(b"classy")
    vault.put("k", source, sha256=sha256, storage_class=storage_class)
    info = vault.stat("k")
    assert info is not None
    assert info.storage_class == storage_class


def test_list_by_prefix(vault: Vault, files: Files) -> None:
    keys = ["a/1/chunk.1", "a/1/chunk.2", "a/10/chunk.1", "a/2/chunk.1", "b/chunk.1", "top"]
    for key in keys:
        source, sha256 = files.make(key.encode())
        vault.put(key, source, sha256=sha256, storage_class="STANDARD")

    assert list(vault.list("")) == sorted(keys)
    assert list(vault.list("a/1")) == ["a/1/chunk.1", "a/1/chunk.2", "a/10/chunk.1"]
    assert list(vault.list("a/1/")) == ["a/1/chunk.1", "a/1/chunk.2"]
    assert list(vault.list("a/1/chunk.2")) == ["a/1/chunk.2"]
    assert list(vault.list("t")) == ["top"]
    assert list(vault.list("nothing/")) == []


def test_delete(vault: Vault, files: Files) -> None:
    source, sha256 = files.make(b"to be deleted")
    vault.put("x/y/z", source, sha256=sha256, storage_class="STANDARD")

    vault.delete("x/y/z")

    assert vault.stat("x/y/z") is None
    assert list(vault.list("")) == []
    vault.delete("x/y/z")  # Deleting a missing key is a no-op.
    # The key is free again, for any content.
    other, other_sha256 = files.make(b"new content")
    vault.put("x/y/z", other, sha256=other_sha256, storage_class="STANDARD")
    assert _read_back(vault, "x/y/z", files) == b"new content"


def test_abort_incomplete_uploads_when_there_are_none(vault: Vault, files: Files) -> None:
    source, sha256 = files.make(b"stored")
    vault.put("a/chunk.1", source, sha256=sha256, storage_class="STANDARD")

    assert vault.abort_incomplete_uploads("a/chunk.1") == 0
    assert vault.abort_incomplete_uploads("a/chunk.2") == 0
    assert _read_back(vault, "a/chunk.1", files) == b"stored"
    with pytest.raises(UsageError):
        vault.abort_incomplete_uploads("../escape")


def test_multipart_round_trip(make_vault: VaultFactory, files: Files) -> None:
    vault = make_vault(multipart_threshold=8 * MiB, part_size=8 * MiB)
    data = os.urandom(20 * MiB + 12345)  # Three parts, the last one short.
    source, sha256 = files.make(data)

    vault.put("big", source, sha256=sha256, storage_class="GLACIER_IR")

    info = vault.stat("big")
    assert info is not None
    assert (info.size, info.sha256, info.storage_class) == (len(data), sha256, "GLACIER_IR")
    dest = files.dest()
    vault.get("big", dest)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha256

    # The no-overwrite rules hold for multipart objects too.
    vault.put("big", source, sha256=sha256, storage_class="GLACIER_IR")
    other, other_sha256 = files.make(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(AlreadyExistsError):
        vault.put("big", other, sha256=other_sha256, storage_class="GLACIER_IR")
    assert vault.stat("big") == info


def test_request_restore_of_a_warm_object_is_not_needed(vault: Vault, files: Files) -> None:
    source, sha256 = files.make(b"warm")
    vault.put("k", source, sha256=sha256, storage_class="STANDARD")
    assert vault.request_restore("k", days=1, tier="Bulk") is RestoreState.NOT_NEEDED


def test_request_restore_of_missing_key(vault: Vault) -> None:
    with pytest.raises(NoInputError):
        vault.request_restore("no/such/key", days=1, tier="Bulk")


UNSAFE_KEYS = ["", "/abs", "../up", "a/../b", "a//b", "a/./b", "nul\0", "a/"]


def test_unsafe_keys_are_refused(vault: Vault, files: Files) -> None:
    source, sha256 = files.make(b"x")
    for key in UNSAFE_KEYS:
        with pytest.raises(UsageError):
            vault.put(key, source, sha256=sha256, storage_class="STANDARD")
        with pytest.raises(UsageError):
            vault.stat(key)
        with pytest.raises(UsageError):
            vault.get(key, files.dest())
        with pytest.raises(UsageError):
            vault.delete(key)
    assert list(vault.list("")) == []


def test_unknown_storage_class_is_refused(vault: Vault, files: Files) -> None:
    source, sha256 = files.make(b"x")
    with pytest.raises(UsageError, match="storage class"):
        vault.put("k", source, sha256=sha256, storage_class="FROZEN")
    assert vault.stat("k") is None


# -- integrity: the storing side verifies the SHA-256 ---------------------------


@pytest.mark.parametrize("size", [1000, 20 * MiB], ids=["single", "multipart"])
def test_wrong_sha256_is_rejected_and_nothing_stored(
    make_verifying_vault: VaultFactory, files: Files, size: int
) -> None:
    vault = make_verifying_vault(multipart_threshold=8 * MiB, part_size=8 * MiB)
    source, _ = files.make(os.urandom(size))
    wrong = hashlib.sha256(b"something else").hexdigest()

    with pytest.raises(DataError):
        vault.put("k", source, sha256=wrong, storage_class="STANDARD")

    assert vault.stat("k") is None
    assert list(vault.list("")) == []


# -- a missing bucket (or directory) is a permanent error naming it -----------


@pytest.fixture(params=["dir", *S3_BACKENDS])
def vault_without_container(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Vault, str]:
    if request.param == "dir":
        root = tmp_path / "not-mounted"
        return DirectoryVault(root), str(root)
    bucket = _bucket(request)
    name = f"missing-{uuid.uuid4().hex[:12]}"
    return bucket.vault(bucket.vault_config(bucket=name)), name


def test_missing_bucket_is_a_service_error(
    vault_without_container: tuple[Vault, str], files: Files
) -> None:
    vault, name = vault_without_container
    source, sha256 = files.make(b"x")
    for call in (
        lambda: vault.put("k", source, sha256=sha256, storage_class="STANDARD"),
        lambda: vault.stat("k"),
        lambda: list(vault.list("")),
        lambda: vault.get("k", files.dest()),
    ):
        with pytest.raises(ServiceError, match=name) as raised:
            call()
        assert not raised.value.transient


# -- cold storage -------------------------------------------------------------------


def test_glacier_thaw_cycle(cold_vault: ColdVault, files: Files) -> None:
    vault = cold_vault.vault
    data = b"frozen fragment"
    source, sha256 = files.make(data)
    vault.put("chunk.1", source, sha256=sha256, storage_class="GLACIER")

    info = vault.stat("chunk.1")
    assert info is not None
    assert (info.storage_class, info.restore_state) == ("GLACIER", RestoreState.COLD)
    assert info.sha256 == sha256
    dest = files.dest()
    with pytest.raises(TryLaterError) as raised:
        vault.get("chunk.1", dest)
    assert raised.value.transient
    assert not dest.exists()

    assert vault.request_restore("chunk.1", days=3, tier="Bulk") is RestoreState.RESTORING
    info = vault.stat("chunk.1")
    assert info is not None
    assert info.restore_state is RestoreState.RESTORING
    # Asking again while it runs is progress, not an error.
    assert vault.request_restore("chunk.1", days=3, tier="Bulk") in (
        RestoreState.RESTORING,
        RestoreState.RESTORED,
    )

    for _ in range(5):
        cold_vault.advance()
        info = vault.stat("chunk.1")
        assert info is not None
        if info.restore_state is RestoreState.RESTORED:
            break
    assert info.restore_state is RestoreState.RESTORED
    assert info.restore_expiry is not None
    now = datetime.now(UTC)
    assert now + timedelta(days=2) < info.restore_expiry <= now + timedelta(days=3, minutes=1)
    assert vault.request_restore("chunk.1", days=3, tier="Bulk") is RestoreState.RESTORED
    assert _read_back(vault, "chunk.1", files) == data


def test_deep_archive_multipart_is_cold(cold_vault: ColdVault, files: Files) -> None:
    vault = cold_vault.vault
    data = os.urandom(11 * MiB)
    source, sha256 = files.make(data)
    vault.put("deep", source, sha256=sha256, storage_class="DEEP_ARCHIVE")
    info = vault.stat("deep")
    assert info is not None
    # moto's checksum of a multipart object is not the content's: the
    # sha256 comes from our metadata.
    assert (info.size, info.sha256, info.restore_state) == (len(data), sha256, RestoreState.COLD)
    with pytest.raises(TryLaterError):
        vault.get("deep", files.dest())


def test_cold_class_on_a_server_without_restore(
    make_vault_without_cold_storage: VaultFactory, files: Files
) -> None:
    # SeaweedFS stores the class name but keeps objects readable and has no
    # RestoreObject (405): request_restore must say NOT_NEEDED, and get works.
    vault = make_vault_without_cold_storage()
    source, sha256 = files.make(b"not really frozen")
    vault.put("k", source, sha256=sha256, storage_class="GLACIER")
    info = vault.stat("k")
    assert info is not None
    assert info.storage_class == "GLACIER"
    assert info.restore_state in (RestoreState.COLD, RestoreState.NOT_NEEDED)
    assert vault.request_restore("k", days=1, tier="Bulk") is RestoreState.NOT_NEEDED
    assert vault.request_restore("k", days=1, tier="Bulk") is RestoreState.NOT_NEEDED
    assert _read_back(vault, "k", files) == b"not really frozen"


# -- S3 specifics -----------------------------------------------------------------


def test_sha256_is_stored_as_metadata_and_checksum(s3_bucket: S3Bucket, files: Files) -> None:
    vault = s3_bucket.vault()
    source, sha256 = files.make(b"checked")
    vault.put("k", source, sha256=sha256, storage_class="STANDARD")
    head = s3_bucket.endpoint.client().head_object(
        Bucket=s3_bucket.name, Key="k", ChecksumMode="ENABLED"
    )
    assert head["Metadata"]["sha256"] == sha256
    assert base64.b64decode(head["ChecksumSHA256"]) == bytes.fromhex(sha256)


def test_failed_multipart_upload_is_aborted(s3_bucket: S3Bucket, files: Files) -> None:
    vault = s3_bucket.vault(multipart_threshold=5 * MiB, part_size=5 * MiB)
    source, _ = files.make(os.urandom(11 * MiB))
    with pytest.raises(DataError):
        vault.put("k", source, sha256="0" * 64, storage_class="STANDARD")
    uploads = s3_bucket.endpoint.client().list_multipart_uploads(Bucket=s3_bucket.name)
    assert uploads.get("Uploads", []) == []


def test_abort_incomplete_uploads_of_exactly_that_key(bucket: S3Bucket, files: Files) -> None:
    """What a killed writer leaves: two uploads of the key (one with a part, one
    without); uploads of a longer key and the stored object stay."""
    client = bucket.endpoint.client()
    vault = bucket.vault()
    source, sha256 = files.make(b"stored")
    vault.put("a/chunk.1", source, sha256=sha256, storage_class="STANDARD")
    for key, parts in (("a/chunk.1", 1), ("a/chunk.1", 0), ("a/chunk.10", 1)):
        upload = client.create_multipart_upload(Bucket=bucket.name, Key=key)
        for number in range(1, parts + 1):
            client.upload_part(Bucket=bucket.name, Key=key, UploadId=upload["UploadId"],
                               PartNumber=number, Body=os.urandom(1000))

    assert vault.abort_incomplete_uploads("a/chunk.1") == 2

    left = client.list_multipart_uploads(Bucket=bucket.name).get("Uploads", [])
    assert [upload["Key"] for upload in left] == ["a/chunk.10"]
    assert vault.abort_incomplete_uploads("a/chunk.1") == 0
    assert _read_back(vault, "a/chunk.1", files) == b"stored"


def test_a_policy_that_forbids_listing_uploads_does_not_stop_uploads(
        s3_bucket: S3Bucket, files: Files, caplog: pytest.LogCaptureFixture) -> None:
    """ListMultipartUploads refused (AccessDenied): nothing aborted, one warning
    that names the lifecycle rule to use instead, and uploads go on."""
    def forbid_listing_uploads(request: Request) -> Fault:
        query = request.target.partition("?")[2]
        listing = request.method == "GET" and "uploads" in query.split("&")
        return Fault.ACCESS_DENIED if listing else Fault.NONE

    port = urlsplit(s3_bucket.endpoint.url).port
    assert port is not None
    with FaultProxy(port, forbid_listing_uploads) as proxy:
        vault = s3_bucket.vault(s3_bucket.vault_config(endpoint_url=proxy.url))
        assert vault.abort_incomplete_uploads("a/chunk.1") == 0
        assert vault.abort_incomplete_uploads("a/chunk.2") == 0
        source, sha256 = files.make(b"stored")
        vault.put("a/chunk.1", source, sha256=sha256, storage_class="STANDARD")
        assert _read_back(vault, "a/chunk.1", files) == b"stored"
        assert proxy.injected == {Fault.ACCESS_DENIED: 2}
    warnings = [record.getMessage() for record in caplog.records
                if "incomplete uploads" in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert "AbortIncompleteMultipartUpload" in warnings[0]


def test_object_lock_is_applied(seaweedfs: S3Endpoint, aws_isolation: None, files: Files) -> None:
    name = f"locked-{uuid.uuid4().hex[:12]}"
    seaweedfs.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    bucket = S3Bucket(endpoint=seaweedfs, name=name)
    config = bucket.vault_config(object_lock_mode="GOVERNANCE", object_lock_days=2)
    vault = bucket.vault(config)
    source, sha256 = files.make(b"locked")

    vault.put("k", source, sha256=sha256, storage_class="STANDARD")

    head = seaweedfs.client().head_object(Bucket=name, Key="k")
    assert head["ObjectLockMode"] == "GOVERNANCE"
    retain_until = head["ObjectLockRetainUntilDate"]
    assert (
        datetime.now(UTC) + timedelta(days=1) < retain_until < datetime.now(UTC) + timedelta(days=3)
    )


def test_wrong_credentials_are_a_permanent_service_error(s3_bucket: S3Bucket, files: Files) -> None:
    endpoint = S3Endpoint(
        url=s3_bucket.endpoint.url,
        access_key=s3_bucket.endpoint.access_key,
        secret_key="wrong-" + s3_bucket.endpoint.secret_key,
    )
    vault = S3Bucket(endpoint=endpoint, name=s3_bucket.name).vault()
    source, sha256 = files.make(b"x")
    with pytest.raises(ServiceError, match=s3_bucket.name) as raised:
        vault.put("k", source, sha256=sha256, storage_class="STANDARD")
    assert not raised.value.transient


def test_unreachable_server_is_transient(aws_isolation: None, files: Files) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on that port now: connection refused.
    endpoint = S3Endpoint(url=f"http://127.0.0.1:{port}", access_key="AK", secret_key="SK")
    vault = S3Bucket(endpoint=endpoint, name="anything").vault(max_attempts=2)
    with pytest.raises(VaultUnavailableError) as raised:
        vault.stat("k")
    assert raised.value.transient
    assert isinstance(raised.value, ServiceError)


def test_s3_vault_refuses_a_tiny_part_size(s3_bucket: S3Bucket) -> None:
    options: dict[str, Any] = {"part_size": 1 * MiB}
    with pytest.raises(UsageError):
        S3Vault(s3_bucket.vault_config(), session=s3_bucket.endpoint.session(), **options)


def test_a_directory_vault_with_max_bandwidth_is_paced(tmp_path: Path, files: Files) -> None:
    # 3 objects of 256 KiB at 512 KiB/s: after the first, each upload waits
    # 0.5 s for its turn, and each download is charged after it arrives. Lower
    # bounds only (a sleep never ends early), so no machine is too fast or slow.
    vault = _capped_directory(tmp_path / "vault", 512 * 1024)
    contents = [os.urandom(256 * 1024) for _ in range(3)]
    started = time.monotonic()
    for number, data in enumerate(contents):
        source, sha256 = files.make(data)
        vault.put(f"capped/f{number}", source, sha256=sha256, storage_class="STANDARD")
    uploaded = time.monotonic() - started
    assert [_read_back(vault, f"capped/f{n}", files) for n in range(3)] == contents
    elapsed = time.monotonic() - started
    assert uploaded >= 0.95
    # The three downloads wait for the uploads' 1.5 s, then 0.5 s each.
    assert elapsed >= 2.45


def test_directory_vault_layout(tmp_path: Path, files: Files) -> None:
    # Restoring by hand must stay possible: the object is a plain file at its key.
    vault = DirectoryVault(tmp_path / "vault", create=True)
    source, sha256 = files.make(b"plain file")
    vault.put("p/01J/chunk.1", source, sha256=sha256, storage_class="GLACIER")
    assert (tmp_path / "vault" / "p" / "01J" / "chunk.1").read_bytes() == b"plain file"
    assert list(vault.list("")) == ["p/01J/chunk.1"]
    with pytest.raises(UsageError):
        vault.stat(".cryophile/meta/p/01J/chunk.1.json")
    vault.delete("p/01J/chunk.1")
    assert list((tmp_path / "vault").iterdir()) == [tmp_path / "vault" / ".cryophile"]


def test_directory_vault_repairs_a_missing_sidecar(tmp_path: Path, files: Files) -> None:
    vault = DirectoryVault(tmp_path / "vault", create=True)
    source, sha256 = files.make(b"crash between link and sidecar")
    vault.put("k", source, sha256=sha256, storage_class="GLACIER")
    (tmp_path / "vault" / ".cryophile" / "meta" / "k.json").unlink()

    info = vault.stat("k")
    assert info is not None
    assert info.sha256 == sha256  # Hashed from the object itself.
    vault.put("k", source, sha256=sha256, storage_class="GLACIER")
    info = vault.stat("k")
    assert info is not None
    assert info.storage_class == "GLACIER"


def test_directory_vault_detects_a_damaged_object(tmp_path: Path, files: Files) -> None:
    vault = DirectoryVault(tmp_path / "vault", create=True)
    source, sha256 = files.make(b"original bytes")
    vault.put("k", source, sha256=sha256, storage_class="STANDARD")
    (tmp_path / "vault" / "k").write_bytes(b"original bytez")
    dest = files.dest()
    with pytest.raises(DataError):
        vault.get("k", dest)
    assert not dest.exists()


# -- the memory vault's clock -------------------------------------------------------


def test_memory_vault_restores_take_their_ticks_and_expire(files: Files) -> None:
    vault = MemoryVault(restore_ticks=3)
    source, sha256 = files.make(b"deep")
    vault.put("deep", source, sha256=sha256, storage_class="DEEP_ARCHIVE")
    vault.clock.advance(10)  # no request, no restore: time alone warms nothing
    assert vault.request_restore("deep", days=2, tier="Standard") is RestoreState.RESTORING

    states = []
    for _ in range(3):
        info = vault.stat("deep")
        assert info is not None
        states.append(info.restore_state)
        vault.clock.advance()
    assert states == [RestoreState.RESTORING] * 3
    assert vault.request_restore("deep", days=2, tier="Standard") is RestoreState.RESTORED
    assert _read_back(vault, "deep", files) == b"deep"
    assert vault.restore_requests == [("deep", 2, "Standard")]

    vault.clock.advance(by=timedelta(days=2))  # the restored copy expires
    info = vault.stat("deep")
    assert info is not None
    assert info.restore_state is RestoreState.COLD
    with pytest.raises(TryLaterError):
        vault.get("deep", files.dest())


def test_memory_vault_notices_damage_at_rest(files: Files) -> None:
    vault = MemoryVault()
    source, sha256 = files.make(b"original bytes")
    vault.put("k", source, sha256=sha256, storage_class="STANDARD")
    vault.damage("k", b"original bytez")
    dest = files.dest()
    with pytest.raises(DataError):
        vault.get("k", dest)
    assert not dest.exists()

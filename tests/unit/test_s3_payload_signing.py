"""What an upload's SigV4 signature covers over plain HTTP (the real SeaweedFS).

An upload whose header carries the checksum its service verifies is signed without
its body (UNSIGNED-PAYLOAD: the body is not hashed a second time); every other
upload, and every other request, keeps botocore's signed payload, since there the
signature is the body's check on the wire.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from cryophile.services import Checksum
from s3server import S3Bucket

MiB = 1024 * 1024
UNSIGNED = "UNSIGNED-PAYLOAD"


def signed_payloads(bucket: S3Bucket, tmp_path: Path, size: int,
                    **overrides: Any) -> dict[str, set[str]]:
    """Operation name → the x-amz-content-sha256 values its requests went with."""
    vault = bucket.vault(bucket.vault_config(**overrides))
    seen: dict[str, set[str]] = {}

    def record(request: Any = None, operation_name: str = "", **_: Any) -> None:
        seen.setdefault(operation_name, set()).add(request.headers["X-Amz-Content-SHA256"])

    # After signing: what went on the wire.
    vault._client.meta.events.register("request-created.s3", record)
    source = tmp_path / f"chunk-{len(list(tmp_path.iterdir()))}"
    source.write_bytes(os.urandom(size))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    key = f"signing/{source.name}"
    vault.put(key, source, sha256=digest, storage_class="STANDARD")
    info = vault.stat(key)
    assert info is not None
    assert info.sha256 == digest
    return seen


@pytest.mark.parametrize("size", [1 * MiB, 70 * MiB], ids=["single", "multipart"])
def test_a_verified_checksum_header_replaces_the_signed_body(
        s3_bucket: S3Bucket, tmp_path: Path, size: int) -> None:
    seen = signed_payloads(s3_bucket, tmp_path, size, service="seaweedfs",
                           checksum=Checksum.SHA256)
    upload = "UploadPart" if size > 64 * MiB else "PutObject"
    assert seen[upload] == {UNSIGNED}
    # Requests without a checksummed body keep their signed (empty-body) hash.
    assert UNSIGNED not in seen["HeadObject"]


@pytest.mark.parametrize(("service", "checksum"), [
    ("seaweedfs", Checksum.NONE),   # no header: the signature is the only check
    ("ceph", Checksum.SHA256),      # older RGW accept x-amz-checksum-sha256 unchecked
])
def test_a_body_without_a_verified_header_stays_signed(
        s3_bucket: S3Bucket, tmp_path: Path, service: str, checksum: Checksum) -> None:
    seen = signed_payloads(s3_bucket, tmp_path, 1 * MiB, service=service, checksum=checksum)
    (value,) = seen["PutObject"]
    assert value != UNSIGNED
    assert len(value) == 64  # the body's hex SHA-256

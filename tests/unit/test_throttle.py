"""The bandwidth cap: reservations are paced to the rate, across threads and vault transfers,
and within one S3 transfer part by part (uploads) and block by block (downloads)."""

from __future__ import annotations

import hashlib
import os
import random
import time
import uuid
from pathlib import Path

import pytest

from cryophile.config import parse_config
from cryophile.vault.factory import open_vault, wrapped
from cryophile.vault.throttle import Throttle
from e2e.test_freeze_s3 import credentials_env, s3_port
from s3server import S3Bucket
from service_proxy import ServiceProxy

MiB = 1 << 20


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_reservations_add_up_to_the_rate() -> None:
    clock = FakeClock()
    throttle = Throttle(1_000_000, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        throttle.reserve(2_000_000)
    # The first goes at once; each next one waits for the previous 2 s.
    assert clock.slept == pytest.approx([2.0, 2.0, 2.0, 2.0])
    assert clock.now == pytest.approx(108.0)


def test_idle_time_is_not_saved_up() -> None:
    clock = FakeClock()
    throttle = Throttle(1_000, clock=clock, sleep=clock.sleep)
    throttle.reserve(1_000)
    clock.now += 60  # a long pause
    throttle.reserve(1_000)
    throttle.reserve(1_000)
    assert clock.slept == pytest.approx([1.0])


def test_a_capped_s3_vault_paces_its_uploads(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    rate = 4 * 1024 * 1024
    config = s3_bucket.vault_config(max_bandwidth=rate)
    # As open_vault composes it: the cap is a wrapper, not part of S3Vault.
    vault = wrapped(s3_bucket.vault(config), config)
    started = time.monotonic()
    for number in range(3):
        source = tmp_path / f"f{number}"
        data = os.urandom(4 * 1024 * 1024)
        source.write_bytes(data)
        vault.put(f"capped/f{number}", source, sha256=hashlib.sha256(data).hexdigest(),
                  storage_class="STANDARD")
    elapsed = time.monotonic() - started
    # 12 MiB at 4 MiB/s: the second and third uploads wait a second each.
    assert elapsed >= 1.9
    assert [info.size for info in (vault.stat(f"capped/f{n}") for n in range(3))
            if info is not None] == [4 * 1024 * 1024] * 3


def test_open_vault_caps_an_s3_multipart_upload_and_a_download(
        s3_bucket: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a daemon gets it: the configured entry through open_vault, a 64 MiB fragment
    (multipart) and small ones up, the big one down. A lower bound only: every byte
    had its time at the cap (the first transfer goes at once)."""
    for name, value in credentials_env(s3_bucket, tmp_path).items():
        monkeypatch.setenv(name, value)
    vault_id = uuid.uuid4()
    path = tmp_path / "cryophile.toml"
    path.write_text("\n".join([
        "[[vault]]", f'id = "{vault_id}"', 'provider = "s3"', 'service = "seaweedfs"',
        f'bucket = "{s3_bucket.name}"', f'endpoint_url = "{s3_bucket.endpoint.url}"',
        f'region = "{s3_bucket.endpoint.region}"', 'max_bandwidth = "32M"']) + "\n")
    opened = open_vault(vault_id, parse_config(path.read_text(), path), tmp_path / "spool")
    big = random.Random(8).randbytes(64 * MiB)
    small = random.Random(9).randbytes(8 * MiB)
    (tmp_path / "big").write_bytes(big)
    (tmp_path / "small").write_bytes(small)
    started = time.monotonic()
    opened.vault.put("capped/big", tmp_path / "big", sha256=hashlib.sha256(big).hexdigest(),
                     storage_class="STANDARD")
    opened.vault.put("capped/small", tmp_path / "small",
                     sha256=hashlib.sha256(small).hexdigest(), storage_class="STANDARD")
    opened.vault.get("capped/big", tmp_path / "down")
    opened.vault.put("capped/small2", tmp_path / "small",
                     sha256=hashlib.sha256(small).hexdigest(), storage_class="STANDARD")
    elapsed = time.monotonic() - started
    assert (tmp_path / "down").read_bytes() == big
    head = s3_bucket.endpoint.client().head_object(Bucket=s3_bucket.name, Key="capped/big")
    assert "-" in head["ETag"]  # it did go up in parts
    # 64 + 8 + 64 MiB had their time at 32 MiB/s before the last upload went: 4.25 s.
    assert elapsed >= 4.0


def test_a_capped_multipart_upload_is_paced_part_by_part(
        s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """Not the whole fragment at line speed after one reservation: at 8 MiB/s the
    16 MiB parts of a 64 MiB upload start about 2 s apart, so in the first second
    the server got at most one of them (< 32 MiB; a generous bound)."""
    with ServiceProxy(s3_port(s3_bucket), "transparent") as proxy:
        config = s3_bucket.vault_config(endpoint_url=proxy.url, max_bandwidth=8 * MiB)
        vault = wrapped(s3_bucket.vault(config), config)
        data = random.Random(10).randbytes(64 * MiB)
        (tmp_path / "big").write_bytes(data)
        vault.put("paced/big", tmp_path / "big", sha256=hashlib.sha256(data).hexdigest(),
                  storage_class="STANDARD")
        parts = [seen for seen in proxy.uploads() if "partNumber=" in seen.query]
    assert len(parts) == 4
    first = min(seen.at for seen in parts)
    early = [seen for seen in parts if seen.at - first < 1.0]
    assert sum(int(seen.headers["content-length"]) for seen in early) < 32 * MiB


def test_a_capped_download_is_paced_as_it_arrives(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    data = random.Random(11).randbytes(32 * MiB)
    s3_bucket.endpoint.client().put_object(Bucket=s3_bucket.name, Key="paced/down", Body=data)
    config = s3_bucket.vault_config(max_bandwidth=16 * MiB)
    vault = wrapped(s3_bucket.vault(config), config)
    started = time.monotonic()
    vault.get("paced/down", tmp_path / "down")
    elapsed = time.monotonic() - started
    assert (tmp_path / "down").read_bytes() == data
    # 32 MiB at 16 MiB/s: all but the first MiB waited for its turn within the call.
    assert elapsed >= 1.5

"""The bandwidth cap: reservations are paced to the rate, across threads and vault uploads."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from cryophile.vault.factory import wrapped
from cryophile.vault.throttle import Throttle
from s3server import S3Bucket


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

"""The spool's budget: what counts, what it defaults to, and the smallest one allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cryophile.errors import ConfigError
from cryophile.spool_budget import (
    RESERVE_FRACTION,
    SpoolLimit,
    spool_budget,
    spool_usage,
)


def _file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def test_usage_counts_the_fragment_queues_of_every_backup_and_nothing_else(
        tmp_path: Path) -> None:
    _file(tmp_path / "backup/v/p/A/chunk.3.part", 100)
    _file(tmp_path / "freeze/v/p/A/chunk.1", 1000)
    _file(tmp_path / "freeze/v/q/B/chunk.0", 10)
    _file(tmp_path / "restore/v/p/C/chunk.5", 7)
    _file(tmp_path / "thaw/v/p/C/request.json", 5000)
    _file(tmp_path / "uploads/v/p/A.json", 5000)
    usage = spool_usage(tmp_path)
    assert (usage.backup, usage.freeze, usage.restore) == (100, 1010, 7)
    assert usage.queued == 1110
    assert usage.total == 1117


def test_a_configured_size_is_the_budget(tmp_path: Path) -> None:
    budget = spool_budget(tmp_path, SpoolLimit(size=48 << 20), 16 << 20)
    assert budget.limit == 48 << 20
    assert budget.fragments(16 << 20) == 3
    assert "spool_limit" in str(budget)


def test_a_percentage_is_of_the_spool_file_system(tmp_path: Path) -> None:
    stats = os.statvfs(tmp_path)
    budget = spool_budget(tmp_path, SpoolLimit(percent=50), 1 << 20)
    assert budget.limit == int(stats.f_blocks * stats.f_frsize * 0.5)


def test_the_default_keeps_a_reserve_and_counts_what_the_spool_holds(tmp_path: Path) -> None:
    _file(tmp_path / "freeze/v/p/A/chunk.0", 1 << 20)
    stats = os.statvfs(tmp_path)
    fs_size = stats.f_blocks * stats.f_frsize
    budget = spool_budget(tmp_path, None, 1 << 20)
    expected = (1 << 20) + stats.f_bavail * stats.f_frsize - int(fs_size * RESERVE_FRACTION)
    # Other processes write to the same file system meanwhile: allow a little drift.
    assert abs(budget.limit - expected) < 64 << 20
    assert "reserve" in str(budget)


def test_a_budget_of_fewer_than_two_fragments_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        spool_budget(tmp_path, SpoolLimit(size=20 << 20), 16 << 20)
    message = str(caught.value)
    assert "20.0 MiB" in message
    assert "fewer than 2 fragments of 16.0 MiB" in message
    assert "spool_limit to at least 32.0 MiB" in message
    assert "-s" in message

"""ENOSPC while thaw downloads (issue 14): a wait, never a hot loop.

The spool is a real tmpfs (``mount -t tmpfs``: the tests run as root in CI;
not being root fails this test loudly, it never skips), filled by another
file so that no fragment fits. ``restore --thaw`` waits and says so on its
stderr, ``status`` shows "waiting for space in the spool", only a few lines
are logged while it waits, and once the file is removed the restore finishes
with output identical to the input and leaves nothing in the spool.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import oracles
from polling import wait_until
from support.cli import VAULT, Cli
from support.files import UsageSampler, prepare_spool

MiB = 1 << 20
PREFIX = "hosts/db1"
TMPFS_SIZE = 32 * MiB
BUDGET = 15 * MiB


@pytest.fixture
def tmpfs_spool(cli: Cli) -> Iterator[Path]:
    """``cli``'s spool as a tmpfs of 32 MiB, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs as the spool and must run as root (CI does); "
                    "it never skips")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs",
                    str(cli.spool)], check=True)
    try:
        prepare_spool(cli.spool)
        yield cli.spool
    finally:
        subprocess.run(["umount", str(cli.spool)], check=True)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def test_a_full_spool_makes_restore_wait_and_say_so_then_it_finishes(
        cli: Cli, tmpfs_spool: Path, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    data = random.Random(99).randbytes(8 * 5 * MiB + 123_456)
    # Through the same small spool, uploading from the backup process itself.
    ulid = cli.backup(gpg_key, data, "-C", "none", "--freeze", "--spool-limit", "15M")
    filler = tmpfs_spool / "someone-elses-file"
    with filler.open("wb") as out:
        out.write(b"\0" * (free_bytes(tmpfs_spool) - 2 * MiB))  # no 5 MiB fragment fits
    assert free_bytes(tmpfs_spool) < 5 * MiB

    output = tmp_path / "restored"
    stderr_path = tmp_path / "restore.stderr"
    command = [sys.executable, "-m", "cryophile", "restore", "-v", VAULT, "-p", PREFIX,
               "-u", ulid, "-k", str(gpg_key.secret), "-o", str(output), "--thaw",
               "--spool-limit", "15M"]
    with stderr_path.open("wb") as stderr, UsageSampler(tmpfs_spool) as sampler:
        process = subprocess.Popen(command, env=cli.environment(), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_until(lambda: "waiting for space in the spool" in stderr_path.read_text(),
                       "the restore to say it waits for space", timeout=60)
            assert process.poll() is None
            shown = cli.run(["status"]).stdout.decode()
            assert "waiting for space in the spool since" in shown, shown
            assert "chunk.1 needs 5.0 MiB" in shown, shown
            # While it waits: no hot loop, only a few lines (a retry every few seconds
            # at most, logged once a minute).
            lines_before = len(stderr_path.read_text().splitlines())
            time.sleep(15)
            lines_during = len(stderr_path.read_text().splitlines()) - lines_before
            assert lines_during <= 3, stderr_path.read_text()[-3000:]
            assert process.poll() is None
            assert not output.exists()
            filler.unlink()
            assert process.wait(timeout=120) == 0, stderr_path.read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = stderr_path.read_text()
    assert text.count("cryophile: waiting for space in the spool") == 1, text[-3000:]
    assert "space in the spool is back" in text
    assert output.read_bytes() == data
    assert sampler.peak <= BUDGET
    leftovers = [path for queue in ("thaw", "restore")
                 for path in (tmpfs_spool / queue).rglob("*") if path.is_file()]
    assert leftovers == []

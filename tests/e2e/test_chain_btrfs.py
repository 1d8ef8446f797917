"""A real ``btrfs send -p`` chain through backup --parent latest and restore --chain --exec
'btrfs receive' (issue 16), on a btrfs file system made in a file and loop-mounted.

Needs root (mount) and btrfs-progs (scripts/test installs it); this machine kind
has both, so the test runs and never skips.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import oracles
from e2e.test_chain_restore import same_tree
from support.cli import VAULT, Cli

PREFIX = "btrfs/home"


def _run(*args: str | Path) -> bytes:
    return subprocess.run([str(arg) for arg in args], capture_output=True, check=True).stdout


@pytest.fixture
def btrfs_mount(tmp_path: Path) -> Iterator[Path]:
    """A fresh 256 MiB btrfs, loop-mounted; unmounted afterwards."""
    assert os.geteuid() == 0, "mounting a btrfs image needs root"
    image = tmp_path / "btrfs.img"
    with image.open("wb") as file:
        file.truncate(256 << 20)
    _run("mkfs.btrfs", "-q", image)
    mount = tmp_path / "mnt"
    mount.mkdir()
    _run("mount", "-o", "loop", image, mount)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_btrfs_send_chain_is_received_link_by_link(
        cli: Cli, gpg_key: oracles.KeyPair, btrfs_mount: Path) -> None:
    source = btrfs_mount / "home"
    _run("btrfs", "subvolume", "create", source)
    (source / "notes.txt").write_text("monday\n")
    (source / "blob").write_bytes(random.Random(3).randbytes(1 << 20))
    snapshots = btrfs_mount / "snaps"
    snapshots.mkdir()
    ulids = []

    def snapshot_and_back_up(name: str, parent: str | None) -> None:
        _run("btrfs", "subvolume", "snapshot", "-r", source, snapshots / name)
        send = ["btrfs", "send", "-q", *(["-p", str(snapshots / parent)] if parent else []),
                str(snapshots / name)]
        stream = _run(*send)
        ulids.append(cli.backup(gpg_key, stream, "--label", f"snapshot=home@{name}",
                                *(["--parent", "latest"] if parent else []), prefix=PREFIX))

    snapshot_and_back_up("mon", None)
    (source / "notes.txt").write_text("monday\ntuesday\n")
    (source / "new.txt").write_text("added on tuesday\n")
    snapshot_and_back_up("tue", "mon")
    (source / "blob").unlink()
    (source / "dir").mkdir()
    (source / "dir" / "wed.txt").write_text("wednesday\n")
    snapshot_and_back_up("wed", "tue")
    frozen = cli.run(["freeze", "--once"])
    assert frozen.returncode == 0, frozen.stderr
    received = btrfs_mount / "received"
    received.mkdir()
    result = cli.run(["restore", "-v", VAULT, "-p", PREFIX, "--label", "snapshot=home@wed",
                      "--chain", "-k", gpg_key.secret, "--exec", f"btrfs receive {received}"])
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in received.iterdir()) == ["mon", "tue", "wed"]
    for name in ("mon", "tue", "wed"):
        same_tree(snapshots / name, received / name)
    assert not (received / "wed" / "blob").exists()
    assert (received / "wed" / "dir" / "wed.txt").read_text() == "wednesday\n"

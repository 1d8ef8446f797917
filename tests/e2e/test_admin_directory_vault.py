"""Issue 17, point 3: a directory vault has no storage class and no minimum storage
duration — through the real CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import oracles
from support.cli import VAULT, Cli

PREFIX = "usb"


def usb_disk(cli: Cli, tmp_path: Path, extra: str = "") -> Path:
    disk = tmp_path / "usb-disk"
    disk.mkdir()
    config = tmp_path / "usb.toml"
    config.write_text(f'[[vault]]\nid = "{VAULT}"\nprovider = "dir"\npath = "{disk}"\n{extra}')
    cli.config = config
    return disk


def run(cli: Cli, *args: str) -> tuple[int, bytes, str]:
    assert cli.config is not None
    result = cli.run(["-c", cli.config, *args])
    return result.returncode, result.stdout, result.stderr


def recent(days_ago: int) -> str:
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days_ago)
    return when.isoformat().replace("+00:00", "Z")


def test_prune_on_a_usb_disk_deletes_young_backups(cli: Cli, gpg_key: oracles.KeyPair,
                                                   tmp_path: Path) -> None:
    disk = usb_disk(cli, tmp_path)
    older = cli.backup(gpg_key, b"older\n" * 1000, "-t", recent(3), prefix=PREFIX)
    newer = cli.backup(gpg_key, b"newer\n" * 1000, "-t", recent(2), prefix=PREFIX)
    assert run(cli, "freeze", "--once")[0] == 0
    # What an earlier version recorded for every object of a dir vault (its default
    # class was GLACIER) bills nothing either.
    sidecar = disk / ".cryophile" / "meta" / PREFIX / older / "chunk.1.json"
    recorded = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**recorded, "storage_class": "GLACIER"}))

    code, out, err = run(cli, "list", "--json")
    assert code == 0, err
    assert {entry["storage_class"] for entry in json.loads(out)} == {None}

    code, out, err = run(cli, "prune", "-v", VAULT, "--keep-last", "1", "--json")
    assert code == 0, err
    actions = {entry["ulid"]: entry["action"] for entry in json.loads(out)["backups"]}
    assert actions == {older: "removed", newer: "keep"}
    assert "minimum" not in err
    assert not (disk / PREFIX / older).exists()
    assert (disk / PREFIX / newer / "chunk.0").exists()


def test_a_storage_class_on_a_directory_vault_is_a_config_error(cli: Cli,
                                                               tmp_path: Path) -> None:
    usb_disk(cli, tmp_path, 'storage_class = "GLACIER"\n')
    code, out, err = run(cli, "list")
    assert code == 78, err
    assert "line 5" in err
    assert "key 'storage_class'" in err
    assert "a directory vault has no storage classes" in err
    assert out == b""

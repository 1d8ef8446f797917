"""Issue 17, points 2 and 7: vault names, list by the backup's own time (local or UTC),
ids that can be pasted as ``--id``, rows within 80 columns — through the real CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import oracles
from support.cli import VAULT, Cli

PREFIX = "hosts/db1"


def named_vault(cli: Cli, tmp_path: Path, name: str = "offsite") -> Path:
    disk = tmp_path / "disk"
    disk.mkdir()
    config = tmp_path / "named.toml"
    config.write_text(f'[[vault]]\nid = "{VAULT}"\nname = "{name}"\nprovider = "dir"\n'
                      f'path = "{disk}"\n')
    cli.config = config
    return config


def test_backfilled_backup_is_listed_in_its_place_and_its_id_pastes(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    config = named_vault(cli, tmp_path)
    data = os.urandom(30_000)
    today = cli.backup(gpg_key, b"today\n" * 100, prefix=PREFIX)
    # Made later, named by an older time.
    made = cli.run(["-c", config, "backup", "-v", "offsite", "-p", PREFIX, "-t",
                    "2026-11-05T03:00:00Z", "-k", gpg_key.cert, "-s", "5M", "--json"],
                   stdin=data)
    assert made.returncode == 0, made.stderr
    backfilled = json.loads(made.stdout)["ulid"]
    assert cli.run(["-c", config, "freeze", "--once"]).returncode == 0

    listed = cli.run(["-c", config, "list"], env={"TZ": "Europe/Berlin"})
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.decode().splitlines()
    assert lines[0].startswith("TIME (CET)")
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[2] == f"  offsite/{PREFIX}/{today}"
    assert lines[4] == f"  offsite/{PREFIX}/{backfilled}"
    assert lines[3].startswith("2026-11-05 04:00  ")  # 03:00 UTC in Berlin
    utc = cli.run(["-c", config, "list", "--utc"], env={"TZ": "Europe/Berlin"})
    assert utc.stdout.decode().splitlines()[3].startswith("2026-11-05 03:00  ")
    document = json.loads(cli.run(["-c", config, "list", "--json"]).stdout)
    assert [entry["ulid"] for entry in document] == [today, backfilled]
    assert document[1]["time"] == "2026-11-05T03:00:00Z"
    assert document[1]["created"] > document[0]["created"]  # written after "today"
    assert document[1]["paste_id"] == f"offsite/{PREFIX}/{backfilled}"

    # The id pastes as it is printed, into every command that names one backup.
    pasted = lines[4].strip()
    checked = cli.run(["-c", config, "verify", "--id", pasted])
    assert checked.returncode == 0, checked.stderr
    assert "healthy" in checked.stdout.decode()
    restored = cli.run(["-c", config, "restore", "--id", pasted, "-k", gpg_key.secret,
                        "--thaw"])
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == data
    again = cli.run(["-c", config, "freeze", "--once", "--id", f"{VAULT}/{PREFIX}/{today}"])
    assert again.returncode == 0, again.stderr
    both = cli.run(["-c", config, "verify", "--id", pasted, "-v", "offsite"])
    assert both.returncode == 64
    assert "--id names the vault" in both.stderr


def test_vault_names_are_validated(cli: Cli, tmp_path: Path) -> None:
    config = named_vault(cli, tmp_path)
    unknown = cli.run(["-c", config, "list", "-v", "ofsite"])
    assert unknown.returncode == 64
    assert "invalid vault UUID or name 'ofsite'" in unknown.stderr
    assert "offsite" in unknown.stderr  # the names it has
    duplicate = tmp_path / "duplicate.toml"
    duplicate.write_text(config.read_text() + '[[vault]]\nid = "0b7c2c5e-5a7e-4f0e-9f43-'
                         '4d1f3b0c2a11"\nname = "offsite"\nprovider = "dir"\npath = "/x"\n')
    result = cli.run(["-c", duplicate, "status"])
    assert result.returncode == 78
    assert "key 'name': duplicate vault name 'offsite'" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[[vault]]\nid = "{VAULT}"\nname = "off/site"\nprovider = "dir"\n'
                   'path = "/x"\n')
    result = cli.run(["-c", bad, "status"])
    assert result.returncode == 78
    assert "'off/site' is not a vault name" in result.stderr

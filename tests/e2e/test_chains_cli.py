"""Incremental chains through the real CLI: backup --parent/--label, and prune keeping
every parent a kept backup needs (issue 16)."""

from __future__ import annotations

import json
from typing import Any

import oracles
from support.cli import VAULT, Cli

PREFIX = "tank/data"


def _backup(cli: Cli, key: oracles.KeyPair, when: str, *extra: str) -> str:
    return cli.backup(key, f"stream of {when}\n".encode() * 200, "-t", when, *extra,
                      prefix=PREFIX)


def _manifest(cli: Cli, ulid: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((cli.freeze_dir(ulid, PREFIX) / "chunk.0").read_bytes())
    return loaded


def test_parent_latest_time_and_ulid_are_recorded_and_labels_with_them(
        cli: Cli, gpg_key: oracles.KeyPair) -> None:
    full = _backup(cli, gpg_key, "2026-11-01T03:00:00Z", "--label", "snapshot=tank/data@mon")
    inc1 = _backup(cli, gpg_key, "2026-11-02T03:00:00Z", "--parent", "latest")
    inc2 = _backup(cli, gpg_key, "2026-11-03T03:00:00Z", "--parent", "2026-11-02T03:00:00Z",
                   "--label", "snapshot=tank/data@wed", "--label", "host=db1")
    inc3 = _backup(cli, gpg_key, "2026-11-04T03:00:00Z", "--parent", inc2)
    assert "parent" not in _manifest(cli, full)
    assert _manifest(cli, full)["labels"] == {"snapshot": "tank/data@mon"}
    assert _manifest(cli, inc1)["parent"] == full
    assert _manifest(cli, inc1)["version"] == 2
    assert _manifest(cli, inc2)["parent"] == inc1
    assert _manifest(cli, inc2)["labels"] == {"host": "db1", "snapshot": "tank/data@wed"}
    assert _manifest(cli, inc3)["parent"] == inc2
    # The parent is found in the vault as well as in the spool.
    assert cli.run(["freeze", "--once"]).returncode == 0
    inc4 = _backup(cli, gpg_key, "2026-11-05T03:00:00Z", "--parent", "latest")
    assert _manifest(cli, inc4)["parent"] == inc3


def test_a_parent_that_cannot_serve_is_refused_before_the_input_is_read(
        cli: Cli, gpg_key: oracles.KeyPair) -> None:
    data = b"x" * 1000
    nothing = cli.run(["backup", "-v", VAULT, "-p", PREFIX, "-k", gpg_key.cert,
                       "--parent", "latest"], stdin=data)
    assert nothing.returncode == 64
    assert "no complete backup older than this one" in nothing.stderr
    full = _backup(cli, gpg_key, "2026-11-01T03:00:00Z")
    cases = {
        "01KB0000000000000000000000": "no backup",
        "yesterday": "neither a ULID, a time",
        full: "not older than the new backup",
    }
    for spec, message in cases.items():
        when = "2026-11-01T03:00:00Z" if spec == full else "2026-11-09T03:00:00Z"
        result = cli.run(["backup", "-v", VAULT, "-p", PREFIX, "-k", gpg_key.cert,
                          "-t", "2026-10-01T00:00:00Z" if spec == full else when,
                          "--parent", spec], stdin=data)
        assert result.returncode == 64, (spec, result.stderr)
        assert message in result.stderr, (spec, result.stderr)
    # Another prefix's backup is not a parent: a chain stays in one series.
    other = cli.run(["backup", "-v", VAULT, "-p", "tank/other", "-k", gpg_key.cert,
                     "--parent", full], stdin=data)
    assert other.returncode == 64
    assert "no backup" in other.stderr
    bad_label = cli.run(["backup", "-v", VAULT, "-p", PREFIX, "-k", gpg_key.cert,
                         "--label", "9=x"], stdin=data)
    assert bad_label.returncode == 64
    assert "bad label key '9'" in bad_label.stderr
    # Nothing was queued by any refused backup: only the full one is in the spool.
    queued = list((cli.spool / "freeze" / VAULT).rglob("chunk.0"))
    assert [path.parent.name for path in queued] == [full]


def test_prune_keeps_the_parents_of_the_backups_it_keeps(
        cli: Cli, gpg_key: oracles.KeyPair) -> None:
    old = _backup(cli, gpg_key, "2026-10-01T03:00:00Z")
    full = _backup(cli, gpg_key, "2026-11-01T03:00:00Z")
    inc1 = _backup(cli, gpg_key, "2026-11-02T03:00:00Z", "--parent", "latest")
    inc2 = _backup(cli, gpg_key, "2026-11-03T03:00:00Z", "--parent", "latest")
    assert cli.run(["freeze", "--once"]).returncode == 0
    result = cli.run(["prune", "-v", VAULT, "--json", "--keep-last", "1"])
    assert result.returncode == 0, result.stderr
    entries = {entry["ulid"]: entry for entry in json.loads(result.stdout)["backups"]}
    assert entries[inc2]["action"] == "keep"
    assert entries[inc1]["action"] == "keep"
    assert entries[inc1]["kept_by"] == [f"parent of {inc2}"]
    assert entries[full]["kept_by"] == [f"parent of {inc2}"]
    assert entries[old]["action"] == "removed"
    listed = cli.run(["list", "--json", "-v", VAULT])
    assert {entry["ulid"] for entry in json.loads(listed.stdout)} == {full, inc1, inc2}
    # And the chain still restores, oldest first, each link whole.
    for ulid in (full, inc1, inc2):
        restored = cli.run(["restore", "--thaw", "-v", VAULT, "-p", PREFIX, "-u", ulid,
                            "-k", gpg_key.secret])
        assert restored.returncode == 0, restored.stderr


def test_list_shows_parent_labels_and_chain_filters_by_label_and_draws_the_tree(
        cli: Cli, gpg_key: oracles.KeyPair) -> None:
    full = _backup(cli, gpg_key, "2026-11-01T03:00:00Z", "--label", "snapshot=tank/data@mon")
    inc1 = _backup(cli, gpg_key, "2026-11-02T03:00:00Z", "--parent", "latest",
                   "--label", "snapshot=tank/data@tue")
    inc2 = _backup(cli, gpg_key, "2026-11-03T03:00:00Z", "--parent", "latest")
    lone = _backup(cli, gpg_key, "2026-11-04T03:00:00Z")
    listed = cli.run(["list", "--json", "-v", VAULT])
    assert listed.returncode == 0, listed.stderr
    entries = {entry["ulid"]: entry for entry in json.loads(listed.stdout)}
    ident = {ulid: f"{VAULT}/{PREFIX}/{ulid}" for ulid in (full, inc1, inc2, lone)}
    assert entries[inc2]["parent"] == inc1
    assert entries[inc2]["chain"] == [ident[full], ident[inc1], ident[inc2]]
    assert entries[inc2]["chain_problem"] is None
    assert entries[full]["parent"] is None
    assert entries[full]["labels"] == {"snapshot": "tank/data@mon"}
    assert entries[lone]["chain"] == [ident[lone]]
    picked = cli.run(["list", "--json", "-v", VAULT, "--label", "snapshot=tank/data@tue"])
    assert [entry["ulid"] for entry in json.loads(picked.stdout)] == [inc1]
    tree = cli.run(["list", "--tree", "-v", VAULT])
    assert tree.returncode == 0, tree.stderr
    lines = tree.stdout.decode().splitlines()
    assert [line.split()[-1] if "snapshot" not in line else line.split()[-2]
            for line in lines] == [ident[lone], ident[full], ident[inc1], ident[inc2]]
    assert lines[2].startswith("└─ ")
    assert lines[3].startswith("  └─ ")
    # The full backup gone (deleted by hand): the chain says it cannot be restored.
    vault_dir = cli.spool.parent / f"{cli.spool.name}-vaults" / VAULT / PREFIX / full
    assert cli.run(["freeze", "--once"]).returncode == 0
    for path in sorted(vault_dir.iterdir()):
        path.unlink()
    broken = cli.run(["list", "--json", "-v", VAULT])
    entries = {entry["ulid"]: entry for entry in json.loads(broken.stdout)}
    assert f"needs its parent {full}" in entries[inc2]["chain_problem"]

"""``cryophile prune`` and the retention policy behind it.

The policy (:mod:`cryophile.retention`) is checked by properties over random
backup histories; the command through the real CLI in subprocesses, on the
embedded directory vault, on a configured directory vault whose fragments are
recorded as GLACIER, and on SeaweedFS (a real S3 server) in GLACIER.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import oracles
from conftest import VAULT, Cli, snapshot
from cryophile.retention import (
    Backup,
    Policy,
    early_deletion,
    plan_retention,
)
from polling import live_files, wait_until
from s3server import S3Bucket
from test_list_verify_status import backup_from_fifo, configure_s3_vault

DB = "hosts/db1"
WEB = "hosts/web1"

# -- the policy, as properties ----------------------------------------------------------

_times = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2026, 12, 31),
                      timezones=st.just(UTC))
_histories = st.lists(st.tuples(st.sampled_from(["a", "a/b", "c"]), _times), max_size=40)
_policies = st.builds(Policy, st.integers(0, 5), st.integers(0, 5), st.integers(0, 5),
                      st.integers(0, 5)).filter(lambda policy: not policy.empty)


def _backups(history: list[tuple[str, datetime]]) -> list[Backup[int]]:
    return [Backup(index, series, when) for index, (series, when) in enumerate(history)]


def _newest(backups: list[Backup[int]]) -> list[Backup[int]]:
    return sorted(backups, key=lambda b: (b.time, str(b.key)), reverse=True)


@given(_histories, _policies)
def test_kept_and_removed_partition_the_backups(history: list[tuple[str, datetime]],
                                                policy: Policy) -> None:
    backups = _backups(history)
    plan = plan_retention(backups, policy)
    assert set(plan.keep).isdisjoint(plan.remove)
    assert set(plan.keep) | set(plan.remove) == {b.key for b in backups}
    assert len(plan.remove) == len(set(plan.remove))
    for rules in plan.keep.values():
        assert rules
        assert set(rules) <= {"last", "daily", "weekly", "monthly"}


@given(_histories, st.integers(1, 6))
def test_keep_last_keeps_exactly_the_newest_per_series(history: list[tuple[str, datetime]],
                                                       count: int) -> None:
    backups = _backups(history)
    plan = plan_retention(backups, Policy(last=count))
    for series in {b.series for b in backups}:
        newest = _newest([b for b in backups if b.series == series])
        assert {b.key for b in newest[:count]} == {k for k in plan.keep
                                                    if backups[k].series == series}


def _periods(when: datetime, rule: str) -> object:
    if rule == "daily":
        return when.date()
    if rule == "weekly":
        return when.isocalendar()[:2]
    return when.year, when.month


@given(_histories, _policies)
def test_every_backup_a_rule_selects_is_kept(history: list[tuple[str, datetime]],
                                             policy: Policy) -> None:
    """An independent oracle per rule: the newest backup of each of the latest N periods."""
    backups = _backups(history)
    plan = plan_retention(backups, policy)
    for series in {b.series for b in backups}:
        newest = _newest([b for b in backups if b.series == series])
        for backup in newest[:policy.last]:
            assert "last" in plan.keep[backup.key]
        for rule in ("daily", "weekly", "monthly"):
            firsts: dict[object, Backup[int]] = {}
            for backup in newest:
                firsts.setdefault(_periods(backup.time, rule), backup)
            chosen = sorted(firsts.values(), key=lambda b: (b.time, str(b.key)),
                            reverse=True)[:getattr(policy, rule)]
            for backup in chosen:
                assert rule in plan.keep[backup.key]
            # ... and the rule keeps nothing else.
            assert {k for k, rules in plan.keep.items()
                    if rule in rules and backups[k].series == series} == {b.key for b in chosen}


@settings(max_examples=50)
@given(_histories, _policies)
def test_plan_does_not_depend_on_input_order(history: list[tuple[str, datetime]],
                                             policy: Policy) -> None:
    backups = _backups(history)
    assert plan_retention(backups, policy).keep == plan_retention(backups[::-1], policy).keep


def test_empty_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one keep rule"):
        plan_retention([], Policy())


def test_early_deletion_charge_statement() -> None:
    now = datetime(2026, 5, 1, tzinfo=UTC)
    charge = early_deletion("GLACIER", now - timedelta(days=53), now, 1288490189)
    assert charge is not None
    assert charge.describe("1.2 GiB") == ("GLACIER minimum 90 days: deleting now is billed as "
                                          "if stored 37 more days (1.2 GiB)")
    assert early_deletion("GLACIER", now - timedelta(days=91), now, 1) is None
    deep = early_deletion("DEEP_ARCHIVE", now - timedelta(days=100), now, 1)
    assert deep is not None
    assert deep.remaining_days == 80
    ia = early_deletion("STANDARD_IA", now - timedelta(days=29, hours=12), now, 1)
    assert ia is not None
    assert ia.remaining_days == 1
    assert early_deletion("STANDARD", now, now, 1) is None
    assert early_deletion(None, now, now, 1) is None


# -- the command, on directory vaults ---------------------------------------------------


def _backup_at(cli: Cli, key: oracles.KeyPair, when: str, prefix: str = DB) -> str:
    return cli.backup(key, f"data of {prefix} at {when}\n".encode() * 100, "-t", when,
                      prefix=prefix)


def _listed(cli: Cli, env: dict[str, str] | None = None) -> dict[str, str]:
    result = cli.run(["list", "--json", "-v", VAULT], env=env)
    assert result.returncode == 0, result.stderr
    return {entry["id"]: entry["state"] for entry in json.loads(result.stdout)}


def _prune(cli: Cli, *args: str, env: dict[str, str] | None = None,
           code: int = 0) -> dict[str, Any]:
    result = cli.run(["prune", "-v", VAULT, "--json", *args], env=env)
    assert result.returncode == code, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _actions(document: dict[str, Any]) -> dict[str, str]:
    return {entry["id"]: entry["action"] for entry in document["backups"]}


def test_prune_dry_run_then_real_on_the_directory_vault(cli: Cli,
                                                        gpg_key: oracles.KeyPair) -> None:
    times = ["2024-01-01T03:00:00Z", "2024-01-01T15:00:00Z", "2024-01-02T03:00:00Z",
             "2024-01-09T03:00:00Z", "2024-02-01T03:00:00Z"]
    ulids = [_backup_at(cli, gpg_key, when) for when in times]
    web = _backup_at(cli, gpg_key, "2023-06-01T00:00:00Z", prefix=WEB)
    assert cli.run(["freeze", "--once"]).returncode == 0

    def ident(ulid: str, prefix: str = DB) -> str:
        return f"{VAULT}/{prefix}/{ulid}"

    vault_dir = cli.spool.parent / f"{cli.spool.name}-vaults"
    before = snapshot(vault_dir)
    assert cli.run(["prune", "-v", VAULT]).returncode == 64  # no --keep-*: refused

    plan = _prune(cli, "--keep-last", "1", "--keep-monthly", "2", "--dry-run")
    assert snapshot(vault_dir) == before  # a dry run changes nothing
    assert plan["dry_run"] is True
    expected = {ident(ulids[4]): "keep", ident(ulids[3]): "keep", ident(ulids[2]): "remove",
                ident(ulids[1]): "remove", ident(ulids[0]): "remove", ident(web, WEB): "keep"}
    assert _actions(plan) == expected
    by_id = {entry["id"]: entry for entry in plan["backups"]}
    assert by_id[ident(ulids[4])]["kept_by"] == ["last", "monthly"]
    assert by_id[ident(ulids[3])]["kept_by"] == ["monthly"]
    assert by_id[ident(web, WEB)]["kept_by"] == ["last", "monthly"]
    assert plan["totals"]["removed"] == 3
    assert plan["totals"]["removed_bytes"] == sum(by_id[ident(u)]["stored_bytes"]
                                                  for u in ulids[:3])

    human = cli.run(["prune", "-v", VAULT, "--keep-last", "1", "--keep-monthly", "2", "-n"])
    assert human.returncode == 0, human.stderr
    text = human.stdout.decode()
    assert "would remove 3 backup(s)" in text
    assert "nothing deleted" in text
    assert snapshot(vault_dir) == before

    # -p: only that series is looked at.
    only_web = _prune(cli, "-p", WEB, "--keep-last", "1", "--dry-run")
    assert _actions(only_web) == {ident(web, WEB): "keep"}

    result = _prune(cli, "--keep-last", "1", "--keep-monthly", "2")
    assert _actions(result) == {key: "removed" if action == "remove" else action
                                for key, action in expected.items()}
    assert _listed(cli) == {key: "frozen" for key, action in expected.items()
                            if action == "keep"}
    for ulid in ulids[:3]:
        assert not (vault_dir / VAULT / DB / ulid).exists() or not any(
            (vault_dir / VAULT / DB / ulid).iterdir())
    # Nothing left to do: a second run removes nothing.
    again = _prune(cli, "--keep-last", "1", "--keep-monthly", "2")
    assert again["totals"]["removed"] == 0


def test_incomplete_uploads_are_left_alone_and_interrupted_prunes_finished(
        cli: Cli, gpg_key: oracles.KeyPair) -> None:
    old, half, new = (_backup_at(cli, gpg_key, when) for when in
                      ("2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"))
    assert cli.run(["freeze", "--once"]).returncode == 0
    vault_dir = cli.spool.parent / f"{cli.spool.name}-vaults" / VAULT
    # An upload whose manifest never arrived: fragments only.
    (vault_dir / DB / old / "chunk.0").unlink()
    # What a prune killed between its first and second delete leaves: the journal names
    # the backup, the manifest is gone, the fragments are still there.
    (vault_dir / DB / half / "chunk.0").unlink()
    journal = cli.spool / "prune" / f"{VAULT}.json"
    journal.parent.mkdir()
    journal.write_text(json.dumps({"deleting": [{"prefix": DB, "ulid": half}]}))
    assert _listed(cli)[f"{VAULT}/{DB}/{half}"] == "incomplete"

    plan = _prune(cli, "--keep-last", "1", "--dry-run")
    assert plan["incomplete"] == [f"{VAULT}/{DB}/{old}"]
    assert plan["finished"] == []  # a dry run finishes nothing either
    result = _prune(cli, "--keep-last", "1")
    assert result["finished"] == [f"{VAULT}/{DB}/{half}"]
    assert result["incomplete"] == [f"{VAULT}/{DB}/{old}"]
    assert _actions(result) == {f"{VAULT}/{DB}/{new}": "keep"}
    assert _listed(cli) == {f"{VAULT}/{DB}/{new}": "frozen", f"{VAULT}/{DB}/{old}": "incomplete"}
    assert not journal.exists()
    human = cli.run(["prune", "-v", VAULT, "--keep-last", "1"])
    assert f"{VAULT}/{DB}/{old}: incomplete (fragments without a manifest): left alone" in (
        human.stdout.decode())


def _glacier_dir_config(cli: Cli, tmp_path: Path) -> None:
    vault = tmp_path / "glacier-vault"
    vault.mkdir()
    config = cli.home / ".config" / "cryophile" / "cryophile.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[[vault]]\nid = "{VAULT}"\nprovider = "dir"\npath = "{vault}"\n'
                      'storage_class = "GLACIER"\n')


def test_glacier_backups_younger_than_90_days_are_kept_unless_allowed(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    _glacier_dir_config(cli, tmp_path)
    first = _backup_at(cli, gpg_key, "2024-01-01T00:00:00Z")
    second = _backup_at(cli, gpg_key, "2024-01-02T00:00:00Z")
    assert cli.run(["freeze", "--once"]).returncode == 0
    older = f"{VAULT}/{DB}/{first}"

    refused = cli.run(["prune", "-v", VAULT, "--keep-last", "1"])
    assert refused.returncode == 0, refused.stderr
    assert "1 backup(s) not deleted: younger than their storage class's minimum" in (
        refused.stderr)
    out = refused.stdout.decode()
    assert (f"{older}: kept for now, avoiding an early-deletion charge: GLACIER minimum 90 "
            "days: deleting now is billed as if stored 90 more days (") in out
    assert set(_listed(cli)) == {older, f"{VAULT}/{DB}/{second}"}

    plan = _prune(cli, "--keep-last", "1", "--dry-run", "--allow-early-deletion")
    entry = next(e for e in plan["backups"] if e["id"] == older)
    assert entry["action"] == "remove"
    assert entry["storage_class"] == "GLACIER"
    assert entry["early_deletion"]["minimum_days"] == 90
    assert entry["early_deletion"]["remaining_days"] == 90

    done = cli.run(["prune", "-v", VAULT, "--keep-last", "1", "--allow-early-deletion"])
    assert done.returncode == 0, done.stderr
    assert f"{older}: early-deletion charge: GLACIER minimum 90 days" in done.stdout.decode()
    assert set(_listed(cli)) == {f"{VAULT}/{DB}/{second}"}


def test_prune_on_seaweedfs(cli: Cli, gpg_key: oracles.KeyPair, s3_bucket: S3Bucket,
                            tmp_path: Path) -> None:
    env = configure_s3_vault(cli, s3_bucket, tmp_path, "GLACIER")
    ulids = [_backup_at(cli, gpg_key, when) for when in
             ("2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z")]
    assert cli.run(["freeze", "--once"], env=env).returncode == 0
    ids = [f"{VAULT}/{DB}/{ulid}" for ulid in ulids]

    plan = _prune(cli, "--keep-daily", "1", "--dry-run", env=env)
    assert _actions(plan) == {ids[2]: "keep", ids[1]: "too_young", ids[0]: "too_young"}
    assert {e["storage_class"] for e in plan["backups"]} == {"GLACIER"}

    result = _prune(cli, "--keep-daily", "1", "--allow-early-deletion", env=env)
    assert _actions(result) == {ids[2]: "keep", ids[1]: "removed", ids[0]: "removed"}
    assert _listed(cli, env) == {ids[2]: "frozen"}
    keys = [item["Key"] for item in s3_bucket.endpoint.client().list_objects_v2(
        Bucket=s3_bucket.name).get("Contents", [])]
    assert keys
    assert all(key.startswith(f"{DB}/{ulids[2]}/") for key in keys)



# -- prune --abandoned ----------------------------------------------------------------------


def _fragments_queued(cli: Cli, count: int) -> None:
    wait_until(lambda: len(live_files(cli.spool / "freeze", "chunk.*")) >= count,
               f"{count} fragment(s) in the freeze queue", interval=0.05)


def test_prune_abandoned_removes_a_dead_writers_leftovers_everywhere_and_nothing_else(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    vault_dir = cli.spool.parent / f"{cli.spool.name}-vaults" / VAULT
    complete = _backup_at(cli, gpg_key, "2024-01-01T00:00:00Z")
    # A writer killed mid-stream after a freezer uploaded two of its fragments.
    dead_time = "2024-02-01T00:00:00Z"
    with (backup_from_fifo(cli, gpg_key, tmp_path / "dead.fifo", "-t", dead_time) as dead,
          (tmp_path / "dead.fifo").open("wb") as writer):
        writer.write(os.urandom(16 * 1024 * 1024))
        writer.flush()
        _fragments_queued(cli, 2)
        assert cli.run(["freeze", "--once"]).returncode == 0
        writer.write(os.urandom(6 * 1024 * 1024))
        writer.flush()
        _fragments_queued(cli, 1)
        dead.kill()
        dead.wait()
    dead_ulid = next((cli.spool / "backup" / VAULT / DB).iterdir()).name
    uploaded = sorted(path.name for path in (vault_dir / DB / dead_ulid).iterdir())
    assert uploaded
    assert "chunk.0" not in uploaded
    # A writer that is alive, and a backup directory whose lock is not made yet.
    starting = cli.spool / "backup" / VAULT / DB / "01HQX5R0000000000000000000"
    with backup_from_fifo(cli, gpg_key, tmp_path / "alive.fifo",
                          "-t", "2024-03-01T00:00:00Z") as alive:
        with (tmp_path / "alive.fifo").open("wb") as writer:
            writer.write(b"still writing")
            writer.flush()
            wait_until(lambda: len(list((cli.spool / "backup" / VAULT / DB).iterdir())) == 2,
                       "the live writer's directory")
            starting.mkdir()
            status = json.loads(cli.run(["status", "--json"]).stdout)
            assert f"{VAULT}/{DB}/{dead_ulid}" in status["abandoned"]
            before = snapshot(cli.spool), snapshot(vault_dir)

            plan = _prune(cli, "--abandoned", "--dry-run")
            assert (snapshot(cli.spool), snapshot(vault_dir)) == before
            entries = {entry["id"]: entry for entry in plan["abandoned"]}
            assert set(entries) == {f"{VAULT}/{DB}/{dead_ulid}",
                                    f"{VAULT}/{DB}/{starting.name}"}
            dead_entry = entries[f"{VAULT}/{DB}/{dead_ulid}"]
            assert dead_entry["action"] == "remove"
            assert dead_entry["vault_objects"] == len(uploaded)
            assert dead_entry["spool_fragments"] >= 1
            assert entries[f"{VAULT}/{DB}/{starting.name}"]["action"] == "left"
            assert "no lock file" in entries[f"{VAULT}/{DB}/{starting.name}"]["reason"]

            human = cli.run(["prune", "-v", VAULT, "--abandoned"])
            assert human.returncode == 0, human.stderr
            assert f"{VAULT}/{DB}/{dead_ulid}: removed" in human.stdout.decode()
            assert not (cli.spool / "freeze" / VAULT / DB / dead_ulid).exists()
            assert not (cli.spool / "backup" / VAULT / DB / dead_ulid).exists()
            assert not (vault_dir / DB / dead_ulid).exists()
            assert starting.is_dir()
            writer.write(b" and done")
        assert alive.wait(timeout=60) == 0
    starting.rmdir()
    assert cli.run(["freeze", "--once"]).returncode == 0
    listed = _listed(cli)
    assert listed[f"{VAULT}/{DB}/{complete}"] == "frozen"
    assert f"{VAULT}/{DB}/{dead_ulid}" not in listed
    assert list(listed.values()).count("frozen") == 2  # the complete one and the live one
    # The id is free again: the same cron line now works.
    again = cli.backup(gpg_key, b"the retried backup\n" * 100, "-t", dead_time, prefix=DB)
    assert again == dead_ulid
    assert _prune(cli, "--abandoned")["abandoned"] == []


def test_prune_abandoned_takes_no_policy(cli: Cli) -> None:
    result = cli.run(["prune", "-v", VAULT, "--abandoned", "--keep-last", "1"])
    assert result.returncode == 64
    assert "--abandoned takes no retention policy" in result.stderr


def test_prune_abandoned_never_follows_a_symlink_in_the_spool(cli: Cli, tmp_path: Path) -> None:
    # What a dead writer leaves, by hand: backup/ID with its (released) lock, and a
    # freeze/ID that someone replaced with a link to a directory outside the spool.
    ulid = "01HQX5R0000000000000000001"
    work = cli.spool / "backup" / VAULT / DB / ulid
    work.mkdir(parents=True)
    (work / ".lock").write_bytes(b"")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "chunk.1").write_bytes(b"not yours")
    queued = cli.spool / "freeze" / VAULT / DB / ulid
    queued.parent.mkdir(parents=True)
    queued.symlink_to(outside)
    result = cli.run(["prune", "-v", VAULT, "--abandoned"])
    assert result.returncode == 65, result.stderr
    assert "symbolic link" in result.stdout.decode()
    assert (outside / "chunk.1").read_bytes() == b"not yours"
    assert queued.is_symlink()
    assert (work / ".lock").exists()
    # Without the link it goes.
    queued.unlink()
    assert _prune(cli, "--abandoned")["totals"] == {"removed": 1, "left": 0}
    assert not work.exists()

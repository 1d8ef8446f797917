"""``cryophile prune`` and the retention policy behind it.

The policy (:mod:`cryophile.retention`) is checked by properties over random
backup histories; the command through the real CLI in subprocesses, on the
embedded directory vault, on a configured directory vault whose fragments are
recorded as GLACIER, and on SeaweedFS (a real S3 server) in GLACIER. Backups
that must not decide anything: forgeries from a second host (a second spool
holding only the public certificate) against signed ones, a future-dated backup
from a cron typo, a damaged manifest, and one the server will not serve (the
fault proxy in front of SeaweedFS).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import oracles
from cryophile.config import Config
from cryophile.errors import DataError
from cryophile.prune import Action, PruneRequest, run_prune
from cryophile.retention import (
    Backup,
    Policy,
    early_deletion,
    plan_retention,
)
from cryophile.spool import Spool
from cryophile.vault.factory import open_vault
from e2e.test_list_verify_status import (
    IDENTITY,
    TIME_PATTERN,
    UUID_PATTERN,
    _nullable,
    backup_from_fifo,
    configure_s3_vault,
)
from e2e.test_tamper import SigningPair, make_gpg_signing_key
from faultproxy import Fault, FaultProxy, always
from polling import live_files, wait_until
from s3server import S3Bucket
from support.cli import VAULT, Cli
from support.files import REPO, snapshot

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


def test_glacier_backups_younger_than_90_days_are_kept_unless_allowed(
        cli: Cli, gpg_key: oracles.KeyPair, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    # Only S3 has storage classes (a directory vault has none: issue 17).
    env = configure_s3_vault(cli, s3_bucket, tmp_path, "GLACIER")
    first = _backup_at(cli, gpg_key, "2024-01-01T00:00:00Z")
    second = _backup_at(cli, gpg_key, "2024-01-02T00:00:00Z")
    assert cli.run(["freeze", "--once"], env=env).returncode == 0
    older = f"{VAULT}/{DB}/{first}"

    refused = cli.run(["prune", "-v", VAULT, "--keep-last", "1"], env=env)
    assert refused.returncode == 0, refused.stderr
    assert "1 backup(s) not deleted: younger than their storage class's minimum" in (
        refused.stderr)
    out = refused.stdout.decode()
    assert (f"{older}: kept for now, avoiding an early-deletion charge: GLACIER minimum 90 "
            "days: deleting now is billed as if stored 90 more days (") in out
    assert set(_listed(cli, env)) == {older, f"{VAULT}/{DB}/{second}"}

    plan = _prune(cli, "--keep-last", "1", "--dry-run", "--allow-early-deletion", env=env)
    entry = next(e for e in plan["backups"] if e["id"] == older)
    assert entry["action"] == "remove"
    assert entry["storage_class"] == "GLACIER"
    assert entry["early_deletion"]["minimum_days"] == 90
    assert entry["early_deletion"]["remaining_days"] == 90

    done = cli.run(["prune", "-v", VAULT, "--keep-last", "1", "--allow-early-deletion"],
                   env=env)
    assert done.returncode == 0, done.stderr
    assert f"{older}: early-deletion charge: GLACIER minimum 90 days" in done.stdout.decode()
    assert set(_listed(cli, env)) == {f"{VAULT}/{DB}/{second}"}


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


# -- backups that must not decide: forged, future-dated, unreadable -----------------------

ACTIONS = ["keep", "remove", "removed", "too_young", "blocked", "untrusted", "future_dated",
           "refused", "failed"]
_COUNT = {"type": "integer", "minimum": 0}
_STRINGS = {"type": "array", "items": {"type": "string"}}

#: The ``prune --json`` schema (policy mode) as the README documents it.
PRUNE_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["vault", "dry_run", "policy", "signed_by", "future_skew_seconds", "blocked",
                 "backups", "incomplete", "finished", "unreadable", "totals"],
    "properties": {
        "vault": {"type": "string", "pattern": UUID_PATTERN},
        "dry_run": {"type": "boolean"},
        "policy": {"type": "object", "additionalProperties": False,
                   "required": ["last", "daily", "weekly", "monthly"],
                   "properties": dict.fromkeys(("last", "daily", "weekly", "monthly"),
                                               _COUNT)},
        "signed_by": {"type": ["array", "null"], "items": {"type": "string"}},
        "future_skew_seconds": _COUNT,
        "blocked": {"type": "boolean"},
        "backups": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": [*IDENTITY, "time", "created", "action", "kept_by", "uncounted",
                         "signed_by", "untrusted", "stored_bytes", "fragments",
                         "storage_class", "early_deletion", "error"],
            "properties": {
                **IDENTITY,
                "time": {"type": "string", "pattern": TIME_PATTERN},
                "created": {"type": "string", "pattern": TIME_PATTERN},
                "action": {"enum": ACTIONS},
                "kept_by": {"type": "array", "items": {"anyOf": [
                    {"enum": ["last", "daily", "weekly", "monthly", "restore"]},
                    {"type": "string", "pattern": "^parent of [0-9A-HJKMNP-TV-Z]{26}$"}]}},
                "uncounted": {"type": "array", "uniqueItems": True,
                              "items": {"enum": ["untrusted", "future_dated"]}},
                "signed_by": _nullable("string"),
                "untrusted": _nullable("string"),
                "stored_bytes": _COUNT, "fragments": _COUNT,
                "storage_class": _nullable("string"),
                "early_deletion": {"oneOf": [{"type": "null"}, {
                    "type": "object", "additionalProperties": False,
                    "required": ["storage_class", "minimum_days", "remaining_days", "message"],
                    "properties": {"storage_class": {"type": "string"},
                                   "minimum_days": _COUNT, "remaining_days": _COUNT,
                                   "message": {"type": "string"}}}]},
                "error": _nullable("string")}}},
        "incomplete": _STRINGS,
        "finished": _STRINGS,
        "unreadable": {"type": "object", "additionalProperties": {"type": "string"}},
        "totals": {"type": "object", "additionalProperties": False,
                   "required": ["removed", "removed_bytes", "kept", "kept_bytes", "untrusted",
                                "future_dated", "blocked"],
                   "properties": dict.fromkeys(("removed", "removed_bytes", "kept",
                                                "kept_bytes", "untrusted", "future_dated",
                                                "blocked"), _COUNT)},
    },
}


def _checked(document: dict[str, Any]) -> dict[str, Any]:
    jsonschema.validate(document, PRUNE_SCHEMA)
    return document


def test_readme_documents_every_prune_json_field_and_action() -> None:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"^### cryophile prune\n(.*?)(?=^### )", readme, re.S | re.M)
    assert match is not None
    section = match.group(1)
    fields = set(PRUNE_SCHEMA["properties"]) | set(
        PRUNE_SCHEMA["properties"]["backups"]["items"]["properties"]) | set(
        PRUNE_SCHEMA["properties"]["totals"]["properties"])
    for name in sorted((fields - set(IDENTITY)) | set(ACTIONS)):
        assert f"`{name}`" in section, name
    assert "the identity fields" in section
    assert "--signed-by CERT" in section
    assert "**1 hour**" in section



@pytest.fixture(scope="module")
def host_signer(tmp_path_factory: pytest.TempPathFactory) -> SigningPair:
    """The backup host's signing-only key (restore and prune hold its certificate)."""
    return make_gpg_signing_key(tmp_path_factory.mktemp("host-signer"))


def _objects(bucket: S3Bucket) -> set[str]:
    client = bucket.endpoint.client()
    return {item["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket.name) for item in page.get("Contents", [])}


def test_forged_future_backups_from_a_second_host_never_make_prune_delete_signed_ones(
        cli: Cli, gpg_key: oracles.KeyPair, host_signer: SigningPair, s3_bucket: S3Bucket,
        tmp_path: Path) -> None:
    """The issue's scenario: a second host with only the public certificate (and S3
    credentials that can write, by design) freezes three forgeries dated 2099 into the
    vault; prune --keep-last 3 keeps the three signed backups and deletes nothing."""
    env = configure_s3_vault(cli, s3_bucket, tmp_path, "STANDARD")
    genuine = [cli.backup(gpg_key, f"genuine {day}\n".encode() * 100, "-t",
                          f"2026-11-0{day}T03:00:00Z", "--sign-key", str(host_signer.secret))
               for day in (1, 2, 3)]
    assert cli.run(["freeze", "--once"], env=env).returncode == 0
    other = Cli(tmp_path / "host2" / "spool", tmp_path / "host2" / "home")
    other.spool.mkdir(parents=True)
    other.home.mkdir()
    other_env = configure_s3_vault(other, s3_bucket, tmp_path / "host2", "STANDARD")
    # Two unsigned forgeries, and one signed with the forger's own key.
    forger = make_gpg_signing_key(tmp_path / "forger")
    forged = [other.backup(gpg_key, b"forged\n", "-t", f"2099-01-0{day}T00:00:00Z",
                           *(("--sign-key", str(forger.secret)) if day == 3 else ()))
              for day in (1, 2, 3)]
    assert other.run(["freeze", "--once"], env=other_env).returncode == 0
    ids = {ulid: f"{VAULT}/{DB}/{ulid}" for ulid in genuine + forged}
    before = _objects(s3_bucket)
    assert {key.split("/")[2] for key in before} == set(ids)

    checked = cli.run(["verify", "-v", VAULT, "--all", "--signed-by", host_signer.cert], env=env)
    assert checked.returncode == 65
    assert checked.stdout.decode().count("DAMAGED") == 3

    plan = _checked(_prune(cli, "--keep-last", "3", "--signed-by", str(host_signer.cert),
                           "--dry-run", env=env, code=65))
    assert _actions(plan) == {ids[u]: "keep" for u in genuine} | {
        ids[u]: "untrusted" for u in forged}
    by_id = {entry["id"]: entry for entry in plan["backups"]}
    for ulid in genuine:
        assert by_id[ids[ulid]]["kept_by"] == ["last"]
        assert by_id[ids[ulid]]["signed_by"] == host_signer.fingerprint
        assert by_id[ids[ulid]]["uncounted"] == []
    for ulid in forged:
        entry = by_id[ids[ulid]]
        assert entry["uncounted"] == ["untrusted", "future_dated"]
        assert entry["kept_by"] == []
        assert entry["signed_by"] is None
        assert entry["untrusted"] == (
            f"not signed by {host_signer.fingerprint} (from {host_signer.cert}): " + (
                "it has no manifest signature (chunk.0.sig)" if ulid != forged[2] else
                "its manifest signature (chunk.0.sig) does not verify: the manifest was "
                "changed after signing, or signed by another key"))
    assert plan["signed_by"] == [host_signer.fingerprint]
    assert plan["blocked"] is False
    assert plan["totals"] | {"kept_bytes": 0} == {
        "removed": 0, "removed_bytes": 0, "kept": 6, "kept_bytes": 0, "untrusted": 3,
        "future_dated": 3, "blocked": 0}

    # signed_by in the configuration does the same; the real run deletes nothing.
    config = cli.home / ".config" / "cryophile" / "cryophile.toml"
    config.write_text(f'signed_by = "{host_signer.cert}"\n' + config.read_text())
    pruned = cli.run(["prune", "-v", VAULT, "--keep-last", "3"], env=env)
    assert pruned.returncode == 65, pruned.stderr
    assert (f"3 backup(s) not signed by {host_signer.fingerprint} (from {host_signer.cert}): "
            "untrusted, not counted by the keep rules and not deleted") in pruned.stderr
    assert "3 backup(s) dated more than 1 hour after now" in pruned.stderr
    out = pruned.stdout.decode()
    assert "removed 0 backup(s)" in out
    for ulid in forged:
        line = next(line for line in out.splitlines() if line.startswith(f"{ids[ulid]}: "))
        assert f"untrusted: not signed by {host_signer.fingerprint} (from " in line
        assert "future-dated: its time 2099-01-0" in line
        assert (f"remove it by hand: aws s3 rm --recursive --endpoint-url "
                f"{s3_bucket.endpoint.url} s3://{s3_bucket.name}/{DB}/{ulid}/") in line
    assert _objects(s3_bucket) == before
    assert _listed(cli, env) == dict.fromkeys(ids.values(), "frozen")

    # Removed by hand as the message says (aws s3 rm --recursive: every object below it),
    # prune is clean again.
    client = s3_bucket.endpoint.client()
    for key in before:
        if key.split("/")[2] in forged:
            client.delete_object(Bucket=s3_bucket.name, Key=key)
    clean = _checked(_prune(cli, "--keep-last", "3", env=env))
    assert _actions(clean) == {ids[u]: "keep" for u in genuine}


def test_a_future_dated_backup_from_a_cron_typo_is_kept_and_never_counted(
        cli: Cli, gpg_key: oracles.KeyPair) -> None:
    """No signer, no attacker: one -t 2099 among three genuine backups. keep-last 2 keeps
    the two newest genuine ones (the 2099 one takes no place) and the 2099 one."""
    genuine = [_backup_at(cli, gpg_key, f"2026-11-0{day}T03:00:00Z") for day in (1, 2, 3)]
    typo = _backup_at(cli, gpg_key, "2099-11-02T03:00:00Z")
    assert cli.run(["freeze", "--once"]).returncode == 0
    ids = [f"{VAULT}/{DB}/{ulid}" for ulid in genuine]
    typo_id = f"{VAULT}/{DB}/{typo}"

    plan = _checked(_prune(cli, "--keep-last", "2", "--dry-run"))
    assert _actions(plan) == {typo_id: "future_dated", ids[2]: "keep", ids[1]: "keep",
                              ids[0]: "remove"}
    entry = next(e for e in plan["backups"] if e["id"] == typo_id)
    assert entry["uncounted"] == ["future_dated"]
    assert entry["untrusted"] is None
    assert plan["signed_by"] is None
    assert plan["future_skew_seconds"] == 3600

    pruned = cli.run(["prune", "-v", VAULT, "--keep-last", "2"])
    assert pruned.returncode == 0, pruned.stderr
    assert ("warning: 1 backup(s) dated more than 1 hour after now: kept, not counted by the "
            "keep rules") in pruned.stderr
    vault_root = cli.spool.parent / f"{cli.spool.name}-vaults" / VAULT
    assert (f"{typo_id}: future-dated: its time 2099-11-02T03:00:00Z is more than 1 hour "
            "after now") in pruned.stdout.decode()
    assert f"remove it by hand: rm -r {vault_root / DB / typo}" in pruned.stdout.decode()
    assert "removed 1 backup(s)" in pruned.stdout.decode()
    assert _listed(cli) == {typo_id: "frozen", ids[2]: "frozen", ids[1]: "frozen"}


def test_a_damaged_manifest_stops_every_deletion(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    """Before, the backup with the unreadable manifest was left alone and the others pruned
    as if it did not exist; a partial view must not decide deletions."""
    ulids = [_backup_at(cli, gpg_key, f"2026-11-0{day}T03:00:00Z") for day in (1, 2, 3)]
    assert cli.run(["freeze", "--once"]).returncode == 0
    vault_dir = cli.spool.parent / f"{cli.spool.name}-vaults"
    manifest = vault_dir / VAULT / DB / ulids[2] / "chunk.0"
    manifest.write_bytes(manifest.read_bytes()[:40])
    before = snapshot(vault_dir)
    damaged = f"{VAULT}/{DB}/{ulids[2]}"

    plan = _checked(_prune(cli, "--keep-last", "1", "--dry-run", code=65))
    assert plan["blocked"] is True
    assert set(plan["unreadable"]) == {damaged}
    assert _actions(plan) == {f"{VAULT}/{DB}/{ulids[1]}": "keep",
                              f"{VAULT}/{DB}/{ulids[0]}": "blocked"}
    pruned = cli.run(["prune", "-v", VAULT, "--keep-last", "1"])
    assert pruned.returncode == 65, pruned.stderr
    assert (f"deleted nothing: 1 backup(s) in the selection could not be read, first "
            f"{damaged}: ") in pruned.stderr
    assert "deleted nothing" in pruned.stdout.decode()
    assert snapshot(vault_dir) == before


def test_a_manifest_the_server_cannot_serve_stops_every_deletion(
        cli: Cli, gpg_key: oracles.KeyPair, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """SeaweedFS behind a proxy answering 500 for one manifest (max_attempts = 2): prune
    deletes nothing and names it; so does a listing that fails; once the server answers
    again, prune prunes."""
    env = configure_s3_vault(cli, s3_bucket, tmp_path, "STANDARD")
    ulids = [_backup_at(cli, gpg_key, f"2026-11-0{day}T03:00:00Z") for day in (1, 2, 3)]
    assert cli.run(["freeze", "--once"], env=env).returncode == 0
    before = _objects(s3_bucket)
    failing = f"/{DB}/{ulids[1]}/chunk.0"
    port = urlsplit(s3_bucket.endpoint.url).port
    assert port is not None
    with FaultProxy(port) as proxy:
        config = cli.home / ".config" / "cryophile" / "cryophile.toml"
        config.write_text(config.read_text().replace(s3_bucket.endpoint.url, proxy.url)
                          + "max_attempts = 2\n")
        proxy.schedule = lambda request: (Fault.ERROR_500 if request.target.split("?")[0]
                                          .endswith(failing) else Fault.NONE)
        plan = _checked(_prune(cli, "--keep-last", "1", "--dry-run", env=env, code=75))
        unreadable = f"{VAULT}/{DB}/{ulids[1]}"
        assert set(plan["unreadable"]) == {unreadable}
        assert "server error" in plan["unreadable"][unreadable]
        assert _actions(plan) == {f"{VAULT}/{DB}/{ulids[2]}": "keep",
                                  f"{VAULT}/{DB}/{ulids[0]}": "blocked"}
        pruned = cli.run(["prune", "-v", VAULT, "--keep-last", "1"], env=env)
        assert pruned.returncode == 75, pruned.stderr
        assert (f"deleted nothing: 1 backup(s) in the selection could not be read, first "
                f"{unreadable}: ") in pruned.stderr
        assert any(fault is Fault.ERROR_500 and "chunk.0" in target
                   for _, _, target, fault in proxy.log)
        assert not any(method == "DELETE" for _, method, _, _ in proxy.log)
        assert _objects(s3_bucket) == before

        proxy.schedule = lambda request: (Fault.ERROR_500 if "list-type" in request.target
                                          else Fault.NONE)
        unlisted = cli.run(["prune", "-v", VAULT, "--keep-last", "1"], env=env)
        assert unlisted.returncode == 75, unlisted.stderr
        assert f"cannot list vault {VAULT}: " in unlisted.stderr
        assert "prune deleted nothing" in unlisted.stderr
        assert _objects(s3_bucket) == before

        proxy.schedule = always(Fault.NONE)
        result = _checked(_prune(cli, "--keep-last", "1", env=env))
    assert _actions(result) == {f"{VAULT}/{DB}/{ulids[2]}": "keep",
                                f"{VAULT}/{DB}/{ulids[1]}": "removed",
                                f"{VAULT}/{DB}/{ulids[0]}": "removed"}
    assert {key.split("/")[2] for key in _objects(s3_bucket)} == {ulids[2]}


# -- the use case, in process -------------------------------------------------------------


def test_run_prune_in_process_finishes_no_interrupted_deletion_while_blocked(
        cli: Cli, gpg_key: oracles.KeyPair) -> None:
    """cryophile.prune.run_prune on the embedded directory vault: one damaged manifest
    blocks everything, the journal's interrupted deletion included; repaired, both go."""
    ulids = [_backup_at(cli, gpg_key, f"2026-11-0{day}T03:00:00Z") for day in (1, 2, 3, 4)]
    assert cli.run(["freeze", "--once"]).returncode == 0
    spool = Spool.open(cli.spool, create_root=False)
    opened = open_vault(uuid.UUID(VAULT), Config(), spool.root)
    root = cli.spool.parent / f"{cli.spool.name}-vaults" / VAULT / DB
    (root / ulids[0] / "chunk.0").unlink()  # a deletion interrupted after the manifest
    spool.prune_journal(uuid.UUID(VAULT)).parent.mkdir()
    spool.prune_journal(uuid.UUID(VAULT)).write_text(
        json.dumps({"deleting": [{"prefix": DB, "ulid": ulids[0]}]}))
    manifest = root / ulids[3] / "chunk.0"
    good = manifest.read_bytes()
    manifest.write_bytes(b"{}")
    request = PruneRequest(Policy(last=1), datetime.now(UTC))

    outcome = run_prune(opened, spool, request)
    assert outcome.blocked
    assert [str(b.ulid) for b in outcome.unreadable] == [ulids[3]]
    assert isinstance(next(iter(outcome.unreadable.values())), DataError)
    assert {str(c.backup_id.ulid): c.action for c in outcome.candidates} == {
        ulids[2]: Action.KEEP, ulids[1]: Action.BLOCKED}
    assert outcome.finished == []
    assert spool.prune_journal(uuid.UUID(VAULT)).exists()
    assert sorted(path.name for path in root.iterdir()) == sorted(ulids)

    manifest.write_bytes(good)
    outcome = run_prune(opened, spool, request)
    assert not outcome.blocked
    assert [str(b.ulid) for b in outcome.finished] == [ulids[0]]
    assert {str(c.backup_id.ulid): c.action for c in outcome.candidates} == {
        ulids[3]: Action.KEEP, ulids[2]: Action.REMOVED, ulids[1]: Action.REMOVED}
    assert not spool.prune_journal(uuid.UUID(VAULT)).exists()
    assert [path.name for path in root.iterdir() if any(path.iterdir())] == [ulids[3]]

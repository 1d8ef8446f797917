"""Incremental chains (chains.py) and prune keeping them whole (prune.decide), in process."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cryophile.backup_id import BackupId, ulid_for_timestamp
from cryophile.chains import chain_of, children_of, needed_by, whole_chain
from cryophile.errors import DataError
from cryophile.inventory import VaultListing
from cryophile.manifest import Fragment, Manifest
from cryophile.prune import Action, Candidate, Outcome, decide
from cryophile.retention import Policy
from cryophile.spool import Spool

VAULT = uuid.UUID("6f1c2a3b-5d4e-4f60-8a7b-9c0d1e2f3a4b")
NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def backup(day: int, prefix: str = "tank") -> BackupId:
    return BackupId(VAULT, prefix, ulid_for_timestamp(datetime(2026, 11, day, 3, tzinfo=UTC)))


def candidate(backup_id: BackupId, parent: BackupId | None,
              storage_class: str = "STANDARD", age_days: int = 30) -> Candidate:
    manifest = Manifest(backup_id, NOW - timedelta(days=age_days), "zstd", "fast",
                        ("ab" * 20,), 100, (Fragment(1, 10, "1" * 64),),
                        parent.ulid if parent is not None else None)
    return Candidate(backup_id, VaultListing(backup_id, frozenset({0, 1})), manifest,
                     storage_class)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool.open(tmp_path / "spool", create_root=True)


def test_a_chain_runs_from_the_full_backup_to_the_one_named() -> None:
    full, inc1, inc2, other = backup(1), backup(2), backup(3), backup(4)
    parents = {full: None, inc1: full, inc2: inc1, other: None}
    chain = chain_of(inc2, parents)
    assert chain.links == (full, inc1, inc2)
    assert chain.whole
    assert chain.depth == 2
    assert whole_chain(full, parents) == (full,)
    assert children_of(parents) == {full: [inc1], inc1: [inc2]}
    assert needed_by([inc2, other], parents) == {full: (inc2,), inc1: (inc2,)}


def test_a_missing_parent_or_a_loop_is_reported_never_followed_forever() -> None:
    full, inc1, inc2 = backup(1), backup(2), backup(3)
    broken = chain_of(inc2, {inc1: full, inc2: inc1})
    assert broken.missing == full
    assert broken.links == (inc1, inc2)
    with pytest.raises(DataError, match=f"needs its parent {full.ulid}"):
        whole_chain(inc2, {inc1: full, inc2: inc1})
    looping = chain_of(inc2, {inc1: inc2, inc2: inc1})
    assert looping.loop
    with pytest.raises(DataError, match="loop back"):
        whole_chain(inc2, {inc1: inc2, inc2: inc1})


def test_prune_keep_last_keeps_the_full_backup_the_kept_incrementals_need(
        spool: Spool) -> None:
    full, inc1, inc2, inc3, inc4 = (backup(day) for day in range(1, 6))
    chain = [candidate(full, None), candidate(inc1, full), candidate(inc2, inc1),
             candidate(inc3, inc2), candidate(inc4, inc3)]
    outcome = Outcome(candidates=chain)
    decide(outcome, Policy(last=2), spool, NOW, allow_early=False)
    actions = {c.backup_id: (c.action, c.kept_by) for c in outcome.candidates}
    assert actions[inc4] == (Action.KEEP, ("last",))
    assert actions[inc3] == (Action.KEEP, ("last", f"parent of {inc4.ulid}"))
    # Without these the two kept incrementals cannot be restored.
    for ancestor in (full, inc1, inc2):
        action, kept_by = actions[ancestor]
        assert action is Action.KEEP
        assert f"parent of {inc3.ulid}" in kept_by
        assert f"parent of {inc4.ulid}" in kept_by


def test_prune_still_removes_a_whole_chain_nobody_keeps(spool: Spool) -> None:
    old_full, old_inc = backup(1), backup(2)
    new_full, new_inc = backup(10), backup(11)
    outcome = Outcome(candidates=[candidate(old_full, None), candidate(old_inc, old_full),
                                  candidate(new_full, None), candidate(new_inc, new_full)])
    decide(outcome, Policy(last=1), spool, NOW, allow_early=False)
    actions = {c.backup_id: c.action for c in outcome.candidates}
    assert actions == {new_inc: Action.KEEP, new_full: Action.KEEP,
                       old_inc: Action.REMOVE, old_full: Action.REMOVE}


def test_a_too_young_incremental_keeps_its_parent_whatever_the_parent_age(
        spool: Spool) -> None:
    old_full, young_inc, newest = backup(1), backup(2), backup(20)
    outcome = Outcome(candidates=[
        candidate(old_full, None, "GLACIER", age_days=200),
        candidate(young_inc, old_full, "GLACIER", age_days=10),
        candidate(newest, None, "GLACIER", age_days=1)])
    decide(outcome, Policy(last=1), spool, NOW, allow_early=False)
    actions = {c.backup_id: (c.action, c.kept_by) for c in outcome.candidates}
    assert actions[young_inc][0] is Action.TOO_YOUNG
    assert actions[old_full] == (Action.KEEP, (f"parent of {young_inc.ulid}",))

"""Backups the retention policy must not count (:mod:`cryophile.retention`), as properties.

An untrusted backup (``prune --signed-by``: not validly signed) and a
future-dated one (its time more than ``FUTURE_SKEW`` after now) are kept and
never counted: over random histories, policies and clocks, none is ever
removed, and adding any number of them never changes what happens to the
others. The rest of the policy's properties are in ``test_prune.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from cryophile.retention import (
    FUTURE_SKEW,
    Backup,
    Policy,
    RetentionPlan,
    Uncounted,
    dated_in_future,
    plan_retention,
)

NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)

_series = st.sampled_from(["a", "a/b", "c"])
# Around NOW: most in the past, some within the skew, some well in the future.
_offsets = st.one_of(st.timedeltas(min_value=timedelta(days=-800), max_value=timedelta(0)),
                     st.timedeltas(min_value=timedelta(0), max_value=2 * FUTURE_SKEW),
                     st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30000)))
_entries = st.tuples(_series, _offsets, st.booleans())  # series, time - NOW, trusted
_histories = st.lists(_entries, max_size=40)
_policies = st.builds(Policy, st.integers(0, 5), st.integers(0, 5), st.integers(0, 5),
                      st.integers(0, 5)).filter(lambda policy: not policy.empty)


def _backups(history: list[tuple[str, timedelta, bool]], first: int = 0) -> list[Backup[int]]:
    return [Backup(first + index, series, NOW + offset, trusted)
            for index, (series, offset, trusted) in enumerate(history)]


def _counted(backup: Backup[int]) -> bool:
    return backup.trusted and not dated_in_future(backup.time, NOW)


def _restricted(plan: RetentionPlan[int], keys: set[int]) -> tuple[dict[int, tuple[str, ...]],
                                                                    list[int]]:
    return ({k: v for k, v in plan.keep.items() if k in keys},
            [k for k in plan.remove if k in keys])


@given(_histories, _policies)
def test_no_untrusted_or_future_backup_is_ever_removed(
        history: list[tuple[str, timedelta, bool]], policy: Policy) -> None:
    backups = _backups(history)
    plan = plan_retention(backups, policy, now=NOW)
    for backup in backups:
        reasons = []
        if not backup.trusted:
            reasons.append(Uncounted.UNTRUSTED)
        if backup.time > NOW + FUTURE_SKEW:
            reasons.append(Uncounted.FUTURE_DATED)
        if reasons:
            assert backup.key not in plan.remove
            assert backup.key not in plan.keep  # kept, but by no rule
            assert plan.uncounted[backup.key] == tuple(reasons)
        else:
            assert backup.key not in plan.uncounted
    # keep, remove and uncounted partition the backups.
    keys = [b.key for b in backups]
    assert sorted([*plan.keep, *plan.remove, *plan.uncounted]) == sorted(keys)


@given(_histories, _histories, _policies)
def test_adding_untrusted_or_future_backups_changes_nothing_for_the_others(
        history: list[tuple[str, timedelta, bool]],
        extra: list[tuple[str, timedelta, bool]], policy: Policy) -> None:
    """What happens to the counted backups is decided by them alone: forged or
    future-dated backups added to the vault never make a genuine one go (or stay)."""
    genuine = [b for b in _backups(history) if _counted(b)]
    intruders = [Backup(b.key, b.series, b.time, trusted=False) if _counted(b) else b
                 for b in _backups(extra, first=len(history))]
    alone = plan_retention(genuine, policy, now=NOW)
    together = plan_retention(genuine + intruders, policy, now=NOW)
    assert _restricted(together, {b.key for b in genuine}) == (alone.keep, alone.remove)
    assert not set(together.remove) & {b.key for b in intruders}


@given(_histories, _policies)
def test_without_a_clock_only_trust_decides(history: list[tuple[str, timedelta, bool]],
                                            policy: Policy) -> None:
    """``now`` omitted: nothing is future-dated (the plan of the trusted ones is the
    plan of them alone)."""
    backups = _backups(history)
    trusted = [b for b in backups if b.trusted]
    plan = plan_retention(backups, policy)
    alone = plan_retention(trusted, policy)
    assert (plan.keep, plan.remove) == (alone.keep, alone.remove)
    assert plan.uncounted == {b.key: (Uncounted.UNTRUSTED,) for b in backups if not b.trusted}


def test_the_skew_boundary() -> None:
    assert not dated_in_future(NOW + FUTURE_SKEW, NOW)
    assert dated_in_future(NOW + FUTURE_SKEW + timedelta(milliseconds=1), NOW)
    assert timedelta(hours=1) == FUTURE_SKEW


def test_the_issue_scenario() -> None:
    """Three genuine backups, three forged ones dated 2099: keep-last 3 keeps the genuine."""
    genuine = [Backup(f"g{day}", "db", datetime(2026, 11, day, tzinfo=UTC)) for day in (1, 2, 3)]
    forged = [Backup(f"f{day}", "db", datetime(2099, 1, day, tzinfo=UTC), trusted=False)
              for day in (1, 2, 3)]
    plan = plan_retention(genuine + forged, Policy(last=3), now=NOW)
    assert plan.keep == {"g1": ("last",), "g2": ("last",), "g3": ("last",)}
    assert plan.remove == []
    assert plan.uncounted == {f"f{day}": (Uncounted.UNTRUSTED, Uncounted.FUTURE_DATED)
                              for day in (1, 2, 3)}
    # A cron typo, no forger: 2099 is kept but takes no place of a genuine backup.
    typo = Backup("typo", "db", datetime(2099, 1, 1, tzinfo=UTC))
    plan = plan_retention([*genuine, typo], Policy(last=2), now=NOW)
    assert plan.keep == {"g3": ("last",), "g2": ("last",)}
    assert plan.remove == ["g1"]
    assert plan.uncounted == {"typo": (Uncounted.FUTURE_DATED,)}

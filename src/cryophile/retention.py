"""Retention: which backups a policy keeps, and what deleting the others early costs.

Pure functions, no I/O: ``cryophile prune`` gathers the backups of a vault and
asks :func:`plan_retention` which to keep; :func:`early_deletion` says whether
deleting one now would be billed for a storage class's minimum duration.

The policy works like restic's ``forget``, per series (one prefix of one vault):

- ``last N`` keeps the N newest backups;
- ``daily N``, ``weekly N``, ``monthly N`` walk the backups newest first and keep
  the newest backup of each of the N most recent days (ISO weeks, months) that
  have a backup at all; days without a backup do not use up the count;
- a backup kept by any rule is kept, with every rule that keeps it named;
  everything else is removed.

Days, weeks and months are calendar periods in UTC of the backup's time.

Some backups are never counted (:class:`Uncounted`): one the caller cannot
trust (``prune --signed-by``: not validly signed), and one dated more than
:data:`FUTURE_SKEW` after now (a wrong clock or a typo in ``-t``; also what a
forger picks to look newest). The rules skip them as if they were not there,
so they use up no rule's budget and cannot displace a counted backup, and
they are never removed: they are left for a person to look at.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Generic, TypeVar

from cryophile.storage_classes import MINIMUM_STORAGE_DAYS

Key = TypeVar("Key", bound=Hashable)

RULES = ("last", "daily", "weekly", "monthly")

#: How far after now a backup's time may be and still count: clocks of the hosts
#: that write to one vault disagree by seconds, not hours, and a backup named by
#: ``-t`` for the current hour may land a little early. Beyond it the backup is
#: future-dated.
FUTURE_SKEW = timedelta(hours=1)


class Uncounted(StrEnum):
    """Why the keep rules skip a backup: it is kept, and counts for no rule."""

    #: The caller does not trust it (e.g. its manifest is not validly signed).
    UNTRUSTED = "untrusted"
    #: Its time is more than :data:`FUTURE_SKEW` after now.
    FUTURE_DATED = "future_dated"


def dated_in_future(when: datetime, now: datetime, skew: timedelta = FUTURE_SKEW) -> bool:
    """True when ``when`` is more than ``skew`` after ``now`` (both aware)."""
    return _utc(when) > _utc(now) + skew


@dataclass(frozen=True)
class Policy:
    """How many backups each rule keeps per series (0: the rule is off)."""

    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def __post_init__(self) -> None:
        for rule in RULES:
            if getattr(self, rule) < 0:
                raise ValueError(f"keep-{rule} must be 0 or more")

    @property
    def empty(self) -> bool:
        """No rule keeps anything: such a policy would remove every backup."""
        return not any(getattr(self, rule) for rule in RULES)

    def as_dict(self) -> dict[str, int]:
        """``{"last": N, "daily": N, ...}``."""
        return {rule: getattr(self, rule) for rule in RULES}


@dataclass(frozen=True)
class Backup(Generic[Key]):
    """One backup as retention sees it: an identity, its series, its time (aware),
    and whether the caller trusts it (an untrusted backup is never counted)."""

    key: Key
    series: str
    time: datetime
    trusted: bool = True


@dataclass
class RetentionPlan(Generic[Key]):
    """The decision: every backup is in exactly one of ``keep``, ``remove`` and
    ``uncounted``.

    ``keep`` maps a backup's key to the rules that keep it, in :data:`RULES`
    order; ``remove`` lists the counted backups no rule keeps, newest first per
    series; ``uncounted`` maps each backup the rules skipped to why (in
    :class:`Uncounted` order) — those are kept too.
    """

    keep: dict[Key, tuple[str, ...]] = field(default_factory=dict)
    remove: list[Key] = field(default_factory=list)
    uncounted: dict[Key, tuple[Uncounted, ...]] = field(default_factory=dict)


def _utc(when: datetime) -> datetime:
    return when.astimezone(UTC)


def _day(when: datetime) -> Hashable:
    return _utc(when).date()


def _week(when: datetime) -> Hashable:
    calendar = _utc(when).isocalendar()
    return calendar.year, calendar.week


def _month(when: datetime) -> Hashable:
    utc = _utc(when)
    return utc.year, utc.month


_BUCKETS: dict[str, Callable[[datetime], Hashable] | None] = {
    "last": None, "daily": _day, "weekly": _week, "monthly": _month}


def _newest_first(backups: Iterable[Backup[Key]]) -> list[Backup[Key]]:
    # Ties in time are broken by the key's text, so the plan never depends on input order.
    return sorted(backups, key=lambda backup: (_utc(backup.time), str(backup.key)), reverse=True)


def _why_uncounted(backup: Backup[Key], now: datetime | None,
                   skew: timedelta) -> tuple[Uncounted, ...]:
    reasons = []
    if not backup.trusted:
        reasons.append(Uncounted.UNTRUSTED)
    if now is not None and dated_in_future(backup.time, now, skew):
        reasons.append(Uncounted.FUTURE_DATED)
    return tuple(reasons)


def plan_retention(backups: Iterable[Backup[Key]], policy: Policy, *,
                   now: datetime | None = None,
                   skew: timedelta = FUTURE_SKEW) -> RetentionPlan[Key]:
    """Decide, per series, which backups ``policy`` keeps; the others are removed.

    Untrusted backups, and with ``now`` those dated more than ``skew`` after
    it, are not counted: they are in ``uncounted`` (kept), and the plan for
    the others is exactly the plan without them.

    Raises ValueError for an empty policy (it would remove everything) and for
    a key that appears twice.
    """
    if policy.empty:
        raise ValueError("a retention policy needs at least one keep rule")
    series: dict[str, list[Backup[Key]]] = {}
    seen: set[Key] = set()
    plan: RetentionPlan[Key] = RetentionPlan()
    for backup in backups:
        if backup.key in seen:
            raise ValueError(f"backup {backup.key!r} given twice")
        seen.add(backup.key)
        skipped = _why_uncounted(backup, now, skew)
        if skipped:
            plan.uncounted[backup.key] = skipped
        else:
            series.setdefault(backup.series, []).append(backup)
    for name in sorted(series):
        reasons: dict[Key, list[str]] = {}
        ordered = _newest_first(series[name])
        for rule, bucket_of in _BUCKETS.items():
            budget = getattr(policy, rule)
            last_bucket: Hashable = object()
            for index, backup in enumerate(ordered):
                if budget == 0:
                    break
                bucket = index if bucket_of is None else bucket_of(backup.time)
                if bucket != last_bucket:
                    reasons.setdefault(backup.key, []).append(rule)
                    budget -= 1
                    last_bucket = bucket
        for backup in ordered:
            if backup.key in reasons:
                plan.keep[backup.key] = tuple(reasons[backup.key])
            else:
                plan.remove.append(backup.key)
    return plan


@dataclass(frozen=True)
class EarlyDeletion:
    """Deleting an object younger than its class's minimum storage duration.

    ``remaining`` is how much longer it would have to stay for deletion to be
    free; deleting now is billed as if it were stored that much longer.
    """

    storage_class: str
    minimum_days: int
    remaining: timedelta
    stored_bytes: int

    @property
    def remaining_days(self) -> int:
        """``remaining`` in whole days, rounded up (what a bill counts)."""
        return max(1, math.ceil(self.remaining / timedelta(days=1)))

    def describe(self, size: str) -> str:
        """E.g. ``GLACIER minimum 90 days: deleting now is billed as if stored 37 more
        days (1.2 GiB)``; ``size`` is ``stored_bytes`` as the caller prints sizes."""
        return (f"{self.storage_class} minimum {self.minimum_days} days: deleting now is "
                f"billed as if stored {self.remaining_days} more days ({size})")


def early_deletion(storage_class: str | None, stored_since: datetime, now: datetime,
                   stored_bytes: int) -> EarlyDeletion | None:
    """The charge for deleting now what was stored at ``stored_since``, or None when
    the class has no minimum duration or the object is old enough."""
    if storage_class is None or storage_class not in MINIMUM_STORAGE_DAYS:
        return None
    minimum = MINIMUM_STORAGE_DAYS[storage_class]
    remaining = _utc(stored_since) + timedelta(days=minimum) - _utc(now)
    if remaining <= timedelta(0):
        return None
    return EarlyDeletion(storage_class, minimum, remaining, stored_bytes)

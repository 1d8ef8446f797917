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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)

#: Minimum storage durations in days (AWS S3): an object deleted sooner is billed
#: as if it had been stored that long. Classes not here have no minimum.
MINIMUM_STORAGE_DAYS: Mapping[str, int] = {
    "GLACIER": 90,
    "GLACIER_IR": 90,
    "DEEP_ARCHIVE": 180,
    "STANDARD_IA": 30,
    "ONEZONE_IA": 30,
}

RULES = ("last", "daily", "weekly", "monthly")


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
    """One backup as retention sees it: an identity, its series and its time (aware)."""

    key: Key
    series: str
    time: datetime


@dataclass
class RetentionPlan(Generic[Key]):
    """The decision: every backup is in exactly one of ``keep`` and ``remove``.

    ``keep`` maps a backup's key to the rules that keep it, in :data:`RULES`
    order; ``remove`` lists the rest, newest first per series.
    """

    keep: dict[Key, tuple[str, ...]] = field(default_factory=dict)
    remove: list[Key] = field(default_factory=list)


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


def plan_retention(backups: Iterable[Backup[Key]], policy: Policy) -> RetentionPlan[Key]:
    """Decide, per series, which backups ``policy`` keeps; the others are removed.

    Raises ValueError for an empty policy (it would remove everything) and for
    a key that appears twice.
    """
    if policy.empty:
        raise ValueError("a retention policy needs at least one keep rule")
    series: dict[str, list[Backup[Key]]] = {}
    seen: set[Key] = set()
    for backup in backups:
        if backup.key in seen:
            raise ValueError(f"backup {backup.key!r} given twice")
        seen.add(backup.key)
        series.setdefault(backup.series, []).append(backup)
    plan: RetentionPlan[Key] = RetentionPlan()
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

"""Facts about S3 storage classes and Glacier retrieval tiers, in one place.

Which classes exist, which need a restore before a GET works, which tier a
class allows, how long AWS says a restore takes, and how long an object must
stay before deleting it is free. The vault layer, the thaw daemon, prune
and the configuration all read these; none of them keeps a copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryophile.errors import UsageError

#: S3's storage classes. A directory vault accepts all of them (it only records
#: the name); an S3 vault those of its service (:mod:`cryophile.services`).
STORAGE_CLASSES = frozenset(
    {
        "STANDARD",
        "STANDARD_IA",
        "ONEZONE_IA",
        "INTELLIGENT_TIERING",
        "GLACIER",
        "GLACIER_IR",
        "DEEP_ARCHIVE",
        "REDUCED_REDUNDANCY",
        "EXPRESS_ONEZONE",
    }
)

#: Google Cloud Storage's own class names (its XML API takes them in
#: ``x-amz-storage-class``). All three read at once: none needs a restore.
GCS_STORAGE_CLASSES = frozenset({"NEARLINE", "COLDLINE", "ARCHIVE"})

#: Every class name some vault accepts.
KNOWN_STORAGE_CLASSES = STORAGE_CLASSES | GCS_STORAGE_CLASSES

#: Classes whose objects must be restored (RestoreObject) before a GET works.
#: GLACIER_IR is "instant retrieval": readable at once, so it is not here.
COLD_STORAGE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})

#: The class manifests and signatures are always stored in, so that listing,
#: verifying and planning a restore never need a restore themselves.
MANIFEST_STORAGE_CLASS = "STANDARD"

#: Glacier retrieval tiers, fastest (and dearest) last.
RESTORE_TIERS = frozenset({"Bulk", "Standard", "Expedited"})

#: Minimum storage durations in days (AWS S3; GCS for its own names): an object
#: deleted sooner is billed as if it had been stored that long. Classes not here
#: have no minimum (on AWS: Wasabi bills 90 days for every object, see README).
MINIMUM_STORAGE_DAYS: Mapping[str, int] = {
    "GLACIER": 90,
    "GLACIER_IR": 90,
    "DEEP_ARCHIVE": 180,
    "STANDARD_IA": 30,
    "ONEZONE_IA": 30,
    "NEARLINE": 30,
    "COLDLINE": 90,
    "ARCHIVE": 365,
}

#: AWS's documented retrieval times, by storage class and tier.
EXPECTED_WAIT: Mapping[tuple[str, str], str] = {
    ("GLACIER", "Expedited"): "1–5 minutes",
    ("GLACIER", "Standard"): "3–5 hours",
    ("GLACIER", "Bulk"): "5–12 hours",
    ("DEEP_ARCHIVE", "Standard"): "within 12 hours",
    ("DEEP_ARCHIVE", "Bulk"): "within 48 hours",
}


@dataclass(frozen=True)
class RetrievalPrice:
    """What a Glacier restore costs: per GiB retrieved and per 1,000 restore requests (USD)."""

    per_gib: float
    per_1000_requests: float


#: When and where :data:`RETRIEVAL_PRICES` were read. Prices change: a vault's
#: configuration can override them (``retrieval_prices``).
PRICES_AS_OF = "AWS S3 list prices, us-east-1, as published in 2026"

#: AWS's retrieval prices by storage class and tier (Flexible Retrieval Bulk is free).
RETRIEVAL_PRICES: Mapping[tuple[str, str], RetrievalPrice] = {
    ("GLACIER", "Expedited"): RetrievalPrice(0.03, 10.00),
    ("GLACIER", "Standard"): RetrievalPrice(0.01, 0.05),
    ("GLACIER", "Bulk"): RetrievalPrice(0.0, 0.0),
    ("DEEP_ARCHIVE", "Standard"): RetrievalPrice(0.02, 0.10),
    ("DEEP_ARCHIVE", "Bulk"): RetrievalPrice(0.0025, 0.025),
    # Intelligent-Tiering's archive tiers: Standard and Bulk restores are free.
    ("INTELLIGENT_TIERING", "Expedited"): RetrievalPrice(0.03, 10.00),
    ("INTELLIGENT_TIERING", "Standard"): RetrievalPrice(0.0, 0.0),
    ("INTELLIGENT_TIERING", "Bulk"): RetrievalPrice(0.0, 0.0),
}
#: The restored temporary copy is billed as STANDARD storage while it is kept.
RESTORED_COPY_PER_GIB_MONTH = 0.023
#: Data transfer out of AWS to the internet, first 10 TB of a month.
EGRESS_PER_GIB = 0.09
GIB = 1 << 30


def retrieval_cost(storage_class: str, tier: str, objects: int, size: int, days: int,
                   prices: Mapping[tuple[str, str], RetrievalPrice] | None = None) -> float:
    """USD to restore ``objects`` objects of ``size`` bytes in all from
    ``storage_class`` at ``tier`` and keep the copies ``days`` days (retrieval,
    requests, the temporary copy's storage; not the download's transfer)."""
    table = RETRIEVAL_PRICES if prices is None else {**RETRIEVAL_PRICES, **prices}
    price = table.get((storage_class, tier))
    if price is None:
        return 0.0
    gib = size / GIB
    return (gib * price.per_gib + objects / 1000 * price.per_1000_requests
            + gib * RESTORED_COPY_PER_GIB_MONTH * days / 30)


def needs_restore(storage_class: str) -> bool:
    """True for classes whose objects may need a RestoreObject before they can be read
    (the archive classes, and Intelligent-Tiering's archive tiers)."""
    return storage_class in COLD_STORAGE_CLASSES or storage_class == "INTELLIGENT_TIERING"


def expected_wait(storage_class: str, tier: str) -> str:
    """AWS's documented wait for a restore of ``storage_class`` at ``tier``."""
    kind = "DEEP_ARCHIVE" if storage_class == "DEEP_ARCHIVE" else "GLACIER"
    return EXPECTED_WAIT.get((kind, tier), "unknown")


def check_tier(storage_class: str, tier: str) -> None:
    """Refuse tier/class pairs AWS refuses, with a message saying what works."""
    if storage_class == "DEEP_ARCHIVE" and tier == "Expedited":
        raise UsageError("the Expedited tier is not available for DEEP_ARCHIVE objects; use "
                         "Standard (within 12 hours) or Bulk (within 48 hours)")

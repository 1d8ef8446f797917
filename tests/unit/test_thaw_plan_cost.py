"""The thaw plan's charge estimate: what a user sees before paying for a Glacier restore."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from cryophile.backup_id import BackupId, parse_ulid
from cryophile.manifest import Fragment, Manifest
from cryophile.storage_classes import GIB, RetrievalPrice, retrieval_cost
from cryophile.thaw_plan import make_plan
from cryophile.vault.base import ObjectInfo, RestoreState

BACKUP = BackupId(uuid.UUID("6f1c2a3b-5d4e-4f60-8a7b-9c0d1e2f3a4b"), "tank",
                  parse_ulid("01ARZ3NDEKTSV4RRFFQ69G5FAV"))


def test_glacier_standard_for_100_gib_in_400_objects_kept_7_days() -> None:
    cost = retrieval_cost("GLACIER", "Standard", 400, 100 * GIB, 7)
    # 100 GiB × $0.01 + 400/1000 × $0.05 + the copies: 100 GiB × $0.023 × 7/30.
    assert cost == pytest.approx(1.0 + 0.02 + 100 * 0.023 * 7 / 30)
    bulk = retrieval_cost("GLACIER", "Bulk", 400, 100 * GIB, 7)
    assert bulk == pytest.approx(100 * 0.023 * 7 / 30)  # Bulk retrievals are free
    deep = retrieval_cost("DEEP_ARCHIVE", "Bulk", 400, 100 * GIB, 1)
    assert deep == pytest.approx(0.25 + 0.01 + 100 * 0.023 / 30)
    override = {("GLACIER", "Standard"): RetrievalPrice(0.02, 0.0)}
    assert retrieval_cost("GLACIER", "Standard", 400, 100 * GIB, 0, override) == \
        pytest.approx(2.0)
    assert retrieval_cost("STANDARD", "Bulk", 1, GIB, 7) == 0.0


def test_the_plan_prices_only_the_cold_fragments_and_says_so() -> None:
    size = 4 * GIB
    manifest = Manifest(BACKUP, datetime(2026, 11, 1, tzinfo=UTC), "zstd", "fast", ("ab" * 20,),
                        size, tuple(Fragment(i, size, f"{i:064x}") for i in (1, 2, 3)))
    infos: dict[int, ObjectInfo | None] = {
        1: ObjectInfo(size, None, "GLACIER", RestoreState.COLD),
        2: ObjectInfo(size, None, "GLACIER", RestoreState.RESTORED),
        3: ObjectInfo(size, None, "GLACIER", RestoreState.COLD),
    }
    plan = make_plan(BACKUP, manifest, infos, "Standard", 7)
    assert plan.cold_fragments == 2
    assert plan.retrieval_usd == pytest.approx(retrieval_cost("GLACIER", "Standard", 2,
                                                              8 * GIB, 7))
    assert plan.egress_usd == pytest.approx(12 * 0.09)
    text = plan.describe()
    assert f"≈ ${plan.retrieval_usd:.2f} for the restores" in text
    assert "to download out of AWS" in text
    assert plan.as_dict()["estimated_usd"] == {"retrieval": round(plan.retrieval_usd, 2),
                                               "egress": round(plan.egress_usd, 2)}

"""What thawing a backup involves: fragments, bytes, storage classes, tier, expected wait.

Printed by ``restore --dry-run`` before anything is paid for, by ``restore``
before it files a request, and logged by the thaw daemon when it starts one.
Pure: it works on the manifest and what ``stat`` said of each fragment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryophile.backup_id import BackupId
from cryophile.manifest import Manifest
from cryophile.storage_classes import (
    EGRESS_PER_GIB,
    GIB,
    PRICES_AS_OF,
    RetrievalPrice,
    expected_wait,
    needs_restore,
    retrieval_cost,
)
from cryophile.vault.base import ObjectInfo, RestoreState


@dataclass(frozen=True)
class ThawPlan:
    """What a request will thaw."""

    backup_id: BackupId
    fragments: int
    total_bytes: int
    cold_fragments: int
    cold_bytes: int
    classes: dict[str, int]
    tier: str
    days: int
    #: Estimated USD for the Glacier restores (retrieval, requests, the copies'
    #: storage for ``days``) and for downloading every fragment out of AWS.
    retrieval_usd: float = 0.0
    egress_usd: float = 0.0

    def describe(self) -> str:
        """One paragraph for a person."""
        classes = ", ".join(f"{count} × {name}" for name, count in sorted(self.classes.items()))
        lines = [f"backup {self.backup_id}: {self.fragments} fragment(s), "
                 f"{self.total_bytes} bytes ({classes})"]
        if not self.cold_fragments:
            lines.append("no restore needed: every fragment can be downloaded now")
        else:
            waits = sorted({expected_wait(name, self.tier) for name in self.classes
                            if needs_restore(name)})
            lines.append(f"{self.cold_fragments} fragment(s), {self.cold_bytes} bytes, need a "
                         f"restore: tier {self.tier}, kept {self.days} day(s); expected wait "
                         f"{' / '.join(waits)} (AWS's documented retrieval times)")
            lines.append(f"estimated charge ≈ ${self.retrieval_usd:.2f} for the restores, "
                         f"+ ≈ ${self.egress_usd:.2f} to download out of AWS "
                         f"({PRICES_AS_OF}; other services differ)")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The plan for ``--json`` output."""
        return {"id": str(self.backup_id), "fragments": self.fragments,
                "bytes": self.total_bytes, "cold_fragments": self.cold_fragments,
                "cold_bytes": self.cold_bytes, "storage_classes": self.classes,
                "tier": self.tier, "days": self.days,
                "estimated_usd": {"retrieval": round(self.retrieval_usd, 2),
                                  "egress": round(self.egress_usd, 2)}}


def make_plan(backup_id: BackupId, manifest: Manifest, infos: dict[int, ObjectInfo | None],
              tier: str, days: int,
              prices: Mapping[tuple[str, str], RetrievalPrice] | None = None) -> ThawPlan:
    """The plan for ``manifest`` given what ``stat`` said of each fragment; the
    charge from ``prices`` over the defaults (storage_classes.RETRIEVAL_PRICES)."""
    classes: dict[str, int] = {}
    cold_by_class: dict[str, tuple[int, int]] = {}
    cold = cold_bytes = 0
    for fragment in manifest.fragments:
        info = infos.get(fragment.index)
        name = info.storage_class if info is not None else "MISSING"
        classes[name] = classes.get(name, 0) + 1
        if info is not None and info.restore_state in (RestoreState.COLD,
                                                       RestoreState.RESTORING):
            cold += 1
            cold_bytes += fragment.size
            count, size = cold_by_class.get(name, (0, 0))
            cold_by_class[name] = (count + 1, size + fragment.size)
    retrieval = sum(retrieval_cost(name, tier, count, size, days, prices)
                    for name, (count, size) in cold_by_class.items())
    egress = manifest.stored_bytes / GIB * EGRESS_PER_GIB if cold else 0.0
    return ThawPlan(backup_id, len(manifest.fragments), manifest.stored_bytes, cold, cold_bytes,
                    classes, tier, days, retrieval, egress)

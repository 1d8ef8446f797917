"""Scale of the stress scenarios (issue 6).

Every scenario marked ``stress`` runs in the normal suite (and so in CI) in a
shortened form. ``scripts/stress`` sets ``CRYOPHILE_STRESS=full`` to run them at
the size a user would want to see before trusting cryophile (20 GiB streams,
minutes of random arrival, more kill points).
"""

from __future__ import annotations

import os


def full() -> bool:
    """True when the full-size stress run was asked for."""
    return os.environ.get("CRYOPHILE_STRESS", "") == "full"


def pick(short: int, long: int) -> int:
    """The shortened value in a normal run, the full one under ``scripts/stress``."""
    return long if full() else short

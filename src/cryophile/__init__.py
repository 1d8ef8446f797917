"""cryophile: off-site backup of streams to OpenPGP-encrypted fragments in cold storage."""

from __future__ import annotations

__version__ = "0.1.0"

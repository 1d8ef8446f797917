"""Which vault a vault id means: its configured S3 bucket or directory, else the embedded default.

The embedded default is a local directory vault, one per vault id, in a data
directory beside the spool (``SPOOL-vaults/<uuid>`` next to ``SPOOL``), so
the whole quick start runs without any cloud account or configuration.
Retry and logging policy live in the vault implementations' clients, composed
here in one place.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from cryophile.config import Config, VaultConfig
from cryophile.vault.base import Vault
from cryophile.vault.local import DirectoryVault

MANIFEST_STORAGE_CLASS = "STANDARD"


@dataclass(frozen=True)
class OpenedVault:
    """A vault with the settings that decide how fragments go into it."""

    vault_id: uuid.UUID
    vault: Vault
    storage_class: str
    restore_tier: str
    restore_days: int
    embedded: bool


def default_vault_root(spool_root: Path, vault_id: uuid.UUID) -> Path:
    """Where the embedded directory vault of ``vault_id`` keeps its objects."""
    return spool_root.parent / f"{spool_root.name}-vaults" / str(vault_id)


def open_vault(vault_id: uuid.UUID, config: Config, spool_root: Path) -> OpenedVault:
    """The vault ``vault_id`` names: configured, or the embedded directory default."""
    entry = config.vault(vault_id)
    if entry is None:
        root = default_vault_root(spool_root, vault_id)
        return OpenedVault(vault_id, DirectoryVault(root, create=True), "STANDARD", "Bulk", 1,
                           embedded=True)
    return OpenedVault(vault_id, _from_config(entry), entry.storage_class, entry.restore_tier,
                       entry.restore_days, embedded=False)


def _from_config(entry: VaultConfig) -> Vault:
    if entry.provider == "dir":
        assert entry.path is not None  # the config loader requires it for "dir"
        return DirectoryVault(entry.path)
    from cryophile.vault.s3 import S3Vault  # noqa: PLC0415 - boto3 loads slowly; only S3 needs it

    return S3Vault(entry)

"""Backups put straight into a vault, for in-process tests of what reads vaults.

The fragments are random bytes, not an OpenPGP message: prune, the inventory,
the catalog and the verifier (short of ``--decrypt``) read manifests, sizes and
SHA-256s only, never the plaintext. The end-to-end tests make real backups.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryophile.backup_id import BackupId, ulid_for_timestamp
from cryophile.destination import Destination
from cryophile.manifest import Fragment, Manifest
from cryophile.storage_classes import MANIFEST_STORAGE_CLASS
from cryophile.vault.base import Vault
from cryophile.vault.factory import OpenedVault

VAULT_ID = uuid.UUID("6f1c2a3b-5d4e-4f60-8a7b-9c0d1e2f3a4b")


def opened(vault: Vault, vault_id: uuid.UUID = VAULT_ID) -> OpenedVault:
    """``vault`` as the factory hands vaults to the use cases (a directory destination)."""
    return OpenedVault(vault_id, vault, "STANDARD", "Bulk", 1, embedded=False,
                       destination=Destination.directory("/srv/test-vault"))


@dataclass(frozen=True)
class StoredBackup:
    """A backup :func:`store_backup` put into a vault, and the bytes of its fragments."""

    backup_id: BackupId
    manifest: Manifest
    fragments: tuple[bytes, ...]


def store_backup(vault: Vault, scratch: Path, created: datetime, *, prefix: str = "hosts/db1",
                 sizes: tuple[int, ...] = (1000, 1000, 300), storage_class: str = "STANDARD",
                 with_manifest: bool = True, vault_id: uuid.UUID = VAULT_ID,
                 seed: int = 0) -> StoredBackup:
    """Put a backup made at ``created`` into ``vault``: its fragments in
    ``storage_class``, then (unless ``with_manifest`` is False: an upload that
    never finished) its manifest in STANDARD, as freeze does."""
    backup_id = BackupId(vault_id, prefix, ulid_for_timestamp(created))
    generator = random.Random(f"{backup_id}/{seed}")
    contents = tuple(generator.randbytes(size) for size in sizes)
    fragments = tuple(Fragment(index, len(data), hashlib.sha256(data).hexdigest())
                      for index, data in enumerate(contents, start=1))
    manifest = Manifest(backup_id, created, "none", "fast", ("ab" * 20,), max(sizes),
                        fragments)
    scratch.mkdir(parents=True, exist_ok=True)
    for fragment, data in zip(fragments, contents, strict=True):
        put_bytes(vault, scratch, backup_id.object_key(fragment.index), data, storage_class)
    if with_manifest:
        put_bytes(vault, scratch, backup_id.manifest_key, manifest.to_json(),
                  MANIFEST_STORAGE_CLASS)
    return StoredBackup(backup_id, manifest, contents)


def put_bytes(vault: Vault, scratch: Path, key: str, data: bytes,
              storage_class: str = "STANDARD") -> None:
    """Store ``data`` under ``key`` (through a file in ``scratch``, as vaults take files)."""
    source = scratch / "upload"
    source.write_bytes(data)
    vault.put(key, source, sha256=hashlib.sha256(data).hexdigest(), storage_class=storage_class)
    source.unlink()

"""Reading what a vault says of a backup without a key: its manifest and its signature.

The thaw daemon, restore, list, verify and prune all read manifests
(``chunk.0``, plain JSON) and signatures (``chunk.0.sig``) from vaults; they
do it here, with the same checks everywhere: the object's size is looked at
before anything is downloaded (whoever can write to the vault must not make
us download gigabytes), a manifest in an archive class is reported as such
with what to do about it, and a manifest damaged on the way is fetched again
before it counts as damaged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

from cryophile.backup_id import MANIFEST_NAME, SIGNATURE_NAME, BackupId
from cryophile.errors import DataError, NoInputError, TryLaterError
from cryophile.manifest import MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES, Manifest, parse
from cryophile.storage_classes import MANIFEST_STORAGE_CLASS
from cryophile.vault.base import RestoreState
from cryophile.vault.factory import OpenedVault

logger = logging.getLogger(__name__)

#: Downloads of a manifest that arrived damaged before it counts as damaged.
MANIFEST_ATTEMPTS = 3


def _scratch_file(scratch: Path, name: str) -> Path:
    # Unique per process and thread: several readers may share one scratch dir.
    return scratch / f".{name}.{os.getpid()}.{threading.get_ident()}.part"


def fetch_manifest(opened: OpenedVault, backup_id: BackupId,
                   scratch: Path) -> tuple[Manifest, bytes]:
    """Download and parse the manifest of ``backup_id``; return it and its bytes as stored.

    Raises NoInputError when the vault has no manifest for it, TryLaterError when
    the manifest is archived (not readable until restored), DataError when it is
    larger than any manifest or stays damaged over :data:`MANIFEST_ATTEMPTS`
    downloads.
    """
    key = backup_id.manifest_key
    info = opened.vault.stat(key)
    if info is None:
        raise NoInputError(f"backup {backup_id} is not in vault {backup_id.vault} (no "
                           "manifest there)")
    if info.size > MAX_MANIFEST_BYTES:
        raise DataError(f"{key} is {info.size} bytes, more than any manifest "
                        f"({MAX_MANIFEST_BYTES} at most): not a cryophile manifest")
    if info.restore_state in (RestoreState.COLD, RestoreState.RESTORING):
        raise TryLaterError(_archived_advice(opened, backup_id, info.storage_class,
                                             info.restore_state))
    part = _scratch_file(scratch, MANIFEST_NAME)
    try:
        for attempt in range(1, MANIFEST_ATTEMPTS + 1):
            try:
                opened.vault.get(key, part)
                break
            except NoInputError:
                raise NoInputError(f"backup {backup_id} is not in vault {backup_id.vault} (no "
                                   "manifest there)") from None
            except DataError as error:
                # A checksum mismatch may be a transfer damaged on the way: the manifest
                # is small, so fetch it again before it counts as damaged.
                if attempt == MANIFEST_ATTEMPTS:
                    raise
                logger.warning("manifest of %s: %s; will try again (attempt %d of %d)",
                               backup_id, error, attempt, MANIFEST_ATTEMPTS)
        data = part.read_bytes()
        return parse(data, expected=backup_id), data
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()


def _archived_advice(opened: OpenedVault, backup_id: BackupId, storage_class: str | None,
                     state: RestoreState) -> str:
    """What to do about a manifest that something (a lifecycle rule) moved to an
    archive class: manifests are always uploaded to STANDARD."""
    key = backup_id.manifest_key
    bucket = opened.destination.bucket
    if bucket is not None:
        restore = (f"aws s3api restore-object --bucket {bucket} --key {key} "
                   "--restore-request Days=1")
        copy = (f"aws s3api copy-object --bucket {bucket} --key {key} --copy-source "
                f"{bucket}/{key} --storage-class {MANIFEST_STORAGE_CLASS}")
    else:
        restore, copy = "the vault's restore", "a copy onto itself"
    if state is RestoreState.RESTORING:
        advice = f"a restore of it is under way; then copy it back to STANDARD ({copy})"
    else:
        advice = f"restore it ({restore}), then copy it back to STANDARD ({copy})"
    return (f"manifest {MANIFEST_NAME} of {backup_id} is in {storage_class} (a lifecycle "
            f"rule?): cryophile keeps manifests in {MANIFEST_STORAGE_CLASS}; {advice}; and "
            f"exclude */{MANIFEST_NAME} and */{SIGNATURE_NAME} from the rule")


def fetch_signature(opened: OpenedVault, backup_id: BackupId, scratch: Path) -> bytes | None:
    """The manifest signature ``chunk.0.sig`` of ``backup_id``; None if it is unsigned.

    It is stored in STANDARD like the manifest, so no restore is needed.
    """
    key = backup_id.signature_key
    info = opened.vault.stat(key)
    if info is None:
        return None
    if info.size > MAX_SIGNATURE_BYTES:
        raise DataError(f"{key} is {info.size} bytes: not a signature")
    part = _scratch_file(scratch, SIGNATURE_NAME)
    try:
        opened.vault.get(key, part)
        data = part.read_bytes()
    except NoInputError:
        return None  # deleted since the stat
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    if len(data) > MAX_SIGNATURE_BYTES:
        raise DataError(f"{key} is {len(data)} bytes: not a signature")
    return data

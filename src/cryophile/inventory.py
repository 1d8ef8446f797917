"""The inventory: which backups exist, where, and in what state.

The one place that gathers backups from the spool's queues and from the
vaults, for ``cryophile list``, ``status`` and ``verify --all``. It reads
directory trees, manifests (``chunk.0``: plain JSON, no key needed), the thaw
daemon's ``state.json`` files, object listings and one ``stat`` per backup; it
never downloads a fragment, never needs a secret key and never asks for a
Glacier restore. It changes nothing, except for a private scratch directory in
the spool where manifests are downloaded to be read.

Where a backup can be, and what that says (:class:`BackupState`):

- ``SPOOL/backup/ID`` with its ``.lock`` held: being written; without a
  manifest in the freeze queue and the lock free: the writer died
  (incomplete, "abandoned").
- ``SPOOL/freeze/ID/chunk.0``: complete and queued; fragments the manifest
  lists but the directory no longer holds were uploaded (the freeze daemon
  deletes a local fragment only after the vault confirmed it).
- ``PREFIX/ULID/chunk.0`` in the vault: frozen (the manifest goes up last);
  fragments without a manifest: an upload in progress or abandoned. A
  manifest that cannot be read now (archived by a lifecycle rule, the server
  failing or refusing on that one object) makes that backup ``unreadable``,
  not the vault: the rest is still listed.
- ``SPOOL/thaw/ID/state.json``: a restore request and its per-fragment state.
- ``SPOOL/restore/ID`` holding the manifest and every fragment: restored
  locally, ready for ``cryophile restore``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryophile import thaw_request
from cryophile.backup_id import (
    SIGNATURE_NAME,
    BackupId,
    fragment_name,
    normalize_prefix,
    parse_ulid,
    parse_vault,
    rfc3339,
)
from cryophile.catalog import fetch_manifest
from cryophile.config import Config
from cryophile.errors import (
    CryophileError,
    DataError,
    NoInputError,
    ServiceError,
    TryLaterError,
    UsageError,
    VaultUnavailableError,
)
from cryophile.manifest import Manifest, parse
from cryophile.spool import LOCK_NAME, Queue, Spool, is_being_written
from cryophile.thaw_request import FragmentState, SpaceWait
from cryophile.uploads import UploadRecords
from cryophile.vault.base import Vault
from cryophile.vault.factory import OpenedVault, default_vault_root

logger = logging.getLogger(__name__)

_CHUNK = re.compile(r"chunk\.(0|[1-9][0-9]*)")

#: After the objects of this many backups in a row failed with
#: VaultUnavailableError, the vault is taken as down (not one object failing):
#: the rest is not tried, as each try costs the client's whole retry budget
#: (up to 105 s with the defaults against a vault that does not answer:
#: :mod:`cryophile.vault.s3`).
DOWN_AFTER = 3


class BackupState(StrEnum):
    """Where a backup stands, as ``list`` and ``status`` name it (stable JSON values)."""

    WRITING = "writing"
    INCOMPLETE = "incomplete"
    QUEUED = "queued"
    PARTLY_FROZEN = "partly_frozen"
    FROZEN = "frozen"
    DAMAGED = "damaged"
    UNREADABLE = "unreadable"
    THAW_REQUESTED = "thaw_requested"
    THAWING = "thawing"
    THAW_FAILED = "thaw_failed"
    RESTORED = "restored"


def within(prefix: str, selected: str | None) -> bool:
    """True when ``prefix`` is ``selected`` or below it, component-wise
    (``hosts`` selects ``hosts/db1`` but not ``hostsx``); None selects all."""
    if not selected:
        return True
    return prefix == selected or prefix.startswith(selected + "/")


# -- the spool -------------------------------------------------------------------


@dataclass(frozen=True)
class WriterRecord:
    """``SPOOL/backup/ID``: a backup being written, or left by a writer that died."""

    writing: bool
    part_bytes: int


@dataclass(frozen=True)
class FreezeRecord:
    """``SPOOL/freeze/ID``: fragments waiting for upload, and the manifest once written."""

    manifest: Manifest | None
    fragments_waiting: int
    bytes_waiting: int
    error: str | None = None


@dataclass(frozen=True)
class ThawRecord:
    """``SPOOL/thaw/ID``: a restore request and the thaw daemon's state of it."""

    status: str
    error: str | None
    tier: str | None
    days: int | None
    requested: str | None
    fragments_total: int | None
    counts: Mapping[FragmentState, int]
    #: Thaw met a full spool and waits for room (``status``: "waiting for space").
    space_wait: SpaceWait | None = None

    @property
    def state(self) -> BackupState:
        """Failed, not started yet (no restore asked for, nothing downloaded), or under way."""
        if self.status == "failed":
            return BackupState.THAW_FAILED
        if not self.counts.get(FragmentState.RESTORING) and not self.counts.get(
                FragmentState.DOWNLOADED):
            return BackupState.THAW_REQUESTED
        return BackupState.THAWING


@dataclass(frozen=True)
class RestoreRecord:
    """``SPOOL/restore/ID``: fragments downloaded for a restore."""

    manifest: Manifest | None
    fragments_present: int
    bytes: int

    @property
    def complete(self) -> bool:
        """The manifest and every fragment it lists are here."""
        return (self.manifest is not None
                and self.fragments_present == len(self.manifest.fragments))


@dataclass(frozen=True)
class SpoolRecord:
    """Everything the spool holds of one backup."""

    backup_id: BackupId
    writer: WriterRecord | None = None
    freeze: FreezeRecord | None = None
    thaw: ThawRecord | None = None
    restore: RestoreRecord | None = None

    @property
    def queues(self) -> list[str]:
        """The queues holding this backup, in pipeline order."""
        present = {Queue.BACKUP: self.writer, Queue.FREEZE: self.freeze,
                   Queue.THAW: self.thaw, Queue.RESTORE: self.restore}
        return [queue.value for queue, record in present.items() if record is not None]

    @property
    def manifest(self) -> Manifest | None:
        """A manifest the spool holds (freeze or restore queue), if any."""
        for record in (self.freeze, self.restore):
            if record is not None and record.manifest is not None:
                return record.manifest
        return None

    @property
    def upload_state(self) -> BackupState | None:
        """Writing, incomplete, queued or partly frozen; None when not on the way up."""
        if self.writer is None and self.freeze is None:
            return None
        if self.freeze is not None and self.freeze.manifest is not None:
            if self.freeze.fragments_waiting < len(self.freeze.manifest.fragments):
                return BackupState.PARTLY_FROZEN
            return BackupState.QUEUED
        if self.writer is not None and self.writer.writing:
            return BackupState.WRITING
        return BackupState.INCOMPLETE


def scan_spool(spool: Spool, *, vault: uuid.UUID | None = None,
               prefix: str | None = None) -> dict[BackupId, SpoolRecord]:
    """Every backup in any queue of ``spool`` (optionally of one vault, below one prefix)."""
    records: dict[BackupId, dict[str, Any]] = {}
    readers: dict[Queue, Callable[[Spool, BackupId], Any]] = {
        Queue.BACKUP: _writer_record, Queue.FREEZE: _freeze_record,
        Queue.THAW: _thaw_record, Queue.RESTORE: _restore_record}
    for queue, reader in readers.items():
        for backup_id in spool.backups(queue):
            if vault is not None and backup_id.vault != vault:
                continue
            if not within(backup_id.prefix, prefix):
                continue
            # A directory may vanish while we look (a freeze or restore
            # finishing): then the backup has simply moved on.
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                record = reader(spool, backup_id)
                records.setdefault(backup_id, {})[queue.value] = record
    return {backup_id: SpoolRecord(backup_id, parts.get("backup"), parts.get("freeze"),
                                   parts.get("thaw"), parts.get("restore"))
            for backup_id, parts in records.items()}


def _chunk_files(directory: Path) -> Iterator[tuple[int, int]]:
    """(index, size) of every complete ``chunk.N`` file in ``directory``."""
    with os.scandir(directory) as entries:
        for entry in entries:
            match = _CHUNK.fullmatch(entry.name)
            if match is not None:
                with contextlib.suppress(FileNotFoundError):
                    yield int(match.group(1)), entry.stat().st_size


def _read_local_manifest(directory: Path, backup_id: BackupId) -> tuple[Manifest | None,
                                                                         str | None]:
    try:
        data = (directory / fragment_name(0)).read_bytes()
    except FileNotFoundError:
        return None, None
    try:
        return parse(data, expected=backup_id), None
    except DataError as error:
        return None, f"{directory / fragment_name(0)}: {error}"


def _writer_record(spool: Spool, backup_id: BackupId) -> WriterRecord:
    directory = spool.backup_dir(Queue.BACKUP, backup_id)
    part_bytes = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(".part"):
                with contextlib.suppress(FileNotFoundError):
                    part_bytes += entry.stat().st_size
    return WriterRecord(is_being_written(directory / LOCK_NAME), part_bytes)


def _freeze_record(spool: Spool, backup_id: BackupId) -> FreezeRecord:
    directory = spool.backup_dir(Queue.FREEZE, backup_id)
    files = dict(_chunk_files(directory))
    manifest, error = _read_local_manifest(directory, backup_id)
    fragments = {index: size for index, size in files.items() if index > 0}
    if error is None:
        error = _upload_error(spool, backup_id)
    return FreezeRecord(manifest, len(fragments), sum(fragments.values()), error)


def _upload_error(spool: Spool, backup_id: BackupId) -> str | None:
    """The error that stopped the last upload attempt of ``backup_id`` (its upload record)."""
    try:
        record = UploadRecords(spool).load(backup_id)
    except CryophileError as error:
        return str(error)
    if record is None or record.error is None:
        return None
    return f"{record.error} (since {record.error_at})" if record.error_at else record.error


def _thaw_record(spool: Spool, backup_id: BackupId) -> ThawRecord:
    directory = spool.backup_dir(Queue.THAW, backup_id)
    try:
        request = thaw_request.load(directory)
    except DataError as error:
        return ThawRecord(status="failed", error=str(error), tier=None, days=None,
                          requested=None, fragments_total=None,
                          counts=dict.fromkeys(FragmentState, 0))
    counts = request.counts()
    total: int | None = len(request.fragments) if request.fragments else None
    if total is None:
        # The thaw daemon publishes the manifest before it plans the request.
        manifest, _ = _read_local_manifest(spool.backup_dir(Queue.RESTORE, backup_id),
                                           backup_id)
        total = len(manifest.fragments) if manifest is not None else None
    return ThawRecord(
        status=request.status.value, error=request.error, tier=request.tier,
        days=request.days, requested=_time_text(request.created),
        fragments_total=total, counts=counts, space_wait=request.space_wait)


def _time_text(value: object) -> str | None:
    """A time from a state file in the RFC 3339 form this module writes; as is if odd."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return value
    return rfc3339(when) if when.tzinfo is not None else value


def _restore_record(spool: Spool, backup_id: BackupId) -> RestoreRecord:
    directory = spool.backup_dir(Queue.RESTORE, backup_id)
    files = dict(_chunk_files(directory))
    manifest, _ = _read_local_manifest(directory, backup_id)
    if manifest is None:
        present = [size for index, size in files.items() if index > 0]
    else:
        present = [files[f.index] for f in manifest.fragments if f.index in files]
    return RestoreRecord(manifest, len(present), sum(present))


# -- the vault -------------------------------------------------------------------


@dataclass(frozen=True)
class VaultListing:
    """The objects a vault lists for one backup: their fragment indices (0: the
    manifest), and whether the manifest's signature ``chunk.0.sig`` is there."""

    backup_id: BackupId
    indices: frozenset[int]
    signed: bool = False

    @property
    def has_manifest(self) -> bool:
        """The manifest is stored: the backup was completed in the vault."""
        return 0 in self.indices

    def object_keys(self) -> list[str]:
        """Every object of the backup, in the order to delete them: the manifest
        first (the backup stops being complete), its signature, then the fragments."""
        keys = [self.backup_id.object_key(index) for index in sorted(self.indices)]
        if self.signed:
            keys.insert(1 if self.has_manifest else 0, self.backup_id.signature_key)
        return keys


def list_vault(vault: Vault, vault_id: uuid.UUID,
               prefix: str | None = None) -> dict[BackupId, VaultListing]:
    """Every backup with at least one object in ``vault`` (below ``prefix``).

    One listing, no download. Keys that are not ``PREFIX/ULID/chunk.N`` with
    a canonical prefix (objects some other tool put there) are ignored.
    """
    found: dict[BackupId, set[int]] = {}
    signed: set[BackupId] = set()
    for key in vault.list(f"{prefix}/" if prefix else ""):
        parts = key.split("/")
        match = _CHUNK.fullmatch(parts[-1])
        is_signature = parts[-1] == SIGNATURE_NAME
        if (match is None and not is_signature) or len(parts) < 2:
            continue
        raw_prefix = "/".join(parts[:-2])
        try:
            ulid = parse_ulid(parts[-2])
            if normalize_prefix(raw_prefix) != raw_prefix:
                continue
        except UsageError:
            continue
        backup_id = BackupId(vault_id, raw_prefix, ulid)
        indices = found.setdefault(backup_id, set())
        if match is not None:
            indices.add(int(match.group(1)))
        else:
            signed.add(backup_id)
    return {backup_id: VaultListing(backup_id, frozenset(indices), backup_id in signed)
            for backup_id, indices in found.items()}


@dataclass(frozen=True)
class VaultRecord:
    """What the vault says of one backup: its manifest and the fragments' storage class.

    ``unreadable`` is the error that kept its objects from being read now (the
    manifest archived, the vault failing or refusing on it); ``error`` then
    says it for a person.
    """

    listing: VaultListing
    manifest: Manifest | None
    storage_class: str | None
    error: str | None = None
    unreadable: CryophileError | None = None

    @property
    def state(self) -> BackupState:
        """Frozen; damaged (manifest damaged, fragments missing); unreadable (its objects
        could not be read now); incomplete (no manifest)."""
        if not self.listing.has_manifest:
            return BackupState.INCOMPLETE
        if self.unreadable is not None:
            return BackupState.UNREADABLE
        return BackupState.DAMAGED if self.error is not None else BackupState.FROZEN


def unreadable_reason(error: TryLaterError | ServiceError) -> str:
    """Why an object of a backup could not be read now, for a person (the error names
    the object)."""
    if isinstance(error, TryLaterError):
        return str(error)  # from fetch_manifest: says what to do
    if error.transient:
        return f"the vault failed on it; try again later: {error}"
    return f"the vault refused it: {error}"


def describe_in_vault(opened: OpenedVault, listing: VaultListing, scratch: Path,
                      known: Manifest | None = None) -> VaultRecord:
    """Read the manifest (``known``, a copy from the spool, saves the download) and
    ``stat`` fragment 1 for the storage class; never downloads a fragment.

    An object of the backup that the vault will not give now (an archived
    manifest, a server error or refusal for it) makes an ``unreadable``
    record, not an error; NoInputError means the backup went away meanwhile.
    """
    backup_id = listing.backup_id
    storage_class = None
    manifest = known
    try:
        if 1 in listing.indices:
            info = opened.vault.stat(backup_id.object_key(1))
            if info is not None and opened.has_storage_classes:  # a directory has none
                storage_class = info.storage_class
        if not listing.has_manifest:
            return VaultRecord(listing, None, storage_class,
                               "no manifest in the vault: an upload in progress or abandoned")
        if manifest is None:
            manifest, _ = fetch_manifest(opened, backup_id, scratch)
    except DataError as error:
        return VaultRecord(listing, None, storage_class,
                           f"the manifest in the vault is damaged: {error}")
    except (TryLaterError, ServiceError) as error:
        return VaultRecord(listing, manifest, storage_class, unreadable_reason(error),
                           unreadable=error)
    missing = [f.index for f in manifest.fragments if f.index not in listing.indices]
    problem = None
    if missing:
        problem = (f"fragment(s) {', '.join(map(str, missing))} missing from the vault "
                   "(run cryophile verify)")
    return VaultRecord(listing, manifest, storage_class, problem)


# -- both together -----------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One backup as ``cryophile list`` shows it."""

    backup_id: BackupId
    state: BackupState
    manifest: Manifest | None
    storage_class: str | None
    in_vault: bool
    queues: tuple[str, ...]
    error: str | None

    @property
    def created(self) -> datetime:
        """When the backup was written (the manifest's time), else its ULID's time."""
        return self.manifest.created if self.manifest is not None else self.backup_id.created

    def as_json(self) -> dict[str, Any]:
        """The ``list --json`` object (the schema is documented in the README)."""
        manifest = self.manifest
        return {
            "id": str(self.backup_id),
            "vault": str(self.backup_id.vault),
            "prefix": self.backup_id.prefix,
            "ulid": str(self.backup_id.ulid),
            "time": rfc3339(self.backup_id.created),
            "created": rfc3339(self.created),
            "state": self.state.value,
            "stored_bytes": manifest.stored_bytes if manifest is not None else None,
            "fragments": len(manifest.fragments) if manifest is not None else None,
            "compression": manifest.compression if manifest is not None else None,
            "storage_class": self.storage_class,
            "in_vault": self.in_vault,
            "queues": list(self.queues),
            "error": self.error,
            "parent": (str(manifest.parent) if manifest is not None
                       and manifest.parent is not None else None),
            "labels": dict(manifest.labels) if manifest is not None else {},
        }


def combine(backup_id: BackupId, local: SpoolRecord | None,
            stored: VaultRecord | None) -> Entry:
    """One backup's state from what the spool and the vault say of it.

    The most telling state wins: a backup restored locally or being thawed is
    that, whatever else is true; then what the vault holds (frozen, damaged,
    unreadable);
    then where the upload stands; last, fragments in the vault without a
    manifest and without anything local (incomplete).
    """
    state: BackupState | None = None
    errors: list[str] = []
    if local is not None:
        if local.restore is not None and local.restore.complete:
            state = BackupState.RESTORED
        elif local.thaw is not None:
            state = local.thaw.state
            if local.thaw.error:
                errors.append(local.thaw.error)
        if local.freeze is not None and local.freeze.error:
            errors.append(local.freeze.error)
    if stored is not None and stored.error is not None and stored.listing.has_manifest:
        errors.append(stored.error)
    if state is None and stored is not None and stored.listing.has_manifest:
        state = stored.state
    if state is None and local is not None:
        state = local.upload_state
    if state is None:
        state = BackupState.INCOMPLETE
        if stored is not None and stored.error is not None:
            errors.append(stored.error)
    manifest = stored.manifest if stored is not None else None
    if manifest is None and local is not None:
        manifest = local.manifest
    return Entry(
        backup_id=backup_id,
        state=state,
        manifest=manifest,
        storage_class=stored.storage_class if stored is not None else None,
        in_vault=stored is not None and stored.listing.has_manifest,
        queues=tuple(local.queues) if local is not None else (),
        error="; ".join(errors) if errors else None,
    )


@dataclass
class Inventory:
    """Every backup found, newest first; the vaults that could not be read; and the
    backups a vault listed but whose objects could not be read (their entries say why)."""

    entries: list[Entry] = field(default_factory=list)
    failures: dict[uuid.UUID, CryophileError] = field(default_factory=dict)
    unreadable: list[BackupId] = field(default_factory=list)


def known_vaults(spool: Spool, config: Config) -> list[uuid.UUID]:
    """Every vault id the spool's queues mention and every configured vault; when no
    configuration lists vaults, every embedded directory vault beside the spool too
    (so a wiped spool still finds its backups).
    """
    found: set[uuid.UUID] = {entry.id for entry in config.vaults}
    for queue in Queue:
        with contextlib.suppress(FileNotFoundError):
            for child in spool.queue_dir(queue).iterdir():
                with contextlib.suppress(UsageError):
                    found.add(parse_vault(child.name))
    if config.vaults:
        return sorted(found)  # the embedded vaults do not serve then (vault.factory)
    embedded = default_vault_root(spool.root, uuid.UUID(int=0)).parent
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for child in embedded.iterdir():
            with contextlib.suppress(UsageError):
                if child.is_dir():
                    found.add(parse_vault(child.name))
    return sorted(found)


def take_inventory(spool: Spool, open_vault: Callable[[uuid.UUID], OpenedVault],
                   vault_ids: Iterable[uuid.UUID], *, prefix: str | None = None,
                   only_vault: uuid.UUID | None = None) -> Inventory:
    """Every backup in the spool and in ``vault_ids`` (below ``prefix``), newest first
    by the backup's own time (its ULID's).

    A vault that cannot be read (unreachable, refusing) is recorded in
    ``failures``; its backups still appear with what the spool knows of them.
    A backup whose objects cannot be read is ``unreadable`` (and in
    :attr:`Inventory.unreadable`); the vault's other backups are listed. When
    :data:`DOWN_AFTER` backups in a row fail with VaultUnavailableError, the
    vault is down: it goes to ``failures``, and its backups not read yet are
    unreadable without being tried.
    """
    local = scan_spool(spool, vault=only_vault, prefix=prefix)
    stored: dict[BackupId, VaultRecord] = {}
    inventory = Inventory()
    for vault_id in vault_ids:
        down: CryophileError | None
        try:
            opened = open_vault(vault_id)
            listings = list_vault(opened.vault, vault_id, prefix)
            with spool.scratch("inventory") as scratch:
                described, down = _describe_all(opened, listings, scratch, local)
            stored.update(described)
        except CryophileError as error:
            down = error
        if down is not None:
            inventory.failures[vault_id] = down
            logger.debug("cannot read vault %s: %s", vault_id, down)
    for backup_id, record in stored.items():
        if record.unreadable is not None and record.listing.has_manifest:
            inventory.unreadable.append(backup_id)
            logger.debug("cannot read %s: %s", backup_id, record.error)
    for backup_id in set(local) | set(stored):
        inventory.entries.append(combine(backup_id, local.get(backup_id),
                                         stored.get(backup_id)))
    # By the backup's own time (its ULID's: the -t it was named by), as prune counts;
    # a backfilled backup is listed in its place, not as the newest.
    inventory.entries.sort(key=lambda entry: (entry.backup_id.created, str(entry.backup_id)),
                           reverse=True)
    return inventory


def _describe_all(opened: OpenedVault, listings: Mapping[BackupId, VaultListing],
                  scratch: Path, local: Mapping[BackupId, SpoolRecord]
                  ) -> tuple[dict[BackupId, VaultRecord], VaultUnavailableError | None]:
    """:func:`describe_in_vault` of every listed backup, and the vault's error when it
    went down (:data:`DOWN_AFTER` failures in a row; the rest is then not tried)."""
    described: dict[BackupId, VaultRecord] = {}
    failing: list[VaultUnavailableError] = []
    for backup_id, listing in sorted(listings.items()):
        if len(failing) >= DOWN_AFTER:
            described[backup_id] = VaultRecord(
                listing, None, None, f"not read: the vault stopped answering ({failing[-1]})",
                unreadable=failing[-1])
            continue
        spool_record = local.get(backup_id)
        known = spool_record.manifest if spool_record is not None else None
        try:
            record = describe_in_vault(opened, listing, scratch, known)
        except NoInputError:
            continue  # deleted while we looked
        described[backup_id] = record
        if isinstance(record.unreadable, VaultUnavailableError):
            failing.append(record.unreadable)
        else:
            failing.clear()
    if len(failing) < DOWN_AFTER:
        return described, None
    return described, VaultUnavailableError(
        f"it failed on {len(failing)} backups in a row after listing them, so the "
        f"rest was not tried: {failing[-1]}")

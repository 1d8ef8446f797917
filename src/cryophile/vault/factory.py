"""Which vault a vault id means: its configured S3 bucket or directory, else the embedded default.

The embedded default is a local directory vault, one per vault id, in a data
directory beside the spool (``SPOOL-vaults/<uuid>`` next to ``SPOOL``), so
the whole quick start runs without any cloud account or configuration. It
serves only when no configuration file lists vaults: once one does, an id it
does not list is a configuration error naming the ids it does list (a typo
in ``-v`` must never send a backup to a directory on this host while the user
believes it went off-site). A file with only global settings (``spool``,
``sign_key``, ...) leaves the embedded vaults as they are.
Wrappers are composed here, in one place, around whichever vault an entry
names: the bandwidth cap (``max_bandwidth``, :mod:`cryophile.vault.throttle`)
for S3 and directory vaults alike. Retry and logging policy live in the S3
vault's client (botocore's retry modes), where the requests are.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryophile.config import DIRECTORY_STORAGE_CLASS, Config, VaultConfig
from cryophile.destination import Destination
from cryophile.durable import make_dirs
from cryophile.errors import ConfigError
from cryophile.storage_classes import RetrievalPrice
from cryophile.vault.base import Vault
from cryophile.vault.local import DirectoryVault
from cryophile.vault.throttle import Throttle, ThrottledVault

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenedVault:
    """A vault with the settings that decide how fragments go into it."""

    vault_id: uuid.UUID
    vault: Vault
    storage_class: str
    restore_tier: str
    restore_days: int
    embedded: bool
    destination: Destination
    #: False for a directory: it has no storage classes, so no minimum storage
    #: duration either (what its sidecars record is not a class in any bill).
    has_storage_classes: bool = True
    #: The vault's ``retrieval_prices`` (by storage class and tier), over the
    #: defaults of :data:`~cryophile.storage_classes.RETRIEVAL_PRICES`; None: none set.
    retrieval_prices: Mapping[tuple[str, str], RetrievalPrice] | None = None


def default_vault_root(spool_root: Path, vault_id: uuid.UUID) -> Path:
    """Where the embedded directory vault of ``vault_id`` keeps its objects."""
    return spool_root.parent / f"{spool_root.name}-vaults" / str(vault_id)


def open_vault(vault_id: uuid.UUID, config: Config, spool_root: Path) -> OpenedVault:
    """The vault ``vault_id`` names: configured, or (when no configuration file lists
    vaults) the embedded directory default. Raises ConfigError for an id the
    configuration's vaults do not include."""
    entry = config.vault(vault_id)
    if entry is None:
        if config.vaults:
            raise unknown_vault(vault_id, config)
        root = default_vault_root(spool_root, vault_id)
        return OpenedVault(vault_id, DirectoryVault(root, create=True), DIRECTORY_STORAGE_CLASS,
                           "Bulk", 1, embedded=True,
                           destination=Destination.directory(str(root), embedded=True),
                           has_storage_classes=False)
    return OpenedVault(vault_id, _from_config(entry), entry.storage_class, entry.restore_tier,
                       entry.restore_days, embedded=False, destination=destination_of(entry),
                       has_storage_classes=entry.provider == "s3",
                       retrieval_prices=entry.price_table or None)


def destination_for(vault_id: uuid.UUID, config: Config, spool_root: Path) -> Destination:
    """Where ``vault_id``'s objects go, without opening the vault (``backup`` never
    talks to the network, nor loads boto3). ConfigError like :func:`open_vault`."""
    entry = config.vault(vault_id)
    if entry is not None:
        return destination_of(entry)
    if config.vaults:
        raise unknown_vault(vault_id, config)
    return Destination.directory(str(default_vault_root(spool_root, vault_id)), embedded=True)


def destination_of(entry: VaultConfig) -> Destination:
    """Where a configured vault keeps its objects."""
    if entry.provider == "dir":
        assert entry.path is not None  # the config loader requires it for "dir"
        return Destination.directory(str(entry.path))
    assert entry.bucket is not None  # the config loader requires it for "s3"
    return Destination.s3(entry.bucket, entry.endpoint_url)


def unknown_vault(vault_id: uuid.UUID, config: Config) -> ConfigError:
    """The error for an id that a configuration file does not list."""
    listed = ", ".join(f"{entry.id} ({entry.name})" if entry.name else str(entry.id)
                       for entry in config.vaults)
    return ConfigError(
        f"vault {vault_id} is not in the configuration {config.source} (it lists: {listed}); "
        "check -v for a typo, or add a [[vault]] entry for it (the embedded directory vault "
        "serves only when no configuration file lists vaults)")


def announce_embedded(vault_id: uuid.UUID, destination: Destination) -> None:
    """Say once, after its first backup, that an embedded vault is on this host.

    Its directory is created then (empty, 0700), which is what "once" remembers:
    later backups stay quiet, so a cron job's mail does not repeat it nightly.
    """
    if not destination.embedded or destination.path is None or destination.path_exists():
        return
    logger.warning("vault %s has no configuration: its backups go to the embedded directory "
                   "vault %s on this host, not off-site; configure it in cryophile.toml to "
                   "send them elsewhere (said once)", vault_id, destination.path)
    try:
        make_dirs(Path(destination.path))
    except OSError as error:
        logger.debug("cannot create %s: %s", destination.path, error)


def wrapped(vault: Vault, entry: VaultConfig) -> Vault:
    """``vault`` inside the wrappers that ``entry`` asks for: a
    :class:`~cryophile.vault.throttle.ThrottledVault` when it sets
    ``max_bandwidth``, else ``vault`` itself."""
    if entry.max_bandwidth is not None:
        vault = ThrottledVault(vault, Throttle(entry.max_bandwidth))
    return vault


def _from_config(entry: VaultConfig) -> Vault:
    vault: Vault
    if entry.provider == "dir":
        assert entry.path is not None  # the config loader requires it for "dir"
        vault = DirectoryVault(entry.path)
    else:
        from cryophile.vault.s3 import S3Vault  # noqa: PLC0415 - boto3 loads slowly; only S3

        vault = S3Vault(entry)
    return wrapped(vault, entry)

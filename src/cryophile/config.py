"""The configuration file: TOML in, frozen dataclasses out.

Where this sits: the CLI calls :func:`load_config` once with the ``--config``
value (or None) and hands the result down; :meth:`Config.vault` tells the
vault layer how to reach one vault, and a vault id with no entry falls back to
the embedded directory vault (decided by the caller, not here).

Lookup order: the explicit path (which must exist), else
``$XDG_CONFIG_HOME/cryophile/cryophile.toml`` (``~/.config/...`` when
``XDG_CONFIG_HOME`` is unset), else ``/etc/cryophile/cryophile.toml``, else
built-in defaults with no vaults. The first file that exists is the only one
read; a file that exists but cannot be read or parsed is an error, never
skipped, so a typo never silently sends backups somewhere else.

The schema::

    spool = "/var/spool/cryophile"          # optional
    spool_limit = "20G"                     # optional: bytes or "25%" of its file system
                                            # (default: free space less 10 %; spool_budget)
    stall_timeout = 1800                    # optional: seconds a backup waiting for spool
                                            # space tolerates uploads making no progress
    metrics_file = "/var/lib/prometheus/node-exporter/cryophile.prom"   # optional
    sign_key = "/etc/cryophile/sign.key"    # optional: backup signs manifests with it
    signed_by = "/etc/cryophile/sign.cert"  # optional: restore/verify/prune require that signer

    [[vault]]
    id = "0b7c2c5e-5a7e-4f0e-9f43-4d1f3b0c2a11"   # required, a UUID
    name = "offsite"                         # optional, unique: -v offsite, --id offsite/...
    provider = "s3"                          # required: "s3" or "dir"
    service = "aws"                          # s3, optional: aws (default), r2, b2, gcs,
                                             # wasabi, minio, ceph, garage, scaleway, ovh,
                                             # hetzner, seaweedfs, generic (cryophile.services)
    bucket = "my-backups"                    # s3: required
    endpoint_url = "https://..."             # s3: optional (R2, GCS, SeaweedFS, MinIO)
    region = "eu-central-1"                  # s3: optional (default: the service's)
    profile = "backup"                       # s3: optional AWS profile name
    storage_class = "GLACIER"                # s3: default the service's (GLACIER on aws)
    checksum = "sha256"                      # s3, optional: sha256 | md5 | none
                                             # (default: the service's)
    max_parts = 10000                        # s3, optional: parts per multipart upload
                                             # (default: the service's), 1-10000
    restore_tier = "Bulk"                    # Bulk | Standard | Expedited, default Bulk
    restore_days = 7                         # 1-36500, default 7
    compression = "zstd"                     # optional: none | lz4 | zstd
    object_lock_mode = "GOVERNANCE"          # s3, optional: GOVERNANCE | COMPLIANCE
    object_lock_days = 30                    # s3, required with object_lock_mode; 1-36500
    max_bandwidth = "50M"                    # optional: bytes/s, int or K/M/G/T
    max_attempts = 10                        # s3, optional: tries per request, 1-20
    connect_timeout = 10                     # s3, optional: seconds, 0 < t <= 3600
    read_timeout = 30                        # s3, optional: seconds, 0 < t <= 3600
    path = "/srv/vault"                      # dir: required

    [vault.retrieval_prices]                 # s3, optional: what a Glacier restore costs,
    Bulk = { per_gib = 0.0025, per_1000_requests = 0.025 }   # per tier, for the vault's
    [vault.retrieval_prices.DEEP_ARCHIVE]    # storage_class; or per class, then tier
    Standard = { per_gib = 0.02, per_1000_requests = 0.10 }

``service`` names the S3 service behind the endpoint; its profile
(:mod:`cryophile.services`) gives the defaults of ``storage_class``,
``region``, ``checksum`` and ``max_parts``, which class names are valid, and
whether ``object_lock_mode`` can be honoured (a service without object lock is
refused here, not discovered after the first upload).

``connect_timeout`` bounds the silence while connecting and while the server
takes in a request's bytes (each block of the body must go within it);
``read_timeout`` the silence while waiting for the answer and between blocks of
it. They measure silence, never the length of a transfer that keeps moving.
A request that gets no answer is tried again only while its silence and the
back-off between its tries add up to less than ``connect_timeout +
read_timeout`` (:mod:`cryophile.vault.s3`).

Unknown keys are errors. Credentials are never read from this file: they come
from the standard AWS chain (environment, ``profile``, instance roles).

Every error is a :class:`~cryophile.errors.ConfigError` whose message names
the file, the line when it can be found, the ``[[vault]]`` entry and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit

from cryophile import units
from cryophile.errors import ConfigError
from cryophile.services import (
    DEFAULT_SERVICE,
    S3_MAX_PARTS,
    SERVICES,
    Checksum,
    ServiceProfile,
    service_profile,
)
from cryophile.spool_budget import SpoolLimit, parse_spool_limit
from cryophile.storage_classes import KNOWN_STORAGE_CLASSES, RESTORE_TIERS, RetrievalPrice

Provider = Literal["s3", "dir"]

#: The class a directory vault records for every object: it has no classes, and
#: this one no minimum storage duration.
DIRECTORY_STORAGE_CLASS = "STANDARD"

#: Where the configuration is looked for when no path is given, in order.
SYSTEM_CONFIG = Path("/etc/cryophile/cryophile.toml")

COMPRESSIONS = ("none", "lz4", "zstd")
OBJECT_LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
#: Upper bound of ``restore_days`` and ``object_lock_days``.
MAX_DAYS = 36500
#: Tries per S3 request (botocore's ``max_attempts``): the default, and the
#: most that makes sense (with back-off, 20 tries already take minutes).
DEFAULT_MAX_ATTEMPTS = 10
MAX_ATTEMPTS = 20
#: Seconds of silence before one try of an S3 request fails: while connecting
#: or sending, and while waiting for the answer. botocore's own defaults are
#: 60 s each; an S3 server answers within a second or keeps bytes flowing.
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0
#: Upper bound of both timeouts: more than an hour of silence is a typo.
MAX_TIMEOUT = 3600.0
#: Upper bound of ``stall_timeout``: a week.
MAX_STALL_TIMEOUT = 7 * 24 * 3600.0

_TOP_LEVEL_KEYS = frozenset(
    {"spool", "spool_limit", "stall_timeout", "metrics_file", "sign_key", "signed_by",
     "vault"}
)
_COMMON_KEYS = frozenset(
    {"id", "name", "provider", "restore_tier", "restore_days", "compression",
     "max_bandwidth"}
)
_S3_KEYS = frozenset(
    {
        "storage_class",
        "service",
        "checksum",
        "max_parts",
        "bucket",
        "endpoint_url",
        "region",
        "profile",
        "object_lock_mode",
        "object_lock_days",
        "max_attempts",
        "connect_timeout",
        "read_timeout",
        "retrieval_prices",
    }
)
_DIR_KEYS = frozenset({"path"})
_VAULT_KEYS = _COMMON_KEYS | _S3_KEYS | _DIR_KEYS

_UUID_FORM = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
#: A vault's ``name``: short, no "/" (it starts a ``--id VAULT/PREFIX/ULID``).
VAULT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_VAULT_HEADER = re.compile(r"\s*\[\[\s*vault\s*\]\]\s*(#.*)?$")
_ANY_HEADER = re.compile(r"\s*\[")


@dataclass(frozen=True)
class VaultConfig:
    """One ``[[vault]]`` entry, validated and normalised.

    Keys that do not apply to the provider are None (the loader refuses them
    in the file); a directory's ``storage_class`` is always
    :data:`DIRECTORY_STORAGE_CLASS`. ``max_bandwidth`` is in bytes per second; ``connect_timeout``
    and ``read_timeout`` in seconds. ``service`` is a key of
    :data:`~cryophile.services.SERVICES` (``aws`` for a directory vault, where
    it means nothing); ``checksum`` and ``max_parts`` hold the value in force,
    the service's default unless the file set them.
    """

    id: uuid.UUID
    provider: Provider
    name: str | None = None
    service: str = DEFAULT_SERVICE
    checksum: Checksum = Checksum.SHA256
    max_parts: int = S3_MAX_PARTS
    bucket: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    storage_class: str = "GLACIER"
    restore_tier: str = "Bulk"
    restore_days: int = 7
    compression: str | None = None
    object_lock_mode: str | None = None
    object_lock_days: int | None = None
    max_bandwidth: int | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    path: Path | None = None
    #: ``retrieval_prices``: (storage class, tier, price) triples over the defaults.
    retrieval_prices: tuple[tuple[str, str, RetrievalPrice], ...] = ()

    @property
    def price_table(self) -> dict[tuple[str, str], RetrievalPrice]:
        """``retrieval_prices`` as :func:`~cryophile.thaw_plan.make_plan` takes them."""
        return {(storage_class, tier): price
                for storage_class, tier, price in self.retrieval_prices}

    @property
    def profile_of_service(self) -> ServiceProfile:
        """The profile of this vault's ``service``."""
        return service_profile(self.service)


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``source`` is the file it came from, or None
    for the built-in defaults; ``spool`` is None unless the file sets it, and so is
    ``metrics_file`` (where the daemons write Prometheus metrics), and ``spool_limit``
    (the spool's budget, :mod:`cryophile.spool_budget`); ``stall_timeout`` (seconds a
    backup waiting for spool space accepts uploads making no progress; None: the
    default of :mod:`cryophile.backpressure`). ``sign_key``
    is the secret key ``backup`` signs manifests with (``--sign-key`` wins);
    ``signed_by`` the certificate whose signature ``restore``, ``verify`` and ``prune``
    require (``--signed-by`` wins)."""

    source: Path | None = None
    spool: Path | None = None
    spool_limit: SpoolLimit | None = None
    stall_timeout: float | None = None
    metrics_file: Path | None = None
    vaults: tuple[VaultConfig, ...] = ()
    sign_key: Path | None = None
    signed_by: Path | None = None

    def vault(self, vault_id: uuid.UUID) -> VaultConfig | None:
        """The entry for ``vault_id``, or None (then the embedded directory
        vault applies)."""
        for entry in self.vaults:
            if entry.id == vault_id:
                return entry
        return None

    def vault_named(self, name: str) -> VaultConfig | None:
        """The entry whose ``name`` is ``name``, or None."""
        for entry in self.vaults:
            if entry.name == name:
                return entry
        return None


def default_search_paths() -> tuple[Path, ...]:
    """The files :func:`load_config` tries when no path is given, in order."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    user_dir = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return (user_dir / "cryophile" / "cryophile.toml", SYSTEM_CONFIG)


def load_config(path: Path | None = None, *, search: Sequence[Path] | None = None) -> Config:
    """Load the configuration.

    With ``path``, read exactly that file; it must exist. Without, read the
    first of ``search`` (default :func:`default_search_paths`) that exists, or
    return the built-in defaults when none does. Raises ConfigError for a
    missing explicit file and for any file that cannot be read, parsed or
    validated.
    """
    if path is not None:
        try:
            found = path.exists()
        except OSError as exc:  # ENAMETOOLONG, ELOOP: a one-line error, not a traceback
            raise ConfigError(f"{path}: cannot read configuration file: {exc.strerror}") from None
        if not found:
            raise ConfigError(f"{path}: configuration file does not exist")
        return _load_file(path)
    for candidate in default_search_paths() if search is None else search:
        # exists() is False for a dangling symlink too; a file we may not stat
        # raises PermissionError, which _load_file reports.
        if candidate.exists() or candidate.is_symlink():
            return _load_file(candidate)
    return Config()


def parse_config(text: str, source: Path) -> Config:
    """Parse and validate TOML ``text`` as if read from ``source`` (which is
    used in messages and to resolve relative paths)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends in "(at line L, column C)".
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    return _Validator(source, text).config(document)


def parse_size(text: str | int) -> int:
    """Parse a byte count: an int, or a string with an optional binary unit
    (``"50M"`` = 50 MiB, ``"1.5G"``, ``"64KiB"``). Raises ValueError."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif isinstance(text, str):
        value = units.parse_size(text)
    else:
        raise ValueError(f"expected a size, not {text!r}")  # noqa: TRY004 (config value)
    if value < 1:
        raise ValueError(f"size must be at least 1 byte, not {text!r}")
    return value


def _load_file(path: Path) -> Config:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not valid UTF-8") from None
    return parse_config(text, path)


class _Validator:
    """Turns the parsed document into a Config, naming file, line, entry and
    key in every complaint."""

    def __init__(self, source: Path, text: str) -> None:
        self.source = source
        self.lines = text.splitlines()

    def config(self, document: dict[str, Any]) -> Config:
        unknown = sorted(set(document) - _TOP_LEVEL_KEYS)
        if unknown:
            self._fail(
                None, unknown[0],
                f"unknown key {unknown[0]!r} (expected 'spool', 'spool_limit', 'stall_timeout', "
                "'metrics_file', 'sign_key', 'signed_by', [[vault]])",
            )
        spool = None
        if "spool" in document:
            spool = self._path(None, "spool", document["spool"])
        spool_limit = None
        if "spool_limit" in document:
            try:
                spool_limit = parse_spool_limit(document["spool_limit"])
            except ValueError as error:
                self._fail(None, "spool_limit", str(error))
        stall_timeout = None
        if "stall_timeout" in document:
            value = document["stall_timeout"]
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not 0 < value <= MAX_STALL_TIMEOUT):
                self._fail(None, "stall_timeout", f"expected seconds, a number above 0 and at "
                                                  f"most {MAX_STALL_TIMEOUT:g}, not {value!r}")
            stall_timeout = float(value)
        metrics_file = None
        if "metrics_file" in document:
            metrics_file = self._path(None, "metrics_file", document["metrics_file"])
        # Key files, relative to the configuration file like every path in it.
        sign_key = None
        if "sign_key" in document:
            sign_key = self._path(None, "sign_key", document["sign_key"])
        signed_by = None
        if "signed_by" in document:
            signed_by = self._path(None, "signed_by", document["signed_by"])
        tables = document.get("vault", [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            self._fail(None, "vault", "'vault' must be [[vault]] tables")
        vaults: list[VaultConfig] = []
        seen: dict[uuid.UUID, int] = {}
        names: dict[str, int] = {}
        for index, table in enumerate(tables):
            entry = self._vault(index, table)
            if entry.name is not None:
                if entry.name in names:
                    self._fail(index, "name", f"duplicate vault name {entry.name!r} (already "
                                              f"used by [[vault]] #{names[entry.name] + 1})")
                names[entry.name] = index
            if entry.id in seen:
                self._fail(
                    index,
                    "id",
                    f"duplicate vault id {entry.id} "
                    f"(already used by [[vault]] #{seen[entry.id] + 1})",
                )
            seen[entry.id] = index
            vaults.append(entry)
        return Config(source=self.source, spool=spool, spool_limit=spool_limit,
                      stall_timeout=stall_timeout, metrics_file=metrics_file,
                      vaults=tuple(vaults), sign_key=sign_key, signed_by=signed_by)

    def _vault(self, index: int, table: Mapping[str, Any]) -> VaultConfig:
        for key in table:
            if key not in _VAULT_KEYS:
                self._fail(index, key, f"unknown key {key!r}")
        if "id" not in table:
            self._fail(index, None, "missing key 'id' (the vault's UUID)")
        vault_id = self._uuid(index, table["id"])
        if "provider" not in table:
            self._fail(index, None, 'missing key \'provider\' ("s3" or "dir")')
        provider = self._choice(index, "provider", table["provider"], ("s3", "dir"))
        allowed = _COMMON_KEYS | (_S3_KEYS if provider == "s3" else _DIR_KEYS)
        for key in table:
            if key == "storage_class" and provider == "dir":
                self._fail(index, key, "a directory vault has no storage classes (and no "
                                       "minimum storage duration): remove the key")
            if key not in allowed:
                self._fail(index, key, f"key {key!r} does not apply to provider {provider!r}")

        values: dict[str, Any] = {"id": vault_id, "provider": provider}
        if "name" in table:
            values["name"] = self._name(index, table["name"])
        if "restore_tier" in table:
            tiers = sorted(t.lower() for t in RESTORE_TIERS)
            tier = self._choice(index, "restore_tier", table["restore_tier"], tiers)
            values["restore_tier"] = tier.capitalize()
        if "restore_days" in table:
            values["restore_days"] = self._int(index, "restore_days", table["restore_days"])
        if "compression" in table:
            values["compression"] = self._choice(
                index, "compression", table["compression"], COMPRESSIONS
            )
        if "max_bandwidth" in table:
            try:
                values["max_bandwidth"] = parse_size(table["max_bandwidth"])
            except ValueError as exc:
                self._fail(index, "max_bandwidth", str(exc))

        if provider == "dir":
            # What the sidecars record: a class with no minimum duration.
            values["storage_class"] = DIRECTORY_STORAGE_CLASS
            if "path" not in table:
                self._fail(index, None, "missing key 'path' (required for provider \"dir\")")
            values["path"] = self._path(index, "path", table["path"])
            return VaultConfig(**values)

        if "bucket" not in table:
            self._fail(index, None, "missing key 'bucket' (required for provider \"s3\")")
        values["bucket"] = self._bucket(index, table["bucket"])
        if "endpoint_url" in table:
            values["endpoint_url"] = self._url(index, table["endpoint_url"])
        service = DEFAULT_SERVICE
        if "service" in table:
            service = self._choice(index, "service", table["service"], list(SERVICES))
        profile = service_profile(service)
        values["service"] = service
        values.update(self._service_settings(index, table, profile))
        for key in ("region", "profile"):
            if key in table:
                values[key] = self._string(index, key, table[key])
        if ("object_lock_mode" in table) != ("object_lock_days" in table):
            key = "object_lock_mode" if "object_lock_mode" in table else "object_lock_days"
            self._fail(index, key, "object_lock_mode and object_lock_days go together")
        if "object_lock_mode" in table and not profile.object_lock:
            self._fail(index, "object_lock_mode",
                       f"{profile.title} (service = {service!r}) does not apply object lock "
                       "retention to objects (its headers are refused or ignored); remove "
                       "object_lock_mode and object_lock_days, and protect the bucket with the "
                       "service's own rules (see the README's section on it)")
        if "object_lock_mode" in table and values["checksum"] is Checksum.NONE:
            # AWS refuses a locked PutObject without Content-MD5 or a checksum.
            self._fail(index, "checksum",
                       'checksum = "none" cannot go with object_lock_mode (a locked upload '
                       "needs an integrity header): set checksum to \"md5\" or \"sha256\", "
                       "or remove object_lock_mode and object_lock_days")
        if "object_lock_mode" in table:
            values["object_lock_mode"] = self._choice(
                index, "object_lock_mode", table["object_lock_mode"], OBJECT_LOCK_MODES, upper=True
            )
            values["object_lock_days"] = self._int(
                index, "object_lock_days", table["object_lock_days"]
            )
        if "max_attempts" in table:
            attempts = table["max_attempts"]
            if (isinstance(attempts, bool) or not isinstance(attempts, int)
                    or not 1 <= attempts <= MAX_ATTEMPTS):
                self._fail(index, "max_attempts",
                           f"expected a whole number from 1 to {MAX_ATTEMPTS}, not {attempts!r}")
            values["max_attempts"] = attempts
        for key in ("connect_timeout", "read_timeout"):
            if key in table:
                values[key] = self._seconds(index, key, table[key])
        if "retrieval_prices" in table:
            values["retrieval_prices"] = self._prices(index, table["retrieval_prices"],
                                                      values.get("storage_class", "GLACIER"))
        return VaultConfig(**values)

    def _prices(self, index: int, value: Any,
                storage_class: str) -> tuple[tuple[str, str, RetrievalPrice], ...]:
        """``retrieval_prices``: tier tables (for the vault's ``storage_class``) and storage
        class tables holding tier tables, each ``{per_gib, per_1000_requests}`` in USD."""
        key = "retrieval_prices"
        expected = ("expected tables such as Bulk = { per_gib = 0.0025, per_1000_requests = "
                    "0.025 } (a tier, for the vault's storage_class) or DEEP_ARCHIVE.Bulk = "
                    "{ ... } (a storage class, then a tier)")
        if not isinstance(value, dict):
            self._fail(index, key, expected)
        tiers = {tier.lower(): tier for tier in RESTORE_TIERS}
        found: dict[tuple[str, str], RetrievalPrice] = {}
        for name, entry in value.items():
            if name.lower() in tiers:
                found[(storage_class, tiers[name.lower()])] = self._price(index, name, entry)
            elif name.upper() in KNOWN_STORAGE_CLASSES and isinstance(entry, dict):
                for tier_name, price in entry.items():
                    if tier_name.lower() not in tiers:
                        self._fail(index, key, f"{name}.{tier_name}: not a retrieval tier "
                                               f"(expected {', '.join(sorted(RESTORE_TIERS))})")
                    found[(name.upper(), tiers[tier_name.lower()])] = self._price(
                        index, f"{name}.{tier_name}", price)
            else:
                self._fail(index, key, f"{name!r} is neither a retrieval tier "
                                       f"({', '.join(sorted(RESTORE_TIERS))}) nor a storage "
                                       f"class table; {expected}")
        return tuple((storage_class_name, tier, price)
                     for (storage_class_name, tier), price in sorted(found.items()))

    def _price(self, index: int, where: str, entry: Any) -> RetrievalPrice:
        fields = ("per_gib", "per_1000_requests")
        if not isinstance(entry, dict) or set(entry) != set(fields):
            self._fail(index, "retrieval_prices", f"{where}: expected {{ per_gib = USD, "
                                                  "per_1000_requests = USD }, both keys")
        numbers: list[float] = []
        for field_name in fields:
            number = entry[field_name]
            if (isinstance(number, bool) or not isinstance(number, int | float)
                    or not 0 <= number < 1e6):
                self._fail(index, "retrieval_prices", f"{where}.{field_name}: expected a "
                                                      f"price in USD, 0 or more, not {number!r}")
            numbers.append(float(number))
        return RetrievalPrice(numbers[0], numbers[1])

    def _service_settings(self, index: int, table: Mapping[str, Any],
                          profile: ServiceProfile) -> dict[str, Any]:
        """``storage_class``, ``region``, ``checksum`` and ``max_parts``: the file's
        values, checked against the service, else the service's defaults."""
        values: dict[str, Any] = {"storage_class": profile.storage_class,
                                  "region": profile.region,
                                  "checksum": profile.checksum,
                                  "max_parts": profile.max_parts}
        if "storage_class" in table:
            text = self._string(index, "storage_class", table["storage_class"])
            if text.upper() not in profile.storage_classes:
                known = ", ".join(sorted(profile.storage_classes))
                self._fail(index, "storage_class",
                           f"{text!r} is not a storage class of {profile.title} "
                           f"(service = {profile.name!r}); expected one of {known}")
            values["storage_class"] = text.upper()
        if "checksum" in table:
            choice = self._choice(index, "checksum", table["checksum"],
                                  [mode.value for mode in Checksum])
            values["checksum"] = Checksum(choice)
        if "max_parts" in table:
            parts = table["max_parts"]
            if (isinstance(parts, bool) or not isinstance(parts, int)
                    or not 1 <= parts <= S3_MAX_PARTS):
                self._fail(index, "max_parts",
                           f"expected a whole number from 1 to {S3_MAX_PARTS}, not {parts!r}")
            values["max_parts"] = parts
        return values

    # -- value checkers: each returns the normalised value or fails --------

    def _string(self, index: int | None, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            self._fail(index, key, f"expected a non-empty string, not {value!r}")
        return value

    def _choice(
        self,
        index: int | None,
        key: str,
        value: Any,
        choices: Sequence[str],
        *,
        upper: bool = False,
    ) -> str:
        text = self._string(index, key, value)
        normalised = text.upper() if upper else text.lower()
        if normalised not in choices:
            self._fail(index, key, f"{text!r} is not one of {', '.join(choices)}")
        return normalised

    def _int(self, index: int | None, key: str, value: Any) -> int:
        # TOML booleans arrive as bool, a subclass of int: refuse them.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self._fail(index, key, f"expected a whole number ≥ 1, not {value!r}")
        # Both keys count days. A larger value is a typo, and object_lock_days
        # = 10**10 would crash every upload (now + timedelta overflows).
        if value > MAX_DAYS:
            self._fail(index, key, f"{value} days is more than {MAX_DAYS} (100 years)")
        return value

    def _seconds(self, index: int, key: str, value: Any) -> float:
        # NaN fails both comparisons, inf the upper bound.
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not 0 < value <= MAX_TIMEOUT):
            self._fail(index, key, f"expected seconds, a number above 0 and at most "
                                   f"{MAX_TIMEOUT:g}, not {value!r}")
        return float(value)

    def _name(self, index: int, value: Any) -> str:
        text = self._string(index, "name", value)
        if not VAULT_NAME.fullmatch(text) or _UUID_FORM.fullmatch(text):
            self._fail(index, "name", f"{text!r} is not a vault name: 1 to 64 of a-z 0-9 . _ -, "
                                      "starting with a letter or digit, and not a UUID")
        return text

    def _uuid(self, index: int, value: Any) -> uuid.UUID:
        text = self._string(index, "id", value)
        if not _UUID_FORM.fullmatch(text):
            self._fail(
                index, "id", f"{text!r} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
            )
        return uuid.UUID(text)

    def _path(self, index: int | None, key: str, value: Any) -> Path:
        text = self._string(index, key, value)
        if "\0" in text:
            self._fail(index, key, "path contains a NUL character")
        path = Path(text).expanduser()
        # A relative path means relative to the file it is written in, not to
        # wherever a cron job happens to start.
        return path if path.is_absolute() else self.source.parent / path

    def _bucket(self, index: int, value: Any) -> str:
        text = self._string(index, "bucket", value)
        # Only what no S3 server accepts; each provider has stricter rules.
        if "/" in text or any(c.isspace() for c in text) or not 3 <= len(text) <= 255:
            self._fail(index, "bucket", f"{text!r} is not a bucket name")
        return text

    def _url(self, index: int, value: Any) -> str:
        text = self._string(index, "endpoint_url", value)
        parts = urlsplit(text)
        # urlsplit keeps "http://a b" as host "a b": no URL has blanks or controls.
        if (parts.scheme not in ("http", "https") or not parts.netloc
                or any(c.isspace() or not c.isprintable() for c in text)):
            self._fail(index, "endpoint_url", f"{text!r} is not an http:// or https:// URL")
        return text

    # -- error reporting ---------------------------------------------------

    def _fail(self, index: int | None, key: str | None, message: str) -> NoReturn:
        where = str(self.source)
        line = self._line_of(index, key)
        if line is not None:
            where += f": line {line}"
        if index is not None:
            where += f": [[vault]] #{index + 1}"
        if key is not None:
            where += f": key {key!r}"
        raise ConfigError(f"{where}: {message}")

    def _line_of(self, index: int | None, key: str | None) -> int | None:
        """Best-effort line number of ``key`` in the index-th ``[[vault]]``
        table (or at the top level when index is None). tomllib keeps no
        positions, so this scans the text; None when it cannot tell (inline
        tables, dotted keys)."""
        count = -1
        in_target = index is None
        header_line = None
        for number, line in enumerate(self.lines, start=1):
            if _VAULT_HEADER.match(line):
                count += 1
                in_target = count == index
                if in_target:
                    header_line = number
                continue
            if _ANY_HEADER.match(line):
                in_target = False
                continue
            if (
                in_target
                and key is not None
                and re.match(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=", line)
            ):
                return number
        return header_line

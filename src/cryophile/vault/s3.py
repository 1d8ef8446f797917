"""A vault in an S3 bucket (AWS S3 and Glacier, Cloudflare R2, GCS's XML API,
SeaweedFS, MinIO, ...), on boto3.

Where this sits: implements :class:`cryophile.vault.base.Vault` for a
``provider = "s3"`` entry of the configuration; the freeze and thaw daemons use
it through that interface only. It passes the same contract tests as the
directory vault, against a real SeaweedFS server and against moto for Glacier
semantics.

How the contract is met on S3:

- **Services**: the vault's ``service`` (:mod:`cryophile.services`) says what
  the server accepts; the configuration already applied its defaults.
- **Integrity**: every upload carries the vault's ``checksum``: with
  ``sha256`` ``x-amz-checksum-sha256``, with ``md5`` ``Content-MD5``, so the
  server recomputes it and refuses bytes that do not match (``BadDigest`` →
  DataError); ``none`` sends nothing. Large files go multipart with the same
  header on every part (the server checks each part) while we hash the whole
  file as we read it and refuse to complete the upload unless it matches the
  caller's digest. The hex digest is also stored as user metadata
  ``x-amz-meta-sha256``, because a multipart object's checksum is a checksum
  of checksums, not of the content. Over plain HTTP the SigV4 signature
  covers the body's SHA-256 too; an upload whose header carries the checksum
  the service's profile names (the one it verifies) is signed without hashing
  its body again (UNSIGNED-PAYLOAD, what botocore sends over HTTPS anyway):
  the signed header and the server's check of it protect the bytes on the
  wire. Any other setting (``none``, or ``sha256`` on a service that may not
  check it) keeps the signed body. botocore adds nothing of its own
  (``request_checksum_calculation`` and ``response_checksum_validation`` are
  ``when_required``), and response checksums are asked for (``ChecksumMode``,
  on HeadObject only, never on a download) only from services known to
  return full-object ones correctly: every
  download is hashed here and checked against the SHA-256 we stored (and the
  restore checks it against the manifest), so nothing depends on them.
- **Permanent refusals**: a storage class the service does not have, a
  header it does not implement, a part number beyond its limit, object lock
  on a bucket without it: :class:`~cryophile.errors.ServiceRefusalError`
  (exit 78), naming the setting to change and quoting the service, never a
  transient error, since the same request fails the same way until a
  setting changes.
- **Object lock read back**: after the first locked upload (per vault
  object), the object's retention is read back; a service that ignored the
  lock headers (Garage) or a bucket without object lock makes that upload
  fail with ServiceRefusalError: nobody may believe in a protection they do
  not have.
- **No overwrite**: ``stat`` first (an identical object makes ``put`` a no-op),
  then the upload is conditional (``If-None-Match: *``) so a concurrent writer
  cannot be overwritten either; a server is taken not to implement
  conditional writes only when a request it refused (501, or 412 for a key
  that does not exist) succeeds without ``If-None-Match``; then the ``stat``
  check alone guards. A 412 on PutObject or CompleteMultipartUpload that the
  same request without ``If-None-Match`` gets too is the service refusing
  what the request carries (GCS: checksums): a ServiceRefusalError naming
  ``checksum`` (or ``service``), never "try again".
- **Every upload is hashed first**: whatever ``checksum`` says, the file must
  still hash to the caller's SHA-256 before it is stored (single part: before
  the PUT; multipart: as the parts are read, checked before completing), or
  DataError: with ``none`` (or a server that does not check the header) the
  x-amz-meta-sha256 we store would otherwise vouch for damaged bytes.
- **Memory**: a part is read from the spool file as it is sent, never held in
  memory; a fragment that would need parts over 64 MiB to fit within
  ``max_parts`` is refused (ConfigError naming ``max_parts`` and ``backup -s``):
  a part that fails is sent again whole.
- **Cold storage**: ``stat`` reads the ``x-amz-restore`` header
  (``ongoing-request="true"`` / ``"false", expiry-date="..."``) and the storage
  class; ``request_restore`` maps RestoreObject's answers (202 started, 409
  already running, 200 already restored, 403 not an archive class, 405/501 a
  server without cold storage) onto :class:`RestoreState`.
- **Errors**: botocore retries throttling, 5xx and connection failures itself
  (mode "standard" or "adaptive", ``max_attempts`` tries in all, 10 by
  default); what is left is mapped to the cryophile error tree: NoSuchBucket,
  AccessDenied, bad credentials → ServiceError (permanent); connection
  failures, timeouts, 5xx → VaultUnavailableError (transient); wrong checksum
  → DataError.
- **Silence is bounded, a long transfer is not**: ``connect_timeout`` is the
  socket timeout while connecting and while sending (each block of a body
  must go within it), ``read_timeout`` while waiting for the answer and
  between blocks of it; neither limits a transfer that keeps moving. Left
  alone, botocore tries a silent server ``max_attempts`` times, a full timeout
  each (11 × 120 s before these settings). So each request keeps an account
  of its *waiting*: the silence of each try that failed without an answer
  (the timeout that ran out, or the whole try when it never connected) and
  the back-off between tries. Once the account reaches ``connect_timeout +
  read_timeout``, a failure without an answer is not tried again. A request
  to a vault that does not answer therefore ends within ``2 ×
  (connect_timeout + read_timeout)`` plus one back-off (at most 20 s): the
  account, then the last try. A try cut off after its bytes flowed (a reset)
  adds only its back-off, and a server that answers (5xx, throttling) is left
  to botocore's retry mode and ``max_attempts``.

``max_bandwidth`` is not configured here: :func:`cryophile.vault.factory.open_vault`
wraps this vault in :class:`~cryophile.vault.throttle.ThrottledVault`, as any other,
which hands it the cap's callback (:meth:`S3Vault.pace_with`): each part of an
upload and each 1 MiB of a download waits for its turn.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import email.utils
import hashlib
import io
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, cast

import boto3
import botocore.config
import botocore.exceptions

from cryophile.config import VaultConfig
from cryophile.errors import (
    AlreadyExistsError,
    ConfigError,
    CryophileError,
    DataError,
    NoInputError,
    ServiceError,
    ServiceRefusalError,
    StorageIOError,
    TryLaterError,
    UsageError,
    VaultUnavailableError,
)
from cryophile.services import DEFAULT_SERVICE, Checksum, suggest_service
from cryophile.storage_classes import COLD_STORAGE_CLASSES
from cryophile.vault.base import (
    ObjectInfo,
    RestoreState,
    check_key,
    check_prefix,
    check_restore_args,
    check_sha256,
    check_storage_class,
)

logger = logging.getLogger(__name__)

MiB = 1 << 20
#: Files at least this big are uploaded in parts.
DEFAULT_MULTIPART_THRESHOLD = 64 * MiB
DEFAULT_PART_SIZE = 16 * MiB
#: S3's limits for multipart uploads (a service may allow fewer parts: its
#: ``max_parts``).
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 << 30
#: Our own limit on a part: a part that fails is sent again whole, so on a flaky
#: link bigger parts waste more; a fragment needing bigger parts to fit within
#: ``max_parts`` is refused (ConfigError naming max_parts and -s). (Parts are read
#: from the spool file as they are sent: their size costs no memory.)
MAX_CRYOPHILE_PART_SIZE = 64 * MiB
MAX_PARTS = 10_000
#: Uploads of intact data that the server refuses for a checksum mismatch, and
#: downloads whose body breaks off (both damaged on the wire), are tried this
#: many times in all before a transient error.
TRANSIT_ATTEMPTS = 3
#: User metadata key holding the content's hex SHA-256 (x-amz-meta-sha256).
SHA256_METADATA = "sha256"

_READ_BLOCK = 1 << 20

RetryMode = Literal["standard", "adaptive", "legacy"]
#: The part list of CompleteMultipartUpload. An alias at module level because
#: inside the class ``list`` is the Vault method.
_Parts = list[dict[str, Any]]

# Error codes, grouped by what the caller should do about them.
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_BAD_DATA_CODES = frozenset(
    {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum"}
)
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
    }
)
_ACCESS_CODES = frozenset(
    {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"}
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "OperationAborted",
    }
)
_NOT_IMPLEMENTED_CODES = frozenset({"NotImplemented", "MethodNotAllowed"})
#: What GetObjectRetention answers for an object (or bucket) without retention.
_NO_RETENTION_CODES = frozenset(
    {"NoSuchObjectLockConfiguration", "ObjectLockConfigurationNotFoundError",
     "InvalidRequest", "NoSuchKey", "404", "NotFound"}
)
#: A request header named in a refusal's message ("Unsupported header 'x-amz-…'",
#: "Header 'x-amz-storage-class' with value 'GLACIER' not implemented").
_HEADER_IN_MESSAGE = re.compile(r"(x-amz-[a-z0-9-]+|content-md5|if-none-match)", re.IGNORECASE)
#: The actions (error message prefixes) of requests that carry an upload's headers.
_UPLOAD_ACTIONS = ("upload", "start multipart upload of", "complete multipart upload of")
#: Words of a refusal that no retry can cure (with 400/501).
_REFUSAL_WORDS = re.compile(r"unsupported|not implemented|not supported|notimplemented",
                            re.IGNORECASE)

#: Keys in botocore's request context (one dict shared by all tries of a
#: request): when the current try began, when the last one failed, and the
#: seconds waited so far (see the module docstring).
_TRY_STARTED = "cryophile_try_started"
_FAILED_AT = "cryophile_failed_at"
_WAITED = "cryophile_waited"

_RESTORE_ONGOING = re.compile(r'ongoing-request\s*=\s*"(true|false)"', re.IGNORECASE)
_RESTORE_EXPIRY = re.compile(r'expiry-date\s*=\s*"([^"]+)"', re.IGNORECASE)
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def part_size_for(config: VaultConfig, size: int, what: str,
                  part_size: int = DEFAULT_PART_SIZE) -> int:
    """The part size of a multipart upload of ``size`` bytes (``what``, for the message)
    to the vault ``config``: ``part_size``, raised to stay within the service's
    ``max_parts``, in whole MiB.

    Raises ConfigError (78) when that is above :data:`MAX_CRYOPHILE_PART_SIZE`:
    ``backup`` checks its fragment size so before it reads any input, and the upload
    again for what was queued before the configuration changed.
    """
    part_size = max(part_size, -(-size // config.max_parts))
    part_size = -(-part_size // MiB) * MiB
    if part_size > MAX_CRYOPHILE_PART_SIZE:
        raise ConfigError(
            f"vault {config.id}: {what} needs parts of {part_size // MiB} MiB with "
            f"max_parts = {config.max_parts}, above cryophile's limit of "
            f"{MAX_CRYOPHILE_PART_SIZE // MiB} MiB per part (a part that fails is sent "
            "again whole); raise max_parts in the vault's [[vault]] entry, or make "
            f"smaller fragments (backup -s at most "
            f"{config.max_parts * MAX_CRYOPHILE_PART_SIZE // MiB}M)")
    return part_size


class S3Vault:
    """A :class:`~cryophile.vault.base.Vault` in one S3 bucket.

    ``config`` gives bucket, endpoint, region, profile and object lock.
    Credentials come from the standard AWS chain of ``session`` (default: a
    new ``boto3.Session`` for the configured profile); tests pass a session
    with explicit keys. The remaining parameters tune transfers: files of at
    least ``multipart_threshold`` bytes go up in ``part_size`` parts (≥ 5 MiB,
    raised as needed to stay within 10 000 parts), ``max_concurrency`` parts at
    a time; ``retry_mode``, ``max_attempts`` (tries in all) and the two timeouts
    (default: the vault's configured values) go to botocore.
    """

    def __init__(
        self,
        config: VaultConfig,
        *,
        session: boto3.Session | None = None,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = 4,
        retry_mode: RetryMode = "standard",
        max_attempts: int | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> None:
        if config.provider != "s3" or not config.bucket:
            raise ConfigError(f"vault {config.id}: not an S3 vault with a bucket")
        if part_size < MIN_PART_SIZE:
            raise UsageError(f"part size {part_size} is below S3's minimum of {MIN_PART_SIZE}")
        if multipart_threshold < 1 or max_concurrency < 1:
            raise UsageError("multipart threshold and concurrency must be at least 1")
        if retry_mode not in ("standard", "adaptive", "legacy"):
            raise UsageError(f"unknown botocore retry mode {retry_mode!r}")
        self.config = config
        self.service = config.profile_of_service
        if not 1 <= config.max_parts <= MAX_PARTS:
            raise UsageError(f"max_parts {config.max_parts} is not from 1 to {MAX_PARTS}")
        #: ChecksumMode (on HeadObject; never on a download) only where
        #: full-object checksums come back right and were sent in the first place.
        self._checksum_mode = (self.service.response_checksums
                               and config.checksum is Checksum.SHA256)
        self.bucket: str = config.bucket
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        if session is None:
            try:
                session = boto3.Session(profile_name=config.profile, region_name=config.region)
            except botocore.exceptions.ProfileNotFound:
                raise ConfigError(
                    f"vault {config.id}: AWS profile {config.profile!r} not found"
                ) from None
        self._max_attempts = config.max_attempts if max_attempts is None else max_attempts
        self._connect_timeout = (config.connect_timeout if connect_timeout is None
                                 else connect_timeout)
        self._read_timeout = config.read_timeout if read_timeout is None else read_timeout
        if self._max_attempts < 1 or self._connect_timeout <= 0 or self._read_timeout <= 0:
            raise UsageError("max_attempts must be at least 1 and the timeouts above 0")
        #: Waiting (see the module docstring) after which a request that got no
        #: answer is not tried again.
        self._patience = self._connect_timeout + self._read_timeout
        client_config = botocore.config.Config(
            # total_max_attempts counts the first try; botocore's max_attempts
            # would count retries only (one try more than configured).
            retries={"mode": retry_mode, "total_max_attempts": self._max_attempts},
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            # Several uploads in parallel, each with several parts in flight.
            max_pool_connections=max(10, 4 * max_concurrency),
            # Nothing behind our back: botocore ≥ 1.36 would add a CRC32 to every
            # request that may carry one (RestoreObject too) and ask for response
            # checksums, headers several services refuse. We send what the
            # vault's ``checksum`` says and verify downloads ourselves.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = session.client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            config=client_config,
        )
        # botocore retries quietly; an operator wants to see a flaky link. And
        # it would try a silent server max_attempts times: keep the account.
        self._client.meta.events.register_first("request-created.s3", self._start_try)
        self._client.meta.events.register_first("needs-retry.s3", self._after_try)
        # An upload that carries the checksum its service verifies is not hashed a
        # second time to sign it (see _sign_headers_only); an explicit
        # payload_signing_enabled in the AWS config file is left as it is.
        self._verified_header = {Checksum.SHA256: "x-amz-checksum-sha256",
                                 Checksum.MD5: "Content-MD5"}.get(config.checksum)
        effective = self._client.meta.config
        s3_settings: Any = dict(getattr(effective, "s3", None) or {})
        if (self._verified_header is not None and config.checksum is self.service.checksum
                and s3_settings.get("payload_signing_enabled") is None):
            s3_settings["payload_signing_enabled"] = False
            self._checksum_only = effective.merge(botocore.config.Config(s3=s3_settings))
            for operation in ("PutObject", "UploadPart"):
                self._client.meta.events.register(f"before-sign.s3.{operation}",
                                                  self._sign_headers_only)
        # Learned from the server, once: flags only ever flip one way, so the
        # races between threads setting them are harmless.
        self._bucket_seen = False
        self._conditional_writes = True
        self._restore_unsupported_logged = False
        self._abort_refusal_logged = False
        self._lock_read_back = False
        self._lock = threading.Lock()
        #: The bandwidth cap's callback (see :meth:`pace_with`); None: no cap.
        self._pace: Callable[[int], None] | None = None

    def __repr__(self) -> str:
        where = f" at {self.config.endpoint_url}" if self.config.endpoint_url else ""
        return f"S3Vault(s3://{self.bucket}{where})"

    def _sign_headers_only(self, request: Any = None, **_: Any) -> None:
        """Sign an upload's headers, not its body, when a header carries the body's checksum.

        Registered only when the vault's ``checksum`` is the one its service's
        profile names (the one that service verifies). Over plain HTTP
        botocore hashes every body for the signature (x-amz-content-sha256); a
        body whose SHA-256 or MD5 is already in a header (signed, and checked
        by the server against the bytes it receives) then costs one more pass
        for nothing: 0.2 CPU-seconds per 0.4 GB. UNSIGNED-PAYLOAD is what
        botocore sends over HTTPS anyway for such an upload. Without that
        header (``checksum = "none"``, or a checksum the service may accept
        without checking) the signature stays the body's check.
        """
        if request is not None and self._verified_header in request.headers:
            request.context["client_config"] = self._checksum_only

    def _start_try(self, request: Any = None, **_: Any) -> None:
        """``request-created``: a try begins. The time since the previous try
        failed was botocore's back-off: waiting (see the module docstring)."""
        context = getattr(request, "context", None)
        if isinstance(context, dict):
            now = time.monotonic()
            if _FAILED_AT in context:
                context[_WAITED] = context.get(_WAITED, 0.0) + now - context.pop(_FAILED_AT)
            context[_TRY_STARTED] = now

    def _after_try(self, response: Any = None, attempts: int = 0,
                   caught_exception: Exception | None = None, operation: Any = None,
                   request_dict: Any = None, **_: Any) -> None:
        """``needs-retry``, ahead of botocore's own handler: log a try that failed
        in a way botocore may retry, and end a request that got no answer once
        its waiting reaches ``connect_timeout + read_timeout``. Otherwise decide
        nothing: botocore's retry mode does."""
        name = getattr(operation, "name", "request")
        if caught_exception is None:
            status = response[0].status_code if response else 0
            if (status < 500 and status != 429) or status == 501:
                return  # 501 Not Implemented: permanent, botocore does not retry it
            code = (response[1].get("Error", {}) or {}).get("Code", "") if response else ""
            self._log_try(name, attempts, f"HTTP {status} {code}".strip())
            return
        reason = f"{type(caught_exception).__name__}: {caught_exception}"
        context = request_dict.get("context") if isinstance(request_dict, dict) else None
        if isinstance(context, dict) and attempts < self._max_attempts:
            now = time.monotonic()
            waited = context.get(_WAITED, 0.0) + self._silence(
                caught_exception, now - context.get(_TRY_STARTED, now))
            context[_WAITED] = waited
            context[_FAILED_AT] = now
            if waited >= self._patience:
                logger.warning("s3://%s %s attempt %d failed (%s); no answer for %.0f s in all "
                               "(connect_timeout + read_timeout = %g s): giving up",
                               self.bucket, name, attempts, reason, waited, self._patience,
                               extra={"event": "retry", "operation": name,
                                      "attempt": attempts})
                # Raised, as botocore raises it when it gives up. (Returning
                # False would stop the retry too, but botocore's handler would
                # still run and spend its retry quota on a retry never made.)
                raise caught_exception
        self._log_try(name, attempts, reason)

    def _silence(self, exc: Exception, took: float) -> float:
        """The seconds a try that failed with ``exc`` after ``took`` s spent in
        silence: the timeout that ran out, the whole try when it never connected
        (refused, no name, a connect timeout), none when the server cut it off."""
        if isinstance(exc, botocore.exceptions.ReadTimeoutError):
            return self._read_timeout
        if _stalled_send(exc):
            return self._connect_timeout
        if isinstance(exc, botocore.exceptions.ConnectionError):
            return took
        return 0.0

    def _log_try(self, name: str, attempts: int, reason: str) -> None:
        if attempts >= self._max_attempts:
            logger.warning("s3://%s %s attempt %d of %d failed (%s); that was the last "
                           "(max_attempts = %d): giving up", self.bucket, name, attempts,
                           self._max_attempts, reason, self._max_attempts,
                           extra={"event": "retry", "operation": name, "attempt": attempts})
            return
        logger.warning("s3://%s %s attempt %d of %d failed (%s); trying again after a "
                       "back-off", self.bucket, name, attempts, self._max_attempts, reason,
                       extra={"event": "retry", "operation": name, "attempt": attempts})

    def pace_with(self, pace: Callable[[int], None]) -> None:
        """The bandwidth cap (:class:`cryophile.vault.throttle.Paceable`): ``pace(n)``
        is called before each part of a multipart upload goes, before a single-part
        upload goes (its whole size: below the multipart threshold), and after each
        1 MiB block of a download arrives (so the server is not read faster). An
        object already stored costs nothing."""
        self._pace = pace

    # -- the Vault contract (see cryophile.vault.base.Vault) -----------------

    def put(self, key: str, source: Path, *, sha256: str, storage_class: str) -> None:
        """See :meth:`cryophile.vault.base.Vault.put`."""
        check_key(key)
        sha256 = check_sha256(sha256)
        check_storage_class(storage_class)
        size = _file_size(source)
        existing = self._stat(key, "upload")
        if existing is not None:
            self._same_or_refuse(key, existing, size, sha256)
        elif size >= self.multipart_threshold:
            self._put_multipart(key, source, size, sha256, storage_class)
        else:
            self._put_single(key, source, size, sha256, storage_class)
        self._read_back_lock(key)
        logger.debug("stored %s (%d bytes, %s) in %r", key, size, storage_class, self)

    def stat(self, key: str) -> ObjectInfo | None:
        """See :meth:`cryophile.vault.base.Vault.stat`."""
        return self._stat(key, "stat")

    def _stat(self, key: str, action: str) -> ObjectInfo | None:
        check_key(key)
        try:
            head = self._head(key, action)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING_KEY_CODES:
                # HEAD has no body, so a missing bucket also looks like a
                # plain 404: tell the two apart once.
                self._check_bucket(action, key)
                return None
            raise self._error(exc, action, key) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, action, key) from exc
        storage_class = head.get("StorageClass") or "STANDARD"
        state, expiry = _restore_state(
            head.get("Restore"), storage_class, head.get("ArchiveStatus")
        )
        return ObjectInfo(
            size=head["ContentLength"],
            sha256=_content_sha256(head),
            storage_class=storage_class,
            restore_state=state,
            restore_expiry=expiry,
            modified=head.get("LastModified"),
        )

    def _head(self, key: str, action: str) -> dict[str, Any]:
        """HeadObject, with ChecksumMode where the service returns checksums right.

        A HEAD answer has no body, so a service that refuses the
        ``x-amz-checksum-mode`` header (B2, GCS) answers a bare 400: asked again
        without it, an answer proves the header was the trouble, a permanent
        refusal naming ``checksum``.
        """
        if not self._checksum_mode:
            return dict(self._client.head_object(Bucket=self.bucket, Key=key))
        try:
            return dict(self._client.head_object(Bucket=self.bucket, Key=key,
                                                 ChecksumMode="ENABLED"))
        except botocore.exceptions.ClientError as exc:
            if _status(exc) != 400:
                raise
            try:
                self._client.head_object(Bucket=self.bucket, Key=key)
            except botocore.exceptions.ClientError as plain:
                if _code(plain) not in _MISSING_KEY_CODES:
                    raise exc from None
            except botocore.exceptions.BotoCoreError:
                raise exc from None
            raise self._refused(
                "checksum", action, key,
                "400 Bad Request to HeadObject with x-amz-checksum-mode, an answer without it"
            ) from None

    def request_restore(self, key: str, *, days: int, tier: str) -> RestoreState:
        """See :meth:`cryophile.vault.base.Vault.request_restore`.

        A service without RestoreObject (its profile says so) is not asked:
        its objects are readable as they are.
        """
        check_key(key)
        check_restore_args(days, tier)
        if not self.service.restore:
            found = self.stat(key)
            if found is None:
                raise NoInputError(f"no object {self._where(key)}")
            self._note_no_restore("the service has none")
            if found.restore_state is RestoreState.COLD:
                return RestoreState.NOT_NEEDED
            return found.restore_state
        restore_request: dict[str, Any] = {"Days": days,
                                           "GlacierJobParameters": {"Tier": tier}}
        info = self.stat(key)
        if info is not None and info.storage_class == "INTELLIGENT_TIERING":
            # Intelligent-Tiering archive tiers move the object back to a
            # frequent tier: AWS refuses a Days value for them.
            del restore_request["Days"]
        try:
            request: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": key,
                "RestoreRequest": restore_request,
            }
            response = self._client.restore_object(**request)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code == "RestoreAlreadyInProgress":
                return RestoreState.RESTORING
            if code == "ObjectAlreadyInActiveTierError":
                return RestoreState.NOT_NEEDED
            if code in _MISSING_KEY_CODES:
                raise NoInputError(f"no object {self._where(key)}") from None
            if (
                code == "InvalidObjectState"
                or code in _NOT_IMPLEMENTED_CODES
                or _status(exc) in (405, 501)
            ):
                return self._restore_refused(key, code)
            raise self._error(exc, "request restore of", key) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, "request restore of", key) from exc
        if response["ResponseMetadata"]["HTTPStatusCode"] == 202:
            logger.info("restore of %s started (%s, %d days)", self._where(key), tier, days)
            return RestoreState.RESTORING
        # 200: a restored copy already exists (AWS extends its expiry). Ask
        # the object rather than trust it: moto also answers 200 mid-restore.
        info = self.stat(key)
        if info is not None and info.restore_state is RestoreState.RESTORING:
            return RestoreState.RESTORING
        return RestoreState.RESTORED

    def get(self, key: str, dest: Path) -> None:
        """See :meth:`cryophile.vault.base.Vault.get`.

        A body that breaks off while it streams (short read, connection lost) is
        fetched again, ``TRANSIT_ATTEMPTS`` times in all: botocore retries the
        request but not the reading of its body, and one flaky transfer must not
        fail a restore. Checksums still decide what is accepted.
        """
        check_key(key)
        attempt = 1
        while True:
            try:
                self._get_once(key, dest)
                return
            except _BrokenBodyError as broken:
                if attempt >= TRANSIT_ATTEMPTS:
                    raise
                logger.warning("%s; retrying (attempt %d of %d)", broken, attempt + 1,
                               TRANSIT_ATTEMPTS, extra={"event": "retry",
                                                        "operation": "GetObject",
                                                        "attempt": attempt})
                attempt += 1

    def _get_once(self, key: str, dest: Path) -> None:
        try:
            # Never ChecksumMode on GET: botocore would check the body against
            # whatever checksum the service returns, and one that returns a
            # multipart object's composite checksum without its "-N" (Garage)
            # turns an intact download into a checksum mismatch. The body is
            # hashed below against the SHA-256 we stored (and the restore
            # checks it against the manifest), which is all the check there is
            # to make.
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) == "InvalidObjectState":
                raise TryLaterError(
                    f"{self._where(key)} is in cold storage and not restored yet"
                ) from None
            if _code(exc) in _MISSING_KEY_CODES:
                raise NoInputError(f"no object {self._where(key)}") from None
            raise self._error(exc, "download", key) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, "download", key) from exc
        expected = _content_sha256(response)
        try:
            digest = self._download(response["Body"], dest, key)
            if expected is not None and digest != expected:
                raise _damaged(self._where(key), digest, expected)  # noqa: TRY301
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            raise

    def _download(self, body: Any, dest: Path, key: str) -> str:
        """Stream ``body`` into ``dest`` (fsynced); return its hex SHA-256."""
        digest = hashlib.sha256()
        try:
            # O_NOFOLLOW: a symlink at ``dest`` must not redirect the download.
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as writer:
                for chunk in body.iter_chunks(_READ_BLOCK):
                    digest.update(chunk)
                    writer.write(chunk)
                    if self._pace is not None:
                        self._pace(len(chunk))
                writer.flush()
                os.fsync(writer.fileno())
        except _BODY_BREAKS as exc:
            raise _BrokenBodyError(f"download {self._where(key)}: the transfer broke off: "
                                   f"{exc}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, "download", key) from exc
        except OSError as exc:
            raise StorageIOError(f"cannot write {dest}: {exc}") from exc
        finally:
            body.close()
        return digest.hexdigest()

    def list(self, prefix: str) -> Iterator[str]:
        """See :meth:`cryophile.vault.base.Vault.list`."""
        check_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for entry in page.get("Contents", []):
                    yield entry["Key"]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error(exc, "list", prefix or None) from exc

    def delete(self, key: str) -> None:
        """See :meth:`cryophile.vault.base.Vault.delete`."""
        check_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING_KEY_CODES:
                return
            raise self._error(exc, "delete", key) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, "delete", key) from exc

    def abort_incomplete_uploads(self, key: str) -> int:
        """See :meth:`cryophile.vault.base.Vault.abort_incomplete_uploads`.

        ListMultipartUploads with ``key`` as prefix, then AbortMultipartUpload
        for each upload of exactly ``key``. A server that refuses to list them
        (a policy without s3:ListBucketMultipartUploads, or no such operation)
        is warned about once and counts as none: backups must not stop for it.
        """
        check_key(key)
        paginator = self._client.get_paginator("list_multipart_uploads")
        aborted = 0
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=key):
                for upload in page.get("Uploads", []):
                    if upload.get("Key") == key:
                        aborted += self._abort_upload(key, upload["UploadId"])
        except botocore.exceptions.ClientError as exc:
            if (_code(exc) in _ACCESS_CODES | _NOT_IMPLEMENTED_CODES
                    or _status(exc) in (405, 501)):
                self._cannot_abort(key, exc)
                return aborted
            raise self._error(exc, "abort incomplete uploads of", key) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, "abort incomplete uploads of", key) from exc
        if aborted:
            logger.debug("aborted %d incomplete upload(s) of %s", aborted, self._where(key))
        return aborted

    def _abort_upload(self, key: str, upload_id: str) -> int:
        """Abort one listed upload: 1, or 0 if it ended in the meantime."""
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) == "NoSuchUpload":
                return 0
            raise
        return 1

    def _cannot_abort(self, key: str, exc: botocore.exceptions.ClientError) -> None:
        with self._lock:
            if self._abort_refusal_logged:
                return
            self._abort_refusal_logged = True
        logger.warning("%r refuses to list or abort incomplete uploads (%s, for %s); "
                       "their parts stay until a lifecycle rule (AbortIncompleteMultipartUpload) "
                       "removes them", self, _code(exc) or _status(exc), key)

    # -- uploads ---------------------------------------------------------------

    def _object_args(self, sha256: str, storage_class: str) -> dict[str, Any]:
        """Arguments shared by PutObject and CreateMultipartUpload."""
        args: dict[str, Any] = {
            "StorageClass": storage_class,
            "Metadata": {SHA256_METADATA: sha256},
        }
        if self.config.object_lock_mode is not None and self.config.object_lock_days:
            args["ObjectLockMode"] = self.config.object_lock_mode
            args["ObjectLockRetainUntilDate"] = datetime.now(UTC) + timedelta(
                days=self.config.object_lock_days
            )
        return args

    def _put_single(
        self, key: str, source: Path, size: int, sha256: str, storage_class: str
    ) -> None:
        args = self._object_args(sha256, storage_class)
        args.update(Bucket=self.bucket, Key=key, ContentLength=size)
        # One rule for every checksum setting, as for multipart (which hashes
        # while it reads): the file must still hash to ``sha256`` before any
        # byte goes, since the x-amz-meta-sha256 we store is what freeze
        # confirms before it deletes the local copy. With sha256 the server
        # checks it too; with none nobody else would.
        md5 = _md5_of_file(source, sha256, self._where(key))
        if self._pace is not None:
            self._pace(size)
        if self.config.checksum is Checksum.SHA256:
            args["ChecksumSHA256"] = _b64_of_hex(sha256)
        elif self.config.checksum is Checksum.MD5:
            args["ContentMD5"] = md5
        refused = 0
        probing = False
        while True:
            conditional = self._conditional_writes and not probing
            if conditional:
                args["IfNoneMatch"] = "*"
            else:
                args.pop("IfNoneMatch", None)
            try:
                with _open_source(source) as body:
                    self._client.put_object(Body=body, **args)
                if probing:
                    self._no_conditional_writes()
                return
            except botocore.exceptions.ClientError as exc:
                if conditional and _not_implemented(exc):
                    probing = True  # If-None-Match, or something else: ask without it
                    continue
                if _is_write_conflict(exc):
                    existing = self.stat(key)
                    if existing is not None:
                        self._same_or_refuse(key, existing, size, sha256)
                        return
                    if _status(exc) == 412:
                        if conditional:
                            probing = True  # 412 for a key that does not exist
                            continue
                        raise self._precondition_refused(exc, "PutObject", "upload",
                                                         key) from exc
                    raise VaultUnavailableError(
                        f"upload {self._where(key)}: conflicting concurrent write; try again"
                    ) from exc
                if _code(exc) in _BAD_DATA_CODES and _file_matches(source, sha256):
                    # The file is intact, so the bytes were damaged on the way:
                    # a network fault (transient), not damaged queued data.
                    refused += 1
                    self._refused_in_transit(exc, "upload", key, refused)
                    continue
                raise self._error(exc, "upload", key) from exc
            except botocore.exceptions.BotoCoreError as exc:
                raise self._error(exc, "upload", key) from exc

    def _put_multipart(
        self, key: str, source: Path, size: int, sha256: str, storage_class: str
    ) -> None:
        part_size = part_size_for(self.config, size, f"{source} ({size} bytes)",
                                  self.part_size)
        checksum_args: dict[str, Any] = ({"ChecksumAlgorithm": "SHA256"}
                         if self.config.checksum is Checksum.SHA256 else {})
        try:
            created = self._client.create_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                **checksum_args,
                **self._object_args(sha256, storage_class),
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error(exc, "start multipart upload of", key) from exc
        upload_id = created["UploadId"]
        completed = False
        try:
            parts, digest = self._upload_parts(key, source, upload_id, part_size)
            if digest != sha256:
                raise DataError(
                    f"{source}: SHA-256 is {digest}, expected {sha256}; "
                    f"not stored as {self._where(key)}"
                )
            completed = self._complete(key, upload_id, parts, size, sha256)
        finally:
            if not completed:
                self._abort(key, upload_id)

    def _upload_parts(
        self, key: str, source: Path, upload_id: str, part_size: int
    ) -> tuple[_Parts, str]:
        """Upload ``source`` in parts, ``max_concurrency`` at a time; return
        the part list for CompleteMultipartUpload and the file's hex SHA-256.

        This thread reads the file once, in order, for the whole file's SHA-256
        and each part's checksum; a part's body is then read from the file as it
        is sent (:class:`_FilePart`), never held in memory: with several uploads
        at once, whole parts in memory cost more than the backup itself."""
        whole = hashlib.sha256()
        parts: _Parts = []
        pending: collections.deque[concurrent.futures.Future[dict[str, Any]]] = collections.deque()
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.max_concurrency, thread_name_prefix="s3-part"
        )
        buffer = bytearray(MiB)
        view = memoryview(buffer)
        try:
            with _open_source(source) as reader:
                fd = reader.fileno()
                number = offset = 0
                while True:
                    part_hash = (hashlib.sha256() if self.config.checksum is Checksum.SHA256
                                 else hashlib.md5(usedforsecurity=False)
                                 if self.config.checksum is Checksum.MD5 else None)
                    length = 0
                    while length < part_size:
                        count = os.readv(fd, [view[:min(MiB, part_size - length)]])
                        if not count:
                            break
                        whole.update(view[:count])
                        if part_hash is not None:
                            part_hash.update(view[:count])
                        length += count
                    if not length and number > 0:
                        break
                    number += 1
                    integrity = _part_integrity(self.config.checksum, part_hash)
                    pending.append(pool.submit(self._upload_part, key, upload_id, number,
                                               _FilePart(fd, offset, length), integrity))
                    offset += length
                    # Bounded read-ahead: the parts in flight hold the file open only.
                    if len(pending) >= self.max_concurrency:
                        parts.append(pending.popleft().result())
                    if length < part_size:
                        break
                while pending:
                    parts.append(pending.popleft().result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return parts, whole.hexdigest()

    def _upload_part(self, key: str, upload_id: str, number: int, body: _FilePart,
                     integrity: dict[str, Any]) -> dict[str, Any]:
        if self._pace is not None:
            self._pace(len(body))
        refused = 0
        while True:
            body.seek(0)
            try:
                response = self._client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=cast("IO[bytes]", body),
                    ContentLength=len(body),
                    **integrity,
                )
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in _BAD_DATA_CODES:
                    # The checksum was computed from these very bytes of a spool
                    # file, which is never written again: a refusal means they
                    # were damaged on the way.
                    refused += 1
                    self._refused_in_transit(exc, f"upload part {number} of", key, refused)
                    continue
                raise self._error(exc, f"upload part {number} of", key) from exc
            except botocore.exceptions.BotoCoreError as exc:
                raise self._error(exc, f"upload part {number} of", key) from exc
            part = {"PartNumber": number, "ETag": response["ETag"]}
            if "ChecksumSHA256" in integrity:
                part["ChecksumSHA256"] = integrity["ChecksumSHA256"]
            return part

    def _refused_in_transit(self, exc: botocore.exceptions.ClientError, action: str, key: str,
                            refused: int) -> None:
        """The server refused intact bytes for their checksum (``refused`` times so far):
        return to send them again, or raise a transient error after
        ``TRANSIT_ATTEMPTS`` refusals. botocore does not retry a 400, and
        reporting damaged data (exit 65) would send a person after a network fault."""
        message = exc.response.get("Error", {}).get("Message", "") or _code(exc)
        if refused >= TRANSIT_ATTEMPTS:
            raise VaultUnavailableError(
                f"{action} {self._where(key)}: the server refused the data {refused} times "
                f"although it is intact here (damaged in transit?): {message}"
            ) from exc
        logger.warning("%s %s: the server refused the data (%s) although it is intact here: "
                       "damaged in transit; retrying (attempt %d of %d)", action,
                       self._where(key), message, refused + 1, TRANSIT_ATTEMPTS,
                       extra={"event": "retry", "operation": action, "attempt": refused})

    def _complete(self, key: str, upload_id: str, parts: _Parts, size: int, sha256: str) -> bool:
        """Complete the upload; return False if it must still be aborted (an
        identical object won the race)."""
        probing = False
        while True:
            conditional = self._conditional_writes and not probing
            request: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": key,
                "UploadId": upload_id,
                "MultipartUpload": {"Parts": parts},
            }
            if conditional:
                request["IfNoneMatch"] = "*"
            try:
                self._client.complete_multipart_upload(**request)
                if probing:
                    self._no_conditional_writes()
                return True
            except botocore.exceptions.ClientError as exc:
                if conditional and _not_implemented(exc):
                    probing = True
                    continue
                if _is_write_conflict(exc):
                    existing = self.stat(key)
                    if existing is not None:
                        self._same_or_refuse(key, existing, size, sha256)
                        return False
                    if _status(exc) == 412:
                        if conditional:
                            probing = True  # 412 for a key that does not exist
                            continue
                        raise self._precondition_refused(
                            exc, "CompleteMultipartUpload", "complete multipart upload of",
                            key) from exc
                    raise VaultUnavailableError(
                        f"upload {self._where(key)}: conflicting concurrent write; try again"
                    ) from exc
                raise self._error(exc, "complete multipart upload of", key) from exc
            except botocore.exceptions.BotoCoreError as exc:
                raise self._error(exc, "complete multipart upload of", key) from exc

    def _precondition_refused(self, exc: botocore.exceptions.ClientError, operation: str,
                              action: str, key: str) -> ServiceRefusalError:
        """412 on ``operation`` (PutObject, CompleteMultipartUpload) for a key that
        does not exist, with and without If-None-Match: no precondition failed, the
        service refuses what the request carries; retrying cannot change that."""
        detail = (f"412 {_code(exc)} to {operation} for a key that does not "
                  "exist, also without If-None-Match")
        if self.config.checksum is Checksum.SHA256:
            # Google Cloud Storage answers so to checksums it does not take.
            return self._refused("checksum", action, key,
                                 detail + " (services without x-amz-checksum-* do this)")
        return self._refused("service", action, key, detail)

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            # Not fatal: the parts only cost storage until a lifecycle rule
            # (AbortIncompleteMultipartUpload) removes them.
            logger.warning("could not abort multipart upload of %s: %s", self._where(key), exc)

    def _no_conditional_writes(self) -> None:
        """A request refused with If-None-Match went through without it: the
        server has no conditional writes (remember it)."""
        with self._lock:
            if self._conditional_writes:
                logger.info(
                    "%r does not support conditional writes (If-None-Match); "
                    "relying on a check before each upload",
                    self,
                )
            self._conditional_writes = False

    def _same_or_refuse(self, key: str, existing: ObjectInfo, size: int, sha256: str) -> None:
        if existing.size == size and existing.sha256 == sha256:
            logger.debug("%s already stored with the same content", self._where(key))
            return
        if existing.sha256 is None:
            detail = f"size {existing.size}, SHA-256 unknown"
        else:
            detail = f"size {existing.size}, SHA-256 {existing.sha256}"
        raise AlreadyExistsError(
            f"{self._where(key)} already exists with different content ({detail}); not overwritten"
        )

    # -- object lock -------------------------------------------------------------

    def _read_back_lock(self, key: str) -> None:
        """Once per vault object, after the first locked upload: read ``key``'s
        retention back; ServiceRefusalError if the service did not apply it."""
        mode = self.config.object_lock_mode
        if mode is None or self._lock_read_back:
            return
        try:
            answer = self._client.get_object_retention(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if (code in _NO_RETENTION_CODES or code in _NOT_IMPLEMENTED_CODES
                    or _status(exc) in (400, 404, 405, 501)):
                message = exc.response.get("Error", {}).get("Message", "") or code
                raise self._lock_not_applied(
                    key, f"reading its retention back: {_status(exc)} {code}: {message}"
                ) from None
            if code in _ACCESS_CODES:
                # The upload went; whether it is locked cannot be told without this.
                raise ServiceError(
                    f"read the object lock retention of {self._where(key)}: access denied"
                    f"{self._profile_hint()} ({code}): with object_lock_mode the credentials "
                    "need s3:GetObjectRetention on the bucket's objects, to confirm the lock "
                    "was applied; add it to the policy (the fragment stays queued)") from None
            raise self._error(exc, "read the object lock retention of", key) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, "read the object lock retention of", key) from exc
        retention = answer.get("Retention") or {}
        found_mode = retention.get("Mode")
        until = retention.get("RetainUntilDate")
        if found_mode != mode or not isinstance(until, datetime) or until <= datetime.now(UTC):
            raise self._lock_not_applied(
                key, f"its retention reads back as mode {found_mode or 'none'}, "
                     f"until {until or 'never'}")
        with self._lock:
            self._lock_read_back = True
        logger.info("object lock confirmed on %s: %s until %s", self._where(key), found_mode,
                    until)

    def _lock_not_applied(self, key: str, detail: str) -> ServiceRefusalError:
        config = self.config
        return ServiceRefusalError(
            f"vault {config.id} ({self.service.title}, service = {config.service!r}): object "
            f"lock was asked for (object_lock_mode = {config.object_lock_mode!r}, "
            f"object_lock_days = {config.object_lock_days}) but {self._where(key)} was "
            f"stored without it ({detail}): the backups are NOT protected against deletion. "
            "Create the bucket with object lock enabled, or, if the service ignores object "
            "lock (Garage does), remove object_lock_mode and object_lock_days from the "
            "vault's entry and protect the bucket otherwise")

    # -- restore -----------------------------------------------------------------

    def _restore_refused(self, key: str, code: str) -> RestoreState:
        """RestoreObject said no: decide from the object why."""
        info = self.stat(key)
        if info is None:
            raise NoInputError(f"no object {self._where(key)}")
        if code == "InvalidObjectState":
            # AWS answers ObjectAlreadyInActiveTierError, moto this, for an
            # object whose class needs no restore.
            if info.restore_state is RestoreState.COLD:
                raise ServiceError(
                    f"request restore of {self._where(key)}: refused (InvalidObjectState)"
                )
            return info.restore_state
        # A server without cold storage (SeaweedFS: 405): every object is
        # readable, whatever class name it stores.
        self._note_no_restore(code)
        return RestoreState.NOT_NEEDED

    def _note_no_restore(self, why: str) -> None:
        with self._lock:
            if not self._restore_unsupported_logged:
                logger.info("%r has no RestoreObject (%s); objects are readable as is", self, why)
            self._restore_unsupported_logged = True

    # -- errors --------------------------------------------------------------------

    def _check_bucket(self, action: str, key: str) -> None:
        if self._bucket_seen:
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise self._missing_bucket(action, key) from None
            if code in _ACCESS_CODES:
                return  # May lack s3:ListBucket; the object calls will tell.
            raise self._error(exc, action, key) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, action, key) from exc
        self._bucket_seen = True

    def _missing_bucket(self, action: str, key: str | None) -> ServiceError:
        endpoint = self.config.endpoint_url or "AWS"
        return ServiceError(
            f"vault {self.config.id}: bucket {self.bucket!r} does not exist at {endpoint} "
            f"({action} {self._where(key)})"
        )

    def _where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    def _error(self, exc: Exception, action: str, key: str | None) -> CryophileError:
        """Map a botocore exception onto the cryophile error tree."""
        where = self._where(key)
        if isinstance(exc, botocore.exceptions.ClientError):
            code = _code(exc)
            status = _status(exc)
            message = exc.response.get("Error", {}).get("Message", "") or code
            if code == "NoSuchBucket":
                return self._missing_bucket(action, key)
            refusal = self._refusal(exc, action, key)
            if refusal is not None:
                return refusal
            if code in _BAD_DATA_CODES:
                return DataError(f"{action} {where}: the server refused the data: {message}")
            if code == "InvalidObjectState":
                return TryLaterError(f"{action} {where}: object is in cold storage: {message}")
            if code in _MISSING_KEY_CODES:
                return NoInputError(f"{action} {where}: no such object")
            if code in _TRANSIENT_CODES or status >= 500:
                return VaultUnavailableError(f"{action} {where}: server error {code}: {message}")
            if code in _CREDENTIAL_CODES:
                return ServiceError(
                    f"{action} {where}: credentials refused ({code}): check the AWS "
                    f"credentials{self._profile_hint()}"
                )
            if code in _ACCESS_CODES:
                # A HEAD answer has no body: a bare 403 may be either cause.
                cause = "wrong credentials or no permission" if code == "403" else message
                return ServiceError(
                    f"{action} {where}: access denied{self._profile_hint()}: {cause}"
                )
            return ServiceError(f"{action} {where}: {code}: {message}")
        if isinstance(exc, botocore.exceptions.FlexibleChecksumError):
            return DataError(f"{action} {where}: checksum mismatch: {exc}")
        if isinstance(
            exc,
            botocore.exceptions.NoCredentialsError
            | botocore.exceptions.PartialCredentialsError
            | botocore.exceptions.CredentialRetrievalError,
        ):
            return ConfigError(f"{action} {where}: no usable AWS credentials{self._profile_hint()}")
        if isinstance(exc, botocore.exceptions.SSLError):
            return ServiceError(f"{action} {where}: TLS failure: {exc}")
        if isinstance(exc, botocore.exceptions.ReadTimeoutError):
            return VaultUnavailableError(
                f"{action} {where}: the vault did not answer within read_timeout = "
                f"{self._read_timeout:g} s ({exc})")
        if isinstance(exc, botocore.exceptions.ConnectTimeoutError):
            return VaultUnavailableError(
                f"{action} {where}: no connection within connect_timeout = "
                f"{self._connect_timeout:g} s ({exc})")
        if _stalled_send(exc):
            return VaultUnavailableError(
                f"{action} {where}: the vault stopped taking the request for connect_timeout "
                f"= {self._connect_timeout:g} s ({exc})")
        if isinstance(
            exc,
            botocore.exceptions.ConnectionError
            | botocore.exceptions.HTTPClientError
            | botocore.exceptions.IncompleteReadError,
        ):
            return VaultUnavailableError(f"{action} {where}: {exc}")
        return ServiceError(f"{action} {where}: {exc}")

    def _refusal(self, exc: botocore.exceptions.ClientError, action: str,
                 key: str | None) -> ServiceRefusalError | None:
        """The permanent refusal ``exc`` is, if it is one: the service does not
        have what this vault's settings make us send. None for anything else."""
        code = _code(exc)
        status = _status(exc)
        message = str(exc.response.get("Error", {}).get("Message", "") or code)
        found = _HEADER_IN_MESSAGE.search(message)
        header = found.group(1).lower() if found else ""
        lowered = message.lower()
        refused = code == "NotImplemented" or status == 501 or (
            status == 400 and _REFUSAL_WORDS.search(message) is not None)
        if code == "InvalidStorageClass" or (
                refused and (header == "x-amz-storage-class" or "storage class" in lowered)):
            setting = "storage_class"
        elif status == 400 and "part number" in lowered:
            setting = "max_parts"
        elif refused:
            setting = _setting_of_header(header)
        elif (code == "InvalidArgument" and not header and action.startswith(_UPLOAD_ACTIONS)
              and self.config.checksum is Checksum.SHA256):
            # Google Cloud Storage's whole answer to x-amz-checksum-* is a 400
            # "Invalid argument.": the checksum headers are what we send that
            # an S3 server of another make would not take.
            setting = "checksum"
            message += " (a service without x-amz-checksum-* support answers so)"
        elif (code == "InvalidRequest" and self.config.object_lock_mode is not None
              and action in ("upload", "start multipart upload of")):
            # AWS: "Bucket is missing Object Lock Configuration"; SeaweedFS
            # answers a plain "Invalid Request" to lock headers on such a bucket.
            setting = "object_lock_mode"
        else:
            return None
        return self._refused(setting, action, key, f"{status} {code}: {message}")

    def _refused(self, setting: str, action: str, key: str | None,
                 detail: str) -> ServiceRefusalError:
        """The error for a permanent refusal: the service's words, and the setting
        of the vault's entry that would make the request acceptable."""
        config = self.config
        hint = self._service_hint()
        if setting == "storage_class":
            fix = (f"set storage_class to a class the service has (now "
                   f"{config.storage_class!r}; 'STANDARD' works everywhere){hint}")
        elif setting == "checksum":
            other = "md5" if config.checksum is not Checksum.MD5 else "none"
            fix = (f"set checksum = {other!r} (now {config.checksum.value!r}; 'md5' sends "
                   f"Content-MD5, which every S3 service checks){hint}")
        elif setting == "max_parts":
            fix = (f"set max_parts to the service's limit (now {config.max_parts}; "
                   f"Scaleway allows 1000){hint}")
        elif setting == "object_lock_mode":
            fix = ("remove object_lock_mode and object_lock_days, or create the bucket with "
                   f"object lock enabled{hint}")
        else:
            fix = f"set service to the service behind the endpoint (now {config.service!r}){hint}"
        return ServiceRefusalError(
            f"vault {config.id} ({self.service.title}, service = {config.service!r}): {action} "
            f"{self._where(key)} refused for good: {detail}; retrying cannot help: {fix} in "
            "the vault's [[vault]] entry")

    def _service_hint(self) -> str:
        """", or service = ..." when the endpoint looks like another service than
        the configured one; a pointer to ``service`` when it was left at the default."""
        suggested = suggest_service(self.config.endpoint_url)
        if suggested is not None and suggested.name != self.config.service:
            return f", or service = {suggested.name!r} ({suggested.title})"
        if self.config.service == DEFAULT_SERVICE and self.config.endpoint_url:
            return (", or set service (r2, b2, gcs, wasabi, minio, ceph, garage, scaleway, ovh, "
                    "hetzner, seaweedfs, generic) to the service behind "
                    f"{self.config.endpoint_url}")
        return ""

    def _profile_hint(self) -> str:
        return f" (profile {self.config.profile!r})" if self.config.profile else ""


class _BrokenBodyError(VaultUnavailableError):
    """A download's body broke off mid-stream (see :meth:`S3Vault.get`)."""


#: What botocore raises when a response body stops short or its connection dies.
_BODY_BREAKS = (
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
)


def _stalled_send(exc: Exception) -> bool:
    """True for a send that made no progress for connect_timeout: urllib3
    reports it as "Connection aborted." around the socket's TimeoutError."""
    if not isinstance(exc, botocore.exceptions.ConnectionClosedError):
        return False
    error = exc.kwargs.get("error")
    return any(isinstance(arg, TimeoutError) for arg in getattr(error, "args", ()))


def _setting_of_header(header: str) -> str:
    """The vault setting that makes us send request header ``header``."""
    if header == "x-amz-storage-class":
        return "storage_class"
    if header.startswith(("x-amz-checksum", "x-amz-sdk-checksum", "x-amz-trailer")) or (
            header == "content-md5"):
        return "checksum"
    if header.startswith("x-amz-object-lock"):
        return "object_lock_mode"
    return "service"


def _not_implemented(exc: botocore.exceptions.ClientError) -> bool:
    return _code(exc) in _NOT_IMPLEMENTED_CODES or _status(exc) == 501


def _md5_of_file(source: Path, sha256: str, where: str) -> str:
    """The base64 MD5 of ``source`` for Content-MD5, read in the same pass that
    checks it still hashes to ``sha256`` (DataError if not: nothing is sent)."""
    md5 = hashlib.md5(usedforsecurity=False)
    digest = hashlib.sha256()
    with _open_source(source) as reader:
        try:
            while block := reader.read(_READ_BLOCK):
                md5.update(block)
                digest.update(block)
        except OSError as exc:
            raise StorageIOError(f"cannot read {source}: {exc}") from exc
    if digest.hexdigest() != sha256:
        raise DataError(f"{source}: SHA-256 is {digest.hexdigest()}, expected {sha256}; "
                        f"not stored as {where}")
    return base64.b64encode(md5.digest()).decode("ascii")


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _is_write_conflict(exc: botocore.exceptions.ClientError) -> bool:
    # 412: If-None-Match found an object; 409 ConditionalRequestConflict: AWS
    # saw a concurrent conditional write to the same key.
    return _code(exc) in ("PreconditionFailed", "ConditionalRequestConflict") or _status(exc) == 412


def _damaged(where: str, digest: str, expected: str) -> DataError:
    return DataError(f"{where} downloaded with SHA-256 {digest}, expected {expected}")


def _b64_of_hex(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def _content_sha256(head: Mapping[str, Any]) -> str | None:
    """The hex SHA-256 of the whole content, if the response tells it.

    A full-object ``ChecksumSHA256`` was verified by the server, so it wins;
    a multipart object's checksum is composite ("...-N", or moto's unmarked
    equivalent), so then the ``x-amz-meta-sha256`` we stored is the answer.
    """
    checksum = head.get("ChecksumSHA256")
    etag = str(head.get("ETag", ""))
    if (
        isinstance(checksum, str)
        and "-" not in checksum
        and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT"
        and "-" not in etag
    ):
        with contextlib.suppress(ValueError):
            raw = base64.b64decode(checksum, validate=True)
            if len(raw) == 32:
                return raw.hex()
    metadata = head.get("Metadata") or {}
    value = metadata.get(SHA256_METADATA)
    if isinstance(value, str) and _HEX_SHA256.fullmatch(value):
        return value.lower()
    return None


def _restore_state(
    header: str | None, storage_class: str, archive_status: str | None
) -> tuple[RestoreState, datetime | None]:
    if header:
        ongoing = _RESTORE_ONGOING.search(header)
        if ongoing and ongoing.group(1).lower() == "true":
            return RestoreState.RESTORING, None
        if ongoing:
            expiry = None
            found = _RESTORE_EXPIRY.search(header)
            if found:
                with contextlib.suppress(TypeError, ValueError):
                    expiry = email.utils.parsedate_to_datetime(found.group(1))
            return RestoreState.RESTORED, expiry
    if storage_class in COLD_STORAGE_CLASSES or archive_status:
        return RestoreState.COLD, None
    return RestoreState.NOT_NEEDED, None


def _file_matches(source: Path, sha256: str) -> bool:
    """True when ``source`` still hashes to ``sha256`` (False if it cannot be read)."""
    digest = hashlib.sha256()
    try:
        with source.open("rb") as reader:
            while block := reader.read(_READ_BLOCK):
                digest.update(block)
    except OSError:
        return False
    return digest.hexdigest() == sha256


def _file_size(source: Path) -> int:
    try:
        return source.stat().st_size
    except FileNotFoundError:
        raise NoInputError(f"{source}: no such file") from None
    except OSError as exc:
        raise StorageIOError(f"cannot read {source}: {exc}") from exc


def _part_integrity(checksum: Checksum, part_hash: Any) -> dict[str, Any]:
    """The integrity argument of one UploadPart, from the part's digest."""
    if part_hash is None:
        return {}
    encoded = base64.b64encode(part_hash.digest()).decode("ascii")
    return {"ChecksumSHA256" if checksum is Checksum.SHA256 else "ContentMD5": encoded}


class _FilePart(io.RawIOBase):
    """Bytes ``offset`` to ``offset + length`` of the open file ``fd``, as a seekable
    stream of its own (position 0 is ``offset``; ``pread``, so parts of one file
    share the descriptor). botocore sends it (hashing it first for the signature
    when the payload is signed, then seeking back); a retry seeks to 0 again."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        super().__init__()
        self._fd = fd
        self._offset = offset
        self._length = length
        self._position = 0

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._length}[whence]
        self._position = min(max(base + position, 0), self._length)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._length - self._position
        if size is None or size < 0 or size > remaining:
            size = remaining
        if size <= 0:
            return b""
        data = os.pread(self._fd, size, self._offset + self._position)
        if not data:
            raise StorageIOError(f"a spool file shrank while it was uploaded (fd {self._fd})")
        self._position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


@contextlib.contextmanager
def _open_source(source: Path) -> Iterator[BinaryIO]:
    try:
        handle = source.open("rb")
    except FileNotFoundError:
        raise NoInputError(f"{source}: no such file") from None
    except OSError as exc:
        raise StorageIOError(f"cannot read {source}: {exc}") from exc
    with handle:
        yield handle

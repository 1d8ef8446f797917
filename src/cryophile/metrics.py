"""Prometheus metrics for the daemons, in node_exporter's textfile-collector format.

After every pass the freeze and thaw daemons call :meth:`MetricsFile.record`
with what the pass did; it merges that into the file and replaces the file
atomically (temporary file in the same directory, then rename), so the
collector never reads half a file. Both daemons may share one file: each
update holds a lock on the directory, reads what is there and replaces only
the samples it has news for. So a ``last_success`` time of a prefix that has
not been backed up since a restart, or the other daemon's samples, survive.

The metrics::

    cryophile_freeze_last_success_timestamp_seconds{vault,prefix}  gauge
    cryophile_thaw_last_success_timestamp_seconds{vault,prefix}    gauge
    cryophile_queue_bytes{queue}                                   gauge
    cryophile_queue_fragments{queue}                               gauge
    cryophile_errors_total{daemon,kind}                            counter (transient|permanent)
    cryophile_last_pass_timestamp_seconds{daemon}                  gauge
    cryophile_backup_waiting_for_upload{vault,prefix}              gauge (1 waiting, 0 not)
    cryophile_spool_queued_bytes                                   gauge
    cryophile_spool_budget_bytes                                   gauge

``backup`` writes the last three when it starts and stops waiting for uploads
(backpressure, :mod:`cryophile.backpressure`).

Queues: ``freeze`` (fragments waiting for upload), ``thaw`` (fragments of
restore requests not downloaded yet) and ``restore`` (fragments downloaded,
waiting for ``cryophile restore``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryophile.backup_id import BackupId
from cryophile.errors import CryophileError
from cryophile.inventory import scan_spool
from cryophile.spool import Spool

logger = logging.getLogger(__name__)

FREEZE_SUCCESS = "cryophile_freeze_last_success_timestamp_seconds"
THAW_SUCCESS = "cryophile_thaw_last_success_timestamp_seconds"
QUEUE_BYTES = "cryophile_queue_bytes"
QUEUE_FRAGMENTS = "cryophile_queue_fragments"
ERRORS = "cryophile_errors_total"
LAST_RUN = "cryophile_last_pass_timestamp_seconds"
BACKUP_WAITING = "cryophile_backup_waiting_for_upload"
SPOOL_QUEUED = "cryophile_spool_queued_bytes"
SPOOL_BUDGET = "cryophile_spool_budget_bytes"

#: name → (type, help), in the order the file lists them.
METRICS: Mapping[str, tuple[str, str]] = {
    FREEZE_SUCCESS: ("gauge", "Unix time a backup of this vault and prefix was last frozen "
                              "completely (manifest uploaded)."),
    THAW_SUCCESS: ("gauge", "Unix time a backup of this vault and prefix was last thawed "
                            "completely into the restore queue."),
    QUEUE_BYTES: ("gauge", "Bytes of fragments waiting in a spool queue."),
    QUEUE_FRAGMENTS: ("gauge", "Fragments waiting in a spool queue."),
    ERRORS: ("counter", "Errors that stopped a backup's or request's pass, by daemon and kind."),
    LAST_RUN: ("gauge", "Unix time the daemon last finished a pass over its queue."),
    BACKUP_WAITING: ("gauge", "1 while a backup of this vault and prefix waits for uploads to "
                              "free spool space (backpressure), else 0."),
    SPOOL_QUEUED: ("gauge", "Bytes queued in the spool (backup and freeze queues) when a backup "
                            "last started or stopped waiting for uploads."),
    SPOOL_BUDGET: ("gauge", "The spool's budget for queued fragments, in bytes (spool_limit)."),
}

Labels = tuple[tuple[str, str], ...]
SampleKey = tuple[str, Labels]

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _labels(text: str | None) -> Labels | None:
    """``a="x",b="y"`` → sorted pairs; None when malformed."""
    if not text:
        return ()
    pairs = []
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        if match is None or match.end() == position:
            return None
        pairs.append((match.group(1), _unescape(match.group(2))))
        position = match.end()
    return tuple(sorted(pairs))


def parse_samples(text: str) -> dict[SampleKey, float]:
    """The samples of cryophile's metrics in a textfile; other or malformed lines are skipped."""
    samples: dict[SampleKey, float] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE.fullmatch(line.strip())
        if match is None or match.group(1) not in METRICS:
            continue
        labels = _labels(match.group(2))
        if labels is None:
            continue
        try:
            samples[match.group(1), labels] = float(match.group(3))
        except ValueError:
            continue
    return samples


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def format_samples(samples: Mapping[SampleKey, float]) -> str:
    """The textfile: HELP and TYPE per metric, samples sorted by labels."""
    lines = []
    for name, (kind, help_text) in METRICS.items():
        mine = sorted((labels, value) for (metric, labels), value in samples.items()
                      if metric == name)
        if not mine:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in mine:
            label_text = ",".join(f'{key}="{_escape(text)}"' for key, text in labels)
            lines.append(f"{name}{{{label_text}}} {_number(value)}" if labels
                         else f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"


def _key(name: str, **labels: str) -> SampleKey:
    return name, tuple(sorted(labels.items()))


@dataclass(frozen=True)
class PassMetrics:
    """What one daemon pass contributes: successes, errors, and the queues after it."""

    daemon: str
    finished_at: float
    succeeded: tuple[BackupId, ...] = ()
    errors: tuple[CryophileError, ...] = ()
    #: queue → (fragments, bytes)
    queues: Mapping[str, tuple[int, int]] = field(default_factory=dict)


def queue_sizes(spool: Spool) -> dict[str, tuple[int, int]]:
    """(fragments, bytes) waiting in the freeze, thaw and restore queues."""
    frozen_fragments = frozen_bytes = thaw_fragments = thaw_bytes = 0
    restore_fragments = restore_bytes = 0
    for record in scan_spool(spool).values():
        if record.freeze is not None:
            frozen_fragments += record.freeze.fragments_waiting
            frozen_bytes += record.freeze.bytes_waiting
        if record.restore is not None:
            restore_fragments += record.restore.fragments_present
            restore_bytes += record.restore.bytes
        if record.thaw is not None and record.thaw.status != "failed":
            manifest = record.restore.manifest if record.restore is not None else None
            if manifest is not None:
                present = record.restore.fragments_present if record.restore else 0
                thaw_fragments += len(manifest.fragments) - present
                thaw_bytes += max(0, manifest.stored_bytes
                                  - (record.restore.bytes if record.restore else 0))
    return {"freeze": (frozen_fragments, frozen_bytes), "thaw": (thaw_fragments, thaw_bytes),
            "restore": (restore_fragments, restore_bytes)}


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class MetricsFile:
    """One ``.prom`` file, updated by merging (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[SampleKey, float]:
        """The samples in the file now (none if it does not exist)."""
        try:
            return parse_samples(self.path.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            return {}

    def record(self, update: PassMetrics) -> None:
        """Merge one pass into the file; OSError when it cannot be written."""
        success = FREEZE_SUCCESS if update.daemon == "freeze" else THAW_SUCCESS
        with _directory_lock(self.path.parent):
            samples = self.read()
            for backup_id in update.succeeded:
                samples[_key(success, vault=str(backup_id.vault),
                             prefix=backup_id.prefix)] = update.finished_at
            for kind in ("transient", "permanent"):
                key = _key(ERRORS, daemon=update.daemon, kind=kind)
                count = sum(1 for error in update.errors
                            if error.transient == (kind == "transient"))
                samples[key] = samples.get(key, 0.0) + count
            for queue, (fragments, size) in update.queues.items():
                samples[_key(QUEUE_FRAGMENTS, queue=queue)] = fragments
                samples[_key(QUEUE_BYTES, queue=queue)] = size
            samples[_key(LAST_RUN, daemon=update.daemon)] = update.finished_at
            self._replace(format_samples(samples))

    def record_backup_wait(self, backup_id: BackupId, waiting: bool, queued: int | None,
                           budget: int) -> None:
        """Merge a backup's waiting state into the file; OSError when it cannot be written."""
        with _directory_lock(self.path.parent):
            samples = self.read()
            samples[_key(BACKUP_WAITING, vault=str(backup_id.vault),
                         prefix=backup_id.prefix)] = 1 if waiting else 0
            if queued is not None:
                samples[_key(SPOOL_QUEUED)] = queued
            samples[_key(SPOOL_BUDGET)] = budget
            self._replace(format_samples(samples))

    def _replace(self, text: str) -> None:
        fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                         dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            # The collector runs as another user: the file must be world-readable.
            os.chmod(temporary, 0o644)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise


def recorder(path: Path | None, spool: Spool,
             daemon: str) -> Callable[[Iterable[BackupId], Iterable[CryophileError]], None]:
    """A callback for a daemon: record one pass into ``path`` (a no-op without a path).

    A metrics file that cannot be written is logged, never fatal: monitoring must
    not stop backups.
    """
    def record(succeeded: Iterable[BackupId], errors: Iterable[CryophileError]) -> None:
        if path is None:
            return
        try:
            MetricsFile(path).record(PassMetrics(daemon, time.time(), tuple(succeeded),
                                                 tuple(errors), queue_sizes(spool)))
        except OSError as error:
            logger.error("cannot write metrics to %s: %s", path, error.strerror or error,
                         extra={"event": "error"})

    return record

"""One exception tree for cryophile, each class carrying its exit code.

Exit codes follow sysexits(3); the table lives here and only here, and
``cli.main`` maps every exception to its code in one place:

====  ==================  ==========================================================
code  class               meaning
====  ==================  ==========================================================
  1   CryophileError      failure without a more precise class
  3   (partial)           some backups could not be read; everything else was
                          listed or verified (``list``, ``verify --all``)
 64   UsageError          bad command line: option value, missing option
 65   DataError           bad data: corrupt/missing fragment, bad manifest, MDC failure
 66   NoInputError        input not found: backup not in the queue, input file missing
 69   ServiceError        a service (vault, child process) unavailable or refusing;
                          SpoolFullError: the spool's budget is reached and no freezer
                          runs to upload what is queued; CommandFailedError: the
                          command of ``restore --exec`` failed
 70   (internal error)    a bug: an exception that is not a CryophileError
 73   AlreadyExistsError  output exists: backup id taken, ``-o`` file exists
 74   StorageIOError      local I/O error: spool unwritable, disk full, read error
 75   TryLaterError       transient: not thawed yet, timeout waiting; try again later;
                          UploadStalledError: uploads made no progress for the stall time
 77   KeyAccessError      no usable key: no matching secret key, wrong passphrase
 78   ConfigError         broken configuration file or keyring; a vault's service
                          refusing what the configuration sends (ServiceRefusalError)
====  ==================  ==========================================================

Transient versus permanent is part of the type: ``transient`` is True only for
errors that a retry may cure without anybody changing anything. A transient
error exits 75 whatever its class: VaultUnavailableError is a ServiceError
(the vault did not answer), but the user's answer to it is "try later".
:func:`exit_code_of` is that rule.

Code 3 (as restic uses it) belongs to no class: it is a verdict on a whole
command that read many objects, when some of them could not be read (each is
named on its own) but the rest was.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes (sysexits style)."""

    OK = 0
    FAILURE = 1
    PARTIAL = 3
    USAGE = 64
    DATAERR = 65
    NOINPUT = 66
    UNAVAILABLE = 69
    SOFTWARE = 70
    CANTCREAT = 73
    IOERR = 74
    TEMPFAIL = 75
    NOPERM = 77
    CONFIG = 78


class CryophileError(Exception):
    """Base of every error cryophile reports to a user.

    The message is one line meant for a system administrator: it names the bad
    value or the thing that failed.
    """

    exit_code: ExitCode = ExitCode.FAILURE
    transient: bool = False


class UsageError(CryophileError):
    """A command-line value is invalid (bad UUID, prefix, size, ...)."""

    exit_code = ExitCode.USAGE


class DataError(CryophileError):
    """Stored data is wrong: a fragment or manifest is damaged, missing or forged."""

    exit_code = ExitCode.DATAERR


class NoInputError(CryophileError):
    """Something to read does not exist (input file, backup in a queue)."""

    exit_code = ExitCode.NOINPUT


class ServiceError(CryophileError):
    """A service we depend on refused or is unavailable (vault, worker process)."""

    exit_code = ExitCode.UNAVAILABLE


class AlreadyExistsError(CryophileError):
    """Something to create already exists (backup id, output file, object)."""

    exit_code = ExitCode.CANTCREAT


class StorageIOError(CryophileError):
    """Local I/O failed: spool missing or unwritable, disk full, read error."""

    exit_code = ExitCode.IOERR


class TryLaterError(CryophileError):
    """Not ready yet (fragments not thawed, wait timed out); retry later."""

    exit_code = ExitCode.TEMPFAIL
    transient = True


class KeyAccessError(CryophileError):
    """No usable key: no matching secret key, wrong or missing passphrase."""

    exit_code = ExitCode.NOPERM


class ConfigError(CryophileError):
    """Broken configuration: config file, keyring file with no usable key."""

    exit_code = ExitCode.CONFIG


class ServiceRefusalError(ConfigError):
    """The vault's service permanently refuses what this vault's configuration makes
    us send (a storage class it does not have, an integrity header or feature it
    does not implement), or silently did not apply object lock that was asked for.

    A configuration error, not a failing service: the same request fails the
    same way until a setting changes, so it exits 78 and never "try later".
    The message names the setting and quotes the service's words.
    """


class CommandFailedError(ServiceError):
    """The command ``restore --exec CMD`` feeds a backup's stream to failed (exited
    non-zero, was killed, or stopped reading its input).

    69 like any child process that refuses: the backup itself may be fine (the
    message says which backup of a chain, and CMD's exit status); not
    transient, since the same command on the same stream fails the same way.
    """


class VaultUnavailableError(ServiceError):
    """The vault did not answer or failed on its side (connection refused or reset,
    timeout, HTTP 5xx, throttling) even after the client's own retries.

    Transient: the same request may succeed later without anybody changing
    anything, so the freeze and thaw daemons back off and retry instead of
    giving up on the backup.
    """

    transient = True


class SpoolFullError(ServiceError):
    """The spool's budget is reached and nothing runs that would upload what is queued
    (no freeze daemon, no ``backup --freeze``).

    69, not 74: the disk is not full, a service the backup depends on (the
    freezer) is missing; and not transient: waiting cures nothing until
    somebody starts it.
    """


class UploadStalledError(TryLaterError):
    """A backup waited for uploads to free spool space and none made progress for
    the stall timeout (the vault unreachable, the freezer stuck): try later."""


def exit_code_of(errors: Iterable[CryophileError]) -> ExitCode:
    """The exit code of a command that met ``errors``: OK for none, else the first
    permanent error's code, else (every one transient) TEMPFAIL."""
    found = list(errors)
    if not found:
        return ExitCode.OK
    permanent = [error for error in found if not error.transient]
    return permanent[0].exit_code if permanent else ExitCode.TEMPFAIL

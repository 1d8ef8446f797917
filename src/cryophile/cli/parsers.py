"""The command line's grammar: every command's parser, with its help and examples.

Every command line builds the whole parser: argparse needs every command to
parse one, and ``--help``, ``cryophile help`` and ``cryophile completion``
print all of them. So this module imports only what a parser needs (argument
types, defaults, choices) and never a command's work: :mod:`cryophile.cli.main`
imports the one command module that runs (``cryophile.cli.NAME``, whose
``run(args, environment)`` does the work) after the parsing. ``cryophile status``
then loads no OpenPGP engine, no compressor and no boto3
(tests/e2e/test_cli_startup.py holds it to that).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from cryophile import __version__
from cryophile.cli.arguments import (
    DEFAULT_FRAGMENT_SIZE,
    add_backup_id_options,
    add_keyring_option,
    add_selection_options,
    duration,
    file_descriptor,
    fragment_size,
    label_pair,
    non_negative_count,
    non_negative_seconds,
    whole_number_up_to,
)
from cryophile.cli.daemon import add_daemon_options
from cryophile.cli.defaults import add_id_option, needs_vault
from cryophile.cli.progress import add_progress_option
from cryophile.config import MAX_DAYS
from cryophile.daemons.freeze import (
    BACKUP_PARALLEL,
    DEFAULT_PARALLEL,
    MAX_PARALLEL,
    RESCAN_SECONDS,
)
from cryophile.daemons.thaw import FIRST_POLL_SECONDS
from cryophile.errors import UsageError
from cryophile.manifest import AUTO_COMPRESSION, COMPRESSIONS
from cryophile.pipeline.engines import ENGINES
from cryophile.spool_budget import SpoolLimit, parse_spool_limit
from cryophile.storage_classes import RESTORE_TIERS

SHELLS = ("bash", "zsh")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UsageErrors (exit 64), not exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _path(text: str) -> Path:
    """A path option's value; "" is refused: Path("") is the current directory,
    and ``-S ""`` (an unset shell variable) would make it the spool."""
    if not text:
        # ArgumentTypeError: argparse names the option in its message.
        raise argparse.ArgumentTypeError("empty path (an unset shell variable?)")
    return Path(text)


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Subcommand copies use SUPPRESS defaults so an option given before the
    # subcommand is not reset by the subcommand's own (absent) default.
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument("-S", "--spool", type=_path, default=default(None), metavar="DIR",
                       help="spool directory (default: $CRYOPHILE_SPOOL, else "
                            "the configuration's spool, else /var/spool/cryophile as root or the "
                            "cryophile user, else ~/.local/state/cryophile/spool)")
    group.add_argument("-c", "--config", type=_path, default=default(None), metavar="FILE",
                       help="configuration file (default: $CRYOPHILE_CONFIG, else "
                            "~/.config/cryophile/cryophile.toml, else "
                            "/etc/cryophile/cryophile.toml)")
    group.add_argument("-d", "--debug", action="count", default=default(0),
                       help="more log output on stderr (-d info, -dd debug)")
    group.add_argument("-q", "--quiet", action="store_true", default=default(False),
                       help="log errors only")


# -- backup --------------------------------------------------------------------
_BACKUP_DESCRIPTION = """\
Read a stream (stdin, a FIFO or a file), compress it, encrypt it to the OpenPGP
certificates in the keyrings, and cut it into fragments in the spool's freeze
queue: SPOOL/freeze/VAULT/PREFIX/ULID/chunk.1 … chunk.N, then the manifest
chunk.0, written last. Never talks to the network; `cryophile freeze` uploads
(or this process, with --freeze). The spool is a bounded window: before each
fragment, backup waits until the queued fragments of the spool plus this one fit
its budget (--spool-limit), saying "waiting for upload: spool X/Y MiB".
"""


_BACKUP_EXAMPLES = """\
examples:
  zfs send -R tank/data@today | cryophile backup -v 6f1c…-… -p hosts/db1 -k backup.cert
  tar -C /etc -c . | cryophile backup -v VAULT -p etc -k a.cert -k b.cert -C lz4
  cryophile backup -v VAULT -p pg -t 2026-11-26T03:00:00Z -i /var/backups/dump.fifo -k k.pgp
  tar -C /etc -c . | cryophile backup -v VAULT -p etc -k backup.cert --sign-key host-sign.key
  zfs send -i @mon tank/data@tue | cryophile backup -v VAULT -p tank -k k.cert \\
      --parent latest --label snapshot=tank/data@tue
  zfs send -R pool@snap | cryophile backup --freeze -v VAULT -p hosts/db1 -k backup.cert
exit status: 0 done (with --freeze: the manifest is in the vault), 69 the spool's
budget is reached and no freeze daemon runs (start one, or use --freeze), 74 the
spool's file system is full or unwritable, 75 uploads stalled (--stall-timeout),
78 the spool budget holds fewer than two fragments.
"""


def _add_backup(commands: Any) -> argparse.ArgumentParser:
    """Add the ``backup`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "backup", help="back up a stream into the spool", description=_BACKUP_DESCRIPTION,
        epilog=_BACKUP_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backup_id_options(parser, ulid_required=False)
    add_keyring_option(parser, "certificate file (armored or binary; repeat for several "
                               "recipients); every valid storage-encryption subkey is used")
    parser.add_argument("-i", "--input", default="-", metavar="FILE",
                        help="file or FIFO to read (default: - for stdin)")
    parser.add_argument("-C", "--compression", choices=COMPRESSIONS, default=None,
                        help="compression (default: the vault's configured one, else zstd)")
    parser.add_argument("-L", "--level", type=int, default=None, metavar="N",
                        help="zstd level, 1-22 (default 3)")
    parser.add_argument("-s", "--size", type=fragment_size, default=DEFAULT_FRAGMENT_SIZE,
                        metavar="SIZE", help="fragment size, binary units: 64M, 1G "
                                             "(default 256M; at least 5M)")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="fast",
                        help="OpenPGP engine: fast (default; our streaming SEIPD v1 on OpenSSL, "
                             "falls back to reference for keys it does not handle) or "
                             "reference (pysequoia)")
    parser.add_argument("--sign-key", type=Path, default=None, metavar="FILE",
                        help="sign the manifest with this signing-only secret key (detached "
                             "OpenPGP signature chunk.0.sig; default: sign_key in the config)")
    parser.add_argument("--sign-pass-fd", type=file_descriptor, default=None, metavar="N",
                        help="read the signing key's passphrase from file descriptor N (else "
                             "$CRYOPHILE_ASKPASS, else the terminal)")
    parser.add_argument("--parent", metavar="ULID|TIME|latest", default=None,
                        help="this stream is an increment of that backup (same vault and "
                             "prefix; latest: the newest complete one); prune then keeps the "
                             "parent as long as this backup, restore --chain replays both")
    parser.add_argument("--label", action="append", type=label_pair, default=[],
                        metavar="KEY=VALUE",
                        help="store a label in the manifest (repeatable), e.g. "
                             "snapshot=tank/data@2026-12-06; list shows it, --label filters")
    parser.add_argument("--spool-limit", type=spool_limit, default=None, metavar="SIZE|PCT",
                        help="the spool's budget for queued fragments, a size (48M, 20G) or a "
                             "percentage of its file system (25%%); when the next fragment "
                             "would exceed it, wait for uploads (default: spool_limit in the "
                             "config, else free space less 10%%; at least two fragments)")
    parser.add_argument("--stall-timeout", type=positive_seconds, default=None,
                        metavar="SECONDS",
                        help="fail (exit 75) when uploads free no spool space for this long "
                             "while the backup waits (default: stall_timeout in the config, "
                             "else 1800)")
    parser.add_argument("--freeze", action="store_true",
                        help="upload this backup's fragments from this process as they are "
                             "written (no freeze daemon needed); exit 0 only once the "
                             "manifest is in the vault")
    parser.add_argument("-j", "--parallel", type=whole_number_up_to(MAX_PARALLEL),
                        default=BACKUP_PARALLEL, metavar="N",
                        help=f"with --freeze: uploads in parallel, 1 to {MAX_PARALLEL} "
                             f"(default {BACKUP_PARALLEL}; the freeze daemon's is "
                             f"{DEFAULT_PARALLEL})")
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON object on stdout")
    add_progress_option(parser)
    return parser


def spool_limit(text: str) -> SpoolLimit:
    """``--spool-limit``: a size or a percentage (UsageError naming it otherwise)."""
    try:
        return parse_spool_limit(text)
    except (ValueError, UsageError) as error:
        raise UsageError(f"invalid --spool-limit {text!r}: {error}") from None


def positive_seconds(text: str) -> float:
    """A duration in seconds above 0."""
    value = non_negative_seconds(text)
    if value == 0:
        raise UsageError(f"invalid number of seconds {text!r}: must be above 0")
    return value


# -- restore -------------------------------------------------------------------
#: What ``--cancel`` does, said by restore and thaw (:mod:`cryophile.cancel`).
CANCEL_HELP = ("withdraw this backup's restore from the spool: its thaw request, partial "
               "downloads and restore queue (refused, exit 75, while a restore of it runs; "
               "exit 0 with a message when there is nothing to cancel); the vault is not "
               "touched: Glacier restores already requested cannot be withdrawn and are "
               "billed")
_RESTORE_DESCRIPTION = """\
Restore a backup from the spool's restore queue (SPOOL/restore/VAULT/PREFIX/ULID):
read the manifest chunk.0, check every fragment's size and SHA-256 against it,
join the fragments in order, decrypt with a secret key from the keyrings and
decompress as the manifest says, to stdout or to -o FILE. With --wait, fragments
that are not there yet are waited for, in any order they arrive.
"""


_RESTORE_EXAMPLES = """\
examples:
  cryophile restore -v VAULT -p hosts/db1 -u 01JDX… -k key.pgp --pass-fd 4 4<pass | zfs recv …
  cryophile restore -v VAULT -p etc -t 2026-11-26T03:00:00Z -k key.pgp -o etc.tar
  cryophile restore -v VAULT -p etc -u 01JDX… -k key.pgp --signed-by host-sign.cert --thaw
  cryophile restore -v VAULT -p tank --latest --chain -k key.pgp --exec 'zfs receive -F tank/r'
  cryophile restore -v VAULT -p srv --label snapshot=srv@tue --chain --dry-run
  cryophile restore --cancel -v VAULT -p etc -u 01JDX…   # drop its request and restore queue
exit status: 0 restored; 65 damaged data (with --chain: a link missing, damaged or
with wrong-size fragments, named, before anything runs); 66 no such backup; 69 the
--exec command failed (its exit status is named); 75 not thawed yet, try later; 77
no key or passphrase fits.
"""


def _add_restore(commands: Any) -> argparse.ArgumentParser:
    """Add the ``restore`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "restore", help="restore a backup from the restore queue", description=_RESTORE_DESCRIPTION,
        epilog=_RESTORE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = add_backup_id_options(parser, ulid_required=True)
    which.add_argument("--latest", action="store_true",
                       help="the newest complete backup of -p PREFIX (exactly that prefix)")
    which.add_argument("--label", action="append", type=label_pair, metavar="KEY=VALUE",
                       help="the one backup below -p carrying this label (repeatable: all "
                            "of them); several carrying it is a usage error listing them")
    add_keyring_option(parser, "secret key file (armored or binary; repeatable); expired and "
                               "revoked keys still decrypt old backups; not needed with "
                               "--dry-run", required=False)
    parser.add_argument("-P", "--pass-fd", type=file_descriptor, default=None, metavar="N",
                        help="read the passphrase's first line from file descriptor N (else "
                             "$CRYOPHILE_ASKPASS, else the terminal)")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                        help="write to FILE, which must not exist (default: stdout); on "
                             "failure no partial file is left")
    parser.add_argument("-C", "--compression", choices=(*COMPRESSIONS, AUTO_COMPRESSION),
                        default=None,
                        help="decompress as this instead of what the manifest says; 'auto' "
                             "detects it from the data")
    thawing = parser.add_mutually_exclusive_group()
    thawing.add_argument("--thaw", action="store_true", default=None,
                         help="do the thaw work in this process (no thaw daemon needed); "
                              "default: when no thaw daemon runs on the spool")
    thawing.add_argument("--no-thaw", dest="thaw", action="store_false",
                         help="never thaw in this process: file the request and leave it to "
                              "the thaw daemon (with --timeout 0: file it and exit 75)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be thawed (fragments, bytes, storage classes, "
                             "tier, expected wait) and exit")
    parser.add_argument("--tier", choices=sorted(RESTORE_TIERS), default=None,
                        help="Glacier retrieval tier (default: the vault's, else Bulk)")
    parser.add_argument("--days", type=whole_number_up_to(MAX_DAYS), default=None, metavar="N",
                        help=f"keep restored copies this many days, 1 to {MAX_DAYS} (default: "
                             "the vault's)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the fragments in the restore queue after a successful "
                             "restore")
    parser.add_argument("--wait", action="store_true",
                        help="wait for fragments that are not in the restore queue yet (implied "
                             "when a thaw request serves this restore)")
    parser.add_argument("--timeout", type=non_negative_seconds, default=None,
                        metavar="SECONDS", help="give up waiting (exit 75) after this long")
    parser.add_argument("--poll", type=non_negative_seconds, default=FIRST_POLL_SECONDS,
                        metavar="SECONDS",
                        help="with --thaw: first poll interval for restores in progress "
                             "(doubles up to 15 minutes; default 60)")
    parser.add_argument("--signed-by", type=Path, default=None, metavar="CERT",
                        help="require the manifest to be signed by a key in this certificate "
                             "file (backup --sign-key); refuse unsigned or badly signed backups "
                             "(exit 65) before any thaw or output (default: signed_by in the "
                             "config)")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="fast",
                        help="OpenPGP engine: fast (default; our streaming SEIPD v1 on OpenSSL, "
                             "falls back to reference for keys it does not handle) or "
                             "reference (pysequoia)")
    parser.add_argument("--chain", action="store_true",
                        help="restore the backup's whole incremental chain, its full backup "
                             "first, each link verified, decrypted and decompressed; every link "
                             "is checked in the vault before anything runs. Without --exec the "
                             "streams are written one after the other to stdout (or -o), for "
                             "tools that read concatenated streams")
    parser.add_argument("--exec", metavar="CMD", default=None,
                        help="write each restored stream to the standard input of a fresh "
                             "`sh -c CMD` (e.g. 'btrfs receive /mnt', 'tar "
                             "--listed-incremental=/dev/null -x -C /srv'); once without "
                             "--chain, once per link with it; CMD failing stops (exit 69)")
    parser.add_argument("--spool-limit", type=spool_limit, default=None, metavar="SIZE|PCT",
                        help="the spool's budget, a size (48M, 20G) or a percentage of its "
                             "file system (25%%): a restore from the vault stages at most "
                             "what it holds (at least two fragments), removing each fragment "
                             "once read; --keep needs room for the whole backup (default: "
                             "spool_limit in the config, else free space less 10%%)")
    add_progress_option(parser)
    parser.add_argument("--cancel", action="store_true",
                        help="instead of restoring: " + CANCEL_HELP + "; needs no key")
    return parser


# -- freeze --------------------------------------------------------------------
_FREEZE_DESCRIPTION = """\
Upload complete fragments from SPOOL/freeze/ to their vault, several at a time,
each with its SHA-256 for the vault to verify; delete a local fragment only when
the vault confirms its size and checksum; upload the manifest last (in STANDARD)
and remove the backup from the queue. As a daemon it rescans the queue
periodically and wakes early when fragments land (inotify); SIGTERM stops it
after the uploads in flight. A vault without a config entry is the embedded
local directory vault (SPOOL-vaults/UUID beside the spool).
"""


_FREEZE_EXAMPLES = """\
examples:
  cryophile freeze                         # daemon (see contrib/systemd/cryophile-freeze.service)
  cryophile freeze --once                  # upload what is queued now, then exit (cron)
  cryophile freeze --once -v VAULT -p hosts/db1 -u 01JDX…   # one backup only
exit status with --once: 0 all uploaded (or still being written), 75 a transient
vault failure (retry later), 69 the vault refused, 65 queued data is damaged,
73 the vault holds an object under the backup's id that this spool did not upload
(never overwritten), 78 the backup was queued for another place than this
configuration's (run with the backup's configuration, or --retarget).
"""


def _add_freeze(commands: Any) -> argparse.ArgumentParser:
    """Add the ``freeze`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "freeze", help="upload queued fragments to the vault", description=_FREEZE_DESCRIPTION,
        epilog=_FREEZE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true",
                        help="one pass over the queue, then exit")
    add_selection_options(parser)
    parser.add_argument("-j", "--parallel", type=whole_number_up_to(MAX_PARALLEL),
                        default=DEFAULT_PARALLEL, metavar="N",
                        help=f"uploads in parallel, 1 to {MAX_PARALLEL} "
                             f"(default {DEFAULT_PARALLEL})")
    parser.add_argument("--retarget", action="store_true",
                        help="send backups queued for another bucket or directory of their "
                             "vault (a bucket name fixed in the configuration, a vault that "
                             "moved) to the configured one instead of refusing them (exit 78)")
    parser.add_argument("--rescan", type=non_negative_seconds, default=RESCAN_SECONDS,
                        metavar="SECONDS", help="daemon: rescan period (default 60)")
    add_daemon_options(parser)
    return parser


# -- thaw ----------------------------------------------------------------------
_THAW_DESCRIPTION = """\
Serve the restore requests in SPOOL/thaw/ (filed by `cryophile restore`): read
each backup's manifest from the vault, ask for a restore of every fragment in an
archive storage class (GLACIER, DEEP_ARCHIVE, Intelligent-Tiering archive tiers)
with the request's tier and days, poll with back-off until the restored copies
are readable, download each fragment, check its SHA-256 against the manifest and
place it in SPOOL/restore/. Objects that need no restore are downloaded at once.
All state lives in SPOOL/thaw/, so a killed or rebooted thaw loses nothing.
"""


_THAW_EXAMPLES = """\
examples:
  cryophile thaw                      # daemon (see contrib/systemd/cryophile-thaw.service)
  cryophile thaw --once --json        # one pass over the requests, JSON log lines
  cryophile thaw --cancel --id VAULT/hosts/db1/01JDX…   # as `cryophile status` names it
exit status with --cancel: 0 cancelled (or nothing to cancel, said on stderr), 75 a
restore of that backup is running (stop it first).
exit status with --once: 0 requests progressed (or none), 65 a request failed
(a fragment missing or damaged in the vault), 69 the vault refused, 75 the vault
is unreachable (retry later).
"""


def _add_thaw(commands: Any) -> argparse.ArgumentParser:
    """Add the ``thaw`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "thaw", help="thaw and download requested backups", description=_THAW_DESCRIPTION,
        epilog=_THAW_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true",
                        help="one pass over the requests, then exit")
    add_selection_options(parser)
    parser.add_argument("--poll", type=non_negative_seconds, default=FIRST_POLL_SECONDS,
                        metavar="SECONDS", help="first poll interval for restores in progress; "
                                                "doubles up to 15 minutes (default 60)")
    add_daemon_options(parser)
    parser.add_argument("--cancel", action="store_true",
                        help="instead of thawing: " + CANCEL_HELP + " (needs -v and -u, or --id)")
    return parser


# -- list ----------------------------------------------------------------------
_LIST_DESCRIPTION = """\
List every backup known locally (the spool's queues) and in the vaults, newest
first: id, created time, stored size, fragments, compression, storage class of
the fragments, and state:

  writing         being written by `cryophile backup` (its lock is held)
  incomplete      no manifest and its writer is gone (or, in the vault,
                  fragments without a manifest): never restorable
  queued          complete in SPOOL/freeze/, nothing uploaded yet
  partly_frozen   complete, some fragments uploaded, the rest queued
  frozen          complete in the vault (its manifest is there)
  damaged         in the vault, but its manifest is damaged or fragments
                  are missing from the listing (run `cryophile verify`)
  unreadable      in the vault, but its manifest could not be read now:
                  archived by a lifecycle rule, or the vault failed or
                  refused on it (the error says which and what to do)
  thaw_requested  a restore request waits for the thaw daemon
  thawing         Glacier restores or downloads under way
  thaw_failed     the restore request failed (the error says why)
  restored        complete in SPOOL/restore/, ready for `cryophile restore`

Without -v: the vaults the spool mentions and every configured vault (with no
configuration file listing vaults: every embedded directory vault beside the
spool). A -v that the configuration does not list is an error (exit 78). -p
selects a prefix and everything below it. Reads only queue directories,
manifests (plain JSON) and one `stat` of fragment 1 per backup: no secret key,
no fragment download, no Glacier restore.
"""


_LIST_EXAMPLES = """\
examples:
  cryophile list
  cryophile list -v VAULT -p hosts/db1
  cryophile list --json | jq -r '.[] | select(.state != "frozen") | .id'
exit status: 0 listed; 3 some backups are unreadable (each is listed with the
reason; everything else was listed); 69, 75 or another error's code when a
vault could not be read at all (what could be read is still listed, and stderr
names the vault).
"""


def _add_list(commands: Any) -> argparse.ArgumentParser:
    """Add the ``list`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "list", help="list backups in the spool and the vaults", description=_LIST_DESCRIPTION,
        epilog=_LIST_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--vault", metavar="VAULT",
                        help="only this vault, by UUID or configured name (default: every vault "
                             "known)")
    parser.add_argument("--utc", action="store_true",
                        help="show times in UTC (default: local time, as TZ says)")
    parser.add_argument("-p", "--prefix", metavar="PREFIX",
                        help="only backups with this prefix or one below it")
    parser.add_argument("--label", action="append", type=label_pair, default=[],
                        metavar="KEY=VALUE",
                        help="only backups carrying this label (repeatable: all of them)")
    parser.add_argument("--tree", action="store_true",
                        help="draw incremental chains: each backup under its parent")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON array of objects (schema in the README)")
    return parser


# -- verify --------------------------------------------------------------------
_VERIFY_DESCRIPTION = """\
Check that a backup in the vault is complete and intact, without any secret
key: the manifest is valid, and every fragment it lists exists with the
manifest's size and SHA-256 as the vault records them (object metadata: no
download, no Glacier restore). --download also downloads every fragment that
is readable now (not archived, or already restored) into the spool and
computes its SHA-256, which finds damage inside an object that metadata cannot.
With -k and --download, the fragments are also decrypted and decompressed to
nowhere, proving the backup restores (spool space: two fragments).
"""


_VERIFY_EXAMPLES = """\
examples:
  cryophile verify -v VAULT -p hosts/db1 --all                 # nightly, cheap
  cryophile verify -v VAULT -p hosts/db1 -u 01JDX… --download  # read every byte back
  cryophile verify -v VAULT -p hosts/db1 -u 01JDX… --download -k backup.key -P 3 3<pass
  cryophile verify -v VAULT -p hosts/db1 --all --signed-by host-sign.cert
exit status: 0 healthy; 65 damaged (each bad fragment is named; with
--signed-by also a missing or bad manifest signature); 3 (--all) some
manifests unreadable (archived, or the vault failed on them; each is named),
the rest verified; 75 not checkable now (archived fragments with --download:
thaw them first; one backup's manifest not readable now); 66 no such backup in
the vault; 77 -k: no key or passphrase fits.
"""


def _add_verify(commands: Any) -> argparse.ArgumentParser:
    """Add the ``verify`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "verify", help="check that backups in the vault are complete and intact",
        description=_VERIFY_DESCRIPTION, epilog=_VERIFY_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--vault", metavar="VAULT",
                        help="vault id (a UUID) or its configured name (default: "
                             "$CRYOPHILE_VAULT)")
    needs_vault(parser)
    parser.add_argument("-p", "--prefix", default="", metavar="PREFIX",
                        help="the backup's prefix; with --all, this prefix and every one below")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("-u", "--ulid", metavar="ULID", help="the backup's ULID")
    which.add_argument("-t", "--timestamp", metavar="TIME", help="the backup of this RFC 3339 time")
    which.add_argument("--all", action="store_true", help="every backup (below -p)")
    add_id_option(which)
    parser.add_argument("--chain", action="store_true",
                        help="with -u/-t/--id: verify every link of the backup's incremental "
                             "chain, back to its full backup (a missing link is damage)")
    parser.add_argument("--download", action="store_true",
                        help="download every readable fragment and check its SHA-256")
    parser.add_argument("-k", "--keyring", action="append", type=Path, metavar="FILE",
                        help="with --download: also decrypt with this secret key (repeatable)")
    parser.add_argument("-P", "--pass-fd", type=file_descriptor, default=None, metavar="N",
                        help="with -k: read the passphrase from file descriptor N")
    parser.add_argument("--signed-by", type=Path, default=None, metavar="CERT",
                        help="require the manifest to be signed by a key in this certificate "
                             "file; unsigned or badly signed backups are DAMAGED (default: "
                             "signed_by in the config)")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="reference",
                        help="with -k: the OpenPGP engine (default: reference)")
    return parser


# -- status --------------------------------------------------------------------
_STATUS_DESCRIPTION = """\
Show what the daemons have to do now, read from the spool alone (no vault is
contacted, no key is needed): whether a freeze and a thaw daemon serve this
spool; per queue, the backups in it; for the freeze queue the fragments and
bytes waiting for upload, the error that stopped a backup's last upload (and
since when), the uploads running now, and withdrawn backups whose uploaded
objects the next pass removes; for the thaw queue each restore request with
its fragments cold / restoring / downloaded, and the error of a failed one;
the restore queue's backups; and abandoned backups (no manifest, writer gone),
which nothing will ever upload. Last, the leftovers: what nothing will finish or
remove by itself (thaw requests no restore waits on, restore queues with no
restore, abandoned backups, stale wait records and locks, interrupted prunes),
each with the exact command that removes it.
"""


_STATUS_EXAMPLES = """\
examples:
  cryophile status
  cryophile status --json | jq '.totals.freeze_bytes_waiting'
exit status: 0 (whatever the spool holds; alert on the JSON).
"""


def _add_status(commands: Any) -> argparse.ArgumentParser:
    """Add the ``status`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "status", help="show the spool's queues: uploads waiting, thaw requests",
        description=_STATUS_DESCRIPTION, epilog=_STATUS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (schema in the README)")
    return parser


# -- prune ---------------------------------------------------------------------
_PRUNE_DESCRIPTION = """\
Delete whole backups from a vault by a retention policy, in the spirit of
restic's `forget`. Per series (each prefix separately), newest first:

  --keep-last N      the N newest backups
  --keep-daily N     the newest backup of each of the N latest days with one
  --keep-weekly N    ... of each of the N latest ISO weeks with one
  --keep-monthly N   ... of each of the N latest months with one

A backup kept by any rule stays. Days, weeks and months are UTC periods of the
backup's time (its ULID's: the -t time it was named by, else when it was made).
Only complete backups (manifest in the vault) are candidates; uploads without a
manifest are reported and left alone. A backup being restored (in SPOOL/thaw/
or SPOOL/restore/) is kept.

Backups that must not decide anything are never counted by the rules, and
never deleted: with --signed-by (or signed_by in the config), a backup whose
manifest is not validly signed by that key is "untrusted" (forged, or from a
host that does not sign); a backup dated more than 1 hour after now (a wrong
clock, a typo in -t) is "future_dated". Both are reported and left for you.
When the listing, or the manifest (with --signed-by, the signature) of any
backup in the selection cannot be read, prune deletes nothing: a partial view
never decides deletions.

Deletion is manifest first, then the fragments: an interrupted prune leaves a
backup that lists as incomplete, never as complete, and the next prune finishes
it (the spool keeps a journal in SPOOL/prune/). Backups younger than their
storage class's minimum duration (GLACIER, GLACIER_IR 90 days, DEEP_ARCHIVE 180,
STANDARD_IA, ONEZONE_IA 30; counted from when the backup was written) are kept
for now unless --allow-early-deletion. A delete the vault refuses (object lock,
permissions) is reported and the others go on.

With --abandoned (instead of a policy): remove the backups this spool lists as
abandoned (their writer died before the manifest; see `cryophile status`): the
objects this spool's upload record says a freezer uploaded of them (objects
under the same id that this spool did not upload, another host's, are counted
and left alone), then SPOOL/freeze/ID, SPOOL/backup/ID and the record, holding
the backup's lock, so a live writer is never touched.

With --incomplete --older-than DURATION (instead of a policy): remove the
vault's objects of backups without a manifest that no spool here claims (left
by a host that lost its spool mid-backup), once their newest object is older
than DURATION (7d, 36h, 1w2d), so that no upload can still be running.
"""


_PRUNE_EXAMPLES = """\
examples:
  cryophile prune -v VAULT --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --dry-run
  cryophile prune -v VAULT -p hosts/db1 --keep-last 3 --signed-by host-sign.cert
  cryophile prune -v VAULT --keep-monthly 6 -n --json | jq '.backups[] | select(.action=="remove")'
  cryophile prune -v VAULT --abandoned --dry-run
  cryophile prune -v VAULT --incomplete --older-than 7d
exit status: 0 done (backups too young to delete, and future-dated ones, are kept
and named); 65 a manifest or signature in the vault is unreadable, 75 the vault
was unreachable while reading it (in both cases nothing is deleted); 65 untrusted
backups were found (the others were pruned); 69 the vault refused a delete
(object lock, permissions), 75 it became unreachable (what could be deleted was).
"""


def _add_prune(commands: Any) -> argparse.ArgumentParser:
    """Add the ``prune`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "prune", help="delete old backups from a vault by a retention policy",
        description=_PRUNE_DESCRIPTION, epilog=_PRUNE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--vault", metavar="VAULT",
                        help="the vault: its UUID or configured name (default: $CRYOPHILE_VAULT)")
    needs_vault(parser)
    parser.add_argument("-p", "--prefix", metavar="PREFIX",
                        help="only backups with this prefix or one below it (each prefix is "
                             "its own series)")
    for rule, period in (("last", "newest backups"), ("daily", "days"), ("weekly", "ISO weeks"),
                         ("monthly", "months")):
        parser.add_argument(f"--keep-{rule}", type=non_negative_count, default=0, metavar="N",
                            help=f"keep the latest backup of N {period}" if rule != "last"
                            else "keep the N newest backups")
    parser.add_argument("-n", "--dry-run", action="store_true",
                        help="print the plan, delete nothing")
    parser.add_argument("--allow-early-deletion", action="store_true",
                        help="also delete backups younger than their storage class's minimum "
                             "duration (billed as if stored that long)")
    parser.add_argument("--signed-by", type=Path, default=None, metavar="CERT",
                        help="count only backups whose manifest carries a valid signature "
                             "from a key in this certificate file; others are reported as "
                             "untrusted and never deleted (default: signed_by in the config)")
    parser.add_argument("--abandoned", action="store_true",
                        help="instead of a retention policy: remove the backups in this spool "
                             "whose writer died before the manifest (status lists them as "
                             "abandoned), with what a freezer uploaded of them")
    parser.add_argument("--incomplete", action="store_true",
                        help="instead of a retention policy: remove fragments in the vault of "
                             "backups without a manifest that no spool here claims (left by a "
                             "host that lost its spool); needs --older-than")
    parser.add_argument("--older-than", type=duration, default=None, metavar="DURATION",
                        help="with --incomplete: only backups whose newest object was stored "
                             "longer ago than this (e.g. 7d, 36h), so that no upload can "
                             "still be running")
    parser.add_argument("--json", action="store_true",
                        help="print the plan or result as one JSON object (schema in the README)")
    return parser


# -- keygen ------------------------------------------------------------------------
_KEYGEN_DESCRIPTION = """\
Make a storage-encryption key pair with the first OpenPGP tool found of sq,
sqop and gpg (--tool to choose): the certificate (public key) goes to the backup
host for `backup -k`; the secret key stays on the restoring or an offline machine
for `restore -k`. Writes NAME.cert.asc (0644), NAME.secret.asc (0600) and, when
the tool makes one, the revocation certificate NAME.rev.asc (0600) into
--output-dir, NAME being cryophile-<first 16 hex digits of the fingerprint>;
never overwrites a file. Both halves are checked as backup and restore will use
them before they are written. Refuses to write the secret key into or beside the
spool of this host's configuration, or into the directory of its configuration
file, of $CRYOPHILE_KEYRING's files or /etc/cryophile: the backup host must only
ever hold the certificate.
"""


_KEYGEN_EXAMPLES = """\
examples:
  cryophile keygen --output-dir ~/keys
  cryophile keygen --tool gpg --userid 'backups <ops@example.org>' --output-dir /media/usb
  cryophile keygen --tool sqop --pass-fd 3 --output-dir ~/keys 3<passphrase.txt
exit status: 0 made; 64 --output-dir is on the backup host's spool or keyring
directory (or not a directory); 69 no tool found, or it failed; 73 a file exists.
"""


def _add_keygen(commands: Any) -> argparse.ArgumentParser:
    """Add the ``keygen`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "keygen", help="make a storage-encryption key pair (sq, sqop or gpg)",
        description=_KEYGEN_DESCRIPTION, epilog=_KEYGEN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tool", choices=("sq", "sqop", "gpg"), default=None,
                        help="the OpenPGP tool that makes the key (default: the first "
                             "installed of sq, sqop, gpg)")
    parser.add_argument("--userid", default=None, metavar="USERID",
                        help="the key's user id (default: 'cryophile backups <USER@HOST>')")
    parser.add_argument("-o", "--output-dir", type=_path, default=Path(), metavar="DIR",
                        help="where to write the files (default: the current directory)")
    parser.add_argument("-P", "--pass-fd", type=file_descriptor, default=None, metavar="N",
                        help="protect the secret key with the first line read from file "
                             "descriptor N (sqop, gpg; default: no passphrase)")
    parser.add_argument("--json", action="store_true",
                        help="print the files and fingerprints as one JSON object")
    return parser


# -- completion ----------------------------------------------------------------
_COMPLETION_DESCRIPTION = """\
Print a completion script for bash or zsh, generated from cryophile's own
argument parser: commands, options, and the values options accept.
"""


_COMPLETION_EXAMPLES = """\
examples:
  cryophile completion bash > /etc/bash_completion.d/cryophile
  cryophile completion zsh > "${fpath[1]}/_cryophile"     # then: compinit
  source <(cryophile completion bash)                     # this shell only
"""


def _add_completion(commands: Any) -> argparse.ArgumentParser:
    """Add the ``completion`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "completion", help="print a shell completion script (bash, zsh)",
        description=_COMPLETION_DESCRIPTION, epilog=_COMPLETION_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    return parser


# -- man -----------------------------------------------------------------------
_MAN_EXAMPLES = """\
examples:
  cryophile man | man -l -
  cryophile man > /usr/local/share/man/man1/cryophile.1 && mandb -q
"""


def _add_man(commands: Any) -> argparse.ArgumentParser:
    """Add the ``man`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "man", help="print the man page cryophile(1) (roff, from these parsers)",
        description="Print the man page cryophile(1) in roff, generated from the same "
                    "parsers as --help: one section per command.",
        epilog=_MAN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


# -- unit-paths ----------------------------------------------------------------
_UNIT_PATHS_EXAMPLES = """\
examples:
  cryophile unit-paths
  for unit in cryophile-freeze cryophile-thaw; do
    mkdir -p /etc/systemd/system/$unit.service.d
    cryophile unit-paths > /etc/systemd/system/$unit.service.d/paths.conf
  done; systemctl daemon-reload
"""


def _add_unit_paths(commands: Any) -> argparse.ArgumentParser:
    """Add the ``unit-paths`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "unit-paths", help="print the systemd drop-in making the configuration's paths "
                           "writable for the hardened units",
        description="Print a systemd drop-in ([Service] ReadWritePaths=) for the hardened "
                    "units (ProtectSystem=strict): the configured spool and its embedded "
                    "vaults when not the default, every provider = \"dir\" vault's path and "
                    "the directory of metrics_file, from the configuration (-c) the daemons "
                    "read.",
        epilog=_UNIT_PATHS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


#: Each command by name, in the order ``--help`` lists them, with the function
#: that adds its parser; ``cryophile.cli.NAME`` runs it.
_COMMANDS: dict[str, Callable[[Any], argparse.ArgumentParser]] = {
    "backup": _add_backup, "restore": _add_restore, "freeze": _add_freeze, "thaw": _add_thaw,
    "list": _add_list, "verify": _add_verify, "status": _add_status, "prune": _add_prune,
    "keygen": _add_keygen, "completion": _add_completion, "man": _add_man,
    "unit-paths": _add_unit_paths,
}
#: The commands that are a module ``cryophile.cli.NAME`` (all but ``help``).
COMMANDS = tuple(_COMMANDS)


_MAIN_EPILOG = """\
environment (an option always wins; an empty variable counts as unset):
  CRYOPHILE_SPOOL      the spool (-S); it wins over the configuration's spool, and
                       a command says so when the two differ
  CRYOPHILE_CONFIG     the configuration file (-c)
  CRYOPHILE_VAULT      the vault of backup, restore, verify and prune (-v)
  CRYOPHILE_KEYRING    the keyring files of backup and restore (-k), ':'-separated
  CRYOPHILE_LOG        what to log: a level (error warn info debug trace off) or
                       TARGET=LEVEL,... as in warn,cryophile=trace
  CRYOPHILE_LOG_STYLE  auto (default, also when empty), always, never, json
  CRYOPHILE_ASKPASS    a program that prints a key's passphrase

exit codes: 0 ok, 3 partial (some backups could not be read), 64 usage, 65 bad
data, 66 no input, 69 service unavailable, 73 already exists, 74 I/O error,
75 try later, 77 no usable key, 78 config.
"""


def build_parser() -> argparse.ArgumentParser:
    """The full parser, every command included (also used for docs and completion).

    A parsed command line's ``command`` is the command's name.
    """
    parser = _Parser(
        prog="cryophile",
        description="Off-site backup of streams: compress, encrypt to OpenPGP keys, split into "
                    "fragments in a spool, freeze to S3/Glacier, thaw and restore.",
        epilog=_MAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cryophile {__version__}")
    _add_global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)
    for add in _COMMANDS.values():
        sub = add(commands)
        _add_global_options(sub, suppress=True)
    names = list(commands.choices)
    helper = commands.add_parser("help", help="show a command's help (cryophile help COMMAND)",
                                 description="Print the help of COMMAND (the same as "
                                             "'cryophile COMMAND --help'), or of cryophile.")
    helper.add_argument("topic", nargs="?", choices=names, metavar="COMMAND",
                        help=f"one of: {', '.join(names)}")
    return parser

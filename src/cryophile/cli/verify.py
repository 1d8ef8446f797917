"""``cryophile verify``: prove, without a secret key, that a backup in the vault is intact.

Three depths, each including the ones before:

1. always: the manifest is valid and describes this backup, and every fragment
   it lists is in the vault with the manifest's size and SHA-256, as the
   vault records them (``stat``: object metadata, no download, no restore);
2. ``--download``: every fragment that is readable now (not archived in
   Glacier, or restored) is downloaded to a private directory in the spool
   and its SHA-256 computed: this finds bit rot that metadata cannot;
3. ``-k KEY`` (with ``--download``): the fragments are also joined, decrypted
   (the OpenPGP integrity check included) and decompressed to nowhere, as a
   restore would: the backup provably restores. Fragments are downloaded one
   ahead of the decryption and deleted once read, so this needs spool space
   for two fragments, not the whole backup.

Exit status: 0 healthy, 65 damaged (each bad fragment is named), 75 not
checkable now (archived fragments and ``--download``: thaw them first); with
``--all``, 3 when some manifests could not be read (each is named) and every
other backup was verified.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryophile.backup_id import (
    BackupId,
    normalize_prefix,
    parse_timestamp,
    parse_ulid,
    parse_vault,
    ulid_for_timestamp,
)
from cryophile.cli.arguments import file_descriptor
from cryophile.cli.resources import open_config, open_spool
from cryophile.errors import ExitCode, NoInputError, UsageError, VaultUnavailableError
from cryophile.inventory import DOWN_AFTER, list_vault
from cryophile.passphrase import passphrase_source
from cryophile.pipeline.keys import load_secret_keys
from cryophile.pipeline.openpgp import ENGINES, engine_for
from cryophile.pipeline.stages import write_all
from cryophile.signing import load_trusted_signers
from cryophile.vault.factory import OpenedVault, open_vault
from cryophile.verification import Decryption, Report, Verifier

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Check that a backup in the vault is complete and intact, without any secret
key: the manifest is valid, and every fragment it lists exists with the
manifest's size and SHA-256 as the vault records them (object metadata: no
download, no Glacier restore). --download also downloads every fragment that
is readable now (not archived, or already restored) into the spool and
computes its SHA-256, which finds damage inside an object that metadata cannot.
With -k and --download, the fragments are also decrypted and decompressed to
nowhere, proving the backup restores (spool space: two fragments).
"""

EXAMPLES = """\
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


def register(commands: Any) -> argparse.ArgumentParser:
    """Add the ``verify`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "verify", help="check that backups in the vault are complete and intact",
        description=DESCRIPTION, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--vault", required=True, metavar="UUID", help="vault id (a UUID)")
    parser.add_argument("-p", "--prefix", default="", metavar="PREFIX",
                        help="the backup's prefix; with --all, this prefix and every one below")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("-u", "--ulid", metavar="ULID", help="the backup's ULID")
    which.add_argument("-t", "--timestamp", metavar="TIME", help="the backup of this RFC 3339 time")
    which.add_argument("--all", action="store_true", help="every backup (below -p)")
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
    parser.set_defaults(run=run)
    return parser


def _targets(args: argparse.Namespace, opened: OpenedVault) -> tuple[list[BackupId],
                                                                      list[BackupId]]:
    """The backups to verify, and (with --all) those with fragments but no manifest."""
    vault_id = opened.vault_id
    prefix = normalize_prefix(args.prefix)
    if not args.all:
        ulid = (parse_ulid(args.ulid) if args.ulid is not None
                else ulid_for_timestamp(parse_timestamp(args.timestamp)))
        return [BackupId(vault_id, prefix, ulid)], []
    listings = list_vault(opened.vault, vault_id, prefix or None)
    complete = sorted(b for b, listing in listings.items() if listing.has_manifest)
    partial = sorted(b for b, listing in listings.items() if not listing.has_manifest)
    if not complete:
        raise NoInputError(f"no backup in vault {vault_id}"
                           + (f" below prefix {prefix!r}" if prefix else ""))
    return complete, partial


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Verify the selected backups; the exit code is the worst verdict."""
    vault_id = parse_vault(args.vault)
    normalize_prefix(args.prefix)
    if args.keyring and not args.download:
        raise UsageError("-k decrypts what --download fetches: add --download")
    decryption = None
    if args.keyring:
        decryption = Decryption(load_secret_keys(args.keyring),
                                passphrase_source(args.pass_fd, environment.env),
                                engine_for(args.engine))
    config = open_config(args)
    signed_by = args.signed_by or config.signed_by
    signers = None if signed_by is None else load_trusted_signers(signed_by)
    spool = open_spool(args, environment.env, config)
    opened = open_vault(vault_id, config, spool.root)
    targets, partial = _targets(args, opened)
    reports: list[Report] = []
    with tempfile.TemporaryDirectory(prefix=".cryophile-verify-", dir=spool.root) as name:
        verifier = Verifier(opened, Path(name), download=args.download, decryption=decryption,
                            signers=signers)
        failing: list[VaultUnavailableError] = []
        for backup_id in targets:
            if not args.all:
                backup_id = _check_exists(opened, backup_id)
            report = verifier.verify(backup_id)
            reports.append(report)
            write_all(environment.stdout_fd, (report.describe() + "\n").encode())
            if isinstance(report.unreadable, VaultUnavailableError):
                failing.append(report.unreadable)
            else:
                failing.clear()
            if len(failing) >= DOWN_AFTER:
                # Not one object failing: the vault is down, and each further try
                # would cost the client's whole retry budget.
                raise VaultUnavailableError(
                    f"vault {vault_id} failed on {len(failing)} manifests in a row, so the "
                    f"other backups were not verified: {failing[-1]}")
    for backup_id in partial:
        write_all(environment.stdout_fd,
                  f"{backup_id}: skipped: fragments without a manifest (an upload in "
                  "progress, or abandoned)\n".encode())
    damaged = [report for report in reports if report.exit_code is ExitCode.DATAERR]
    unreadable = [report for report in reports
                  if report.unreadable is not None and report.exit_code is not ExitCode.DATAERR]
    later = [report for report in reports
             if report.unreadable is None and report.exit_code is ExitCode.TEMPFAIL]
    if args.all:
        healthy = len(reports) - len(damaged) - len(unreadable) - len(later)
        summary = (f"{len(reports)} backup(s): {healthy} healthy, {len(damaged)} damaged, "
                   f"{len(later)} not checkable now, {len(unreadable)} unreadable")
        if partial:
            summary += f"; {len(partial)} incomplete upload(s) skipped"
        write_all(environment.stdout_fd, (summary + "\n").encode())
    if damaged:
        return int(ExitCode.DATAERR)
    if unreadable:
        # --all: the others were verified (3, partial); one backup: its error's code.
        return int(ExitCode.PARTIAL if args.all else unreadable[0].exit_code)
    if later:
        return int(ExitCode.TEMPFAIL)
    return 0


def _check_exists(opened: OpenedVault, backup_id: BackupId) -> BackupId:
    """``backup_id``, or NoInputError saying what the vault has instead."""
    if opened.vault.stat(backup_id.object_key(0)) is None:
        listed = any(True for _ in opened.vault.list(f"{backup_id.key_prefix}/"))
        detail = ("it has fragments of it but no manifest: an upload in progress, or "
                  "abandoned" if listed else "no object of it at all")
        raise NoInputError(f"backup {backup_id} is not in vault {backup_id.vault}: {detail}")
    return backup_id

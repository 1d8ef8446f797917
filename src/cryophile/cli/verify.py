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
from typing import TYPE_CHECKING

from cryophile.backup_id import (
    BackupId,
    normalize_prefix,
    parse_vault,
)
from cryophile.chain_restore import find_chain, missing_link
from cryophile.chains import Chain
from cryophile.cli.arguments import backup_id_from
from cryophile.cli.resources import CommandContext
from cryophile.errors import ExitCode, NoInputError, UsageError, VaultUnavailableError
from cryophile.inventory import DOWN_AFTER, list_vault
from cryophile.passphrase import passphrase_source
from cryophile.pipeline.engines import engine_for
from cryophile.pipeline.keys import load_secret_keys
from cryophile.pipeline.stages import write_all
from cryophile.signing import load_trusted_signers
from cryophile.vault.factory import OpenedVault
from cryophile.verification import Decryption, Report, Verifier

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

logger = logging.getLogger(__name__)


def _targets(args: argparse.Namespace, opened: OpenedVault) -> tuple[list[BackupId],
                                                                      list[BackupId]]:
    """The backups to verify, and (with --all) those with fragments but no manifest."""
    vault_id = opened.vault_id
    prefix = normalize_prefix(args.prefix)
    if not args.all:
        return [backup_id_from(args, new=False)], []
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
    if args.chain and args.all:
        raise UsageError("--chain verifies the chain of one backup: give -u, -t or --id, not "
                         "--all")
    decryption = None
    if args.keyring:
        decryption = Decryption(load_secret_keys(args.keyring),
                                passphrase_source(args.pass_fd, environment.env),
                                engine_for(args.engine))
    context = CommandContext(args, environment.env)
    signed_by = args.signed_by or context.config.signed_by
    signers = None if signed_by is None else load_trusted_signers(signed_by)
    spool = context.spool
    opened = context.vault(vault_id)
    targets, partial = _targets(args, opened)
    chain: Chain | None = None
    if args.chain:
        chain = find_chain(spool, opened, targets[0])
        targets = list(chain.links)
    reports: list[Report] = []
    with spool.scratch("verify") as scratch:
        verifier = Verifier(opened, scratch, download=args.download, decryption=decryption,
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
    if chain is not None:
        _report_chain(environment, chain, reports)
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
    if damaged or (chain is not None and not chain.whole):
        return int(ExitCode.DATAERR)
    if unreadable:
        # --all: the others were verified (3, partial); one backup: its error's code.
        return int(ExitCode.PARTIAL if args.all else unreadable[0].exit_code)
    if later:
        return int(ExitCode.TEMPFAIL)
    return 0


def _report_chain(environment: Environment, chain: Chain, reports: list[Report]) -> None:
    """``--chain``: the missing link (if any), then one line on the whole chain."""
    target = chain.links[-1]
    damaged = sum(report.exit_code is ExitCode.DATAERR for report in reports)
    problem = missing_link(chain)
    lines = []
    if chain.missing is not None:
        lines.append(f"{chain.missing}: MISSING: not a complete backup in the vault (deleted, "
                     f"or never completed); {chain.links[0].ulid} names it as its parent")
    if problem is not None:
        lines.append(f"chain of {target}: broken: {problem}; {damaged} of {len(reports)} "
                     "link(s) found damaged")
    elif damaged:
        lines.append(f"chain of {target}: {damaged} of {len(reports)} link(s) damaged")
    else:
        lines.append(f"chain of {target}: {len(reports)} link(s), every one healthy")
    write_all(environment.stdout_fd, ("\n".join(lines) + "\n").encode())


def _check_exists(opened: OpenedVault, backup_id: BackupId) -> BackupId:
    """``backup_id``, or NoInputError saying what the vault has instead."""
    if opened.vault.stat(backup_id.object_key(0)) is None:
        listed = any(True for _ in opened.vault.list(f"{backup_id.key_prefix}/"))
        detail = ("it has fragments of it but no manifest: an upload in progress, or "
                  "abandoned" if listed else "no object of it at all")
        raise NoInputError(f"backup {backup_id} is not in vault {backup_id.vault}: {detail}")
    return backup_id

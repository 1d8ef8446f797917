"""``cryophile list``: every backup known locally and in the vaults, newest first."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from cryophile.backup_id import normalize_prefix, parse_vault, rfc3339
from cryophile.cli.resources import open_config, open_spool
from cryophile.errors import ExitCode, exit_code_of
from cryophile.inventory import Entry, known_vaults, take_inventory
from cryophile.pipeline.stages import write_all
from cryophile.units import human_bytes
from cryophile.vault.factory import open_vault, unknown_vault

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

DESCRIPTION = """\
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

EXAMPLES = """\
examples:
  cryophile list
  cryophile list -v VAULT -p hosts/db1
  cryophile list --json | jq -r '.[] | select(.state != "frozen") | .id'
exit status: 0 listed; 3 some backups are unreadable (each is listed with the
reason; everything else was listed); 69, 75 or another error's code when a
vault could not be read at all (what could be read is still listed, and stderr
names the vault).
"""

COLUMNS = ("CREATED", "STATE", "SIZE", "FRAGMENTS", "COMPRESSION", "CLASS", "BACKUP")


def register(commands: Any) -> argparse.ArgumentParser:
    """Add the ``list`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "list", help="list backups in the spool and the vaults", description=DESCRIPTION,
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--vault", metavar="UUID",
                        help="only this vault (default: every vault known)")
    parser.add_argument("-p", "--prefix", metavar="PREFIX",
                        help="only backups with this prefix or one below it")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON array of objects (schema in the README)")
    parser.set_defaults(run=run)
    return parser


def _row(entry: Entry) -> tuple[str, ...]:
    manifest = entry.manifest
    return (
        rfc3339(entry.created.replace(microsecond=0)),
        entry.state.value,
        human_bytes(manifest.stored_bytes) if manifest is not None else "-",
        str(len(manifest.fragments)) if manifest is not None else "-",
        manifest.compression if manifest is not None else "-",
        entry.storage_class or "-",
        str(entry.backup_id),
    )


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """Left-aligned columns (right-aligned numbers), the last column unpadded."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.rjust(width) if header[i] in ("SIZE", "FRAGMENTS") else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=False))]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Gather the inventory and print it."""
    only_vault = parse_vault(args.vault) if args.vault is not None else None
    prefix = normalize_prefix(args.prefix) if args.prefix is not None else None
    config = open_config(args)
    if only_vault is not None and config.vaults and config.vault(only_vault) is None:
        raise unknown_vault(only_vault, config)  # a typo in -v is not "no backups found"
    spool = open_spool(args, environment.env, config, read_only=True)
    vault_ids = [only_vault] if only_vault is not None else known_vaults(spool, config)
    inventory = take_inventory(spool, lambda vault_id: open_vault(vault_id, config, spool.root),
                               vault_ids, prefix=prefix, only_vault=only_vault)
    if args.json:
        document = [entry.as_json() for entry in inventory.entries]
        output = json.dumps(document, indent=1) + "\n"
    elif inventory.entries:
        output = format_table([_row(entry) for entry in inventory.entries], COLUMNS)
    else:
        output = ""
        if not args.quiet:
            print("cryophile: no backups found", file=environment.stderr)
    write_all(environment.stdout_fd, output.encode())
    # The table has no room for the reason: stderr gives it (the vault's own line
    # covers the backups of a vault that went down).
    errors = {entry.backup_id: entry.error for entry in inventory.entries}
    for backup_id in inventory.unreadable:
        if backup_id.vault not in inventory.failures:
            print(f"cryophile: error: {backup_id} is unreadable: {errors[backup_id]}",
                  file=environment.stderr)
    for vault_id, error in inventory.failures.items():
        print(f"cryophile: error: vault {vault_id} could not be read; backups only it holds are "
              f"missing from this list: {error}", file=environment.stderr)
    if inventory.failures:
        # A transient failure is "try later" (75) whatever its class.
        return int(exit_code_of(inventory.failures.values()))
    return int(ExitCode.PARTIAL if inventory.unreadable else ExitCode.OK)


"""``cryophile list``: every backup known locally and in the vaults, newest first."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from cryophile.backup_id import normalize_prefix, parse_vault, rfc3339
from cryophile.cli.resources import CommandContext
from cryophile.errors import ExitCode, exit_code_of
from cryophile.inventory import Entry, known_vaults, take_inventory
from cryophile.pipeline.stages import write_all
from cryophile.units import human_bytes
from cryophile.vault.factory import unknown_vault

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

COLUMNS = ("CREATED", "STATE", "SIZE", "FRAGMENTS", "COMPRESSION", "CLASS", "BACKUP")


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
    context = CommandContext(args, environment.env, read_only=True)
    config = context.config
    if only_vault is not None and config.vaults and config.vault(only_vault) is None:
        raise unknown_vault(only_vault, config)  # a typo in -v is not "no backups found"
    spool = context.spool
    vault_ids = [only_vault] if only_vault is not None else known_vaults(spool, config)
    inventory = take_inventory(spool, context.vault, vault_ids, prefix=prefix,
                               only_vault=only_vault)
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


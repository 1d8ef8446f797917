"""``cryophile list``: every backup known locally and in the vaults, newest first by
the backup's own time (its ULID's)."""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryophile.backup_id import normalize_prefix, parse_vault, rfc3339
from cryophile.chains import Parents, chain_of, children_of
from cryophile.cli.resources import CommandContext
from cryophile.config import Config
from cryophile.errors import ExitCode, exit_code_of
from cryophile.inventory import Entry, known_vaults, take_inventory
from cryophile.pipeline.stages import write_all
from cryophile.units import human_bytes
from cryophile.vault.factory import unknown_vault

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

#: The columns of a row; the id goes on the line below it, whole, to be pasted
#: after ``--id``: so every row fits 80 columns whatever the prefix's length.
COLUMNS = ("TIME", "WRITTEN", "STATE", "SIZE", "FRAGS", "COMP")
_NUMERIC = frozenset({"SIZE", "FRAGS"})


def _clock(when: datetime, utc: bool) -> str:
    """``2026-11-05 03:00``: in UTC, or in local time (as TZ says)."""
    return (when.astimezone(UTC) if utc else when.astimezone()).strftime("%Y-%m-%d %H:%M")


def display_id(entry: Entry, config: Config) -> str:
    """The id as ``--id`` takes it: ``NAME/PREFIX/ULID`` when the vault has a name."""
    backup_id = entry.backup_id
    configured = config.vault(backup_id.vault)
    if configured is None or configured.name is None:
        return str(backup_id)
    return f"{configured.name}/{backup_id.key_prefix}"


def _row(entry: Entry, utc: bool) -> tuple[str, ...]:
    manifest = entry.manifest
    return (
        _clock(entry.backup_id.created, utc),
        _clock(entry.created, utc),
        entry.state.value,
        human_bytes(manifest.stored_bytes) if manifest is not None else "-",
        str(len(manifest.fragments)) if manifest is not None else "-",
        manifest.compression if manifest is not None else "-",
    )


def _has_labels(entry: Entry, wanted: list[tuple[str, str]]) -> bool:
    labels = dict(entry.manifest.labels) if entry.manifest is not None else {}
    return all(labels.get(key) == value for key, value in wanted)


def _chain_fields(entry: Entry, parents: Parents) -> dict[str, Any]:
    """``chain``: the ids from the full backup to this one; ``chain_problem``: why it
    cannot be restored (a parent missing or a loop), else null."""
    chain = chain_of(entry.backup_id, parents)
    return {"chain": [str(link) for link in chain.links], "chain_problem": chain.problem()}


def _tree(entries: list[Entry], parents: Parents) -> str:
    """Each full backup (or one whose parent is gone), newest first, with its
    incrementals below it, oldest first."""
    shown = {entry.backup_id: entry for entry in entries}
    children = children_of({b: p for b, p in parents.items() if b in shown})
    lines: list[str] = []

    def draw(entry: Entry, depth: int) -> None:
        labels = " ".join(f"{key}={value}" for key, value in
                          (entry.manifest.labels if entry.manifest is not None else ()))
        indent = "  " * (depth - 1) + "└─ " if depth else ""
        missing = ""
        parent = parents.get(entry.backup_id)
        if depth == 0 and parent is not None:
            missing = f"  (parent {parent.ulid} missing: cannot be restored)"
        lines.append(f"{indent}{rfc3339(entry.backup_id.created)}  {entry.state.value:<13} "
                     f"{entry.backup_id}{'  ' + labels if labels else ''}{missing}")
        for child in children.get(entry.backup_id, []):
            draw(shown[child], depth + 1)

    for entry in entries:
        parent = parents.get(entry.backup_id)
        if parent is None or parent not in shown:
            draw(entry, 0)
    return "\n".join(lines) + "\n"


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...],
                 ids: list[str] | None = None) -> str:
    """Left-aligned columns (right-aligned numbers); with ``ids``, each row's id
    on the line below it, indented."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for number, row in enumerate([header, *rows]):
        cells = [cell.rjust(width) if header[i] in _NUMERIC else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if ids is not None and number > 0:
            lines.append(f"  {ids[number - 1]}")
    return "\n".join(lines) + "\n"


def _zone(utc: bool) -> str:
    return "UTC" if utc else (datetime.now().astimezone().tzname() or "local")


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Gather the inventory and print it."""
    only_vault = parse_vault(args.vault) if args.vault is not None else None
    prefix = normalize_prefix(args.prefix) if args.prefix is not None else None
    context = CommandContext(args, environment.env, read_only=True)
    config = context.config
    if only_vault is not None and config.vaults and config.vault(only_vault) is None:
        raise unknown_vault(only_vault, config)  # a typo in -v is not "no backups found"
    spool = context.spool
    vault_ids: list[uuid.UUID] = ([only_vault] if only_vault is not None
                                  else known_vaults(spool, config))
    inventory = take_inventory(spool, context.vault, vault_ids, prefix=prefix,
                               only_vault=only_vault)
    # Chains are worked out on everything listed, before --label picks entries.
    parents = {entry.backup_id: entry.manifest.parent_id if entry.manifest else None
               for entry in inventory.entries}
    shown = [entry for entry in inventory.entries if _has_labels(entry, args.label)]
    if args.json:
        document = [{**entry.as_json(), "paste_id": display_id(entry, config),
                     **_chain_fields(entry, parents)} for entry in shown]
        output = json.dumps(document, indent=1) + "\n"
    elif shown and args.tree:
        output = _tree(shown, parents)
    elif shown:
        header = (f"TIME ({_zone(args.utc)})", *COLUMNS[1:])
        output = format_table([_row(entry, args.utc) for entry in shown], header,
                              [display_id(entry, config) for entry in shown])
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

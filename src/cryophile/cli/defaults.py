"""What a parsed command line takes from the environment when an option is left out.

As restic takes ``RESTIC_REPOSITORY`` for ``-r``: ``CRYOPHILE_CONFIG`` for
``-c/--config``, ``CRYOPHILE_VAULT`` for ``-v/--vault`` of the commands that
work on one vault (backup, restore, verify, prune: where ``-v`` is a filter,
in freeze, thaw and list, the environment does not narrow it, so a daemon
started from a shell that set it still serves every vault), and
``CRYOPHILE_KEYRING`` for ``-k/--keyring`` of backup (certificates) and
restore (secret keys): one file, or several separated by ``:``. An option
always wins; an empty variable counts as unset.

Then the shorthands are expanded: ``--id VAULT/PREFIX/ULID`` (what ``list``
prints) into ``-v``, ``-p`` and ``-u``; and a vault named by its
configured ``name`` (``-v offsite``) into its UUID.

:func:`complete` runs once, after parsing and before the command: the
commands then find every value in ``args`` as if it had been typed.
"""

from __future__ import annotations

import argparse
import re
import uuid
from collections.abc import Mapping
from pathlib import Path

from cryophile.config import VAULT_NAME, load_config
from cryophile.errors import UsageError

CONFIG_VARIABLE = "CRYOPHILE_CONFIG"
VAULT_VARIABLE = "CRYOPHILE_VAULT"
KEYRING_VARIABLE = "CRYOPHILE_KEYRING"


def needs_vault(parser: argparse.ArgumentParser) -> None:
    """Mark a command whose ``-v`` is required: CRYOPHILE_VAULT may give it."""
    parser.set_defaults(vault_required=True)


def needs_keyring(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """Mark a command whose ``-k`` CRYOPHILE_KEYRING may give (``required``: one is needed)."""
    parser.set_defaults(keyring_from_environment=True, keyring_required=required)


def complete(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """Fill ``args.config``, ``args.vault`` and ``args.keyring`` from the environment
    where the command line left them out; raise UsageError for a required one
    that neither gives."""
    if getattr(args, "config", None) is None and env.get(CONFIG_VARIABLE):
        args.config = Path(env[CONFIG_VARIABLE])
    if getattr(args, "id", None) is not None:
        _expand_id(args)
    if getattr(args, "vault_required", False) and args.vault is None:
        if not env.get(VAULT_VARIABLE):
            raise UsageError(f"the vault is required: give -v/--vault (or --id), or set "
                             f"{VAULT_VARIABLE} (see 'cryophile {args.command} --help')")
        args.vault = env[VAULT_VARIABLE]
    if getattr(args, "keyring_from_environment", False) and not args.keyring:
        files = [part for part in env.get(KEYRING_VARIABLE, "").split(":") if part]
        args.keyring = [Path(part) for part in files]
        if not files and getattr(args, "keyring_required", False):
            raise UsageError(f"a keyring is required: give -k/--keyring FILE, or set "
                             f"{KEYRING_VARIABLE} (see 'cryophile {args.command} --help')")
    vault = getattr(args, "vault", None)
    # Anything that cannot be a name is left for the UUID parser to refuse.
    if vault is not None and not _UUID_FORM.fullmatch(vault) and VAULT_NAME.fullmatch(vault):
        args.vault = str(_vault_by_name(vault, args.config))


_UUID_FORM = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def add_id_option(group: argparse._MutuallyExclusiveGroup | argparse.ArgumentParser) -> None:
    """``--id VAULT/PREFIX/ULID``: one backup, as ``list`` prints it (in ``group``,
    the options it excludes: ``-u`` and ``-t``)."""
    group.add_argument("--id", metavar="VAULT/PREFIX/ULID",
                       help="the backup as `cryophile list` prints it, instead of -v, -p and -u "
                            "(VAULT: its UUID or configured name)")


def _expand_id(args: argparse.Namespace) -> None:
    text: str = args.id
    parts = text.split("/")
    if len(parts) < 2 or not parts[0] or not parts[-1]:
        raise UsageError(f"invalid --id {text!r}: expected VAULT/PREFIX/ULID or VAULT/ULID, "
                         "as `cryophile list` prints it")
    if args.vault is not None or getattr(args, "prefix", None):
        raise UsageError("--id names the vault, the prefix and the ULID: give it without -v "
                         "and -p")
    args.vault = parts[0]
    args.prefix = "/".join(parts[1:-1])
    args.ulid = parts[-1]


def _vault_by_name(name: str, config_path: Path | None) -> uuid.UUID:
    """The UUID of the configured vault called ``name``; ConfigError when none is."""
    config = load_config(config_path)
    entry = config.vault_named(name)
    if entry is None:
        named = sorted(entry.name for entry in config.vaults if entry.name)
        listed = f"its names: {', '.join(named)}" if named else "it names no vault"
        where = (f"the configuration {config.source} has no vault of that name ({listed})"
                 if config.source else "no configuration file is in use, so no vault has a name")
        raise UsageError(f"invalid vault UUID or name {name!r}: {where}; a vault is named by "
                         'name = "..." in its [[vault]] table')
    return entry.id

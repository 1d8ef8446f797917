"""What a parsed command line takes from the environment when an option is left out.

As restic takes ``RESTIC_REPOSITORY`` for ``-r``: ``CRYOPHILE_CONFIG`` for
``-c/--config``, ``CRYOPHILE_VAULT`` for ``-v/--vault`` of the commands that
work on one vault (backup, restore, verify, prune: where ``-v`` is a filter,
in freeze, thaw and list, the environment does not narrow it, so a daemon
started from a shell that set it still serves every vault), and
``CRYOPHILE_KEYRING`` for ``-k/--keyring`` of backup (certificates) and
restore (secret keys): one file, or several separated by ``:``. An option
always wins; an empty variable counts as unset.

:func:`complete` runs once, after parsing and before the command: the
commands then find every value in ``args`` as if it had been typed.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

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

"""``thaw --cancel`` and ``restore --cancel``: one backup's thaw request, partial
downloads and restore queue out of the spool (:mod:`cryophile.cancel`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cryophile.backup_id import BackupId
from cryophile.cancel import cancel_restore
from cryophile.cli.arguments import backup_id_from
from cryophile.cli.resources import CommandContext
from cryophile.errors import UsageError

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

def cancel_backup_id(args: argparse.Namespace) -> BackupId:
    """The one backup ``-v -p -u|-t`` or ``--id`` names (UsageError otherwise)."""
    if args.vault is None or (args.ulid is None and args.timestamp is None):
        raise UsageError("--cancel needs one backup: -v VAULT [-p PREFIX] -u ULID (or -t TIME), "
                         "or --id VAULT/PREFIX/ULID as `cryophile status` prints it")
    return backup_id_from(args, new=False)


def run_cancel(args: argparse.Namespace, environment: Environment) -> int:
    """Cancel; say what went (or that nothing was there) on stderr; exit 0."""
    backup_id = cancel_backup_id(args)
    spool = CommandContext(args, environment.env).spool

    def notify(message: str) -> None:
        if not args.quiet:
            print(f"cryophile: {message}", file=environment.stderr, flush=True)

    outcome = cancel_restore(spool, backup_id, notify=notify)
    if not args.quiet or outcome.nothing:
        print(f"cryophile: {outcome.describe()}", file=environment.stderr, flush=True)
    return 0

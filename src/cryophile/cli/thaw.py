"""``cryophile thaw``: serve restore requests — thaw from Glacier, download to the restore queue."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

from cryophile.cli.arguments import add_selection_options, non_negative_seconds, selection_from
from cryophile.cli.daemon import add_daemon_options, pass_exit_code, serve_until_signalled
from cryophile.cli.resources import open_config, open_spool
from cryophile.daemons.thaw import FIRST_POLL_SECONDS, MAX_POLL_SECONDS, Thawer
from cryophile.metrics import recorder
from cryophile.thaw_plan import ThawPlan
from cryophile.vault.factory import open_vault

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Serve the restore requests in SPOOL/thaw/ (filed by `cryophile restore`): read
each backup's manifest from the vault, ask for a restore of every fragment in an
archive storage class (GLACIER, DEEP_ARCHIVE, Intelligent-Tiering archive tiers)
with the request's tier and days, poll with back-off until the restored copies
are readable, download each fragment, check its SHA-256 against the manifest and
place it in SPOOL/restore/. Objects that need no restore are downloaded at once.
All state lives in SPOOL/thaw/, so a killed or rebooted thaw loses nothing.
"""

EXAMPLES = """\
examples:
  cryophile thaw                      # daemon (see contrib/systemd/cryophile-thaw.service)
  cryophile thaw --once --json        # one pass over the requests, JSON log lines
exit status with --once: 0 requests progressed (or none), 65 a request failed
(a fragment missing or damaged in the vault), 69 the vault refused, 75 the vault
is unreachable (retry later).
"""


def register(commands: Any) -> argparse.ArgumentParser:
    """Add the ``thaw`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "thaw", help="thaw and download requested backups", description=DESCRIPTION,
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true",
                        help="one pass over the requests, then exit")
    add_selection_options(parser)
    parser.add_argument("--poll", type=non_negative_seconds, default=FIRST_POLL_SECONDS,
                        metavar="SECONDS", help="first poll interval for restores in progress; "
                                                "doubles up to 15 minutes (default 60)")
    add_daemon_options(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace, environment: Environment) -> int:
    """One pass (``--once``) or the daemon loop."""
    selection = selection_from(args)
    config = open_config(args)
    spool = open_spool(args, environment.env, config)

    def show_plan(plan: ThawPlan) -> None:
        if not args.json_logs and not args.quiet:
            print(f"cryophile: {plan.describe()}", file=environment.stderr)

    record = recorder(args.metrics or config.metrics_file, spool, "thaw")
    thawer = Thawer(spool, lambda vault_id: open_vault(vault_id, config, spool.root),
                    selection=selection, first_poll=args.poll,
                    max_poll=max(args.poll, MAX_POLL_SECONDS), on_plan=show_plan,
                    on_pass=lambda completed, errors: record(completed, errors.values()))
    if args.once:
        errors = thawer.run_pass()
        if args.json_logs:
            logger.info("thaw pass done", extra={"event": "pass", "failed": len(errors)})
        return pass_exit_code(errors.values())
    serve_until_signalled("thaw", thawer.run)
    return 0

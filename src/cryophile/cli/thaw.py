"""``cryophile thaw``: serve restore requests — thaw from Glacier, download to the restore queue."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from cryophile.cli.arguments import selection_from
from cryophile.cli.cancelling import run_cancel
from cryophile.cli.daemon import serve_until_signalled
from cryophile.cli.resources import CommandContext
from cryophile.daemons.thaw import MAX_POLL_SECONDS, Thawer
from cryophile.errors import exit_code_of
from cryophile.metrics import recorder
from cryophile.thaw_plan import ThawPlan

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace, environment: Environment) -> int:
    """One pass (``--once``) or the daemon loop."""
    if args.cancel:
        return run_cancel(args, environment)
    selection = selection_from(args)
    context = CommandContext(args, environment.env)
    spool = context.spool

    def show_plan(plan: ThawPlan) -> None:
        if not args.json_logs and not args.quiet:
            print(f"cryophile: {plan.describe()}", file=environment.stderr)

    record = recorder(args.metrics or context.config.metrics_file, spool, "thaw")
    thawer = Thawer(spool, context.vault,
                    selection=selection, first_poll=args.poll,
                    max_poll=max(args.poll, MAX_POLL_SECONDS), on_plan=show_plan,
                    on_pass=lambda completed, errors: record(completed, errors.values()))
    if args.once:
        errors = thawer.run_pass()
        if args.json_logs:
            logger.info("thaw pass done", extra={"event": "pass", "failed": len(errors)})
        return int(exit_code_of(errors.values()))
    serve_until_signalled("thaw", thawer.run)
    return 0

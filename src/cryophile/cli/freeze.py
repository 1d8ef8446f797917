"""``cryophile freeze``: upload the freeze queue to the vaults (daemon, or ``--once``)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from cryophile.cli.arguments import selection_from
from cryophile.cli.daemon import serve_until_signalled
from cryophile.cli.resources import CommandContext
from cryophile.daemons.freeze import Freezer
from cryophile.errors import exit_code_of
from cryophile.metrics import recorder

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace, environment: Environment) -> int:
    """One pass (``--once``) or the daemon loop."""
    selection = selection_from(args)
    context = CommandContext(args, environment.env)
    spool = context.spool
    record = recorder(args.metrics or context.config.metrics_file, spool, "freeze")
    freezer = Freezer(spool, context.vault,
                      parallel=args.parallel, selection=selection,
                      on_pass=lambda report: record(report.completed, report.failed.values()),
                      retarget=args.retarget)
    if args.once:
        report = freezer.run_pass()
        logger.info("freeze pass: %d object(s), %d bytes uploaded; %d backup(s) completed, "
                    "%d still being written, %d failed", report.uploaded,
                    report.uploaded_bytes, len(report.completed), len(report.waiting),
                    len(report.failed))
        return int(exit_code_of(report.failed.values()))
    serve_until_signalled("freeze", lambda stop: freezer.run(stop, rescan=args.rescan))
    return 0

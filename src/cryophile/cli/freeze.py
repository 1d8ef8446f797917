"""``cryophile freeze``: upload the freeze queue to the vaults (daemon, or ``--once``)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

from cryophile.cli.arguments import (
    add_selection_options,
    non_negative_seconds,
    selection_from,
    whole_number_up_to,
)
from cryophile.cli.daemon import add_daemon_options, pass_exit_code, serve_until_signalled
from cryophile.cli.resources import open_config, open_spool
from cryophile.daemons.freeze import DEFAULT_PARALLEL, MAX_PARALLEL, RESCAN_SECONDS, Freezer
from cryophile.metrics import recorder
from cryophile.vault.factory import open_vault

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Upload complete fragments from SPOOL/freeze/ to their vault, several at a time,
each with its SHA-256 for the vault to verify; delete a local fragment only when
the vault confirms its size and checksum; upload the manifest last (in STANDARD)
and remove the backup from the queue. As a daemon it rescans the queue
periodically and wakes early when fragments land (inotify); SIGTERM stops it
after the uploads in flight. A vault without a config entry is the embedded
local directory vault (SPOOL-vaults/UUID beside the spool).
"""

EXAMPLES = """\
examples:
  cryophile freeze                         # daemon (see contrib/systemd/cryophile-freeze.service)
  cryophile freeze --once                  # upload what is queued now, then exit (cron)
  cryophile freeze --once -v VAULT -p hosts/db1 -u 01JDX…   # one backup only
exit status with --once: 0 all uploaded (or still being written), 75 a transient
vault failure (retry later), 69 the vault refused, 65 queued data is damaged,
73 the vault holds an object under the backup's id that this spool did not upload
(never overwritten), 78 the backup was queued for another place than this
configuration's (run with the backup's configuration, or --retarget).
"""


def register(commands: Any) -> argparse.ArgumentParser:
    """Add the ``freeze`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "freeze", help="upload queued fragments to the vault", description=DESCRIPTION,
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true",
                        help="one pass over the queue, then exit")
    add_selection_options(parser)
    parser.add_argument("-j", "--parallel", type=whole_number_up_to(MAX_PARALLEL),
                        default=DEFAULT_PARALLEL, metavar="N",
                        help=f"uploads in parallel, 1 to {MAX_PARALLEL} "
                             f"(default {DEFAULT_PARALLEL})")
    parser.add_argument("--retarget", action="store_true",
                        help="send backups queued for another bucket or directory of their "
                             "vault (a bucket name fixed in the configuration, a vault that "
                             "moved) to the configured one instead of refusing them (exit 78)")
    parser.add_argument("--rescan", type=non_negative_seconds, default=RESCAN_SECONDS,
                        metavar="SECONDS", help="daemon: rescan period (default 60)")
    add_daemon_options(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace, environment: Environment) -> int:
    """One pass (``--once``) or the daemon loop."""
    selection = selection_from(args)
    config = open_config(args)
    spool = open_spool(args, environment.env, config)
    record = recorder(args.metrics or config.metrics_file, spool, "freeze")
    freezer = Freezer(spool, lambda vault_id: open_vault(vault_id, config, spool.root),
                      parallel=args.parallel, selection=selection,
                      on_pass=lambda report: record(report.completed, report.failed.values()),
                      retarget=args.retarget)
    if args.once:
        report = freezer.run_pass()
        logger.info("freeze pass: %d object(s), %d bytes uploaded; %d backup(s) completed, "
                    "%d still being written, %d failed", report.uploaded,
                    report.uploaded_bytes, len(report.completed), len(report.waiting),
                    len(report.failed))
        return pass_exit_code(report.failed.values())
    serve_until_signalled("freeze", lambda stop: freezer.run(stop, rescan=args.rescan))
    return 0

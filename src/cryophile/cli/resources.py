"""Opening what commands work on: the configuration and the spool.

Commands receive these opened and checked, instead of each finding and
validating them on its own.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from cryophile.config import Config, load_config
from cryophile.errors import StorageIOError
from cryophile.spool import Spool, default_spool_root


def open_config(args: argparse.Namespace) -> Config:
    """The configuration named by ``-c``, else found in the standard places."""
    return load_config(args.config)


def open_spool(args: argparse.Namespace, env: Mapping[str, str], config: Config, *,
               read_only: bool = False) -> Spool:
    """The spool named by ``-S``, else ``CRYOPHILE_SPOOL``, the config, or the default.

    A spool named explicitly (``-S`` or ``CRYOPHILE_SPOOL``) must exist; the
    default location is created on first use, except by ``read_only``
    commands, which create nothing (``cryophile status -S /tmp`` must not
    leave queue directories in /tmp).
    """
    if args.spool is not None:
        root, explicit = args.spool, True
    else:
        configured = str(config.spool) if config.spool is not None else None
        root = default_spool_root(env, configured)
        explicit = bool(env.get("CRYOPHILE_SPOOL")) or configured is not None
    try:
        return Spool.open(root, create_root=not explicit, read_only=read_only)
    except OSError as error:
        # A path the kernel refuses to even look up (ENAMETOOLONG, ELOOP) is
        # the user's bad value: one line naming it, not an internal error.
        shown = str(root) if len(str(root)) <= 80 else str(root)[:80] + "…"
        raise StorageIOError(f"cannot use spool directory {shown!r}: "
                             f"{error.strerror or error}") from None

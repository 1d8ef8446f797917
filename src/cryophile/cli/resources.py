"""Opening what commands work on: the configuration, the spool, the vaults.

Commands receive these opened and checked through one :class:`CommandContext`,
instead of each finding and validating them on its own.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import uuid
from collections.abc import Mapping

from cryophile.config import Config, load_config
from cryophile.errors import StorageIOError
from cryophile.spool import Spool, default_spool_root
from cryophile.vault.factory import OpenedVault, open_vault

logger = logging.getLogger(__name__)


class CommandContext:
    """One command's configuration, spool and vaults, each opened when first asked for.

    Nothing is opened before it is asked for, so the order a command asks in
    is the order of its checks, and decides which error wins when several
    things are wrong (a bad configuration before a missing spool before an
    unknown vault). The spool needs the configuration (which may name it), a
    vault both (an embedded vault lives beside the spool). What is opened is
    kept: asking again costs nothing and gives the same object.
    """

    def __init__(self, args: argparse.Namespace, env: Mapping[str, str], *,
                 read_only: bool = False) -> None:
        """``read_only``: the command only reads the spool, and creates nothing in it."""
        self.args = args
        self.env = env
        self.read_only = read_only
        self._vaults: dict[uuid.UUID, OpenedVault] = {}

    @functools.cached_property
    def config(self) -> Config:
        """The configuration named by ``-c``, else found in the standard places."""
        return load_config(self.args.config)

    @functools.cached_property
    def spool(self) -> Spool:
        """The spool named by ``-S``, else ``CRYOPHILE_SPOOL``, the config, or the default.

        A spool named explicitly (``-S`` or ``CRYOPHILE_SPOOL``) must exist; the
        default location is created on first use, except by ``read_only``
        commands, which create nothing (``cryophile status -S /tmp`` must not
        leave queue directories in /tmp).
        """
        config = self.config  # even with -S: a broken configuration is reported first
        if self.args.spool is not None:
            root, explicit = self.args.spool, True
        else:
            configured = str(config.spool) if config.spool is not None else None
            root = default_spool_root(self.env, configured)
            explicit = bool(self.env.get("CRYOPHILE_SPOOL")) or configured is not None
            if (self.env.get("CRYOPHILE_SPOOL") and config.spool is not None
                    and os.path.abspath(root) != os.path.abspath(config.spool)):
                # The environment wins, as every option's variable does; silently,
                # a unit's Environment= would send backups to a spool no other
                # command of this configuration looks at.
                logger.warning("CRYOPHILE_SPOOL=%s wins over spool = %s in %s; unset one of "
                               "them", root, config.spool, config.source)
        try:
            return Spool.open(root, create_root=not explicit, read_only=self.read_only)
        except OSError as error:
            # A path the kernel refuses to even look up (ENAMETOOLONG, ELOOP) is
            # the user's bad value: one line naming it, not an internal error.
            shown = str(root) if len(str(root)) <= 80 else str(root)[:80] + "…"
            raise StorageIOError(f"cannot use spool directory {shown!r}: "
                                 f"{error.strerror or error}") from None

    def vault(self, vault_id: uuid.UUID) -> OpenedVault:
        """The vault ``vault_id`` names (see :func:`cryophile.vault.factory.open_vault`)."""
        if vault_id not in self._vaults:
            self._vaults[vault_id] = open_vault(vault_id, self.config, self.spool.root)
        return self._vaults[vault_id]

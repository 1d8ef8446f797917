"""``cryophile unit-paths``: the systemd drop-in that makes writable what the configuration
names, for the hardened units (``ProtectSystem=strict``).

The units can write only the default spool and its embedded vaults; a configured
``spool`` elsewhere, every ``provider = "dir"`` vault's ``path`` and the directory of
``metrics_file`` need ``ReadWritePaths=`` in a drop-in. This prints it from the same
configuration the daemons read, so it cannot disagree with it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from cryophile.config import load_config
from cryophile.pipeline.stages import write_all

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

#: What the shipped units already make writable (ReadWritePaths in contrib/systemd).
UNIT_WRITABLE = (Path("/var/spool/cryophile"), Path("/var/spool/cryophile-vaults"))


def writable_paths(spool: Path | None, dir_vaults: list[Path],
                   metrics_file: Path | None) -> list[Path]:
    """The paths a daemon writes beyond the units' own, in the configuration's order,
    each once (one inside another that is listed is left out)."""
    wanted: list[Path] = []
    if spool is not None:
        wanted += [spool, spool.parent / f"{spool.name}-vaults"]
    wanted += dir_vaults
    if metrics_file is not None:
        wanted.append(metrics_file.parent)
    kept: list[Path] = []
    for path in wanted:
        covered = [*UNIT_WRITABLE, *kept]
        if not any(path == other or path.is_relative_to(other) for other in covered):
            kept.append(path)
    return kept


def _unit_path(path: Path) -> str:
    """``-PATH`` as a unit file reads it: ``%`` is a specifier there (``%%`` is one ``%``),
    and a path with blanks is quoted (the prefix goes inside the quotes)."""
    text = "-" + str(path).replace("%", "%%")
    if any(c.isspace() or c in "\"'\\" for c in text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Print the drop-in (``[Service]`` and one ``ReadWritePaths=-PATH`` per path)."""
    config = load_config(args.config)
    dir_vaults = [entry.path for entry in config.vaults
                  if entry.provider == "dir" and entry.path is not None]
    paths = writable_paths(config.spool, dir_vaults, config.metrics_file)
    source = config.source if config.source is not None else "(no configuration file)"
    lines = [f"# Written by 'cryophile unit-paths' from {source}: install as",
             "# /etc/systemd/system/cryophile-freeze.service.d/paths.conf (and the same for",
             "# cryophile-thaw), then: systemctl daemon-reload",
             "# '-': a path that does not exist (a disk not mounted) does not stop the unit.",
             "[Service]"]
    lines += [f"ReadWritePaths={_unit_path(path)}" for path in paths]
    if not paths:
        lines.append("# nothing beyond the units' own spool and embedded vaults")
    write_all(environment.stdout_fd, ("\n".join(lines) + "\n").encode())
    return 0

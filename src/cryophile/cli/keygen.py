"""``cryophile keygen``: make a storage-encryption key pair; the work is :mod:`cryophile.keygen`."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from cryophile.cli.defaults import KEYRING_VARIABLE
from cryophile.config import load_config
from cryophile.keygen import choose_tool, default_userid, forbidden_places, generate, refuse_place
from cryophile.passphrase import read_first_line
from cryophile.pipeline.stages import write_all
from cryophile.spool import default_spool_root

if TYPE_CHECKING:
    from cryophile.cli.main import Environment


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Check where the secret may go, make the pair, say where each half goes."""
    env = environment.env
    config = load_config(args.config)
    spool = args.spool or default_spool_root(
        env, str(config.spool) if config.spool is not None else None)
    keyrings = [Path(part) for part in env.get(KEYRING_VARIABLE, "").split(":") if part]
    output_dir: Path = args.output_dir
    refuse_place(output_dir, forbidden_places(spool, keyrings, config.source))
    tool = choose_tool(args.tool)
    passphrase = None if args.pass_fd is None else read_first_line(args.pass_fd)
    pair = generate(tool, args.userid or default_userid(), output_dir, passphrase=passphrase,
                    env=env)
    if args.json:
        write_all(environment.stdout_fd, (json.dumps(pair.as_json(), indent=1) + "\n").encode())
        return 0
    subkeys = ", ".join(pair.encryption_subkeys)
    protection = "protected by the passphrase" if passphrase else "no passphrase"
    lines = [
        f"made with {pair.tool}: key {pair.fingerprint} (encryption subkey {subkeys})",
        f"certificate (public): {pair.certificate}",
        "  -> copy it to the backup host (e.g. /etc/cryophile/backup.cert) and back up with",
        "     cryophile backup -k /etc/cryophile/backup.cert ...",
        f"secret key (mode 0600, {protection}): {pair.secret_key}",
        "  -> keep it on the restoring or an offline machine only, never on the backup host,",
        f"     and restore with: cryophile restore -k {shlex.quote(str(pair.secret_key))} ...",
        "     Keep a second copy offline: without it, no backup made to this certificate",
        "     can ever be restored.",
    ]
    if pair.revocation is not None:
        lines.append(f"revocation certificate: {pair.revocation}  -> offline, with the secret key")
    write_all(environment.stdout_fd, ("\n".join(lines) + "\n").encode())
    return 0

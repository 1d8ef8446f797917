"""What ships beside the code stays true: the example config parses, the units run real commands."""

from __future__ import annotations

import configparser

from cryophile.cli.parsers import build_parser
from cryophile.config import load_config
from support.files import REPO

CONTRIB = REPO / "contrib"


def test_example_config_parses_with_every_provider() -> None:
    config = load_config(CONTRIB / "cryophile.toml.example")
    assert {vault.provider for vault in config.vaults} == {"s3", "dir"}
    assert len({vault.id for vault in config.vaults}) == len(config.vaults)


def test_systemd_units_start_existing_commands() -> None:
    parser = build_parser()
    for name in ("freeze", "thaw"):
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.read(CONTRIB / "systemd" / f"cryophile-{name}.service")
        command = unit["Service"]["ExecStart"].split()
        assert command[0].endswith("/cryophile")
        args = parser.parse_args(command[1:])
        assert args.command == name
        assert unit["Service"]["KillSignal"] == "SIGTERM"

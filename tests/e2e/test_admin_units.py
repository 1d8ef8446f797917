"""Issue 17, point 5: a man page generated from the parsers, and hardened systemd units
that `systemd-analyze verify` accepts with their Documentation=man:cryophile(1) resolved."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cryophile.cli.parsers import COMMANDS, build_parser
from support.cli import Cli
from support.files import REPO

UNITS = ("cryophile-freeze.service", "cryophile-thaw.service")
HARDENING = ("CapabilityBoundingSet=\n", "PrivateDevices=true",
             "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
             "SystemCallFilter=@system-service", "ProtectSystem=strict",
             "Documentation=man:cryophile(1)", "User=cryophile\n", "Group=cryophile\n")


def man_page(cli: Cli, root: Path) -> Path:
    result = cli.run(["man"])
    assert result.returncode == 0, result.stderr
    page = root / "man1" / "cryophile.1"
    page.parent.mkdir(parents=True)
    page.write_bytes(result.stdout)
    return page


def test_the_man_page_has_every_command_and_option(cli: Cli, tmp_path: Path) -> None:
    page = man_page(cli, tmp_path).read_text()
    assert page.startswith(".TH CRYOPHILE 1 ")
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    for name in COMMANDS:
        assert f".SS cryophile {name.replace('-', chr(92) + '-')}\n" in page, name
        sub = commands.choices[name]  # type: ignore[index]
        for action in sub._actions:
            if action.dest == "help":
                continue
            for flag in action.option_strings:
                assert f"\\fB{flag.replace('-', chr(92) + '-')}\\fR" in page, (name, flag)
    assert "CRYOPHILE_KEYRING" in page
    # man renders it without a complaint.
    rendered = subprocess.run(["man", "--warnings", "-l", str(tmp_path / "man1" / "cryophile.1")],
                              capture_output=True, text=True, check=False,
                              env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": ""})
    assert rendered.returncode == 0, rendered.stderr
    assert "cryophile backup" in rendered.stdout


def test_units_are_hardened_and_systemd_analyze_verify_accepts_them(
        cli: Cli, tmp_path: Path) -> None:
    man_root = tmp_path / "man"
    man_page(cli, man_root)
    units = tmp_path / "units"
    units.mkdir()
    executable = shutil.which("cryophile", path=str(Path(sys.executable).parent))
    assert executable is not None
    for name in UNITS:
        text = (REPO / "contrib" / "systemd" / name).read_text()
        for directive in HARDENING:
            assert directive in text, (name, directive)
        assert "CRYOPHILE_SPOOL" not in text  # the configuration's spool is not overridden
        (units / name).write_text(text.replace("ExecStart=/usr/local/bin/cryophile",
                                               f"ExecStart={executable}"))
    env = {**os.environ, "MANPATH": str(man_root), "SYSTEMD_LOG_LEVEL": "warning"}
    verified = subprocess.run(["systemd-analyze", "verify", "--man=yes", *UNITS], cwd=units,
                              capture_output=True, text=True, env=env, check=False)
    assert verified.returncode == 0, verified.stderr
    assert "cryophile" not in verified.stderr, verified.stderr
    # Without the page the check fails: the test really resolves man:cryophile(1).
    missing = subprocess.run(["systemd-analyze", "verify", "--man=yes", UNITS[0]], cwd=units,
                             capture_output=True, text=True, check=False,
                             env={**env, "MANPATH": str(tmp_path / "none")})
    assert missing.returncode != 0
    assert "man cryophile(1)" in missing.stderr


def test_unit_paths_prints_the_drop_in_for_what_the_configuration_writes(
        cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "cryophile.toml"
    config.write_text(
        'spool = "/srv/cryophile/spool"\n'
        'metrics_file = "/var/lib/node-exporter/cryophile.prom"\n'
        '[[vault]]\nid = "0b7c2c5e-5a7e-4f0e-9f43-4d1f3b0c2a11"\nprovider = "dir"\n'
        'path = "/mnt/usb/cryophile"\n'
        '[[vault]]\nid = "1b7c2c5e-5a7e-4f0e-9f43-4d1f3b0c2a11"\nprovider = "dir"\n'
        'path = "/srv/cryophile/spool-vaults/mine"\n'   # inside one already listed
        '[[vault]]\nid = "2b7c2c5e-5a7e-4f0e-9f43-4d1f3b0c2a11"\nprovider = "dir"\n'
        'path = "/var/spool/cryophile-vaults/x"\n'      # the units' own
        '[[vault]]\nid = "3b7c2c5e-5a7e-4f0e-9f43-4d1f3b0c2a11"\nprovider = "dir"\n'
        'path = "/mnt/my disk/100%"\n')                   # quoted, % doubled
    result = cli.run(["-c", config, "unit-paths"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[lines.index("[Service]") + 1:] == [
        "ReadWritePaths=-/srv/cryophile/spool",
        "ReadWritePaths=-/srv/cryophile/spool-vaults",
        "ReadWritePaths=-/mnt/usb/cryophile",
        'ReadWritePaths="-/mnt/my disk/100%%"',
        "ReadWritePaths=-/var/lib/node-exporter",
    ]
    assert f"from {config}" in lines[0]
    # Nothing configured beyond the defaults: nothing to add.
    plain = tmp_path / "plain.toml"
    plain.write_text('[[vault]]\nid = "0b7c2c5e-5a7e-4f0e-9f43-4d1f3b0c2a11"\nprovider = "dir"\n'
                     'path = "/var/spool/cryophile-vaults/usb"\n')
    empty = cli.run(["-c", plain, "unit-paths"])
    assert empty.returncode == 0, empty.stderr
    assert b"ReadWritePaths" not in empty.stdout

"""What a command line loads: the cheap commands never import the engines or boto3.

Every command line builds every command's parser (cli/parsers.py); only the
command that runs is imported (cli/main.py). These tests run the real CLI,
``python -m cryophile ARGS``, in a subprocess that writes down ``sys.modules``
when it exits, so a top-level import that drags the OpenPGP engines, the
compressors or boto3 into ``status`` fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.cli import VAULT, Cli

#: Loaded only by the commands that encrypt, decrypt, compress or talk to S3.
HEAVY = ("pysequoia", "zstandard", "lz4", "boto3", "botocore", "cryptography",
         "cryophile.pipeline.openpgp", "cryophile.pipeline.fastpgp",
         "cryophile.pipeline.compress", "cryophile.pipeline.keys", "cryophile.signing")

#: ``python -m cryophile``, then the names in sys.modules into the file $MODULES.
PROGRAM = """\
import os, runpy, sys
try:
    runpy.run_module("cryophile", run_name="__main__", alter_sys=True)
finally:
    with open(os.environ["MODULES"], "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
"""


def run_noting_modules(cli: Cli, *args: str) -> tuple[int, str, set[str]]:
    """Run ``cryophile ARGS``; its exit code, stderr, and the modules it had imported."""
    listing = cli.home / "modules.txt"
    completed = subprocess.run([sys.executable, "-c", PROGRAM, *args], capture_output=True,
                               input=b"", env=cli.environment({"MODULES": str(listing)}),
                               timeout=120, check=False)
    return (completed.returncode, completed.stderr.decode(errors="replace"),
            set(Path(listing).read_text().split()))


def heavy(names: set[str]) -> list[str]:
    return sorted(name for name in names
                  if any(name == root or name.startswith(f"{root}.") for root in HEAVY))


@pytest.mark.parametrize("args", [
    ("status",), ("status", "--json"), ("list",), ("--help",), ("help",), ("help", "backup"),
    ("restore", "--help"), ("completion", "bash"), ("completion", "zsh"),
], ids=" ".join)
def test_cheap_commands_load_no_engine_no_compressor_no_boto3(cli: Cli,
                                                              args: tuple[str, ...]) -> None:
    code, stderr, names = run_noting_modules(cli, *args)
    assert code == 0, stderr
    assert "cryophile.cli.parsers" in names
    assert heavy(names) == []


def test_status_imports_no_other_command(cli: Cli) -> None:
    code, stderr, names = run_noting_modules(cli, "status")
    assert code == 0, stderr
    commands = {name.rsplit(".", 1)[1] for name in names if name.startswith("cryophile.cli.")}
    assert "status" in commands
    assert not commands & {"backup", "restore", "verify", "prune", "freeze", "thaw", "list",
                           "completion"}


def test_backup_loads_its_engines_when_it_runs(cli: Cli) -> None:
    # The guard above is not vacuous: the same probe sees what backup loads.
    code, stderr, names = run_noting_modules(cli, "backup", "-v", VAULT, "-p", "x",
                                             "-k", str(cli.home / "missing.cert"))
    assert code == 66
    assert "keyring" in stderr
    assert "does not exist" in stderr
    assert {"cryophile.pipeline.compress", "cryophile.pipeline.keys", "pysequoia",
            "zstandard", "lz4"} <= names

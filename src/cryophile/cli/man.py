"""``cryophile man``: print the man page cryophile(1), generated from the parsers."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cryophile.cli.manpage import render
from cryophile.cli.parsers import build_parser
from cryophile.pipeline.stages import write_all

if TYPE_CHECKING:
    from cryophile.cli.main import Environment


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Write the roff page to stdout."""
    del args
    write_all(environment.stdout_fd, render(build_parser()).encode())
    return 0

"""The progress line: on a terminal only (or when asked), never on a pipe."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import oracles
from cryophile.cli.progress import backup_line, restore_line
from cryophile.pipeline.stages import Counters
from cryophile.units import human_bytes
from support.cli import VAULT, Cli


def run_on_terminal(cli: Cli, args: list[str], data: bytes) -> tuple[int, str]:
    """Run cryophile with stderr on a pseudo-terminal; return its code and what it drew."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "cryophile", *args],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=terminal, env=cli.environment())
    os.close(terminal)
    assert process.stdin is not None
    process.stdin.write(data)
    process.stdin.close()
    drawn = bytearray()
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal's last writer is gone
            break
        if not chunk:
            break
        drawn.extend(chunk)
    os.close(controller)
    return process.wait(timeout=120), drawn.decode(errors="replace")


def test_backup_draws_progress_on_a_terminal_only(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    data = os.urandom(8 * 1024 * 1024)
    code, drawn = run_on_terminal(cli, ["backup", "-v", VAULT, "-k", str(gpg_key.cert)], data)
    assert code == 0, drawn
    assert "in →" in drawn
    assert "stored" in drawn
    assert "\x1b[K" in drawn  # the line is erased before the summary
    piped = cli.run(["backup", "-v", VAULT, "-k", gpg_key.cert], stdin=data)
    assert piped.returncode == 0
    assert "in →" not in piped.stderr
    assert "\r" not in piped.stderr
    forced = cli.run(["backup", "-v", VAULT, "-k", gpg_key.cert, "--progress"], stdin=data)
    assert "in →" in forced.stderr
    silenced, drawn = run_on_terminal(
        cli, ["backup", "-v", VAULT, "-k", str(gpg_key.cert), "--no-progress"], data)
    assert silenced == 0
    assert "in →" not in drawn


def test_lines_say_what_a_person_needs() -> None:
    counters = Counters(bytes_in=3 * 1024**3, bytes_out=1024**3, fragments=4)
    line = backup_line(counters, 10.0)
    assert "3.0 GiB in → 1.0 GiB stored (3.00×)" in line
    assert "307.2 MiB/s" in line
    counters = Counters(bytes_out=512 * 1024**2, fragments=2, fragments_total=5,
                        waiting_for="chunk.3")
    assert restore_line(counters, 2.0) == (
        "fragment 2/5, 512.0 MiB out, 256.0 MiB/s, 2 s, waiting for chunk.3 (thaw)")
    assert human_bytes(1023) == "1023 B"

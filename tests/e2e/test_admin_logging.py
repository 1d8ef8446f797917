"""Issue 17, point 4: CRYOPHILE_LOG in the original's syntax, CRYOPHILE_LOG_STYLE's values,
the daemons' default level, and the wording of the last retry — through the real CLI."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

import oracles
from support.cli import VAULT, Cli

DATA = os.urandom(50_000)


def backup(cli: Cli, key: oracles.KeyPair, env: dict[str, str]) -> tuple[int, str]:
    result = cli.run(["backup", "-v", VAULT, "-p", "logs", "-k", key.cert, "-s", "5M"],
                     stdin=DATA, env=env)
    return result.returncode, result.stderr


def test_the_originals_syntax_is_accepted(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    # Rust's module separator names the same logger; a narrower target wins below it,
    # and the bare level holds elsewhere: the embedded vault's warning (said on the
    # first backup, by cryophile.vault) is below "error".
    code, stderr = backup(cli, gpg_key, {"CRYOPHILE_LOG": "error,cryophile::pipeline=debug"})
    assert code == 0, stderr
    assert "cryophile: debug: fragment 1 published" in stderr
    assert "warning:" not in stderr
    code, stderr = backup(cli, gpg_key, {"CRYOPHILE_LOG": "warn,cryophile=trace"})
    assert code == 0, stderr
    assert "cryophile: debug: fragment 1 published" in stderr


@pytest.mark.parametrize("level", ["warn", "WARN", "warning", "error", "off"])
def test_levels_above_info_hide_info(cli: Cli, gpg_key: oracles.KeyPair, level: str) -> None:
    code, stderr = backup(cli, gpg_key, {"CRYOPHILE_LOG": f"{level},cryophile.nothing=trace"})
    assert code == 0, stderr
    assert "cryophile: info:" not in stderr
    assert "cryophile: debug:" not in stderr
    if level == "off":
        assert "warning:" not in stderr  # the embedded vault's notice is a warning


def test_trace_shows_debug(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    code, stderr = backup(cli, gpg_key, {"CRYOPHILE_LOG": "trace"})
    assert code == 0, stderr
    assert "cryophile: debug: fragment 1 published" in stderr


@pytest.mark.parametrize(("value", "named"), [
    ("loud", "'loud': it is not a level"),
    ("warn,bad", "'bad' is not a level"),
    ("cryophile=", "'cryophile=': it has no level"),
    ("info,=debug", "'=debug' names no target"),
    ("cryophile/upload", "/FILTER"),
])
def test_bad_values_are_refused_naming_the_directive(cli: Cli, value: str, named: str) -> None:
    result = cli.run(["status"], env={"CRYOPHILE_LOG": value})
    assert result.returncode == 64, result.stderr
    assert result.stderr.startswith("cryophile: error: invalid CRYOPHILE_LOG"), result.stderr
    assert named in result.stderr
    assert "warn,cryophile=trace" in result.stderr  # the syntax, by example
    assert result.stdout == b""


def test_daemons_log_at_info_by_default(cli: Cli) -> None:
    result = cli.run(["freeze", "--once"])
    assert result.returncode == 0, result.stderr
    assert "cryophile: info: freeze pass:" in result.stderr
    quiet = cli.run(["freeze", "--once"], env={"CRYOPHILE_LOG": "warn"})
    assert quiet.returncode == 0
    assert quiet.stderr == ""
    # The options win over the environment.
    optioned = cli.run(["freeze", "--once", "-d"], env={"CRYOPHILE_LOG": "error"})
    assert "cryophile: info: freeze pass:" in optioned.stderr


def test_log_style_values(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    for style, coloured in (("", False), ("auto", False), ("never", False), ("plain", False),
                            ("always", True), ("color", True)):
        code, stderr = backup(cli, gpg_key, {"CRYOPHILE_LOG_STYLE": style,
                                             "CRYOPHILE_LOG": "info"})
        assert code == 0, (style, stderr)
        assert "info:" in stderr
        assert ("\x1b[" in stderr) == coloured, (style, stderr)
    result = cli.run(["status"], env={"CRYOPHILE_LOG_STYLE": "sometimes"})
    assert result.returncode == 64
    assert "invalid CRYOPHILE_LOG_STYLE 'sometimes'" in result.stderr
    assert "auto" in result.stderr
    assert "always" in result.stderr
    assert "never" in result.stderr


def test_the_last_retry_says_it_gives_up(cli: Cli, gpg_key: oracles.KeyPair,
                                         tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "dead.toml"
    config.write_text(f'[[vault]]\nid = "{VAULT}"\nprovider = "s3"\nbucket = "cryo-dead"\n'
                      f'endpoint_url = "http://127.0.0.1:{port}"\nregion = "us-east-1"\n'
                      "max_attempts = 2\n")
    cli.config = config
    cli.backup(gpg_key, DATA)
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
           "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_EC2_METADATA_DISABLED": "true"}
    result = cli.run(["-c", config, "freeze", "--once"], env=env, timeout=120)
    assert result.returncode == 75, result.stderr
    lines = [line for line in result.stderr.splitlines() if " attempt " in line]
    assert lines, result.stderr
    assert "attempt 1 of 2 failed" in lines[0]
    assert "trying again" in lines[0]
    last = [line for line in lines if "attempt 2 of 2 failed" in line]
    assert last, result.stderr
    assert all("giving up" in line for line in last), result.stderr
    assert not any("trying again" in line for line in last)

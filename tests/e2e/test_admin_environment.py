"""Issue 17, point 4: CRYOPHILE_CONFIG, CRYOPHILE_VAULT and CRYOPHILE_KEYRING for -c, -v
and -k (options win), and a CRYOPHILE_SPOOL that overrides the configuration's spool is
said — through the real CLI."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import oracles
from support.cli import VAULT, Cli

DATA = os.urandom(60_000)


def manifest(cli: Cli, vault: str, ulid: str, prefix: str = "env") -> dict[str, object]:
    document: dict[str, object] = json.loads(
        (cli.spool / "freeze" / vault / prefix / ulid / "chunk.0").read_text())
    return document


def test_vault_and_keyring_from_the_environment(cli: Cli, gpg_key: oracles.KeyPair,
                                                sqop_key: oracles.KeyPair) -> None:
    env = {"CRYOPHILE_VAULT": VAULT, "CRYOPHILE_KEYRING": f"{gpg_key.cert}:{sqop_key.cert}"}
    made = cli.run(["backup", "-p", "env", "-s", "5M", "--json"], stdin=DATA, env=env)
    assert made.returncode == 0, made.stderr
    ulid = json.loads(made.stdout)["ulid"]
    assert len(manifest(cli, VAULT, ulid)["recipients"]) == 2  # type: ignore[arg-type]
    # The options win over the variables.
    other = str(uuid.uuid4())
    made = cli.run(["backup", "-v", other, "-p", "env", "-k", gpg_key.cert, "-s", "5M",
                    "--json"], stdin=DATA, env=env)
    assert made.returncode == 0, made.stderr
    second = json.loads(made.stdout)["ulid"]
    assert len(manifest(cli, other, second)["recipients"]) == 1  # type: ignore[arg-type]
    frozen = cli.run(["freeze", "--once"])
    assert frozen.returncode == 0, frozen.stderr
    # restore takes the secret key from CRYOPHILE_KEYRING.
    restored = cli.run(["restore", "-p", "env", "-u", ulid, "--thaw"],
                       env={"CRYOPHILE_VAULT": VAULT, "CRYOPHILE_KEYRING": str(gpg_key.secret)})
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == DATA


def test_missing_vault_and_keyring_name_the_variables(cli: Cli,
                                                      gpg_key: oracles.KeyPair) -> None:
    for command in (["backup", "-k", str(gpg_key.cert)], ["prune", "--keep-last", "1"],
                    ["verify", "--all"], ["restore", "-u", "01JDX5MRB4W3J9ETFQFB5NT4CS"]):
        result = cli.run(command, stdin=DATA, env={"CRYOPHILE_VAULT": ""})
        assert result.returncode == 64, (command, result.stderr)
        assert "-v/--vault" in result.stderr
        assert "CRYOPHILE_VAULT" in result.stderr
    result = cli.run(["backup", "-v", VAULT], stdin=DATA)
    assert result.returncode == 64, result.stderr
    assert "-k/--keyring" in result.stderr
    assert "CRYOPHILE_KEYRING" in result.stderr
    assert not (cli.spool / "freeze" / VAULT).exists()


def test_config_from_the_environment(cli: Cli, gpg_key: oracles.KeyPair,
                                     tmp_path: Path) -> None:
    vault_dir = tmp_path / "disk"
    vault_dir.mkdir()
    config = tmp_path / "env.toml"
    config.write_text(f'[[vault]]\nid = "{VAULT}"\nprovider = "dir"\npath = "{vault_dir}"\n')
    env = {"CRYOPHILE_CONFIG": str(config)}
    made = cli.run(["backup", "-v", VAULT, "-p", "env", "-k", gpg_key.cert, "-s", "5M"],
                   stdin=DATA, env=env)
    assert made.returncode == 0, made.stderr
    assert cli.run(["freeze", "--once"], env=env).returncode == 0
    assert list(vault_dir.glob("env/*/chunk.0"))  # the configured directory got it
    # An unknown vault is refused by that configuration, naming it.
    unknown = cli.run(["list", "-v", str(uuid.uuid4())], env=env)
    assert unknown.returncode == 78
    assert str(config) in unknown.stderr
    # -c wins; a missing file named by the variable is an error, as -c's is.
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert cli.run(["-c", empty, "list", "-v", str(uuid.uuid4())], env=env).returncode == 0
    missing = cli.run(["list"], env={"CRYOPHILE_CONFIG": str(tmp_path / "nope.toml")})
    assert missing.returncode == 78
    assert "nope.toml: configuration file does not exist" in missing.stderr


def test_an_overridden_spool_is_said(cli: Cli, tmp_path: Path) -> None:
    elsewhere = tmp_path / "configured-spool"
    config = tmp_path / "spool.toml"
    config.write_text(f'spool = "{elsewhere}"\n')
    result = cli.run(["-c", config, "status"])
    assert result.returncode == 0, result.stderr
    assert f"CRYOPHILE_SPOOL={cli.spool} wins over spool = {elsewhere}" in result.stderr
    same = tmp_path / "same.toml"
    same.write_text(f'spool = "{cli.spool}"\n')
    result = cli.run(["-c", same, "status"])
    assert result.returncode == 0
    assert "wins over" not in result.stderr


def test_help_names_the_variables(cli: Cli) -> None:
    result = cli.run(["--help"])
    assert result.returncode == 0
    for variable in ("CRYOPHILE_CONFIG", "CRYOPHILE_VAULT", "CRYOPHILE_KEYRING",
                     "CRYOPHILE_SPOOL", "CRYOPHILE_LOG_STYLE"):
        assert variable in result.stdout.decode()
    backup_help = cli.run(["backup", "--help"]).stdout.decode()
    assert "$CRYOPHILE_VAULT" in backup_help
    assert "$CRYOPHILE_KEYRING" in backup_help

"""Issue 17, point 6: ``cryophile keygen`` makes a key pair with sq, sqop or gpg that
``backup`` and ``restore`` use as written, and never writes the secret key on the
backup host's spool or keyring directory — through the real CLI, in subprocesses."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from support.cli import VAULT, Cli

DATA = os.urandom(300_000) + b"cryophile keygen\n" * 1000


def keygen(cli: Cli, *args: str | Path, pass_fds: tuple[int, ...] = ()) -> dict[str, Any]:
    result = cli.run(["keygen", "--json", *args], pass_fds=pass_fds)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def round_trip(cli: Cli, pair: dict[str, Any], tmp_path: Path) -> bytes:
    backup = cli.run(["backup", "-v", VAULT, "-p", "keys", "-k", pair["certificate"], "-s", "5M",
                      "--json"], stdin=DATA)
    assert backup.returncode == 0, backup.stderr
    ulid = json.loads(backup.stdout)["ulid"]
    assert cli.run(["freeze", "--once"]).returncode == 0
    output = tmp_path / f"restored-{ulid}"
    restore = cli.run(["restore", "-v", VAULT, "-p", "keys", "-u", ulid, "-k",
                       pair["secret_key"], "-o", output])
    assert restore.returncode == 0, restore.stderr
    return output.read_bytes()


@pytest.mark.parametrize("tool", ["sq", "sqop", "gpg"])
def test_keygen_pair_backs_up_and_restores(cli: Cli, tmp_path: Path, tool: str) -> None:
    keys = tmp_path / "offline"
    keys.mkdir()
    pair = keygen(cli, "--tool", tool, "--userid", f"test <{tool}@example.org>",
                  "--output-dir", keys)
    assert pair["tool"] == tool
    cert, secret = Path(pair["certificate"]), Path(pair["secret_key"])
    assert cert.parent == keys
    assert secret.parent == keys
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in cert.read_bytes()
    assert b"PRIVATE KEY" in secret.read_bytes()
    assert sorted(p.name for p in keys.iterdir() if p.name.startswith(".")) == []
    assert round_trip(cli, pair, tmp_path) == DATA


def test_keygen_human_output_says_where_each_half_goes(cli: Cli, tmp_path: Path) -> None:
    keys = tmp_path / "offline"
    keys.mkdir()
    result = cli.run(["keygen", "--tool", "sqop", "--output-dir", keys])
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "copy it to the backup host" in text
    assert "never on the backup host" in text
    assert "cryophile restore -k" in text


@pytest.mark.parametrize("tool", ["sqop", "gpg"])
def test_keygen_with_a_passphrase(cli: Cli, tmp_path: Path, tool: str) -> None:
    keys = tmp_path / "offline"
    keys.mkdir()
    read, write = os.pipe()
    os.write(write, b"correct horse\n")
    os.close(write)
    try:
        pair = keygen(cli, "--tool", tool, "--output-dir", keys, "--pass-fd", str(read),
                      pass_fds=(read,))
    finally:
        os.close(read)
    backup = cli.run(["backup", "-v", VAULT, "-p", "locked", "-k", pair["certificate"], "-s",
                      "5M", "--json"], stdin=DATA)
    ulid = json.loads(backup.stdout)["ulid"]
    assert cli.run(["freeze", "--once"]).returncode == 0
    wrong = cli.run(["restore", "-v", VAULT, "-p", "locked", "-u", ulid, "-k",
                     pair["secret_key"], "-o", tmp_path / "never", "-P", "0"], stdin=b"wrong\n")
    assert wrong.returncode == 77, wrong.stderr
    right = cli.run(["restore", "-v", VAULT, "-p", "locked", "-u", ulid, "-k",
                     pair["secret_key"], "-o", tmp_path / "restored", "-P", "0"],
                    stdin=b"correct horse\n")
    assert right.returncode == 0, right.stderr
    assert (tmp_path / "restored").read_bytes() == DATA


def test_keygen_refuses_the_spool_and_beside_it(cli: Cli, tmp_path: Path) -> None:
    inside = cli.spool / "keys"
    inside.mkdir()
    for place, why in ((cli.spool.parent, "beside the spool"), (inside, "the spool"),
                       (cli.spool, "the spool")):
        before = sorted(place.iterdir())
        result = cli.run(["keygen", "--tool", "sqop", "--output-dir", place])
        assert result.returncode == 64, result.stderr
        assert f"refusing to write the secret key in {str(place)!r}: that is {why}" in (
            result.stderr)
        assert sorted(place.iterdir()) == before


def test_keygen_refuses_the_keyring_directory(cli: Cli, tmp_path: Path) -> None:
    etc = tmp_path / "etc-cryophile"
    etc.mkdir()
    (etc / "backup.cert").write_bytes(b"")
    result = cli.run(["keygen", "--tool", "sqop", "--output-dir", etc],
                     env={"CRYOPHILE_KEYRING": str(etc / "backup.cert")})
    assert result.returncode == 64, result.stderr
    assert "the directory of keyring" in result.stderr
    assert sorted(p.name for p in etc.iterdir()) == ["backup.cert"]


def test_keygen_refuses_a_userid_with_a_newline(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "keys"
    out.mkdir()
    result = cli.run(["keygen", "--tool", "gpg", "--output-dir", out,
                      "--userid", "me <me@host>\n%no-protection"])
    assert result.returncode == 64, result.stderr
    assert "invalid --userid" in result.stderr
    assert list(out.iterdir()) == []


def test_keygen_with_sq_refuses_a_passphrase_it_cannot_take(cli: Cli, tmp_path: Path) -> None:
    keys = tmp_path / "offline"
    keys.mkdir()
    result = cli.run(["keygen", "--tool", "sq", "--output-dir", keys, "--pass-fd", "0"],
                     stdin=b"secret\n")
    assert result.returncode == 64, result.stderr
    assert "sq key password" in result.stderr
    assert list(keys.iterdir()) == []

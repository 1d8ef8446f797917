"""Backups recovered without cryophile: the concatenated fragments are one OpenPGP message.

``cat chunk.1 … chunk.N | gpg -d | zstd -d`` is the README's recovery recipe;
it is run here literally, with the real tools.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

import oracles
from support.cli import Cli


def concatenated(directory: Path, target: Path) -> Path:
    """``cat chunk.1 … chunk.N`` in index order (as the manifest lists them)."""
    manifest = json.loads((directory / "chunk.0").read_bytes())
    with target.open("wb") as out:
        for entry in manifest["fragments"]:
            out.write((directory / f"chunk.{entry['index']}").read_bytes())
    return target


@pytest.fixture(scope="module")
def mixed_input() -> bytes:
    return os.urandom(6 * 1024 * 1024) + b"tail of the stream\n" * 1000


@pytest.mark.parametrize("maker", ["gpg", "gpg_rsa", "sq", "sqop", "gpg_key_protected",
                                   "sqop_key_protected"])
def test_gpg_and_sqop_decrypt_what_cryophile_wrote(cli: Cli, tmp_path: Path, mixed_input: bytes,
                                                   maker: str,
                                                   request: pytest.FixtureRequest) -> None:
    name = maker if maker.endswith("protected") else f"{maker}_key"
    key: oracles.KeyPair = request.getfixturevalue(name)
    ulid = cli.backup(key, mixed_input, "-C", "none")
    message = concatenated(cli.freeze_dir(ulid), tmp_path / "message.pgp")
    for decrypt in (oracles.gpg_decrypt, oracles.sqop_decrypt):
        out = tmp_path / f"{decrypt.__name__}.out"
        decrypt(message, key, out)
        assert out.read_bytes() == mixed_input, decrypt.__name__
    if key.passphrase is None:
        out = tmp_path / "sq.out"
        oracles.sq_decrypt(message, key, out)
        assert out.read_bytes() == mixed_input


@pytest.mark.parametrize(("compression", "tool"), [("zstd", "zstd"), ("lz4", "lz4")])
def test_readme_recovery_recipe(cli: Cli, gpg_key: oracles.KeyPair, tar_stream: bytes,
                                tmp_path: Path, compression: str, tool: str) -> None:
    data = os.urandom(7 * 1024 * 1024) + tar_stream
    ulid = cli.backup(gpg_key, data, "-C", compression)
    directory = cli.freeze_dir(ulid)
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import", str(gpg_key.secret)],
                   check=True, capture_output=True)
    # The recipe from the README, literally (chunk order by index, not by name).
    recipe = (f"cd {directory} && N=$(ls chunk.* | sed 's/chunk.//' | sort -n | tail -1) && "
              f"for i in $(seq 1 $N); do cat chunk.$i; done "
              f"| gpg --homedir {home} --batch -d | {tool} -d -c")
    result = subprocess.run(["sh", "-c", recipe], capture_output=True, check=False)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


def test_manifest_checksums_match_sha256sum(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    ulid = cli.backup(gpg_key, os.urandom(11 * 1024 * 1024))
    directory = cli.freeze_dir(ulid)
    manifest = json.loads((directory / "chunk.0").read_bytes())
    listing = subprocess.run(["sha256sum", *[f"chunk.{e['index']}" for e in
                                             manifest["fragments"]]],
                             cwd=directory, capture_output=True, check=True, text=True).stdout
    sums = {line.split()[1]: line.split()[0] for line in listing.splitlines()}
    for entry in manifest["fragments"]:
        assert sums[f"chunk.{entry['index']}"] == entry["sha256"]

"""Bad input: one clear line naming the problem, the documented exit code, nothing lost.

For every backup set-up failure the input stream is not read (a FIFO is never
drained into a backup that cannot be written) and the spool is unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import oracles
from support.cli import VAULT, Cli
from support.files import snapshot

SENTINEL = b"precious stream bytes that must stay in the pipe\n" * 100



def left_unread(read_end: int) -> bytes:
    """What a command left of the sentinel in its stdin pipe (b"" if it read it all)."""
    os.set_blocking(read_end, False)
    try:
        return os.read(read_end, len(SENTINEL) + 1)
    except BlockingIOError:
        return b""

def run_with_pipe(cli: Cli, args: list[str | os.PathLike[str]]) -> tuple[int, str, bytes]:
    """Run with stdin a pipe holding SENTINEL; return code, stderr and what stayed unread."""
    read_end, write_end = os.pipe()
    os.write(write_end, SENTINEL)
    os.close(write_end)
    try:
        result = cli.run(args, stdin=read_end)
        left = left_unread(read_end)
    finally:
        os.close(read_end)
    return result.returncode, result.stderr, left


def assert_one_line(stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("cryophile: error: "), stderr
    assert "Traceback" not in stderr


LONG_PREFIX = "a/" * 1000


@pytest.mark.parametrize(("options", "code", "named"), [
    (["-v", "not-a-uuid"], 64, "not-a-uuid"),
    (["-v", "6f1c2a3b5d4e4f608a7b9c0d1e2f3a4b0"], 64, "6f1c2a3b5d4e4f608a7b9c0d1e2f3a4b0"),
    (["-u", "01ARZ3NDEKTSV4RRFFQ69G5FAVX"], 64, "01ARZ3NDEKTSV4RRFFQ69G5FAVX"),
    (["-u", "01ARZ3NDEKTSV4RRFFQ69G5FAU"], 64, "01ARZ3NDEKTSV4RRFFQ69G5FAU"),
    (["-t", "yesterday"], 64, "yesterday"),
    (["-t", "2026-11-26T03:00:00"], 64, "UTC offset"),
    (["-t", "2026-11-26T03:00:00Z", "-u", "01ARZ3NDEKTSV4RRFFQ69G5FAV"], 64, "not allowed with"),
    (["-s", "0"], 64, "'0'"),
    (["--size=-5M"], 64, "'-5M'"),
    (["-s", "lots"], 64, "'lots'"),
    (["-s", "1M"], 64, "at least 5M"),
    (["-s", "6T"], 64, "at most 5T"),
    (["-p", "hosts/db 1"], 64, "' '"),
    (["-p", "hosts\u2215db1"], 64, "U+2215"),
    (["-p", "/etc"], 64, "relative"),
    (["-p", "../escape"], 64, "climbs above"),
    (["-p", "a/../../b"], 64, "climbs above"),
    (["-p", LONG_PREFIX], 64, "key limit"),
    (["-C", "gzip"], 64, "gzip"),
    (["-C", "lz4", "-L", "9"], 64, "only applies to zstd"),
    (["-L", "99"], 64, "99"),
    (["-i", "/nonexistent/input"], 66, "/nonexistent/input"),
    (["-i", "/etc"], 64, "is a directory"),
])
def test_backup_refuses_bad_options(cli: Cli, gpg_key: oracles.KeyPair, options: list[str],
                                    code: int, named: str) -> None:
    args: list[str | os.PathLike[str]] = ["backup", "-v", VAULT, "-k", gpg_key.cert]
    # A later -v overrides the default one.
    args += options
    before = snapshot(cli.spool)
    returncode, stderr, left = run_with_pipe(cli, args)
    assert returncode == code, stderr
    assert named in stderr
    assert_one_line(stderr)
    assert left == SENTINEL
    assert snapshot(cli.spool) == before


def test_backup_refuses_bad_keyrings(cli: Cli, tmp_path: Path, key_dir: Path) -> None:
    empty = tmp_path / "empty.pgp"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.pgp"
    garbage.write_bytes(b"this is not an OpenPGP key\n" * 10)
    sign_only = _sign_only_cert(tmp_path)
    cases = [(tmp_path / "missing.pgp", 66, "does not exist"), (empty, 78, "is empty"),
             (garbage, 78, "not OpenPGP"), (tmp_path, 78, "is a directory"),
             (sign_only, 78, "no valid, unexpired, unrevoked encryption subkey")]
    before = snapshot(cli.spool)
    for keyring, code, message in cases:
        returncode, stderr, left = run_with_pipe(cli, ["backup", "-v", VAULT, "-k", keyring])
        assert returncode == code, (keyring, stderr)
        assert message in stderr
        assert str(keyring) in stderr
        assert_one_line(stderr)
        assert left == SENTINEL
    assert snapshot(cli.spool) == before


def _sign_only_cert(tmp_path: Path) -> Path:
    """A real GnuPG certificate with no encryption subkey at all."""
    home = tmp_path / "g"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
           "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "sign-only <s@example.org>", "ed25519", "sign",
                    "never"], check=True, capture_output=True)
    cert = tmp_path / "sign-only.pgp"
    subprocess.run([*gpg, "--export", "-o", str(cert)], check=True, capture_output=True)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
    return cert


def test_backup_refuses_missing_or_bad_spool(cli: Cli, gpg_key: oracles.KeyPair,
                                             tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    for spool, message in [(tmp_path / "nope", "does not exist"),
                           (not_a_dir, "not a directory")]:
        returncode, stderr, left = run_with_pipe(
            cli, ["backup", "-v", VAULT, "-k", gpg_key.cert, "-S", spool])
        assert returncode == 74, stderr
        assert message in stderr
        assert str(spool) in stderr
        assert left == SENTINEL
    assert not (tmp_path / "nope").exists()


def test_backup_id_taken_keeps_input_and_spool(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    ulid = cli.backup(gpg_key, b"first")
    before = snapshot(cli.spool)
    returncode, stderr, left = run_with_pipe(
        cli, ["backup", "-v", VAULT, "-p", "hosts/db1", "-k", gpg_key.cert, "-u", ulid])
    assert returncode == 73
    assert ulid in stderr
    assert left == SENTINEL
    assert snapshot(cli.spool) == before


def test_stdin_terminal_is_refused(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    # script(1) gives the command a pseudo-terminal as stdin.
    command = (f"{sys.executable} -m cryophile backup -v {VAULT} -k {gpg_key.cert} < /dev/tty; "
               "echo rc=$?")
    result = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                            env=cli.environment(), timeout=60, check=False,
                            stdin=subprocess.DEVNULL)
    assert b"from a terminal" in result.stdout
    assert b"rc=64" in result.stdout


class TestRestoreRefusesDamage:
    """Damaged, missing, duplicated fragments: refused, named, and no partial output file."""

    @pytest.fixture
    def staged(self, cli: Cli, gpg_key: oracles.KeyPair) -> tuple[str, Path]:
        data = os.urandom(12 * 1024 * 1024)
        ulid = cli.backup(gpg_key, data, "-C", "none")
        return ulid, cli.stage_for_restore(ulid)

    def restore(self, cli: Cli, key: oracles.KeyPair, ulid: str,
                output: Path) -> tuple[int, str]:
        result = cli.run(["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid, "-k",
                          key.secret, "-o", output])
        assert not output.exists()
        assert not [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}")]
        assert_one_line(result.stderr)
        return result.returncode, result.stderr

    def test_flipped_byte(self, cli: Cli, gpg_key: oracles.KeyPair,
                          staged: tuple[str, Path], tmp_path: Path) -> None:
        ulid, directory = staged
        fragment = directory / "chunk.2"
        content = bytearray(fragment.read_bytes())
        content[12345] ^= 0x01
        fragment.unlink()  # hard-linked to the freeze queue: replace, don't edit
        fragment.write_bytes(bytes(content))
        code, stderr = self.restore(cli, gpg_key, ulid, tmp_path / "out")
        assert code == 65
        assert "fragment 2 of 3" in stderr
        assert "SHA-256" in stderr

    def test_truncated(self, cli: Cli, gpg_key: oracles.KeyPair,
                       staged: tuple[str, Path], tmp_path: Path) -> None:
        ulid, directory = staged
        fragment = directory / "chunk.3"
        content = fragment.read_bytes()
        fragment.unlink()
        fragment.write_bytes(content[:-100])
        code, stderr = self.restore(cli, gpg_key, ulid, tmp_path / "out")
        assert code == 65
        assert "fragment 3 of 3" in stderr
        assert "truncated" in stderr

    def test_duplicated(self, cli: Cli, gpg_key: oracles.KeyPair,
                        staged: tuple[str, Path], tmp_path: Path) -> None:
        ulid, directory = staged
        (directory / "chunk.2").unlink()
        shutil.copy(directory / "chunk.1", directory / "chunk.2")
        code, stderr = self.restore(cli, gpg_key, ulid, tmp_path / "out")
        assert code == 65
        assert "fragment 2 of 3" in stderr

    def test_symlink_is_not_followed(self, cli: Cli, gpg_key: oracles.KeyPair,
                                     staged: tuple[str, Path], tmp_path: Path) -> None:
        ulid, directory = staged
        elsewhere = tmp_path / "planted"
        shutil.copy(directory / "chunk.2", elsewhere)  # even the right bytes
        (directory / "chunk.2").unlink()
        (directory / "chunk.2").symlink_to(elsewhere)
        code, stderr = self.restore(cli, gpg_key, ulid, tmp_path / "out")
        assert code == 65
        assert "symbolic link" in stderr

    def test_missing(self, cli: Cli, gpg_key: oracles.KeyPair,
                     staged: tuple[str, Path], tmp_path: Path) -> None:
        ulid, directory = staged
        (directory / "chunk.3").unlink()
        code, stderr = self.restore(cli, gpg_key, ulid, tmp_path / "out")
        assert code == 65
        assert "chunk.3 missing" in stderr

    def test_missing_manifest(self, cli: Cli, gpg_key: oracles.KeyPair,
                              staged: tuple[str, Path], tmp_path: Path) -> None:
        ulid, directory = staged
        (directory / "chunk.0").unlink()
        code, stderr = self.restore(cli, gpg_key, ulid, tmp_path / "out")
        assert code == 65
        assert "chunk.0" in stderr

    def test_hostile_manifest(self, cli: Cli, gpg_key: oracles.KeyPair,
                              staged: tuple[str, Path], tmp_path: Path) -> None:
        ulid, directory = staged
        manifest = json.loads((directory / "chunk.0").read_bytes())
        manifest["fragments"][0]["index"] = -1
        (directory / "chunk.0").unlink()
        (directory / "chunk.0").write_text(json.dumps(manifest))
        code, stderr = self.restore(cli, gpg_key, ulid, tmp_path / "out")
        assert code == 65
        assert "index -1" in stderr

    def test_manifest_of_another_backup(self, cli: Cli, gpg_key: oracles.KeyPair,
                                        staged: tuple[str, Path], tmp_path: Path) -> None:
        ulid, directory = staged
        other = cli.backup(gpg_key, b"other")
        (directory / "chunk.0").unlink()
        shutil.copy(cli.freeze_dir(other) / "chunk.0", directory / "chunk.0")
        code, stderr = self.restore(cli, gpg_key, ulid, tmp_path / "out")
        assert code == 65
        assert f"not {VAULT}/hosts/db1/{ulid}" in stderr

    def test_no_matching_secret_key(self, cli: Cli, sqop_key: oracles.KeyPair,
                                    staged: tuple[str, Path], tmp_path: Path) -> None:
        ulid, _ = staged
        code, stderr = self.restore(cli, sqop_key, ulid, tmp_path / "out")
        assert code == 77
        assert "no secret key for this backup" in stderr

    def test_certificate_instead_of_secret_key(self, cli: Cli, gpg_key: oracles.KeyPair,
                                               staged: tuple[str, Path]) -> None:
        ulid, _ = staged
        result = cli.run(["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid, "-k",
                          gpg_key.cert])
        assert result.returncode == 78
        assert "holds no secret key" in result.stderr


def test_damage_on_stdout_says_output_is_incomplete(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    # 96 MiB of plaintext: far more than the ~25 MiB the decryptor withholds,
    # so output has started when the damaged last fragment is reached.
    data = os.urandom(96 * 1024 * 1024)
    ulid = cli.backup(gpg_key, data, "-C", "none", size="16M")
    directory = cli.stage_for_restore(ulid)
    last = sorted(directory.iterdir(), key=lambda p: int(p.suffix[1:]))[-1]
    content = last.read_bytes()
    last.unlink()
    last.write_bytes(content[:-1] + bytes([content[-1] ^ 0xFF]))
    result = cli.run(["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid, "-k",
                      gpg_key.secret])
    assert result.returncode == 65
    assert "output is incomplete" in result.stderr
    assert 0 < len(result.stdout) < len(data)
    assert data.startswith(result.stdout)


def test_restore_of_unknown_backup(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    result = cli.run(["restore", "-v", VAULT, "-u", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "-k",
                      gpg_key.secret])
    assert result.returncode == 66
    assert "is not in vault" in result.stderr
    assert_one_line(result.stderr)


def test_restore_needs_a_backup_id_and_a_key(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    result = cli.run(["restore", "-v", VAULT, "-k", gpg_key.secret])
    assert result.returncode == 64
    assert "-u/--ulid" in result.stderr
    result = cli.run(["restore", "-v", VAULT, "-u", "01ARZ3NDEKTSV4RRFFQ69G5FAV"])
    assert result.returncode == 64
    assert "-k/--keyring" in result.stderr


def test_broken_config_file_is_an_error(cli: Cli, gpg_key: oracles.KeyPair,
                                        tmp_path: Path) -> None:
    config = tmp_path / "cryophile.toml"
    config.write_text("[[vault]\nid = 1\n")
    returncode, stderr, left = run_with_pipe(
        cli, ["backup", "-v", VAULT, "-k", gpg_key.cert, "-c", config])
    assert returncode == 78
    assert str(config) in stderr
    assert "line 1" in stderr
    assert left == SENTINEL
    returncode, stderr, left = run_with_pipe(
        cli, ["backup", "-v", VAULT, "-k", gpg_key.cert, "-c", tmp_path / "missing.toml"])
    assert returncode == 78
    assert "missing.toml" in stderr


def test_bad_log_environment(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    result = cli.run(["backup", "-v", VAULT, "-k", gpg_key.cert],
                     env={"CRYOPHILE_LOG": "loud"})
    assert result.returncode == 64
    assert "CRYOPHILE_LOG" in result.stderr

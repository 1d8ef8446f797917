"""restore --chain / --exec / --latest / --label and verify --chain through the real CLI
(issue 16), on the embedded directory vault and on SeaweedFS.

The chain is a real GNU tar ``--listed-incremental`` series: a full backup,
then incrementals that add, change and delete files, each backed up with
``--parent latest``; ``restore --chain --exec 'tar --listed-incremental=/dev/null
-x -C DIR'`` must rebuild the source tree (compared as ``diff -r`` does).
Broken chains (a missing middle link, a fragment the vault lists with the
wrong size) must fail before the command runs on anything: the command would
leave a marker file.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import oracles
from s3server import S3Bucket
from support.cli import VAULT, Cli, Result

PREFIX = "srv/data"
MiB = 1 << 20


@dataclass
class TarChain:
    """Three tar incrementals of ``source`` in the vault: ``ulids`` oldest first, and the
    tar stream each backup holds."""

    cli: Cli
    source: Path
    ulids: list[str]
    streams: list[bytes]
    env: dict[str, str]

    def run(self, *args: str | Path) -> Result:
        return self.cli.run(list(args), env=self.env)

    def restore(self, key: oracles.KeyPair, *args: str | Path) -> Result:
        return self.run("restore", "-v", VAULT, "-p", PREFIX, "-k", key.secret, *args)

    def vault_dir(self, ulid: str) -> Path:
        return self.cli.spool.parent / f"{self.cli.spool.name}-vaults" / VAULT / PREFIX / ulid


def _tar(source: Path, snar: Path) -> bytes:
    return subprocess.run(["tar", f"--listed-incremental={snar}", "-C", str(source), "-cf",
                           "-", "."], capture_output=True, check=True).stdout


def make_chain(cli: Cli, key: oracles.KeyPair, tmp_path: Path, *, freeze: bool = True,
               env: dict[str, str] | None = None, big: bool = False) -> TarChain:
    """Full backup, then an increment that adds and changes files (with ``big``, a
    7 MiB random file, so that it spans two 5 MiB fragments), then one that deletes
    a file and a directory and adds another."""
    source = tmp_path / "source"
    (source / "etc" / "conf.d").mkdir(parents=True)
    (source / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (source / "etc" / "conf.d" / "a.conf").write_text("a = 1\n")
    (source / "var").mkdir()
    (source / "var" / "log").write_bytes(b"boot\n" * 1000)
    snar = tmp_path / "snar"
    streams = [_tar(source, snar)]
    (source / "etc" / "hosts").write_text("127.0.0.1 localhost\n10.0.0.2 db\n")
    (source / "etc" / "conf.d" / "b.conf").write_text("b = 2\n")
    (source / "var" / "blob").write_bytes(random.Random(16).randbytes(7 * MiB if big else 4096))
    streams.append(_tar(source, snar))
    (source / "etc" / "conf.d" / "a.conf").unlink()
    (source / "var" / "log").unlink()
    (source / "srv").mkdir()
    (source / "srv" / "index.html").write_text("<h1>hi</h1>\n")
    streams.append(_tar(source, snar))
    run_env = env or {}
    ulids = []
    for number, stream in enumerate(streams):
        extra = [] if number == 0 else ["--parent", "latest"]
        result = cli.run(["backup", "-v", VAULT, "-p", PREFIX, "-k", key.cert, "-s", "5M",
                          "-t", f"2026-12-0{number + 1}T03:00:00Z", "--json",
                          "--label", f"snapshot=data@{number}", *extra], stdin=stream,
                         env=run_env)
        assert result.returncode == 0, result.stderr
        ulids.append(json.loads(result.stdout)["ulid"])
    if freeze:
        frozen = cli.run(["freeze", "--once"], env=run_env)
        assert frozen.returncode == 0, frozen.stderr
    return TarChain(cli, source, ulids, streams, run_env)


def same_tree(left: Path, right: Path) -> None:
    compared = subprocess.run(["diff", "-r", str(left), str(right)], capture_output=True,
                              text=True, check=False)
    assert compared.returncode == 0, compared.stdout + compared.stderr


def untar_into(target: Path) -> str:
    return f"tar --listed-incremental=/dev/null -x -C {target}"


def test_chain_exec_tar_rebuilds_the_tree_and_stdout_gets_the_streams_in_order(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    chain = make_chain(cli, gpg_key, tmp_path, big=True)
    target = tmp_path / "restored"
    target.mkdir()
    result = chain.restore(gpg_key, "-u", chain.ulids[2], "--chain", "--exec",
                           untar_into(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    same_tree(chain.source, target)
    assert f"chain of {VAULT}/{PREFIX}/{chain.ulids[2]}: 3 backup(s)" in result.stderr
    # Each link (its request filed by the chain before its turn) is announced with its
    # own size, never as a window wider than the link.
    wholes = re.findall(r"restoring (\d+) fragment\(s\): the spool's budget holds them all",
                        result.stderr)
    assert len(wholes) == 3, result.stderr
    assert all(int(count) >= 1 for count in wholes), wholes
    assert "window of" not in result.stderr
    # Without --exec: the three streams one after the other on stdout; the restore
    # queue is left empty.
    joined = chain.run("restore", "--id", f"{VAULT}/{PREFIX}/{chain.ulids[2]}", "-k",
                       gpg_key.secret, "--chain")
    assert joined.returncode == 0, joined.stderr
    assert joined.stdout == b"".join(chain.streams)
    assert not list((cli.spool / "restore").rglob("chunk.*"))
    # The chain of a middle link ends with it.
    upto = chain.restore(gpg_key, "-u", chain.ulids[1], "--chain", "-o", tmp_path / "two")
    assert upto.returncode == 0, upto.stderr
    assert (tmp_path / "two").read_bytes() == chain.streams[0] + chain.streams[1]


def test_latest_label_and_exec_without_chain(cli: Cli, gpg_key: oracles.KeyPair,
                                             tmp_path: Path) -> None:
    chain = make_chain(cli, gpg_key, tmp_path)
    out = tmp_path / "out"
    latest = chain.restore(gpg_key, "--latest", "--exec", f"cat > {out}")
    assert latest.returncode == 0, latest.stderr
    assert out.read_bytes() == chain.streams[2]  # --exec without --chain: one run, one link
    assert f"--latest: backup {VAULT}/{PREFIX}/{chain.ulids[2]}" in latest.stderr
    labelled = chain.restore(gpg_key, "--label", "snapshot=data@1")
    assert labelled.returncode == 0, labelled.stderr
    assert labelled.stdout == chain.streams[1]
    target = tmp_path / "restored"
    target.mkdir()
    whole = chain.restore(gpg_key, "--latest", "--chain", "--exec", untar_into(target))
    assert whole.returncode == 0, whole.stderr
    same_tree(chain.source, target)
    # A label two backups carry names neither: a usage error listing both.
    for _ in range(2):
        again = cli.run(["backup", "-v", VAULT, "-p", "other", "-k", gpg_key.cert,
                         "--label", "host=db1"], stdin=b"x")
        assert again.returncode == 0, again.stderr
    twice = chain.run("restore", "-v", VAULT, "-k", gpg_key.secret, "--label", "host=db1")
    assert twice.returncode == 64
    assert "2 backups carry it" in twice.stderr
    none = chain.restore(gpg_key, "--label", "snapshot=nope")
    assert none.returncode == 66
    assert "no backup" in none.stderr
    # --latest passes over a newer backup that is not in the vault yet, and says so.
    queued = cli.backup(gpg_key, b"queued only", "-t", "2026-12-09T00:00:00Z", prefix=PREFIX)
    picked = chain.restore(gpg_key, "--latest")
    assert picked.returncode == 0, picked.stderr
    assert picked.stdout == chain.streams[2]
    assert f"passes over {VAULT}/{PREFIX}/{queued}: it is not in the vault yet" in picked.stderr
    exclusive = chain.restore(gpg_key, "--latest", "-u", chain.ulids[0])
    assert exclusive.returncode == 64
    with_output = chain.restore(gpg_key, "--latest", "--exec", "cat", "-o", tmp_path / "o")
    assert with_output.returncode == 64


def _marker_command(marker: Path) -> str:
    return f"touch {marker}; cat > /dev/null"


def test_a_missing_middle_link_fails_before_anything_runs(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    chain = make_chain(cli, gpg_key, tmp_path)
    middle = chain.vault_dir(chain.ulids[1])
    for path in middle.iterdir():
        path.unlink()
    marker = tmp_path / "ran"
    result = chain.restore(gpg_key, "-u", chain.ulids[2], "--chain", "--exec",
                           _marker_command(marker))
    assert result.returncode == 65, result.stderr
    assert f"link {VAULT}/{PREFIX}/{chain.ulids[1]} is missing" in result.stderr
    assert "nothing was restored" in result.stderr
    assert not marker.exists()
    assert not (cli.spool / "thaw").exists() or not list((cli.spool / "thaw").rglob("*.json"))
    verified = chain.run("verify", "-v", VAULT, "-p", PREFIX, "-u", chain.ulids[2], "--chain")
    assert verified.returncode == 65, verified.stderr
    assert f"{VAULT}/{PREFIX}/{chain.ulids[1]}: MISSING" in verified.stdout.decode()


def test_a_fragment_of_the_wrong_size_fails_before_anything_runs(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    chain = make_chain(cli, gpg_key, tmp_path)
    with (chain.vault_dir(chain.ulids[1]) / "chunk.1").open("ab") as fragment:
        fragment.write(b"tail")
    marker = tmp_path / "ran"
    result = chain.restore(gpg_key, "-u", chain.ulids[2], "--chain", "--exec",
                           _marker_command(marker))
    assert result.returncode == 65, result.stderr
    assert f"link 2 of 3, {VAULT}/{PREFIX}/{chain.ulids[1]}, is damaged" in result.stderr
    assert "fragment 1" in result.stderr
    assert not marker.exists()
    dry = chain.restore(gpg_key, "-u", chain.ulids[2], "--chain", "--dry-run")
    assert dry.returncode == 65
    verified = chain.run("verify", "-v", VAULT, "-p", PREFIX, "-u", chain.ulids[2], "--chain")
    assert verified.returncode == 65
    lines = verified.stdout.decode().splitlines()
    assert lines[0].startswith(f"{VAULT}/{PREFIX}/{chain.ulids[0]}: healthy")
    assert any(line.startswith(f"{VAULT}/{PREFIX}/{chain.ulids[1]}: DAMAGED") for line in lines)
    assert lines[-1] == f"chain of {VAULT}/{PREFIX}/{chain.ulids[2]}: 1 of 3 link(s) damaged"
    # verify --chain of the intact first link alone is healthy.
    first = chain.run("verify", "-v", VAULT, "-p", PREFIX, "-u", chain.ulids[0], "--chain")
    assert first.returncode == 0, first.stdout


def test_a_link_damaged_inside_an_object_stops_the_chain_there(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    chain = make_chain(cli, gpg_key, tmp_path, big=True)
    # Same size, one byte flipped: the vault's metadata still matches, the content not.
    fragment = chain.vault_dir(chain.ulids[1]) / "chunk.2"
    content = bytearray(fragment.read_bytes())
    content[len(content) // 2] ^= 0x01
    fragment.write_bytes(bytes(content))
    target = tmp_path / "restored"
    target.mkdir()
    result = chain.restore(gpg_key, "-u", chain.ulids[2], "--chain", "--exec",
                           untar_into(target))
    assert result.returncode == 65, result.stderr
    assert (f"chain of {VAULT}/{PREFIX}/{chain.ulids[2]} stopped at link 2 of 3 "
            f"({VAULT}/{PREFIX}/{chain.ulids[1]})") in result.stderr
    assert "link 1 was restored" in result.stderr
    assert "incomplete" in result.stderr
    # Link 1 (the full backup) was applied; link 3 never ran.
    assert (target / "var" / "log").read_bytes() == b"boot\n" * 1000
    assert not (target / "srv").exists()


def test_a_failing_command_stops_the_chain_naming_link_and_status(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    chain = make_chain(cli, gpg_key, tmp_path)
    runs = tmp_path / "runs"
    result = chain.restore(gpg_key, "-u", chain.ulids[2], "--chain", "--exec",
                           f"cat > /dev/null; echo run >> {runs}; exit 7")
    assert result.returncode == 69, result.stderr
    assert f"failed on backup {VAULT}/{PREFIX}/{chain.ulids[0]}: exit status 7" in result.stderr
    assert "stopped at link 1 of 3" in result.stderr
    assert runs.read_text() == "run\n"  # not run again for the next links
    # A command that stops reading early and fails: its status, not a broken pipe.
    early = chain.restore(gpg_key, "-u", chain.ulids[0], "--exec", "exit 3")
    assert early.returncode == 69, early.stderr
    assert "exit status 3" in early.stderr


def test_chain_restore_and_verify_on_seaweedfs(cli: Cli, gpg_key: oracles.KeyPair,
                                               s3_bucket: S3Bucket, tmp_path: Path) -> None:
    config = cli.home / ".config" / "cryophile" / "cryophile.toml"
    config.parent.mkdir(parents=True)
    config.write_text(
        "[[vault]]\n"
        f'id = "{VAULT}"\n'
        'provider = "s3"\n'
        'service = "seaweedfs"\n'
        f'bucket = "{s3_bucket.name}"\n'
        f'endpoint_url = "{s3_bucket.endpoint.url}"\n'
        f'region = "{s3_bucket.endpoint.region}"\n')
    env = {"AWS_ACCESS_KEY_ID": s3_bucket.endpoint.access_key,
           "AWS_SECRET_ACCESS_KEY": s3_bucket.endpoint.secret_key,
           "AWS_EC2_METADATA_DISABLED": "true"}
    chain = make_chain(cli, gpg_key, tmp_path, env=env)
    target = tmp_path / "restored"
    target.mkdir()
    result = chain.restore(gpg_key, "--latest", "--chain", "--exec", untar_into(target))
    assert result.returncode == 0, result.stderr
    same_tree(chain.source, target)
    verified = chain.run("verify", "-v", VAULT, "-p", PREFIX, "-u", chain.ulids[2], "--chain",
                         "--download")
    assert verified.returncode == 0, verified.stdout
    # The middle link's fragment gone from the bucket: both refuse, naming it.
    s3_bucket.endpoint.client().delete_object(Bucket=s3_bucket.name,
                                              Key=f"{PREFIX}/{chain.ulids[1]}/chunk.1")
    marker = tmp_path / "ran"
    broken = chain.restore(gpg_key, "--latest", "--chain", "--exec", _marker_command(marker))
    assert broken.returncode == 65, broken.stderr
    assert f"{chain.ulids[1]}, is damaged" in broken.stderr
    assert "missing from the vault" in broken.stderr
    assert not marker.exists()
    verified = chain.run("verify", "-v", VAULT, "-p", PREFIX, "-u", chain.ulids[2], "--chain")
    assert verified.returncode == 65


def test_a_command_that_exits_0_before_reading_its_input_is_a_failure(
        cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    data = random.Random(77).randbytes(4 << 20)  # far more than a pipe holds
    ulid = cli.backup(gpg_key, data, "-C", "none")
    assert cli.run(["freeze", "--once"]).returncode == 0
    result = cli.run(["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid, "-k",
                      gpg_key.secret, "--exec", "exit 0"])
    assert result.returncode == 69, result.stderr
    assert "exited with status 0" in result.stderr
    assert "before it read its whole input" in result.stderr


def test_a_chain_with_keep_restores_and_keeps_every_link(cli: Cli, gpg_key: oracles.KeyPair,
                                                          tmp_path: Path) -> None:
    """--keep: no window (room for each whole backup), so no window-0 position may stall
    a link waiting for a window its restore never writes."""
    chain = make_chain(cli, gpg_key, tmp_path, big=True)
    result = chain.restore(gpg_key, "-u", chain.ulids[2], "--chain", "--keep", "--thaw",
                           "--timeout", "60")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"".join(chain.streams)
    for ulid in chain.ulids:  # kept in the restore queue, as --keep says
        assert list((cli.spool / "restore" / VAULT / PREFIX / ulid).glob("chunk.*"))

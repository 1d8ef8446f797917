"""Issue 17, point 5: the daemons run as a dedicated system user — the sysusers.d and
tmpfiles.d files make it and its spool (applied to a scratch root, never this host's),
cryophile works end to end as a non-root user owning the spool (the real CLI under
setpriv), and root is told to run as that user rather than trusting its spool."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import oracles
from cryophile import spool as spool_module
from cryophile.errors import StorageIOError
from cryophile.spool import Spool, check_private, default_spool_root
from support.cli import VAULT, Cli
from support.files import REPO

CONTRIB = REPO / "contrib" / "systemd"
#: A uid no account here has: the daemons' user as far as the kernel is concerned.
SERVICE_UID = 61234


def test_sysusers_and_tmpfiles_make_the_user_and_its_private_spool(tmp_path: Path) -> None:
    root = tmp_path / "sysroot"
    (root / "etc").mkdir(parents=True)
    commands: list[list[str | Path]] = [
        ["systemd-sysusers", f"--root={root}", CONTRIB / "cryophile.sysusers.conf"],
        ["systemd-tmpfiles", f"--root={root}", "--create", CONTRIB / "cryophile.tmpfiles.conf"]]
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    [entry] = [line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines()
               if line.startswith("cryophile:")]
    uid, gid, shell = int(entry[2]), int(entry[3]), entry[6]
    assert uid < 1000  # a system user
    assert shell == "/usr/sbin/nologin"
    for relative in ("var/spool/cryophile", "var/spool/cryophile/freeze",
                     "var/spool/cryophile/thaw", "var/spool/cryophile-vaults"):
        info = (root / relative).stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, gid, 0o700)
    config_dir = (root / "etc" / "cryophile").stat()
    assert (config_dir.st_uid, config_dir.st_gid) == (0, gid)
    assert stat.S_IMODE(config_dir.st_mode) == 0o750


@pytest.fixture
def service_home() -> Iterator[Path]:
    """A directory the service uid can reach (pytest's tmp_path is root's alone)."""
    home = Path(tempfile.mkdtemp(prefix="cryophile-service-"))
    os.chmod(home, 0o755)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def as_service(cli: Cli, args: list[str | Path], *, stdin: bytes = b"",
               home: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**cli.environment(), "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    return subprocess.run(
        ["setpriv", f"--reuid={SERVICE_UID}", f"--regid={SERVICE_UID}", "--clear-groups",
         sys.executable, "-m", "cryophile", *map(str, args)],
        input=stdin, capture_output=True, env=env, check=False, timeout=120)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to take another uid")
def test_cryophile_works_as_the_spools_own_non_root_user(
        service_home: Path, gpg_key: oracles.KeyPair) -> None:
    spool = service_home / "spool"
    spool.mkdir(mode=0o700)
    os.chown(spool, SERVICE_UID, SERVICE_UID)
    vaults = service_home / "spool-vaults"
    vaults.mkdir(mode=0o700)
    os.chown(vaults, SERVICE_UID, SERVICE_UID)
    keys = service_home / "keys"
    keys.mkdir(mode=0o700)
    for source in (gpg_key.cert, gpg_key.secret):
        shutil.copy(source, keys / source.name)
        os.chown(keys / source.name, SERVICE_UID, SERVICE_UID)
    os.chown(keys, SERVICE_UID, SERVICE_UID)
    cli = Cli(spool, service_home)
    data = os.urandom(200_000)
    # `zfs send … | runuser -u cryophile -- cryophile backup …`: root reads, the user writes.
    backup = as_service(cli, ["backup", "-v", VAULT, "-p", "svc", "-k", keys / gpg_key.cert.name,
                              "-s", "5M", "-t", "2026-12-01T00:00:00Z"], stdin=data,
                        home=service_home)
    assert backup.returncode == 0, backup.stderr
    freeze = as_service(cli, ["freeze", "--once"], home=service_home)
    assert freeze.returncode == 0, freeze.stderr
    out = service_home / "restored"
    os.chown(service_home, SERVICE_UID, SERVICE_UID)
    restore = as_service(cli, ["restore", "-v", VAULT, "-p", "svc", "-t", "2026-12-01T00:00:00Z",
                               "-k", keys / gpg_key.secret.name, "-o", out], home=service_home)
    assert restore.returncode == 0, restore.stderr
    assert out.read_bytes() == data
    assert out.stat().st_uid == SERVICE_UID
    # Root does not trust (or take over) the daemons' spool.
    as_root = cli.run(["status"])
    assert as_root.returncode == 0  # read-only: status reads any spool it can
    freeze_as_root = cli.run(["freeze", "--once"])
    assert freeze_as_root.returncode == 74, freeze_as_root.stderr
    assert f"owned by uid {SERVICE_UID}, not by this user" in freeze_as_root.stderr


def test_the_service_users_default_spool_is_root_s(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(spool_module, "_user_name", lambda uid: "cryophile")
    monkeypatch.setattr(os, "geteuid", lambda: SERVICE_UID)
    assert default_spool_root({"XDG_STATE_HOME": str(tmp_path)}) == Path("/var/spool/cryophile")
    monkeypatch.setattr(spool_module, "_user_name", lambda uid: "alice")
    assert default_spool_root({"XDG_STATE_HOME": str(tmp_path)}) == (
        tmp_path / "cryophile" / "spool")


def test_another_user_is_told_to_run_as_the_service_user(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    Spool.open(tmp_path, create_root=False)
    monkeypatch.setattr(spool_module, "_user_name", lambda uid: "cryophile")
    monkeypatch.setattr(os, "geteuid", lambda: SERVICE_UID)
    with pytest.raises(StorageIOError, match=r"belongs to the cryophile user .* runuser -u "
                                             r"cryophile -- cryophile"):
        check_private(tmp_path, "spool directory")

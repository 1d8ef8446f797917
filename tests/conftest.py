"""Shared fixtures: real OpenPGP keys, a spool, and ways to run the real CLI.

Keys are made by the real ``gpg``, ``sq`` and ``sqop`` (see ``oracles.py``);
they are session-scoped because key generation costs seconds. A missing tool
fails the test with the Debian package to install: in CI nothing may skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import oracles
from cryophile.spool import Spool

pytest_plugins = ["s3server"]

REPO = Path(__file__).resolve().parent.parent
VAULT = "6f1c2a3b-5d4e-4f60-8a7b-9c0d1e2f3a4b"


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session")
def gpg_key(key_dir: Path) -> oracles.KeyPair:
    """An unprotected GnuPG cv25519 key: the default recipient of the tests."""
    return oracles.make_gpg_key(key_dir / "gpg", algo="cv25519")


@pytest.fixture(scope="session")
def gpg_key_protected(key_dir: Path) -> oracles.KeyPair:
    return oracles.make_gpg_key(key_dir / "gpg-pw", algo="cv25519", passphrase="correct horse")


@pytest.fixture(scope="session")
def gpg_rsa_key(key_dir: Path) -> oracles.KeyPair:
    return oracles.make_gpg_key(key_dir / "gpg-rsa", algo="rsa3072")


@pytest.fixture(scope="session")
def sq_key(key_dir: Path) -> oracles.KeyPair:
    return oracles.make_sq_key(key_dir / "sq")


@pytest.fixture(scope="session")
def sqop_key(key_dir: Path) -> oracles.KeyPair:
    return oracles.make_sqop_key(key_dir / "sqop")


@pytest.fixture(scope="session")
def sqop_key_protected(key_dir: Path) -> oracles.KeyPair:
    return oracles.make_sqop_key(key_dir / "sqop-pw", passphrase="s3cret phrase")


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@dataclass
class Result:
    """What a finished cryophile process left behind."""

    returncode: int
    stdout: bytes
    stderr: str


@dataclass
class Cli:
    """Runs the real ``cryophile`` command in a subprocess against one spool."""

    spool: Path
    home: Path
    #: The configuration ``backup`` is given (-c), if any: a backup is bound for the
    #: vault its configuration names, and freeze refuses to send it elsewhere.
    config: Path | None = None

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("CRYOPHILE_")}
        env.update({"CRYOPHILE_SPOOL": str(self.spool), "HOME": str(self.home),
                    "XDG_CONFIG_HOME": str(self.home / ".config")})
        env.update(extra or {})
        return env

    def run(self, args: Sequence[str | os.PathLike[str]], *, stdin: bytes | int | None = None,
            env: Mapping[str, str] | None = None, pass_fds: Sequence[int] = (),
            timeout: float = 300) -> Result:
        command = [sys.executable, "-m", "cryophile", *map(str, args)]
        kwargs: dict[str, object] = {}
        if isinstance(stdin, int):
            kwargs["stdin"] = stdin
        else:
            kwargs["input"] = stdin if stdin is not None else b""
        completed = subprocess.run(command, capture_output=True, env=self.environment(env),
                                   pass_fds=tuple(pass_fds), timeout=timeout, check=False,
                                   **kwargs)  # type: ignore[call-overload]
        return Result(completed.returncode, completed.stdout,
                      completed.stderr.decode(errors="replace"))

    def backup(self, key: oracles.KeyPair, data: bytes, *extra: str, prefix: str = "hosts/db1",
               size: str = "5M") -> str:
        """Back ``data`` up; return the new backup's ULID (asserting success)."""
        config: list[str | Path] = ["-c", self.config] if self.config is not None else []
        result = self.run(["backup", "-v", VAULT, "-p", prefix, "-k", key.cert, "-s", size,
                           "--json", *config, *extra], stdin=data)
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        ulid: str = document["ulid"]
        return ulid

    def freeze_dir(self, ulid: str, prefix: str = "hosts/db1") -> Path:
        return self.spool / "freeze" / VAULT / prefix / ulid

    def restore_dir(self, ulid: str, prefix: str = "hosts/db1") -> Path:
        return self.spool / "restore" / VAULT / prefix / ulid

    def stage_for_restore(self, ulid: str, prefix: str = "hosts/db1") -> Path:
        """Hard-link a frozen backup into the restore queue (what thaw will do)."""
        source = self.freeze_dir(ulid, prefix)
        target = self.restore_dir(ulid, prefix)
        target.mkdir(parents=True)
        for item in source.iterdir():
            os.link(item, target / item.name)
        return target


@pytest.fixture
def cli(spool: Path, tmp_path: Path) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    return Cli(spool, home)


def prepare_spool(root: Path) -> None:
    """Create the spool's queue directories, as the first command that writes does.

    (``list`` and ``status`` create nothing: they cannot prepare a spool.)
    """
    Spool.open(root, create_root=True)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory below ``root`` with its size and mode: to prove nothing changed."""
    state: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            state[str(path.relative_to(root))] = (info.st_size, info.st_mode)
    return state


@pytest.fixture
def random_vault() -> str:
    return str(uuid.uuid4())


def tar_of(directory: Path) -> bytes:
    """A real tar stream of ``directory``, made by the real ``tar``."""
    return subprocess.run(["tar", "-C", str(directory), "-cf", "-", "."], capture_output=True,
                          check=True).stdout


@pytest.fixture(scope="session")
def tar_stream() -> bytes:
    """A real tar stream of a system directory, a few MB, compressible like real data."""
    stdlib = Path(os.__file__).parent
    data = subprocess.run(["tar", "-C", str(stdlib), "-cf", "-", "--exclude=__pycache__",
                           "email", "json", "asyncio", "unittest"],
                          capture_output=True, check=True).stdout
    assert len(data) > 1_000_000
    return data



def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int) -> None:
    """In CI a skipped test is a failure: the S3 and OpenPGP suites must really run."""
    del exitstatus
    skipped = terminalreporter.stats.get("skipped", [])
    if os.environ.get("CI") and skipped:
        terminalreporter.write_line(f"CI: {len(skipped)} test(s) skipped; skips are failures "
                                    "in CI", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    stats = getattr(reporter, "stats", {}) if reporter is not None else {}
    if os.environ.get("CI") and stats.get("skipped") and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

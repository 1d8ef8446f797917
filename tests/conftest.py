"""Shared fixtures: real OpenPGP keys, a spool, and ways to run the real CLI.

Only fixtures and hooks live here; what tests import (the ``Cli`` runner,
``VAULT``, ``snapshot``, ...) is in the ``support`` package (tests/support/).

Keys are made by the real ``gpg``, ``sq`` and ``sqop`` (see ``oracles.py``);
they are session-scoped because key generation costs seconds. A missing tool
fails the test with the Debian package to install: in CI nothing may skip.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

import oracles
from support.cli import Cli

pytest_plugins = ["s3server"]


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


@pytest.fixture
def cli(spool: Path, tmp_path: Path) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    return Cli(spool, home)


@pytest.fixture
def random_vault() -> str:
    return str(uuid.uuid4())


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

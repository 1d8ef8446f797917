"""backup → freeze → thaw → restore against S3 servers with and without Glacier semantics.

End to end through the real CLI, every cryophile command in a subprocess:

- moto's server (in this process, on 127.0.0.1) for GLACIER and DEEP_ARCHIVE:
  a GET of an archived object is refused (InvalidObjectState) until a
  RestoreObject has gone through ``ongoing-request="true"`` to ``"false"``.
  The ``moto_slow_restore`` fixture makes every restore report RESTORING once
  before RESTORED; :class:`MotoView` records what moto told the clients about
  each object (so the tests can prove the fragments went through RESTORING)
  and can hold chosen objects in RESTORING (a per-object restore delay); it
  also records the RestoreObject requests (tier, days) and GETs moto served.
  All of it acts on moto's side of the HTTP connection: the cryophile
  processes talk to a real HTTP server and are not patched in any way.
- SeaweedFS, which stores the GLACIER class name but has no restore operation
  (RestoreObject → 405 MethodNotAllowed): the plain S3 path.

The last test is the exception: it drives the thaw daemon's directory watcher
in this process, to show deterministically a race that the end-to-end runs
hit only now and then.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.exceptions
import inotify_simple
import pytest
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import FakeKey, s3_backends
from moto.s3.responses import S3Response

import oracles
from cryophile.watch import TreeWatcher
from polling import live_files, wait_until
from s3server import S3Bucket
from support.cli import VAULT, Cli, Result
from support.files import UsageSampler

PREFIX = "hosts/db1"
MiB = 1 << 20
#: Seconds a restore may take in these tests before it counts as hung.
RESTORE_TIMEOUT = "120"
RESTORE_WAITING = 'ongoing-request="true"'


# -- moto's side of the connection ---------------------------------------------------


@dataclass
class MotoView:
    """What moto's S3 said about the objects of one bucket, and a hold on some of them.

    Every time moto describes an object (HEAD, GET, and its own check before
    serving a GET of an archived object) the ``x-amz-restore`` value it uses is
    appended to ``served``. A key in ``held`` whose restore has been requested
    keeps answering ``ongoing-request="true"`` (and so refuses GETs) until it
    is taken out of ``held``.
    """

    bucket: str
    served: list[tuple[str, str | None]] = field(default_factory=list)
    held: set[str] = field(default_factory=set)
    #: (key, tier, days) of every RestoreObject request moto received.
    restores: list[tuple[str, str, int]] = field(default_factory=list)
    #: Keys of every GET moto answered with the object's content.
    gets: list[str] = field(default_factory=list)
    #: key → (arrived, go): a GET of the key sets ``arrived``, then waits for ``go``.
    gates: dict[str, tuple[threading.Event, threading.Event]] = field(default_factory=dict)

    def restore_headers(self, key: str) -> list[str | None]:
        return [header for name, header in list(self.served) if name == key]

    def restore_requested(self, key: str) -> bool:
        return any(header is not None for header in self.restore_headers(key))


@pytest.fixture
def moto_view(moto_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> MotoView:
    view = MotoView(moto_bucket.name)
    original: property = vars(FakeKey)["response_dict"]

    def response_dict(self: Any) -> dict[str, Any]:
        assert original.fget is not None
        headers: dict[str, Any] = original.fget(self)
        if self.bucket_name == view.bucket:
            if self.name in view.held and "x-amz-restore" in headers:
                headers = {**headers, "x-amz-restore": RESTORE_WAITING}
            view.served.append((self.name, headers.get("x-amz-restore")))
        return headers

    original_post = S3Response._key_response_post
    original_get = S3Response._key_response_get

    def key_response_post(self: Any, request: Any, body: bytes, bucket_name: str,
                          query: dict[str, Any], key_name: str) -> Any:
        answer = original_post(self, request, body, bucket_name, query, key_name)
        if bucket_name == view.bucket and "restore" in query:
            text = body.decode()
            tier = re.search(r"<Tier>(\w+)</Tier>", text)
            days = re.search(r"<Days>(\d+)</Days>", text)
            view.restores.append((key_name, tier.group(1) if tier else "",
                                  int(days.group(1)) if days else 0))
        return answer

    def key_response_get(self: Any, query: dict[str, Any], key_name: str) -> Any:
        if self.bucket_name == view.bucket and key_name in view.gates:
            arrived, go = view.gates[key_name]
            arrived.set()
            go.wait(timeout=60)
        answer = original_get(self, query, key_name)
        if self.bucket_name == view.bucket and set(query) <= {"x-id"}:  # plain GetObject
            view.gets.append(key_name)
        return answer

    monkeypatch.setattr(FakeKey, "response_dict", property(response_dict))
    monkeypatch.setattr(S3Response, "_key_response_post", key_response_post)
    monkeypatch.setattr(S3Response, "_key_response_get", key_response_get)
    return view


# -- one spool with one configured S3 vault ----------------------------------------------


@dataclass
class Site:
    """One spool, vault ``VAULT`` configured as one S3 bucket, and the CLI to drive them."""

    cli: Cli
    bucket: S3Bucket
    env: dict[str, str]

    def run(self, args: Sequence[str | os.PathLike[str]], *, timeout: float = 300) -> Result:
        return self.cli.run(args, env=self.env, timeout=timeout)

    def popen(self, args: Sequence[str | os.PathLike[str]],
              **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "cryophile", *map(str, args)],
                                env=self.cli.environment(self.env), **kwargs)

    def backup_and_freeze(self, key: oracles.KeyPair, data: bytes,
                          *extra: str) -> tuple[str, dict[str, Any]]:
        """Back ``data`` up, freeze it into the vault, wipe the spool; return ULID and manifest."""
        ulid = self.cli.backup(key, data, *extra, prefix=PREFIX, size="5M")
        manifest: dict[str, Any] = json.loads((self.cli.freeze_dir(ulid) / "chunk.0").read_bytes())
        frozen = self.run(["freeze", "--once"])
        assert frozen.returncode == 0, frozen.stderr
        assert not self.cli.freeze_dir(ulid).exists()
        for child in self.cli.spool.iterdir():
            shutil.rmtree(child)
        return ulid, manifest

    def key(self, ulid: str, index: int) -> str:
        return f"{PREFIX}/{ulid}/chunk.{index}"

    def fragment_keys(self, ulid: str, manifest: dict[str, Any]) -> list[str]:
        return [self.key(ulid, entry["index"]) for entry in manifest["fragments"]]

    def client(self) -> Any:
        return self.bucket.endpoint.client()

    def restore_args(self, ulid: str, key: oracles.KeyPair,
                     *extra: str) -> list[str | os.PathLike[str]]:
        return ["restore", "-v", VAULT, "-p", PREFIX, "-u", ulid, "-k", key.secret, *extra]

    def queue(self, name: str) -> Path:
        return self.cli.spool / name

    def prepare_thaw_tree(self) -> None:
        """Make ``SPOOL/thaw/VAULT/PREFIX`` appear in one step (a rename), so a
        running thaw daemon watches the directory restore files its request in.

        Without this, a running daemon misses the request now and then, when
        restore creates ``VAULT/hosts/db1`` while the daemon refreshes its
        watches, and then waits for its 60 s rescan (the bug that
        test_thaw_watcher_wakes_for_directories_made_during_a_refresh shows).
        """
        staging = self.cli.spool / "staging"
        (staging / VAULT / PREFIX).mkdir(parents=True, mode=0o700)
        os.rename(staging / VAULT, self.queue("thaw") / VAULT)
        staging.rmdir()

    def queue_entries(self, name: str) -> list[Path]:
        """Everything below ``SPOOL/<name>`` (the queue directory itself excluded)."""
        directory = self.queue(name)
        return sorted(directory.rglob("*")) if directory.exists() else []


def make_site(cli: Cli, bucket: S3Bucket, tmp_path: Path, *, storage_class: str = "GLACIER",
              restore_tier: str = "Bulk") -> Site:
    """Configure vault ``VAULT`` as ``bucket`` in the user's config file of ``cli``."""
    config = cli.home / ".config" / "cryophile" / "cryophile.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "[[vault]]\n"
        f'id = "{VAULT}"\n'
        'provider = "s3"\n'
        f'bucket = "{bucket.name}"\n'
        f'endpoint_url = "{bucket.endpoint.url}"\n'
        f'region = "{bucket.endpoint.region}"\n'
        f'storage_class = "{storage_class}"\n'
        f'restore_tier = "{restore_tier}"\n'
        "restore_days = 2\n")
    missing = tmp_path / "no-such-aws-dir"
    env = {"AWS_ACCESS_KEY_ID": bucket.endpoint.access_key,
           "AWS_SECRET_ACCESS_KEY": bucket.endpoint.secret_key,
           "AWS_CONFIG_FILE": str(missing / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(missing / "credentials"),
           "AWS_EC2_METADATA_DISABLED": "true"}
    return Site(cli, bucket, env)


def moto_key(bucket: str, key: str) -> Any:
    """moto's own object (a FakeKey) behind ``key``."""
    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_bucket(bucket).keys[key]


def json_events(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a ``--json`` (or CRYOPHILE_LOG_STYLE=json) run."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            document = json.loads(line)
            assert isinstance(document, dict)
            events.append(document)
    return events


def downloaded_keys(events: list[dict[str, Any]]) -> list[str]:
    return [str(event["key"]) for event in events if event.get("event") == "downloaded"]


def stop_daemon(daemon: subprocess.Popen[bytes]) -> int:
    daemon.send_signal(signal.SIGTERM)
    return daemon.wait(timeout=30)


@pytest.fixture
def data(tar_stream: bytes) -> bytes:
    """~12 MiB of random bytes and a real tar stream: three 5 MiB fragments or so."""
    return random.Random(4).randbytes(12 * MiB) + tar_stream


@pytest.fixture
def glacier(cli: Cli, moto_bucket: S3Bucket, moto_view: MotoView, tmp_path: Path) -> Site:
    del moto_view  # recording from the start
    return make_site(cli, moto_bucket, tmp_path)


# -- the tests -----------------------------------------------------------------------


def test_dry_run_then_restore_with_thaw_through_glacier_restoring(
        glacier: Site, moto_view: MotoView, moto_slow_restore: None,
        gpg_key: oracles.KeyPair, data: bytes) -> None:
    ulid, manifest = glacier.backup_and_freeze(gpg_key, data)
    keys = glacier.fragment_keys(ulid, manifest)
    assert len(keys) >= 3
    total = sum(entry["size"] for entry in manifest["fragments"])

    # Frozen: fragments are GLACIER and unreadable, the manifest is STANDARD.
    client = glacier.client()
    for key in keys:
        assert client.head_object(Bucket=glacier.bucket.name, Key=key)["StorageClass"] == "GLACIER"
    head = client.head_object(Bucket=glacier.bucket.name, Key=glacier.key(ulid, 0))
    assert head.get("StorageClass", "STANDARD") == "STANDARD"
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        client.get_object(Bucket=glacier.bucket.name, Key=keys[0])
    assert refused.value.response["Error"]["Code"] == "InvalidObjectState"

    # The plan, for the vault's tier (Bulk) and for another one; nothing filed.
    for extra, tier, wait in (((), "Bulk", "5–12 hours"),
                              (("--tier", "Expedited"), "Expedited", "1–5 minutes")):
        dry = glacier.run(glacier.restore_args(ulid, gpg_key, "--dry-run", *extra))
        assert dry.returncode == 0, dry.stderr
        plan = dry.stdout.decode()
        assert f"{len(keys)} fragment(s), {total} bytes" in plan
        assert f"{len(keys)} × GLACIER" in plan
        assert f"tier {tier}" in plan
        assert wait in plan
        assert glacier.queue_entries("thaw") == []
        assert glacier.queue_entries("restore") == []
    assert not any(moto_view.restore_requested(key) for key in keys)

    gets_before = len(moto_view.gets)
    result = glacier.run([*glacier.restore_args(ulid, gpg_key, "--thaw", "--poll", "0.2",
                                                "--tier", "Expedited", "--timeout",
                                                RESTORE_TIMEOUT)])
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    gets = moto_view.gets[gets_before:]
    # The plan is shown before the restores are asked for, on stderr.
    assert "tier Expedited" in result.stderr
    assert "1–5 minutes" in result.stderr
    # moto said "restoring" about every fragment before it said "restored".
    for key in keys:
        headers = [h for h in moto_view.restore_headers(key) if h is not None]
        assert RESTORE_WAITING in headers, (key, headers)
        assert 'ongoing-request="false"' in headers[-1], (key, headers)
        assert headers.index(RESTORE_WAITING) < len(headers) - 1
    # Readable now, and nothing left in the spool.
    client.get_object(Bucket=glacier.bucket.name, Key=keys[0])["Body"].read()
    assert glacier.queue_entries("thaw") == []
    assert glacier.queue_entries("restore") == []
    # Every fragment was asked for once, with the tier of the command line and
    # the vault's days, and downloaded once.
    assert sorted(moto_view.restores) == sorted((key, "Expedited", 2) for key in keys)
    # (The manifest twice: restore checks the key against it before filing the request.)
    assert sorted(gets) == sorted([*keys, glacier.key(ulid, 0), glacier.key(ulid, 0)])


def test_restore_served_by_a_running_thaw_daemon(
        glacier: Site, moto_view: MotoView, moto_slow_restore: None,
        gpg_key: oracles.KeyPair, data: bytes, tmp_path: Path) -> None:
    ulid, manifest = glacier.backup_and_freeze(gpg_key, data)
    keys = glacier.fragment_keys(ulid, manifest)
    log = tmp_path / "thaw.log"
    with log.open("wb") as stderr:
        daemon = glacier.popen(["thaw", "--poll", "0.2", "--json"], stdin=subprocess.DEVNULL,
                               stderr=stderr)
    try:
        wait_until(lambda: "thaw daemon started" in log.read_text(), timeout=30,
                   what="the thaw daemon to start")
        glacier.prepare_thaw_tree()
        first = glacier.run(glacier.restore_args(ulid, gpg_key, "--timeout", RESTORE_TIMEOUT))
        assert first.returncode == 0, first.stderr
        assert first.stdout == data
        assert "5–12 hours" in first.stderr  # the plan, for the vault's tier
        # Restored and cleaned up: no restore queue directory, no request.
        assert glacier.queue_entries("restore") == []
        wait_until(lambda: glacier.queue_entries("thaw") == [], timeout=10,
                   what="the finished thaw request to be removed")
        wait_until(lambda: len(downloaded_keys(json_events(log.read_text()))) >= len(keys),
                   timeout=10, what="the daemon's log of the downloads")
        gets_of_first = list(moto_view.gets)
        restores_of_first = list(moto_view.restores)

        # Again, with --keep. The restored copies are still there, so nothing
        # needs a new RestoreObject, except the one about to expire: a copy
        # that expires within the hour is asked for again before downloading.
        expiring = moto_key(glacier.bucket.name, keys[-1])
        expiring.set_expiry(datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=20))
        glacier.prepare_thaw_tree()
        second = glacier.run(glacier.restore_args(ulid, gpg_key, "--keep", "--timeout",
                                                  RESTORE_TIMEOUT))
        assert second.returncode == 0, second.stderr
        assert second.stdout == data
        assert "no restore needed" in second.stderr
        kept = glacier.cli.restore_dir(ulid, PREFIX)
        assert sorted(path.name for path in kept.iterdir()) == sorted(
            f"chunk.{i}" for i in range(len(keys) + 1))
        for entry in manifest["fragments"]:
            assert (kept / f"chunk.{entry['index']}").stat().st_size == entry["size"]
        wait_until(lambda: glacier.queue_entries("thaw") == [], timeout=10,
                   what="the finished thaw request to be removed")
    finally:
        code = stop_daemon(daemon)
    text = log.read_text()
    assert code == 0, text
    assert "thaw daemon stopped" in text
    events = json_events(text)
    assert all(isinstance(event.get("message"), str) for event in events)
    downloaded = downloaded_keys(events)
    # Two restores: every fragment downloaded exactly once for each.
    assert sorted(downloaded) == sorted(keys * 2)
    assert [e["key"] for e in events if e.get("event") == "restore"] == [*keys, keys[-1]]
    plans = [event for event in events if event.get("event") == "plan"]
    assert [plan["cold_fragments"] for plan in plans] == [len(keys), 0]
    assert plans[0]["storage_classes"] == {"GLACIER": len(keys)}
    for key in keys:
        assert gets_of_first.count(key) == 1
        assert moto_view.gets.count(key) == 2
        headers = [h for h in moto_view.restore_headers(key) if h is not None]
        assert RESTORE_WAITING in headers, (key, headers)
    assert sorted(restores_of_first) == sorted((key, "Bulk", 2) for key in keys)
    assert moto_view.restores == [*restores_of_first, (keys[-1], "Bulk", 2)]


def fragments_in(directory: Path) -> set[str]:
    """Names of the complete fragments (not the manifest) in a restore queue directory."""
    if not directory.exists():
        return set()
    return {path.name for path in directory.iterdir()
            if re.fullmatch(r"chunk\.[1-9][0-9]*", path.name)}


def delivered(target: Path, request: Path) -> set[str]:
    """Fragments the thaw delivered: in the restore queue, or already read and removed
    by the restore (up to the read position it records in the request, issue 14)."""
    try:
        released = json.loads((request / "position.json").read_text())["released"]
    except FileNotFoundError:
        released = 0
    return fragments_in(target) | {f"chunk.{index}" for index in range(1, released + 1)}


def test_thaw_daemon_killed_mid_way_resumes_without_downloading_twice(
        glacier: Site, moto_view: MotoView, moto_slow_restore: None,
        gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    data = random.Random(7).randbytes(45 * MiB)
    ulid, manifest = glacier.backup_and_freeze(gpg_key, data, "-C", "none")
    keys = glacier.fragment_keys(ulid, manifest)
    assert len(keys) >= 9
    names = {key.rsplit("/", 1)[1] for key in keys}
    # The last three fragments stay "restoring" until released: the first
    # daemon can never have everything before it is killed.
    held = keys[-3:]
    moto_view.held.update(held)
    target = glacier.cli.restore_dir(ulid, PREFIX)
    logs = [tmp_path / "thaw-1.log", tmp_path / "thaw-2.log"]
    output, restore_log = tmp_path / "restored", tmp_path / "restore.log"
    with output.open("wb") as stdout, restore_log.open("wb") as stderr:
        restore = glacier.popen(glacier.restore_args(ulid, gpg_key, "--timeout",
                                                     RESTORE_TIMEOUT),
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        # The request is filed before the daemon starts, so its first scan
        # finds it (see test_thaw_watcher_wakes_for_directories_made_during_a_refresh).
        wait_until(lambda: live_files(glacier.queue("thaw"), "state.json"), timeout=60,
                   what="restore to file its thaw request")
        with logs[0].open("wb") as stderr:
            daemons.append(glacier.popen(["thaw", "--poll", "0.2", "--json"],
                                         stdin=subprocess.DEVNULL, stderr=stderr))
        request = glacier.queue("thaw") / VAULT / PREFIX / ulid
        wait_until(lambda: len(delivered(target, request)) >= 2, timeout=60,
                   what="the first daemon to download two fragments")
        daemons[0].send_signal(signal.SIGKILL)
        assert daemons[0].wait(timeout=10) == -signal.SIGKILL
        # What the restore read meanwhile it removed: delivered is both. It removes a
        # fragment an instant before it records so: the union of a few looks is stable
        # (nothing arrives any more, and what was delivered only moves from one to the
        # other).
        present = set()
        for _look in range(5):
            present |= delivered(target, request)
            time.sleep(0.1)
        assert 2 <= len(present) <= len(keys) - len(held)
        assert restore.poll() is None  # still waiting for the rest
        assert live_files(glacier.queue("thaw"), "state.json")

        seen = len(moto_view.served)
        with logs[1].open("wb") as stderr:
            daemons.append(glacier.popen(["thaw", "--poll", "0.2", "--json"],
                                         stdin=subprocess.DEVNULL, stderr=stderr))
        # Let the second run find the held fragments still restoring before
        # they finish: it must wait for them, not ask again.
        wait_until(lambda: any(name == held[-1] for name, _ in moto_view.served[seen:]),
                   timeout=30, what="the second daemon to look at the held fragments")
        moto_view.held.clear()
        assert restore.wait(timeout=120) == 0, restore_log.read_text()
        assert stop_daemon(daemons[1]) == 0, logs[1].read_text()
    finally:
        for process in (restore, *daemons):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert output.read_bytes() == data
    before = downloaded_keys(json_events(logs[0].read_text()))
    after = downloaded_keys(json_events(logs[1].read_text()))
    assert len(set(before)) == len(before)
    assert len(set(after)) == len(after)
    assert not set(before) & set(after), "a fragment was downloaded by both daemon runs"
    # What the first run finished, the second never fetched again; together
    # they delivered everything.
    after_names = {key.rsplit("/", 1)[1] for key in after}
    assert not present & after_names
    assert present | after_names == names
    assert set(before) <= {key for key in keys if key.rsplit("/", 1)[1] in present}
    # Each restore was asked for once: the second run found them in progress or done.
    assert sorted(key for key, _, _ in moto_view.restores) == sorted(keys)
    assert glacier.queue_entries("thaw") == []
    assert glacier.queue_entries("restore") == []


def test_expedited_is_refused_for_deep_archive(
        cli: Cli, moto_bucket: S3Bucket, moto_view: MotoView, gpg_key: oracles.KeyPair,
        tmp_path: Path) -> None:
    site = make_site(cli, moto_bucket, tmp_path, storage_class="DEEP_ARCHIVE")
    data = random.Random(3).randbytes(7 * MiB)
    ulid, manifest = site.backup_and_freeze(gpg_key, data)
    keys = site.fragment_keys(ulid, manifest)
    client = site.client()
    for key in keys:
        assert client.head_object(Bucket=moto_bucket.name, Key=key)["StorageClass"] == \
            "DEEP_ARCHIVE"

    dry = site.run(site.restore_args(ulid, gpg_key, "--dry-run"))
    assert dry.returncode == 0, dry.stderr
    assert "DEEP_ARCHIVE" in dry.stdout.decode()
    assert "within 48 hours" in dry.stdout.decode()  # Bulk, the vault's tier

    # On the command line, or as the vault's default tier.
    runs = [["--tier", "Expedited", "--thaw"], ["--tier", "Expedited", "--dry-run"],
            ["--tier", "Expedited"], ["--thaw"]]
    for extra in runs:
        if extra == runs[-1]:
            make_site(cli, moto_bucket, tmp_path, storage_class="DEEP_ARCHIVE",
                      restore_tier="Expedited")
        result = site.run(site.restore_args(ulid, gpg_key, *extra, "--timeout", "30"))
        # 64: a usage error (the tier asked for does not exist for the class).
        assert result.returncode == 64, (extra, result.stderr)
        assert "Expedited" in result.stderr
        assert "DEEP_ARCHIVE" in result.stderr
        assert result.stdout == b""
        assert site.queue_entries("thaw") == []
        assert site.queue_entries("restore") == []
    assert moto_view.restores == []
    assert not set(moto_view.gets) & set(keys)


def test_fragment_missing_from_the_vault_fails_the_restore_in_bounded_time(
        glacier: Site, moto_slow_restore: None,
        gpg_key: oracles.KeyPair, data: bytes) -> None:
    ulid, manifest = glacier.backup_and_freeze(gpg_key, data)
    assert len(manifest["fragments"]) >= 3
    missing = glacier.key(ulid, 2)
    glacier.client().delete_object(Bucket=glacier.bucket.name, Key=missing)
    started = time.monotonic()
    result = glacier.run(glacier.restore_args(ulid, gpg_key, "--thaw", "--poll", "0.2",
                                              "--timeout", RESTORE_TIMEOUT), timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 65, result.stderr
    assert elapsed < 30
    assert "fragment 2" in result.stderr
    assert missing in result.stderr
    assert "output is incomplete" in result.stderr
    # A bounded number of tries (two warnings, then the give-up).
    assert result.stderr.count("will try again") == 2
    assert "gave up after 3 attempts" in result.stderr
    state = json.loads(next(glacier.queue("thaw").rglob("state.json")).read_text())
    assert state["status"] == "failed"
    assert "fragment 2" in state["error"]


def test_seaweedfs_stores_glacier_but_has_no_restore(
        cli: Cli, s3_bucket: S3Bucket, gpg_key: oracles.KeyPair, data: bytes,
        tmp_path: Path) -> None:
    site = make_site(cli, s3_bucket, tmp_path, storage_class="GLACIER")
    ulid, manifest = site.backup_and_freeze(gpg_key, data)
    keys = site.fragment_keys(ulid, manifest)
    client = site.client()
    head = client.head_object(Bucket=s3_bucket.name, Key=keys[0])
    assert head["StorageClass"] == "GLACIER"
    # The class is only a name there: the object is readable without a restore.
    assert len(client.get_object(Bucket=s3_bucket.name, Key=keys[0])["Body"].read()) == \
        manifest["fragments"][0]["size"]

    result = site.run(site.restore_args(ulid, gpg_key, "-d", "--thaw", "--poll", "0.2",
                                        "--timeout", RESTORE_TIMEOUT))
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    assert result.stderr.count("has no RestoreObject") == 1, result.stderr
    assert site.queue_entries("thaw") == []
    assert site.queue_entries("restore") == []


def test_restore_of_a_backup_the_vault_does_not_have(
        glacier: Site, moto_view: MotoView, gpg_key: oracles.KeyPair, data: bytes) -> None:
    ulid, _ = glacier.backup_and_freeze(gpg_key, data)  # the vault is not empty
    absent = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    assert absent != ulid
    for extra in (["--thaw"], ["--dry-run"], []):
        result = glacier.run(glacier.restore_args(absent, gpg_key, *extra, "--timeout", "30"))
        assert result.returncode == 66, (extra, result.stderr)
        assert "is not in vault" in result.stderr
        assert absent in result.stderr
        assert result.stdout == b""
        assert glacier.queue_entries("thaw") == []
        assert glacier.queue_entries("restore") == []
    assert moto_view.restores == []


def test_restore_finishing_while_the_daemon_completes_the_request_is_no_error(
        glacier: Site, moto_view: MotoView, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    """The thaw daemon publishes a backup's last fragment, and before it has
    saved its state and removed its request, the waiting ``restore`` has
    already read that fragment and removed ``SPOOL/restore/ID`` and
    ``SPOOL/thaw/ID`` (cli/restore.py: ``finish_restore``, which does not take
    the request's lock that the daemon holds). The daemon then fails on files
    that are gone (``_save`` of state.json, or ``publish``'s fsync/unlink, or
    the ``stat`` for its log line) and logs an error for a restore that
    succeeded, never logs "thawed", and ``thaw --once`` would exit 74.

    To make the interleaving exact, the daemon is held just after it
    publishes the last fragment: its stderr is a pipe that this test has
    filled, so the write of its "downloaded" log line blocks (as with a slow
    log reader) until the restore is over.
    """
    data = random.Random(5).randbytes(6 * MiB)
    ulid, manifest = glacier.backup_and_freeze(gpg_key, data)
    keys = glacier.fragment_keys(ulid, manifest)
    arrived, go = threading.Event(), threading.Event()
    moto_view.gates[keys[-1]] = (arrived, go)
    output, restore_log = tmp_path / "restored", tmp_path / "restore.log"
    with output.open("wb") as stdout, restore_log.open("wb") as stderr:
        restore = glacier.popen(glacier.restore_args(ulid, gpg_key, "--timeout",
                                                     RESTORE_TIMEOUT),
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    read_end, write_end = os.pipe()
    # A second open file description of the pipe, non-blocking for this test
    # only (the daemon's stays blocking).
    filler = os.open(f"/proc/self/fd/{write_end}", os.O_WRONLY | os.O_NONBLOCK)
    daemon: subprocess.Popen[bytes] | None = None
    log = bytearray()

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                log.extend(chunk)

    reader = threading.Thread(target=pump, daemon=True)
    try:
        wait_until(lambda: live_files(glacier.queue("thaw"), "state.json"), timeout=60,
                   what="restore to file its thaw request")
        daemon = glacier.popen(["thaw", "--poll", "0.2", "--json"], stdin=subprocess.DEVNULL,
                               stderr=write_end)
        os.close(write_end)
        assert arrived.wait(timeout=60), "the daemon never fetched the last fragment"
        # The daemon waits for the last fragment's bytes: fill its log pipe.
        for block in (4096, 1):
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(filler, b"\n" * block)
        go.set()
        assert restore.wait(timeout=60) == 0, restore_log.read_text()
        assert output.read_bytes() == data
        assert glacier.queue_entries("restore") == []  # restore cleaned up after itself
        os.close(filler)
        reader.start()  # the daemon may go on
        wait_until(lambda: b'"thawed"' in log or b'"error"' in log, timeout=30,
                   what="the daemon to finish the request")
        assert stop_daemon(daemon) == 0
    finally:
        go.set()
        for process in (restore, daemon):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    reader.join(timeout=10)
    events = json_events(bytes(log).decode())
    errors = [event["message"] for event in events if event["level"] == "error"]
    assert errors == [], "the thaw daemon reported a failure for a restore that succeeded"
    assert sorted(downloaded_keys(events)) == sorted(keys)
    assert [event.get("event") for event in events].count("thawed") == 1


def test_thaw_watcher_wakes_for_directories_made_during_a_refresh(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A running thaw daemon must notice a request promptly, however the
    directories of ``SPOOL/thaw/VAULT/PREFIX/ULID`` interleave with its rescan.

    ``TreeWatcher.refresh`` (src/cryophile/watch.py) lists the tree
    first (``rglob``) and adds the inotify watches afterwards. A directory
    made between the listing and the watch on its parent is neither listed
    nor reported, nor is anything below it: restore's ``file_request`` makes
    ``VAULT``, ``hosts``, ``db1`` and renames the request into ``db1`` while
    the daemon, woken by ``VAULT``, refreshes. The daemon then sleeps through
    the request until its 60 s rescan (seen end to end: a running ``thaw``
    ignored a request filed by ``restore`` for 60 s in about one run of six).
    Here the interleaving is made exact: ``hosts`` appears just before the
    watch on ``VAULT`` is added. Watching a directory before listing it
    closes the gap.
    """
    root = tmp_path / "thaw"
    root.mkdir()
    vault_dir = root / VAULT
    prefix_dir = vault_dir / "hosts"
    real_add_watch = inotify_simple.INotify.add_watch

    def add_watch(self: inotify_simple.INotify, path: Any, mask: int) -> int:
        if os.fspath(path) == str(vault_dir) and not prefix_dir.exists():
            prefix_dir.mkdir()  # restore's next mkdir, just as the daemon gets here
        result: int = real_add_watch(self, path, mask)
        return result

    monkeypatch.setattr(inotify_simple.INotify, "add_watch", add_watch)
    stop = threading.Event()
    with TreeWatcher(root) as watcher:
        watcher.refresh()
        vault_dir.mkdir()  # restore starts filing a request ...
        watcher.sleep(5, stop)  # ... which wakes the daemon,
        watcher.refresh()  # which rescans and finds no request yet.
        (prefix_dir / "db1").mkdir()  # The rest of the request arrives.
        started = time.monotonic()
        watcher.sleep(3, stop)
        slept = time.monotonic() - started
    assert slept < 1, (f"the watcher slept {slept:.1f} s through a directory made below "
                       f"{prefix_dir}: it never watched that directory")


def test_a_windowed_restore_asks_for_every_glacier_restore_at_once_then_downloads_in_order(
        glacier: Site, moto_view: MotoView, gpg_key: oracles.KeyPair) -> None:
    """Issue 14: through a spool of three fragments, every cold fragment's restore is
    asked for in the first pass (the charge does not depend on the order), but the
    downloads follow the restore's read position, within the budget."""
    data = random.Random(1414).randbytes(8 * 5 * MiB + 4321)
    ulid, manifest = glacier.backup_and_freeze(gpg_key, data, "-C", "none")
    keys = glacier.fragment_keys(ulid, manifest)
    assert len(keys) == 9
    # When the third fragment's download arrives at moto: what had been asked for?
    arrived, go = threading.Event(), threading.Event()
    moto_view.gates[keys[2]] = (arrived, go)
    seen: dict[str, Any] = {}

    def look() -> None:
        if arrived.wait(timeout=120):
            seen["restores"] = sorted(key for key, _, _ in moto_view.restores)
            seen["gets"] = [key for key in moto_view.gets if key in keys]
        go.set()

    watcher = threading.Thread(target=look, daemon=True)
    watcher.start()
    with UsageSampler(glacier.cli.spool) as sampler:
        result = glacier.run(glacier.restore_args(ulid, gpg_key, "--thaw", "--poll", "0.2",
                                                  "--spool-limit", "15M"))
    watcher.join(timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    assert "restoring through a window of 2 fragment(s)" in result.stderr
    assert seen["restores"] == sorted(keys)  # all asked for before the third download
    assert seen["gets"] == keys[:2]  # and the downloads so far in the order restore reads
    assert sorted(key for key, _, _ in moto_view.restores) == sorted(keys)  # each once
    assert [key for key in moto_view.gets if key in keys] == keys  # in order, each once
    assert sampler.peak <= 15 * MiB
    assert glacier.queue_entries("thaw") == []
    assert glacier.queue_entries("restore") == []

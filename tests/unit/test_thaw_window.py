"""The Thawer's window in process (issue 14): which fragments it downloads given the
restore's read position and W, on a directory vault (and the memory vault for
Glacier's cold storage), and how it waits for space in a full spool."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cryophile import thaw_request
from cryophile.backup_id import BackupId
from cryophile.daemons.thaw import Step, Thawer, window_step
from cryophile.spool import Queue, Spool
from cryophile.spool_budget import Budget, spool_usage
from cryophile.thaw_request import FragmentState, ReadPosition
from cryophile.vault.base import Vault
from cryophile.vault.local import DirectoryVault
from support.backups import StoredBackup, opened, store_backup
from support.memory_vault import MemoryVault

CREATED = datetime(2026, 12, 1, 3, tzinfo=UTC)
SIZE = 1000
FRAGMENTS = 8
RUN = "run-1"


def _setup(tmp_path: Path, vault: Vault, *, window: int | None,
           storage_class: str = "STANDARD") -> tuple[Spool, StoredBackup, Thawer]:
    """A request for a backup of FRAGMENTS fragments; its Thawer polls restores at
    once (first_poll 0: the memory vault's clock decides, not the wall clock)."""
    spool = Spool.open(tmp_path / "spool", create_root=True)
    stored = store_backup(vault, tmp_path / "scratch", CREATED, sizes=(SIZE,) * FRAGMENTS,
                          storage_class=storage_class)
    position = None if window is None else ReadPosition(window=window, run=RUN)
    assert thaw_request.file_request(spool, stored.backup_id, tier="Bulk", days=1,
                                     position=position)
    thawer = Thawer(spool, lambda _vault_id: opened(vault), first_poll=0.0)
    return spool, stored, thawer


def _staged(spool: Spool, backup_id: BackupId) -> list[int]:
    directory = spool.backup_dir(Queue.RESTORE, backup_id)
    return sorted(int(path.name.split(".")[1]) for path in directory.glob("chunk.*")
                  if path.name != "chunk.0" and not path.name.endswith(".sig"))


def _read(spool: Spool, stored: StoredBackup, index: int, window: int, *,
          record: bool = True) -> None:
    """What the restore does with fragment ``index``: check it, remove it, then
    (with ``record``) move the window."""
    directory = spool.backup_dir(Queue.RESTORE, stored.backup_id)
    path = directory / f"chunk.{index}"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == stored.manifest.fragments[
        index - 1].sha256
    path.unlink()
    if record:
        assert thaw_request.save_position(
            thaw_request.request_dir(spool, stored.backup_id),
            ReadPosition(window=window, released=index, run=RUN))


@pytest.mark.parametrize(("index", "state", "present", "position", "step"), [
    (3, FragmentState.COLD, True, ReadPosition(2, released=0), Step.HAVE),
    (5, FragmentState.COLD, False, None, Step.FETCH),
    (1, FragmentState.DOWNLOADED, False, ReadPosition(2, released=1), Step.CONSUMED),
    (2, FragmentState.DOWNLOADED, False, ReadPosition(2, released=1), Step.FETCH),
    (3, FragmentState.RESTORING, False, ReadPosition(2, released=1), Step.FETCH),
    (4, FragmentState.COLD, False, ReadPosition(2, released=1), Step.REQUEST),
    (4, FragmentState.RESTORING, False, ReadPosition(2, released=1), Step.LATER),
    (9, FragmentState.DOWNLOADED, False, ReadPosition(2, released=1), Step.LATER),
])
def test_window_step(index: int, state: FragmentState, present: bool,
                     position: ReadPosition | None, step: Step) -> None:
    assert window_step(index, state, present, position) is step


def test_a_fragment_gone_in_the_run_it_was_delivered_for_was_read() -> None:
    position = ReadPosition(2, released=1, run="b")
    downloaded = FragmentState.DOWNLOADED
    assert window_step(2, downloaded, False, position, delivered_for="b") is Step.CONSUMED
    assert window_step(2, downloaded, False, position, delivered_for="a") is Step.FETCH
    assert window_step(2, downloaded, False, position, delivered_for=None) is Step.FETCH


def test_the_window_of_a_budget_is_at_least_two_fragments() -> None:
    assert Budget(3 * SIZE + 500, "test").restore_window(SIZE, overhead=400) == 3
    assert Budget(3 * SIZE + 500, "test").restore_window(SIZE, overhead=600) == 2
    assert Budget(SIZE, "test").restore_window(SIZE) == 2


def test_downloads_only_inside_the_window_in_the_order_restore_reads(tmp_path: Path) -> None:
    vault = DirectoryVault(tmp_path / "vault", create=True)
    spool, stored, thawer = _setup(tmp_path, vault, window=3)

    assert thawer.run_pass() == {}
    assert _staged(spool, stored.backup_id) == [1, 2, 3]
    assert thawer.run_pass() == {}  # nothing moves until the restore reads on
    assert _staged(spool, stored.backup_id) == [1, 2, 3]

    peak = 0
    for index in range(1, FRAGMENTS + 1):
        _read(spool, stored, index, window=3)
        assert thawer.run_pass() == {}
        staged = _staged(spool, stored.backup_id)
        assert staged == list(range(index + 1, min(index + 3, FRAGMENTS) + 1))
        peak = max(peak, spool_usage(spool.root).staged - len(stored.manifest.to_json()))
    assert peak <= 3 * SIZE
    # Every fragment read; the request stays for its restore to close.
    request = thaw_request.load(thaw_request.request_dir(spool, stored.backup_id))
    assert not request.failed
    assert request.counts()[FragmentState.DOWNLOADED] == FRAGMENTS


def test_a_rerun_from_the_start_downloads_what_was_read_again(tmp_path: Path) -> None:
    vault = DirectoryVault(tmp_path / "vault", create=True)
    spool, stored, thawer = _setup(tmp_path, vault, window=2)
    thawer.run_pass()
    _read(spool, stored, 1, window=2)
    _read(spool, stored, 2, window=2)
    thawer.run_pass()
    assert _staged(spool, stored.backup_id) == [3, 4]
    # The restore was killed; its rerun reads from the start again.
    request = thaw_request.request_dir(spool, stored.backup_id)
    assert thaw_request.save_position(request, ReadPosition(window=2, released=0,
                                                            run="run-2"))
    thawer.run_pass()
    assert _staged(spool, stored.backup_id) == [1, 2, 3, 4]
    for index in (1, 2):
        data = (spool.backup_dir(Queue.RESTORE, stored.backup_id) / f"chunk.{index}")
        assert data.read_bytes() == stored.fragments[index - 1]


def test_without_a_position_everything_is_downloaded_and_the_request_closed(
        tmp_path: Path) -> None:
    vault = DirectoryVault(tmp_path / "vault", create=True)
    spool, stored, thawer = _setup(tmp_path, vault, window=None)
    thawer.run_pass()
    assert _staged(spool, stored.backup_id) == list(range(1, FRAGMENTS + 1))
    assert not thaw_request.request_dir(spool, stored.backup_id).exists()


def test_every_glacier_restore_is_asked_for_at_once_but_downloads_stay_in_the_window(
        tmp_path: Path) -> None:
    vault = MemoryVault(restore_ticks=1)
    spool, stored, thawer = _setup(tmp_path, vault, window=2, storage_class="GLACIER")
    thawer.run_pass()
    assert sorted(key for key, _days, _tier in vault.restore_requests) == sorted(
        stored.backup_id.object_key(index) for index in range(1, FRAGMENTS + 1))
    assert _staged(spool, stored.backup_id) == []
    vault.clock.advance(2)
    thawer.run_pass()
    assert _staged(spool, stored.backup_id) == [1, 2]
    _read(spool, stored, 1, window=2)
    thawer.run_pass()
    assert _staged(spool, stored.backup_id) == [2, 3]
    assert len(vault.restore_requests) == FRAGMENTS  # none asked for twice


def test_a_full_spool_is_a_quiet_wait_then_it_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    vault = DirectoryVault(tmp_path / "vault", create=True)
    spool, stored, thawer = _setup(tmp_path, vault, window=3)
    free = {"bytes": SIZE // 2}
    thawer.space = lambda _directory: free["bytes"]
    caplog.set_level(logging.INFO, logger="cryophile.daemons.thaw")

    for _attempt in range(5):
        assert thawer.run_pass() == {}  # a wait, not an error
    request = thaw_request.load(thaw_request.request_dir(spool, stored.backup_id))
    assert request.space_wait is not None
    assert (request.space_wait.fragment, request.space_wait.needed) == (1, SIZE)
    assert "waiting for space in the spool: chunk.1 needs" in request.space_wait.describe()
    assert _staged(spool, stored.backup_id) == []
    waits = [r for r in caplog.records if "waiting for space in the spool" in r.getMessage()]
    assert len(waits) == 1  # logged once, not once per attempt
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert thawer.next_wake() <= 10.0  # it looks again soon, with a back-off

    free["bytes"] = 10 * SIZE
    thawer._next_poll.clear()  # the back-off is over
    assert thawer.run_pass() == {}
    assert _staged(spool, stored.backup_id) == [1, 2, 3]
    request = thaw_request.load(thaw_request.request_dir(spool, stored.backup_id))
    assert request.space_wait is None
    assert any("space in the spool is back" in r.getMessage() for r in caplog.records)


def test_a_version_1_state_still_reads(tmp_path: Path) -> None:
    data = (b'{"version": 1, "tier": "Bulk", "days": 7, "created": "2026-12-01T03:00:00Z",'
            b' "status": "active", "error": null, "fragments": {"1": {"state": "restoring",'
            b' "attempts": 1, "requested_at": null, "thawed_until": null}}}')
    request = thaw_request.ThawRequest.from_json(data, tmp_path / "state.json")
    assert request.fragments[1].state is FragmentState.RESTORING
    assert request.space_wait is None
    assert b'"version": 2' in request.to_json()


def test_a_fragment_removed_before_the_window_moved_is_not_downloaded_again(
        tmp_path: Path) -> None:
    vault = DirectoryVault(tmp_path / "vault", create=True)
    spool, stored, thawer = _setup(tmp_path, vault, window=2)
    thawer.run_pass()
    assert _staged(spool, stored.backup_id) == [1, 2]
    _read(spool, stored, 1, window=2, record=False)  # a pass runs in between
    thawer.run_pass()
    assert _staged(spool, stored.backup_id) == [2]  # never more than W, nothing twice
    thaw_request.save_position(thaw_request.request_dir(spool, stored.backup_id),
                               ReadPosition(window=2, released=1, run=RUN))
    thawer.run_pass()
    assert _staged(spool, stored.backup_id) == [2, 3]


def test_a_chain_link_not_yet_read_gets_its_glacier_restores_but_no_download(
        tmp_path: Path) -> None:
    """Window 0 (a chain restore's later link): every restore asked for, nothing staged,
    and the request claimed by the live process that wrote the position."""
    vault = MemoryVault(restore_ticks=1)
    spool, stored, thawer = _setup(tmp_path, vault, window=0, storage_class="GLACIER")
    thawer.run_pass()
    assert len(vault.restore_requests) == FRAGMENTS
    vault.clock.advance(2)
    thawer.run_pass()
    assert _staged(spool, stored.backup_id) == []
    directory = thaw_request.request_dir(spool, stored.backup_id)
    position = thaw_request.load_position(directory)
    assert position is not None
    assert (position.window, position.released) == (0, 0)
    # The link's turn: its restore records a real window, and downloads start.
    assert thaw_request.save_position(directory, ReadPosition(window=2, run=RUN))
    thawer.run_pass()
    assert _staged(spool, stored.backup_id) == [1, 2]


def test_a_request_is_claimed_only_by_a_live_process_other_than_us(tmp_path: Path) -> None:
    spool, stored, _thawer = _setup(tmp_path, DirectoryVault(tmp_path / "vault", create=True),
                                    window=2)
    directory = thaw_request.request_dir(spool, stored.backup_id)
    assert thaw_request.claimant(directory) is None  # written by this process
    parent = os.getppid()
    assert thaw_request.save_position(directory, ReadPosition(window=0, pid=parent))
    assert thaw_request.claimant(directory) == parent
    assert thaw_request.save_position(directory, ReadPosition(window=0, pid=2**22 + 1))
    assert thaw_request.claimant(directory) is None


def test_a_position_saved_while_the_request_is_closed_never_lands_in_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore records its read position while the thaw that served it closes the
    request (every fragment delivered): the position must not land in the directory
    being removed, which left a request without its state (found by the corrupted-
    downloads fault test: the thaw logged "state.json: No such file or directory"
    after a restore that succeeded)."""
    spool, stored, _ = _setup(tmp_path, MemoryVault(), window=2)
    directory = thaw_request.request_dir(spool, stored.backup_id)
    saved: list[bool] = []
    real_rmtree = shutil.rmtree

    def rmtree_while_a_restore_writes(path: str | os.PathLike[str], *_args: object,
                                      **_kwargs: object) -> None:
        # The restore's thread, between the start and the end of the removal.
        saved.append(thaw_request.save_position(
            directory, ReadPosition(window=2, released=1, run=RUN)))
        real_rmtree(path, ignore_errors=bool(_kwargs.get("ignore_errors")))

    monkeypatch.setattr(shutil, "rmtree", rmtree_while_a_restore_writes)
    thaw_request.close(spool, stored.backup_id)
    assert saved[0] is False  # the restore is told the request is gone
    assert not directory.exists()
    assert list(spool.backups(Queue.THAW)) == []
    assert not any(path.name.endswith(".closing")
                   for path in spool.queue_dir(Queue.THAW).rglob("*"))

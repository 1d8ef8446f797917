"""A vault in a local directory: the embedded default, and a ``provider = "dir"``
vault (a mounted disk, an NFS share).

Where this sits: implements :class:`cryophile.vault.base.Vault` with plain
files, so the whole backup → freeze → thaw → restore cycle runs with no cloud
at all. It honours the same contract as the S3 vault and passes the same
contract tests.

Layout below ``root``::

    <key>                          the object's bytes (``cat`` them to restore by hand)
    .cryophile/meta/<key>.json     sidecar: size, SHA-256, storage class
    .cryophile/tmp/                uploads in progress

An object appears atomically and durably: it is written to a temporary file in
``.cryophile/tmp`` (same filesystem), fsynced, checked against the caller's
SHA-256, hard-linked to its key (a link never clobbers, so two writers cannot
overwrite each other) and the directory is fsynced. The sidecar is written
after the object; an object without a sidecar (a crash in between) is hashed
when it is next looked at. Storage classes are recorded, but nothing here is
ever cold: restores are never needed.

Keys whose first component is ``.cryophile`` are refused.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from cryophile.durable import (
    DIR_MODE,
    FILE_MODE,
    fsync_dir,
    make_dirs,
    remove_empty_dirs,
    replace_file,
)
from cryophile.errors import (
    AlreadyExistsError,
    DataError,
    NoInputError,
    ServiceError,
    StorageIOError,
    UsageError,
)
from cryophile.vault.base import (
    ObjectInfo,
    RestoreState,
    check_key,
    check_prefix,
    check_restore_args,
    check_sha256,
    check_storage_class,
)

logger = logging.getLogger(__name__)

_RESERVED = ".cryophile"
_BLOCK = 1 << 20


class DirectoryVault:
    """A :class:`~cryophile.vault.base.Vault` whose objects are files below ``root``.

    With ``create=False`` (a configured vault) a missing ``root`` is a
    ServiceError on every call: an unmounted backup disk must not be replaced
    by a fresh directory on the root filesystem. The embedded default vault
    passes ``create=True``.
    """

    def __init__(self, root: Path, *, create: bool = False) -> None:
        self.root = root
        self._create = create

    def __repr__(self) -> str:
        return f"DirectoryVault({str(self.root)!r})"

    # -- the Vault contract (see cryophile.vault.base.Vault) -----------------

    def put(self, key: str, source: Path, *, sha256: str, storage_class: str) -> None:
        """See :meth:`cryophile.vault.base.Vault.put`. The SHA-256 is checked
        on the bytes as stored in the vault, before they become visible.

        On the file system of ``source`` the object is a hard link to it, not a
        copy: the callers' sources are published spool files, never written
        again (and removed once stored), so one read to hash replaces a read, a
        write and an fsync."""
        target = self._object_path(key)
        sha256 = check_sha256(sha256)
        check_storage_class(storage_class)
        self._check_root(for_writing=True)
        existing = self.stat(key)
        if existing is not None:
            self._same_or_refuse(key, existing, source, sha256)
            self._write_meta_if_missing(key, existing.size, sha256, storage_class)
            return

        tmp_dir = self.root / _RESERVED / "tmp"
        make_dirs(tmp_dir)
        tmp = tmp_dir / f"{secrets.token_hex(8)}.tmp"
        try:
            size, digest = _link_or_copy_hashing(source, tmp)
            if digest != sha256:
                raise DataError(
                    f"{source}: SHA-256 is {digest}, expected {sha256}; "
                    f"not stored as {key!r} in {self.root}"
                )
            self._link_into_place(tmp, target, key, source, sha256)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._write_meta(key, size, sha256, storage_class)

    def stat(self, key: str) -> ObjectInfo | None:
        """See :meth:`cryophile.vault.base.Vault.stat`."""
        path = self._object_path(key)
        self._check_root()
        try:
            size, mtime = _stat_regular(path)
        except FileNotFoundError:
            return None
        meta = self._read_meta(key)
        storage_class = "STANDARD"
        sha256: str | None = None
        if meta is not None:
            recorded_class = meta.get("storage_class")
            if isinstance(recorded_class, str):
                storage_class = recorded_class
            recorded_sha256 = meta.get("sha256")
            if meta.get("size") == size and isinstance(recorded_sha256, str):
                sha256 = recorded_sha256
        if sha256 is None:
            # No (matching) sidecar: a crash between link and sidecar, or an
            # object copied in by hand. Hashing is slow but always right.
            sha256 = _hash_file(path)
        return ObjectInfo(
            size=size,
            sha256=sha256,
            storage_class=storage_class,
            restore_state=RestoreState.NOT_NEEDED,
            modified=datetime.fromtimestamp(mtime, UTC),
        )

    def request_restore(self, key: str, *, days: int, tier: str) -> RestoreState:
        """See :meth:`cryophile.vault.base.Vault.request_restore`: always
        NOT_NEEDED, as nothing here is cold."""
        check_restore_args(days, tier)
        if self.stat(key) is None:
            raise NoInputError(f"no object {key!r} in vault {self.root}")
        return RestoreState.NOT_NEEDED

    def get(self, key: str, dest: Path) -> None:
        """See :meth:`cryophile.vault.base.Vault.get`."""
        info = self.stat(key)
        if info is None:
            raise NoInputError(f"no object {key!r} in vault {self.root}")
        try:
            _size, digest = _copy_hashing(self._object_path(key), dest, exclusive=False)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            raise
        if info.sha256 is not None and digest != info.sha256:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            raise DataError(
                f"object {key!r} in vault {self.root} is damaged: "
                f"SHA-256 {digest}, expected {info.sha256}"
            )

    def get_shared(self, key: str, dest: Path, *, sha256: str) -> bool:
        """See :meth:`cryophile.vault.base.SharedFiles.get_shared`.

        A link only to a regular file of this user with the spool's mode (0600),
        as every fragment that freeze stored by link is: a file copied in by
        hand with other permissions must not lend them to the spool. Otherwise,
        or on another file system, a copy hashed as it is written (one pass)."""
        path = self._object_path(key)
        sha256 = check_sha256(sha256)
        self._check_root()
        try:
            os.link(path, dest, follow_symlinks=False)
        except FileNotFoundError as exc:
            if not os.path.lexists(path):
                raise NoInputError(f"no object {key!r} in vault {self.root}") from exc
            raise StorageIOError(f"cannot place {key!r} at {dest}: {exc}") from exc
        except FileExistsError as exc:
            raise StorageIOError(f"cannot place {key!r} at {dest}: {exc}") from exc
        except OSError:
            pass  # EXDEV, EPERM, EMLINK, a directory at the key: the copy decides
        else:
            linked = os.lstat(dest)
            if (stat.S_ISREG(linked.st_mode) and linked.st_uid == os.geteuid()
                    and stat.S_IMODE(linked.st_mode) == FILE_MODE):
                return True
            dest.unlink()
        if not os.path.isfile(path):
            raise NoInputError(f"no object {key!r} in vault {self.root}")
        try:
            _size, digest = _copy_hashing(path, dest)
            if digest != sha256:
                raise DataError(  # noqa: TRY301 - the copy must go too
                    f"object {key!r} in vault {self.root} is damaged: "
                    f"SHA-256 {digest}, expected {sha256}")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            raise
        return False

    def list(self, prefix: str) -> Iterator[str]:
        """See :meth:`cryophile.vault.base.Vault.list`."""
        check_prefix(prefix)
        self._check_root()
        # Walk only below the deepest directory the prefix names completely.
        directory = prefix.rpartition("/")[0]
        start = self.root / directory if directory else self.root
        if not start.is_dir():
            return  # No object has this prefix (or the "directory" is an object).
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start, onerror=self._walk_error):
            relative = Path(dirpath).relative_to(self.root).as_posix()
            if relative == ".":
                relative = ""
                with contextlib.suppress(ValueError):
                    dirnames.remove(_RESERVED)
            for name in filenames:
                key = f"{relative}/{name}" if relative else name
                if key.startswith(prefix) and os.path.isfile(os.path.join(dirpath, name)):
                    keys.append(key)
        # S3 lists in UTF-8 byte order, which is code point order.
        yield from sorted(keys)

    def delete(self, key: str) -> None:
        """See :meth:`cryophile.vault.base.Vault.delete`."""
        path = self._object_path(key)
        self._check_root()
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            return  # Not an object, just a directory of them: nothing to delete.
        except OSError as exc:
            raise StorageIOError(f"cannot delete {key!r} from vault {self.root}: {exc}") from exc
        else:
            fsync_dir(path.parent)
        with contextlib.suppress(FileNotFoundError):
            self._meta_path(key).unlink()
        # Empty directories are left by deleted backups; prune them so a vault
        # does not fill up with empty ULID directories.
        remove_empty_dirs(path.parent, self.root)
        remove_empty_dirs(self._meta_path(key).parent, self.root / _RESERVED / "meta")

    def abort_incomplete_uploads(self, key: str) -> int:
        """See :meth:`cryophile.vault.base.Vault.abort_incomplete_uploads`:
        always 0. A killed ``put`` leaves a temporary file in
        ``.cryophile/tmp`` whose name does not tell its key."""
        self._object_path(key)
        return 0

    # -- internals -----------------------------------------------------------

    def _walk_error(self, error: OSError) -> None:
        if isinstance(error, FileNotFoundError):
            return  # Pruned by a concurrent delete while we walked: nothing there.
        raise StorageIOError(f"cannot list vault {self.root}: {error}") from error

    def _object_path(self, key: str) -> Path:
        check_key(key)
        if key.split("/", 1)[0] == _RESERVED:
            raise UsageError(f"object key {key!r} uses the reserved name {_RESERVED!r}")
        return self.root / key

    def _meta_path(self, key: str) -> Path:
        return self.root / _RESERVED / "meta" / f"{key}.json"

    def _check_root(self, *, for_writing: bool = False) -> None:
        if self.root.is_dir():
            return
        # Parallel uploads to a new embedded vault race to create its root:
        # "exists but is not a directory" must be looked at after any such mkdir.
        if self.root.exists() and not self.root.is_dir():
            raise ServiceError(f"vault directory {self.root} is not a directory")
        if not self._create:
            raise ServiceError(f"vault directory {self.root} does not exist (not mounted?)")
        if for_writing:
            try:
                # make_dirs, not mkdir(parents=True): pathlib creates the parents
                # (the ``SPOOL-vaults`` data directory) with 0777 & ~umask, which
                # under umask 0 made a world-writable directory above the vault.
                make_dirs(self.root, DIR_MODE)
            except OSError as exc:
                raise StorageIOError(f"cannot create vault directory {self.root}: {exc}") from exc

    def _same_or_refuse(self, key: str, existing: ObjectInfo, source: Path, sha256: str) -> None:
        try:
            size = source.stat().st_size
        except FileNotFoundError:
            raise NoInputError(f"{source}: no such file") from None
        except OSError as exc:
            raise StorageIOError(f"cannot read {source}: {exc}") from exc
        if existing.size == size and existing.sha256 == sha256:
            logger.debug("%s already in vault %s with the same content", key, self.root)
            return
        raise AlreadyExistsError(
            f"object {key!r} already exists in vault {self.root} with different content "
            f"(size {existing.size}, SHA-256 {existing.sha256}); not overwritten"
        )

    def _link_into_place(
        self, tmp: Path, target: Path, key: str, source: Path, sha256: str
    ) -> None:
        # A concurrent delete may prune the directory we just made; try again.
        for _attempt in range(3):
            try:
                make_dirs(target.parent)
                os.link(tmp, target)
            except FileNotFoundError:
                continue
            except FileExistsError:
                # Another writer won the race: same content is fine.
                existing = self.stat(key)
                if existing is None:
                    continue
                self._same_or_refuse(key, existing, source, sha256)
                return
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.EISDIR):
                    raise AlreadyExistsError(
                        f"object key {key!r} clashes with another object's path in vault "
                        f"{self.root}"
                    ) from exc
                raise StorageIOError(f"cannot store {key!r} in vault {self.root}: {exc}") from exc
            fsync_dir(target.parent)
            return
        raise StorageIOError(
            f"cannot store {key!r} in vault {self.root}: its directory keeps vanishing"
        )

    def _read_meta(self, key: str) -> dict[str, object] | None:
        try:
            data = json.loads(self._meta_path(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable sidecar for %r in %s: %s", key, self.root, exc)
            return None
        return data if isinstance(data, dict) else None

    def _write_meta(self, key: str, size: int, sha256: str, storage_class: str) -> None:
        meta = self._meta_path(key)
        make_dirs(meta.parent)
        body = json.dumps({"size": size, "sha256": sha256, "storage_class": storage_class})
        # The sidecar is ours to replace (unlike the object itself).
        replace_file(meta, body.encode("utf-8"))

    def _write_meta_if_missing(self, key: str, size: int, sha256: str, storage_class: str) -> None:
        meta = self._read_meta(key)
        if meta is None or meta.get("size") != size or meta.get("sha256") != sha256:
            self._write_meta(key, size, sha256, storage_class)


def _open_new(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    return os.fdopen(fd, "wb")


def _copy_hashing(source: Path, dest: Path, *, exclusive: bool = True) -> tuple[int, str]:
    """Copy ``source`` to ``dest``, fsync it, and return (size, hex SHA-256)."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(_BLOCK)
    view = memoryview(buffer)
    try:
        with source.open("rb") as reader:
            if exclusive:
                writer = _open_new(dest)
            else:
                # O_NOFOLLOW: a symlink at ``dest`` must not redirect the download.
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                             | os.O_CLOEXEC, FILE_MODE)
                writer = os.fdopen(fd, "wb")
            with writer:
                while count := reader.readinto(buffer):
                    digest.update(view[:count])
                    writer.write(view[:count])
                    size += count
                writer.flush()
                os.fsync(writer.fileno())
    except FileNotFoundError as exc:
        if Path(exc.filename or "") == source:
            raise NoInputError(f"{source}: no such file") from exc
        raise StorageIOError(f"cannot copy {source} to {dest}: {exc}") from exc
    except OSError as exc:
        raise StorageIOError(f"cannot copy {source} to {dest}: {exc}") from exc
    return size, digest.hexdigest()


def _link_or_copy_hashing(source: Path, dest: Path) -> tuple[int, str]:
    """Hard-link ``source`` at ``dest`` when both are on one file system, else copy
    it (:func:`_copy_hashing`); return (size, hex SHA-256) of what ``dest`` holds."""
    try:
        os.link(source, dest, follow_symlinks=False)
    except FileNotFoundError as exc:
        if not os.path.lexists(source):
            raise NoInputError(f"{source}: no such file") from exc
        raise StorageIOError(f"cannot store {source} as {dest}: {exc}") from exc
    except OSError:
        # EXDEV (another file system), EPERM (protected_hardlinks, a file system
        # without links), EMLINK: a copy does the same job.
        return _copy_hashing(source, dest)
    if not stat.S_ISREG(os.lstat(dest).st_mode):
        dest.unlink()
        return _copy_hashing(source, dest)
    # The stored time is when the vault got the object, as S3's Last-Modified
    # (prune --incomplete --older-than reads it), not when the spool wrote it.
    os.utime(dest, follow_symlinks=False)
    with dest.open("rb") as reader:
        size = os.fstat(reader.fileno()).st_size
    return size, _hash_file(dest)


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_BLOCK)
    view = memoryview(buffer)
    with path.open("rb") as reader:
        while count := reader.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def _stat_regular(path: Path) -> tuple[int, float]:
    """Size and mtime of the regular file at ``path``; FileNotFoundError if there is
    none (a directory is not an object)."""
    try:
        st = path.stat()
    except NotADirectoryError:
        raise FileNotFoundError(errno.ENOENT, "not an object", str(path)) from None
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "not an object", str(path))
    return st.st_size, st.st_mtime

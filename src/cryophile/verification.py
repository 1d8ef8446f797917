"""Verifying a backup in its vault without restoring it.

Three depths, each a superset of the one before: the vault's metadata (size
and SHA-256 of every fragment, no download, no Glacier restore); downloading
every readable fragment and hashing it; and, with a secret key, decrypting and
decompressing to nowhere, which proves the backup restores. Used by
``cryophile verify``; findings name each bad fragment.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cryophile.backup_id import BackupId, fragment_name
from cryophile.catalog import fetch_manifest, fetch_signature
from cryophile.errors import (
    CryophileError,
    DataError,
    ExitCode,
    NoInputError,
    ServiceError,
    TryLaterError,
    exit_code_of,
)
from cryophile.inventory import unreadable_reason
from cryophile.manifest import Fragment, Manifest
from cryophile.pipeline.compress import codec_for
from cryophile.pipeline.fragments import read_fragments, sha256_of_file
from cryophile.pipeline.keys import SecretKey
from cryophile.pipeline.openpgp import Engine
from cryophile.pipeline.restore import choose_key
from cryophile.pipeline.stages import threaded
from cryophile.signing import TrustedSigners, signature_problem
from cryophile.units import human_bytes
from cryophile.vault.base import ObjectInfo, RestoreState
from cryophile.vault.factory import OpenedVault

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    """One thing wrong with a backup. ``damaged`` False: it could not be checked now."""

    message: str
    damaged: bool
    index: int | None = None


@dataclass
class Report:
    """What verifying one backup found."""

    backup_id: BackupId
    manifest: Manifest | None = None
    findings: list[Finding] = field(default_factory=list)
    downloaded: int = 0
    plaintext_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    signed_by: str | None = None  # the key whose manifest signature verified (--signed-by)
    #: What kept the manifest from being read now (archived, the vault failing or
    #: refusing on it): nothing of the backup could be checked.
    unreadable: CryophileError | None = None

    @property
    def exit_code(self) -> ExitCode:
        """0 healthy, 65 damaged, 75 not checkable now; an unreadable manifest: its
        error's code (75 when transient)."""
        if any(finding.damaged for finding in self.findings):
            return ExitCode.DATAERR
        if self.unreadable is not None:
            return exit_code_of([self.unreadable])
        if self.findings:
            return ExitCode.TEMPFAIL
        return ExitCode.OK

    def describe(self) -> str:
        """Lines for a person: the verdict, then each finding."""
        if any(finding.damaged for finding in self.findings):
            verdict = "DAMAGED"
        elif self.unreadable is not None:
            verdict = "not checkable: manifest unreadable"
        elif self.findings:
            verdict = "not checkable now"
        else:
            verdict = "healthy"
        checked = []
        if self.manifest is not None:
            checked.append(f"{len(self.manifest.fragments)} fragment(s), "
                           f"{human_bytes(self.manifest.stored_bytes)}")
            if not any(finding.index is not None for finding in self.findings):
                checked.append("sizes and SHA-256 in the vault match the manifest")
        if self.signed_by is not None:
            checked.append(f"manifest signed by {self.signed_by}")
        if self.downloaded:
            checked.append(f"{self.downloaded} downloaded and hashed")
        if self.plaintext_bytes is not None:
            checked.append(f"decrypted and decompressed: {self.plaintext_bytes} bytes")
        lines = [f"{self.backup_id}: {verdict}" + (f": {'; '.join(checked)}" if checked else "")]
        lines.extend(f"  {finding.message}" for finding in self.findings)
        lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)


def _readable(info: ObjectInfo) -> bool:
    return info.restore_state in (RestoreState.NOT_NEEDED, RestoreState.RESTORED)


@dataclass(frozen=True)
class Decryption:
    """What ``-k`` brings: the secret keys, where passphrases come from, the engine."""

    secret_keys: list[SecretKey]
    ask_passphrase: Callable[[SecretKey], str]
    engine: Engine


class Verifier:
    """Verifies backups of one vault; downloads go to ``scratch`` (private, in the spool).

    With ``decryption`` (which needs ``download``) backups are also decrypted to nowhere.
    """

    def __init__(self, opened: OpenedVault, scratch: Path, *, download: bool,
                 decryption: Decryption | None = None,
                 signers: TrustedSigners | None = None) -> None:
        self.opened = opened
        self.scratch = scratch
        self.download = download
        self.decryption = decryption
        self.signers = signers  # --signed-by: the manifest must carry their signature

    def verify(self, backup_id: BackupId) -> Report:
        """Check one backup; NoInputError when the vault has no manifest for it.

        A manifest the vault will not give now (archived, a server error or a
        refusal for that object) makes an ``unreadable`` report, not an error.
        """
        report = Report(backup_id)
        where = f"manifest ({backup_id.object_key(0)})"
        try:
            manifest, data = fetch_manifest(self.opened, backup_id, self.scratch)
        except DataError as error:
            report.findings.append(Finding(f"{where}: {error}", damaged=True, index=0))
            return report
        except (TryLaterError, ServiceError) as error:
            report.unreadable = error
            report.findings.append(Finding(f"{where}: {unreadable_reason(error)}",
                                           damaged=False, index=0))
            return report
        report.manifest = manifest
        if self.signers is not None:
            self._check_signature(report, data)
        infos: dict[int, ObjectInfo] = {}
        for fragment in manifest.fragments:
            key = backup_id.object_key(fragment.index)
            info = self.opened.vault.stat(key)
            finding = self._metadata_finding(fragment, key, info)
            if finding is not None:
                report.findings.append(finding)
            elif info is not None:
                infos[fragment.index] = info
        if not self.download:
            return report
        readable = [f for f in manifest.fragments if f.index in infos and _readable(infos[f.index])]
        for fragment in manifest.fragments:
            info = infos.get(fragment.index)
            if info is not None and not _readable(info):
                report.findings.append(Finding(
                    f"fragment {fragment.index} ({backup_id.object_key(fragment.index)}): "
                    f"archived ({info.storage_class}, {info.restore_state.value}), not readable "
                    "now: thaw it first (cryophile restore … --dry-run shows the plan)",
                    damaged=False, index=fragment.index))
        # A bad signature (a finding without an index) does not stop the decryption:
        # whether the data restores is worth knowing either way.
        if self.decryption is not None and not any(finding.index is not None
                                                   for finding in report.findings):
            self._decrypt(report, manifest, self.decryption)
            return report
        for fragment in readable:
            finding = self.check_download(backup_id, fragment, self.scratch / ".fragment.part")
            if finding is not None:
                report.findings.append(finding)
            else:
                report.downloaded += 1
        if self.decryption is not None:
            report.notes.append("not decrypted: not every fragment could be downloaded intact")
        return report

    def _check_signature(self, report: Report, manifest: bytes) -> None:
        """Record whether the manifest carries a valid signature from ``self.signers``."""
        assert self.signers is not None
        backup_id = report.backup_id
        where = f"manifest signature ({backup_id.signature_key})"
        try:
            signature = fetch_signature(self.opened, backup_id, self.scratch)
        except DataError as error:
            report.findings.append(Finding(f"{where}: {error}", damaged=True))
            return
        problem, report.signed_by = signature_problem(self.signers, manifest, signature)
        if problem is not None:
            report.findings.append(Finding(f"{where}: {problem}", damaged=True))

    def _metadata_finding(self, fragment: Fragment, key: str,
                          info: ObjectInfo | None) -> Finding | None:
        where = f"fragment {fragment.index} ({key})"
        if info is None:
            return Finding(f"{where}: missing from the vault", damaged=True, index=fragment.index)
        if info.size != fragment.size:
            return Finding(f"{where}: {info.size} bytes in the vault, the manifest says "
                           f"{fragment.size}", damaged=True, index=fragment.index)
        if info.sha256 is None:
            if self.download:
                return None
            return Finding(f"{where}: the vault records no SHA-256 for it; --download checks "
                           "its content", damaged=False, index=fragment.index)
        if info.sha256 != fragment.sha256:
            return Finding(f"{where}: SHA-256 {info.sha256} in the vault, the manifest says "
                           f"{fragment.sha256}", damaged=True, index=fragment.index)
        return None

    def check_download(self, backup_id: BackupId, fragment: Fragment, part: Path,
                       keep_as: Path | None = None) -> Finding | None:
        """Download one fragment to ``part`` and check it; keep it as ``keep_as`` if given."""
        key = backup_id.object_key(fragment.index)
        where = f"fragment {fragment.index} ({key})"
        try:
            try:
                self.opened.vault.get(key, part)
            except NoInputError:
                return Finding(f"{where}: missing from the vault", damaged=True,
                               index=fragment.index)
            except TryLaterError as error:
                return Finding(f"{where}: not readable now: {error}", damaged=False,
                               index=fragment.index)
            except DataError as error:
                return Finding(f"{where}: downloaded content is damaged: {error}",
                               damaged=True, index=fragment.index)
            size = part.stat().st_size
            digest = sha256_of_file(part)
            if size != fragment.size or digest != fragment.sha256:
                return Finding(f"{where}: downloaded {size} bytes with SHA-256 {digest}, the "
                               f"manifest says {fragment.size} bytes with {fragment.sha256}",
                               damaged=True, index=fragment.index)
            if keep_as is not None:
                part.rename(keep_as)
            return None
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    def _decrypt(self, report: Report, manifest: Manifest, decryption: Decryption) -> None:
        """Download, decrypt and decompress to nowhere; record what went wrong."""
        key, passphrase = choose_key(manifest, decryption.secret_keys,
                                     decryption.ask_passphrase)
        codec = codec_for(manifest.compression)
        directory = self.scratch / str(report.backup_id.ulid)
        directory.mkdir(mode=0o700)
        fetcher = _Fetcher(self, report, manifest, directory)
        try:
            ciphertext = threaded(read_fragments(directory, manifest, fetcher),
                                  name="verify-fragments")
            plaintext = decryption.engine.decrypt(ciphertext, key, passphrase)
            count = 0
            for block in codec.decompress(plaintext):
                count += len(block)
            report.plaintext_bytes = count
        except DataError as error:
            if fetcher.failure is None:
                report.findings.append(Finding(
                    f"decryption failed, although the fragments read match the manifest: "
                    f"{error}", damaged=True))
                return
            report.findings.append(fetcher.failure)
            # Name every bad fragment, not just the first: check the rest without decrypting.
            for fragment in manifest.fragments[fetcher.failure.index or 0:]:
                finding = self.check_download(report.backup_id, fragment,
                                              directory / ".check.part")
                if finding is not None:
                    report.findings.append(finding)
                else:
                    report.downloaded += 1
            report.notes.append(f"decryption stopped at fragment {fetcher.failure.index}")
        finally:
            fetcher.close()


class _Fetcher:
    """The ``wait_for`` of :func:`read_fragments`: when it asks for fragment N, fragment
    N-1 has been read and closed, so it is deleted; N is downloaded and checked (or was,
    in the background), and N+1 is started in the background."""

    def __init__(self, verifier: Verifier, report: Report, manifest: Manifest,
                 directory: Path) -> None:
        self.verifier = verifier
        self.report = report
        self.fragments = {fragment.index: fragment for fragment in manifest.fragments}
        self.directory = directory
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-download")
        self.pending: dict[int, Future[Finding | None]] = {}
        self.failure: Finding | None = None

    def _start(self, index: int) -> Future[Finding | None]:
        fragment = self.fragments[index]
        path = self.directory / fragment_name(index)
        return self.pool.submit(self.verifier.check_download, self.report.backup_id, fragment,
                                path.with_name(f".{path.name}.part"), path)

    def __call__(self, path: Path) -> None:
        index = int(path.name.removeprefix("chunk."))
        with contextlib.suppress(FileNotFoundError):
            (self.directory / fragment_name(index - 1)).unlink()
        future = self.pending.pop(index, None) or self._start(index)
        if index + 1 in self.fragments:
            self.pending[index + 1] = self._start(index + 1)
        finding = future.result()
        if finding is not None:
            self.failure = finding
            raise DataError(finding.message)
        self.report.downloaded += 1

    def close(self) -> None:
        """Stop background downloads and wait for them."""
        self.pool.shutdown(wait=True, cancel_futures=True)

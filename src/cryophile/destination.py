"""Where a vault keeps its objects: the place a queued backup is bound for.

A backup records its destination when it is queued (see
:mod:`cryophile.uploads`), and ``freeze`` refuses to send it anywhere else: a
freeze that runs without the configuration the backup was made with (a
systemd unit reading ``/etc/cryophile`` while the file is in ``~/.config``)
would otherwise upload an S3 backup into a local directory and call it
frozen.

Two destinations are the same place when provider and location agree: for
S3 the bucket and the endpoint (AWS when none), for a directory its path.
Region, profile, storage class and the other settings may change between
backup and freeze; the place may not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Destination:
    """A vault's place: ``provider`` ``"s3"`` (``bucket``, ``endpoint``) or ``"dir"`` (``path``).

    ``embedded`` marks the built-in directory vault beside the spool (for
    messages only: it is not part of the place).
    """

    provider: str
    bucket: str | None = None
    endpoint: str | None = None
    path: str | None = None
    embedded: bool = False

    @classmethod
    def s3(cls, bucket: str, endpoint: str | None) -> Destination:
        """An S3 bucket; ``endpoint`` None means AWS. A trailing ``/`` is not significant."""
        return cls("s3", bucket=bucket, endpoint=endpoint.rstrip("/") if endpoint else None)

    @classmethod
    def directory(cls, path: str, *, embedded: bool = False) -> Destination:
        """A directory vault at ``path`` (absolute)."""
        return cls("dir", path=path.rstrip("/") or "/", embedded=embedded)

    def same_place(self, other: Destination) -> bool:
        """True when both name the same bucket or directory.

        Two embedded vaults are the same place wherever they are: the embedded
        vault is defined as the directory beside the spool, so it moves with a
        spool that is moved (or copied to a new disk).
        """
        if self.embedded and other.embedded:
            return True
        return (self.provider, self.bucket, self.endpoint, self.path) == (
            other.provider, other.bucket, other.endpoint, other.path)

    def path_exists(self) -> bool:
        """For a directory: whether it exists yet (always True for S3)."""
        return self.path is None or os.path.isdir(self.path)

    def describe(self) -> str:
        """``s3://bucket at https://endpoint`` / ``directory /path`` for a person."""
        if self.provider == "s3":
            return f"s3://{self.bucket} at {self.endpoint or 'AWS'}"
        what = "the embedded directory vault" if self.embedded else "directory"
        return f"{what} {self.path}"

    def as_json(self) -> dict[str, Any]:
        """The JSON object stored in the spool."""
        document: dict[str, Any] = {"provider": self.provider}
        if self.provider == "s3":
            document.update(bucket=self.bucket, endpoint=self.endpoint)
        else:
            document.update(path=self.path, embedded=self.embedded)
        return document

    @classmethod
    def from_json(cls, document: Any) -> Destination:
        """Parse :meth:`as_json`'s form; ValueError when it is not one."""
        if not isinstance(document, dict):
            raise ValueError("a destination is a JSON object")  # noqa: TRY004 (stored data)
        provider = document.get("provider")
        if provider == "s3":
            bucket, endpoint = document.get("bucket"), document.get("endpoint")
            if not isinstance(bucket, str) or not (endpoint is None or isinstance(endpoint, str)):
                raise ValueError("an s3 destination needs a bucket (and an endpoint or null)")
            return cls.s3(bucket, endpoint)
        if provider == "dir":
            path = document.get("path")
            if not isinstance(path, str):
                raise ValueError("a dir destination needs a path")
            return cls.directory(path, embedded=document.get("embedded") is True)
        raise ValueError(f"unknown destination provider {provider!r}")

"""What each S3 service accepts, in one table: the ``service`` of an S3 vault.

Where this sits: a leaf beside :mod:`cryophile.storage_classes`. The
configuration (:mod:`cryophile.config`) takes a vault's defaults from its
service's :class:`ServiceProfile` (storage class, region, how integrity is
sent, the part limit) and refuses settings the service cannot honour (a class
it does not have, object lock where it has none); the S3 vault
(:mod:`cryophile.vault.s3`) asks the profile whether to call RestoreObject and
whether the server's response checksums can be trusted, and names the service
in the errors it raises for a permanent refusal.

The facts come from each service's documentation and from its users' public
bug reports (FACTS.md, "S3 services"); none of these services is reachable
from the test machines, so their refusals are emulated in the tests
(``tests/service_proxy.py``). Every value a profile implies stays overridable
per vault: ``storage_class``, ``region``, ``checksum``, ``max_parts``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryophile.storage_classes import GCS_STORAGE_CLASSES, STORAGE_CLASSES

#: S3's limit on the parts of one multipart upload.
S3_MAX_PARTS = 10_000


class Checksum(enum.Enum):
    """How an upload tells the server what its bytes must hash to.

    SHA256
        ``x-amz-checksum-sha256`` on every object and part (and the part
        checksums on CompleteMultipartUpload): the server recomputes it.
    MD5
        ``Content-MD5`` on every object and part: the oldest S3 integrity
        header, verified by every S3-compatible server.
    NONE
        No integrity header: the server verifies nothing. Downloads are still
        checked against the manifest's SHA-256.
    """

    SHA256 = "sha256"
    MD5 = "md5"
    NONE = "none"


@dataclass(frozen=True)
class ServiceProfile:
    """What one S3 service accepts.

    ``storage_class`` is the vault's default class for fragments and
    ``storage_classes`` every class name the service knows. ``region`` is the
    default region (None: the AWS chain's). ``checksum`` is how uploads carry
    their integrity; ``response_checksums`` says whether the service returns
    full-object checksums that a client may check (only then is
    ``ChecksumMode`` sent, on HeadObject: downloads are hashed against the
    stored SHA-256 instead). ``max_parts`` is its limit on the parts of a
    multipart upload. ``restore`` says whether RestoreObject exists (archive
    classes that need one), ``object_lock`` whether object lock retention is
    applied. ``notes`` is one line for messages and the README.
    """

    name: str
    title: str
    storage_class: str
    storage_classes: frozenset[str]
    checksum: Checksum
    region: str | None = None
    response_checksums: bool = False
    max_parts: int = S3_MAX_PARTS
    restore: bool = False
    object_lock: bool = False
    #: Host name suffixes of the service's endpoints, to suggest ``service``.
    hosts: tuple[str, ...] = ()


_ALL_S3 = STORAGE_CLASSES
_STANDARD = frozenset({"STANDARD"})

SERVICES: Mapping[str, ServiceProfile] = {
    profile.name: profile
    for profile in (
        ServiceProfile("aws", "AWS S3", "GLACIER", _ALL_S3, Checksum.SHA256,
                       response_checksums=True, restore=True, object_lock=True,
                       hosts=("amazonaws.com",)),
        ServiceProfile("r2", "Cloudflare R2", "STANDARD",
                       frozenset({"STANDARD", "STANDARD_IA"}), Checksum.SHA256, region="auto",
                       hosts=("r2.cloudflarestorage.com",)),
        ServiceProfile("b2", "Backblaze B2", "STANDARD", _STANDARD, Checksum.MD5,
                       object_lock=True, hosts=("backblazeb2.com",)),
        ServiceProfile("gcs", "Google Cloud Storage (XML API)", "STANDARD",
                       frozenset({"STANDARD"}) | GCS_STORAGE_CLASSES, Checksum.MD5,
                       region="auto", hosts=("storage.googleapis.com",)),
        ServiceProfile("wasabi", "Wasabi", "STANDARD", _STANDARD, Checksum.SHA256,
                       object_lock=True, hosts=("wasabisys.com",)),
        ServiceProfile("minio", "MinIO", "STANDARD",
                       frozenset({"STANDARD", "REDUCED_REDUNDANCY"}), Checksum.SHA256,
                       object_lock=True),
        # Older RGW releases accept x-amz-checksum-sha256 without checking it;
        # Content-MD5 they all verify.
        ServiceProfile("ceph", "Ceph RGW", "STANDARD", _STANDARD, Checksum.MD5,
                       object_lock=True),
        # Garage ignores storage class and object lock headers without a word.
        ServiceProfile("garage", "Garage", "STANDARD", _STANDARD, Checksum.MD5),
        ServiceProfile("scaleway", "Scaleway Object Storage", "STANDARD",
                       frozenset({"STANDARD", "ONEZONE_IA", "GLACIER"}), Checksum.SHA256,
                       max_parts=1_000, restore=True, object_lock=True,
                       hosts=("scw.cloud",)),
        ServiceProfile("ovh", "OVHcloud Object Storage", "STANDARD",
                       frozenset({"STANDARD", "STANDARD_IA", "DEEP_ARCHIVE"}), Checksum.SHA256,
                       restore=True, object_lock=True, hosts=("cloud.ovh.net",)),
        ServiceProfile("hetzner", "Hetzner Object Storage", "STANDARD", _STANDARD, Checksum.MD5,
                       object_lock=True, hosts=("your-objectstorage.com",)),
        ServiceProfile("seaweedfs", "SeaweedFS", "STANDARD", _ALL_S3, Checksum.SHA256,
                       response_checksums=True, object_lock=True),
        # An unknown server: the most portable integrity header, every class
        # name S3 knows (the server says which it takes), RestoreObject tried
        # (405/501 mean "no cold storage"), object lock read back.
        ServiceProfile("generic", "an S3-compatible server", "STANDARD", _ALL_S3, Checksum.MD5,
                       restore=True, object_lock=True),
    )
}

DEFAULT_SERVICE = "aws"


def service_profile(name: str) -> ServiceProfile:
    """The profile of service ``name`` (one of :data:`SERVICES`); KeyError otherwise."""
    return SERVICES[name]


def suggest_service(endpoint_url: str | None) -> ServiceProfile | None:
    """The service whose endpoints look like ``endpoint_url``, if any (for hints only:
    a vault's service is what its configuration says)."""
    if not endpoint_url:
        return None
    host = (urlsplit(endpoint_url).hostname or "").lower()
    for profile in SERVICES.values():
        if any(host == suffix or host.endswith("." + suffix) for suffix in profile.hosts):
            return profile
    return None

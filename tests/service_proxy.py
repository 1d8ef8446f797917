"""A proxy in front of SeaweedFS that refuses what another S3 service refuses.

None of the services cryophile has profiles for can be reached from the test
machines, so their documented refusals (and those their users report in
public issue trackers; FACTS.md, "S3 services") are emulated here, with their
status codes and S3 XML error bodies; everything else is forwarded to the real
server byte for byte (SigV4 still verifies: only the unsigned hop-by-hop
headers change, as in ``faultproxy.py``, whose plumbing this reuses).

``b2`` (Backblaze B2)
    any ``x-amz-checksum-*``, ``x-amz-sdk-checksum-algorithm`` or
    ``x-amz-checksum-mode`` header → ``400 InvalidArgument: Unsupported header
    '…' received for this API call.`` (the words of home-assistant#143995); a
    storage class other than STANDARD → ``501 NotImplemented``; RestoreObject
    → ``501 NotImplemented``.
``r2`` (Cloudflare R2)
    a storage class other than STANDARD and STANDARD_IA, and any object lock
    header → ``501 NotImplemented: Header 'x-amz-…' with value '…' not
    implemented``; RestoreObject → ``501 NotImplemented``.
``gcs`` (Google Cloud Storage's XML API)
    ``x-amz-checksum-mode``, and ``x-amz-checksum-*`` on PutObject → ``400
    InvalidArgument: Invalid argument.``; parts with checksums go up, but
    CompleteMultipartUpload whose part list carries checksums → ``412
    PreconditionFailed`` (with or without If-None-Match); a class not among
    STANDARD, NEARLINE, COLDLINE, ARCHIVE → ``400 InvalidStorageClass``; RestoreObject → ``501``.
``garage``
    GET/HEAD answers of a multipart object carry its composite SHA-256 without
    the ``-N`` suffix and without ``x-amz-checksum-type`` (so a client that
    checks it fails), object lock response headers are dropped and
    GetObjectRetention answers ``501 NotImplemented``: lock is silently not
    applied; RestoreObject → ``501``.
``scaleway``
    a part number above ``max_parts`` (1000 on the real service; tests lower
    it) → ``400 InvalidArgument: Part number must be an integer between 1 and
    N, inclusive``; the storage classes it lacks → ``400 InvalidStorageClass``.

``minio``, ``ceph``, ``wasabi``, ``hetzner``, ``ovh``
    a storage class the service does not have → ``400 InvalidStorageClass``
    (MinIO: STANDARD and REDUCED_REDUNDANCY; Ceph RGW, Wasabi, Hetzner:
    STANDARD; OVHcloud: STANDARD, STANDARD_IA, DEEP_ARCHIVE). RestoreObject →
    ``501`` except on OVHcloud, which has it (forwarded). ``ceph`` and
    ``hetzner`` accept ``x-amz-checksum-sha256`` but return no checksum on
    HEAD or GET (their ``x-amz-checksum-*`` answer headers are dropped).

``transparent``
    refuses nothing, changes nothing: it only records (what AWS would be sent;
    also stands for SeaweedFS and an unknown ``generic`` server).

``seen`` records every request (method, target, headers) and the status
answered, so a test can check that every upload carried an integrity header
the service accepts.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from faultproxy import (
    IO_TIMEOUT,
    _copy_exactly,
    _drain,
    _parse_head,
    _read_exactly,
    _read_head,
    _rewrite_head,
)

_BLOCK = 256 * 1024
SERVICES = ("b2", "r2", "gcs", "garage", "scaleway", "minio", "ceph", "wasabi", "hetzner",
            "ovh", "transparent")

_CHECKSUM_HEADER = re.compile(r"x-amz-(checksum-|sdk-checksum-algorithm)")
_REASONS = {400: "Bad Request", 403: "Forbidden", 412: "Precondition Failed",
            501: "Not Implemented"}
#: The classes of the services that answer any other with 400 InvalidStorageClass.
_CLASSES = {
    "gcs": frozenset({"STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"}),
    "scaleway": frozenset({"STANDARD", "ONEZONE_IA", "GLACIER"}),
    "minio": frozenset({"STANDARD", "REDUCED_REDUNDANCY"}),
    "ceph": frozenset({"STANDARD"}),
    "wasabi": frozenset({"STANDARD"}),
    "hetzner": frozenset({"STANDARD"}),
    "ovh": frozenset({"STANDARD", "STANDARD_IA", "DEEP_ARCHIVE"}),
}
#: The services that have RestoreObject (the others answer 501).
_RESTORES = frozenset({"scaleway", "ovh"})
#: The services that take x-amz-checksum-sha256 but never return a checksum.
_NO_RESPONSE_CHECKSUMS = frozenset({"ceph", "hetzner"})


@dataclass(frozen=True)
class Seen:
    """One request the proxy saw, and the status it answered (0: forwarded, unknown)."""

    method: str
    target: str
    headers: dict[str, str]
    refused: int
    #: When its head arrived (time.monotonic()).
    at: float = 0.0

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def is_upload(self) -> bool:
        """PutObject or UploadPart: a request that carries object bytes."""
        return self.method == "PUT" and "x-amz-copy-source" not in self.headers and (
            "uploadId=" not in self.query or "partNumber=" in self.query) and not any(
            word in self.query for word in ("retention", "legal-hold", "tagging", "acl"))


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str


class ServiceProxy:
    """``with ServiceProxy(port, "r2") as proxy: proxy.url``: SeaweedFS behind ``port``
    as ``service`` would answer."""

    def __init__(self, upstream_port: int, service: str, *, max_parts: int = 1000,
                 put_412: bool = False, deny_retention: bool = False) -> None:
        if service not in SERVICES:
            raise ValueError(f"no emulation of {service!r}")
        self.upstream = ("127.0.0.1", upstream_port)
        self.service = service
        self.max_parts = max_parts
        #: Answer every PutObject 412 PreconditionFailed, with or without If-None-Match
        #: (what GCS users report for requests carrying what it does not take).
        self.put_412 = put_412
        #: Answer GetObjectRetention 403 AccessDenied (a policy without
        #: s3:GetObjectRetention).
        self.deny_retention = deny_retention
        self.seen: list[Seen] = []
        #: Checksums changed in answers: Garage's composite ones that lost their
        #: "-N", Ceph's and Hetzner's dropped.
        self.rewritten = 0
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name=f"{service}-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ServiceProxy:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def record(self, method: str, target: str, headers: dict[str, str], refused: int) -> None:
        with self._lock:
            self.seen.append(Seen(method, target, headers, refused, time.monotonic()))

    def uploads(self) -> list[Seen]:
        """Every PutObject and UploadPart the service accepted."""
        with self._lock:
            return [seen for seen in self.seen if seen.is_upload() and not seen.refused]

    def refusals(self) -> list[Seen]:
        with self._lock:
            return [seen for seen in self.seen if seen.refused]

    # -- the service's rules ------------------------------------------------------

    def refusal(self, method: str, target: str, headers: dict[str, str],
                body: bytes) -> Refusal | None:
        """What the emulated service answers instead of the server, if anything."""
        query = target.partition("?")[2]
        storage_class = headers.get("x-amz-storage-class")
        if (self.put_412 and method == "PUT" and "uploadId=" not in query
                and "x-amz-copy-source" not in headers):
            return Refusal(412, "PreconditionFailed",
                           "At least one of the pre-conditions you specified did not hold.")
        if self.deny_retention and method == "GET" and re.search(r"(^|&)retention(=|&|$)",
                                                                 query):
            return Refusal(403, "AccessDenied", "Access Denied")
        if self.service == "transparent":
            return None
        if (method == "POST" and self.service not in _RESTORES
                and re.search(r"(^|&)restore(=|&|$)", query)):
            return Refusal(501, "NotImplemented", "RestoreObject is not implemented")
        if self.service == "b2":
            for name in headers:
                if _CHECKSUM_HEADER.match(name) or name == "x-amz-checksum-mode":
                    return Refusal(400, "InvalidArgument",
                                   f"Unsupported header '{name}' received for this API call.")
            if storage_class is not None and storage_class != "STANDARD":
                return Refusal(501, "NotImplemented",
                               f"Storage class '{storage_class}' is not implemented")
        if self.service == "r2":
            if storage_class is not None and storage_class not in ("STANDARD", "STANDARD_IA"):
                return Refusal(501, "NotImplemented", f"Header 'x-amz-storage-class' with value "
                                                      f"'{storage_class}' not implemented")
            for name, value in headers.items():
                if name.startswith("x-amz-object-lock"):
                    return Refusal(501, "NotImplemented",
                                   f"Header '{name}' with value '{value}' not implemented")
        if self.service == "gcs":
            # What users report: HEAD/GET and PutObject refuse checksum headers, while
            # parts go up and CompleteMultipartUpload answers 412 (below).
            is_part = "uploadId=" in query or (method == "POST" and "uploads" in query)
            if "x-amz-checksum-mode" in headers or (
                    not is_part and any(_CHECKSUM_HEADER.match(name) for name in headers)):
                return Refusal(400, "InvalidArgument", "Invalid argument.")
            if method == "POST" and "uploadId=" in query and b"<ChecksumSHA256>" in body:
                return Refusal(412, "PreconditionFailed",
                               "At least one of the pre-conditions you specified did not hold.")
        if self.service == "garage" and method == "GET" and re.search(
                r"(^|&)retention(=|&|$)", query):
            return Refusal(501, "NotImplemented", "GetObjectRetention is not implemented")
        if self.service == "scaleway":
            part = re.search(r"(^|&)partNumber=(\d+)", query)
            if method == "PUT" and part and int(part.group(2)) > self.max_parts:
                return Refusal(400, "InvalidArgument", f"Part number must be an integer between "
                                                       f"1 and {self.max_parts}, inclusive")
        classes = _CLASSES.get(self.service)
        if classes is not None and storage_class is not None and storage_class not in classes:
            return Refusal(400, "InvalidStorageClass",
                           "The storage class you specified is not valid")
        return None

    def rewrite_answer(self, head: bytes) -> bytes:
        """Garage: a multipart object's checksum without its ``-N``, no type, no lock.
        Ceph, Hetzner: no checksum at all."""
        if self.service != "garage" and self.service not in _NO_RESPONSE_CHECKSUMS:
            return head
        lines = head.rstrip(b"\r\n").split(b"\r\n")
        kept = [lines[0]]
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if self.service in _NO_RESPONSE_CHECKSUMS:
                if not lowered.startswith(b"x-amz-checksum-"):
                    kept.append(line)
                elif lowered != b"x-amz-checksum-type":
                    with self._lock:
                        self.rewritten += 1
                continue
            if lowered == b"x-amz-checksum-type" or lowered.startswith(b"x-amz-object-lock"):
                continue
            if lowered.startswith(b"x-amz-checksum-"):
                stripped = re.sub(rb"-\d+$", b"", value.strip())
                if stripped != value.strip():
                    with self._lock:
                        self.rewritten += 1
                line = name + b": " + stripped
            kept.append(line)
        return b"\r\n".join(kept) + b"\r\n\r\n"


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    proxy: ServiceProxy


class _Handler(socketserver.BaseRequestHandler):
    request: socket.socket
    server: _Server

    def handle(self) -> None:
        self.request.settimeout(IO_TIMEOUT)
        # OSError: the client gave up; nothing to report.
        with contextlib.suppress(OSError):
            self._handle(self.request, self.server.proxy)

    def _handle(self, client: socket.socket, proxy: ServiceProxy) -> None:
        parsed = _read_head(client)
        if parsed is None:
            return
        head, rest = parsed
        method, target, headers = _parse_head(head)
        length = int(headers.get("content-length", "0") or "0")
        expects_continue = headers.get("expect", "").lower() == "100-continue"
        # A CompleteMultipartUpload's body decides GCS's answer: read small bodies.
        body = b""
        answered_continue = False
        if method == "POST" and length <= 1 << 20:
            if expects_continue:
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                answered_continue = True
            body = rest
            while len(body) < length:
                data = client.recv(min(_BLOCK, length - len(body)))
                if not data:
                    return
                body += data
            rest = body
        refusal = proxy.refusal(method, target, headers, body)
        proxy.record(method, target, headers, refusal.status if refusal else 0)
        if refusal is not None:
            if (answered_continue or not expects_continue) and len(rest) < length:
                _read_exactly(client, length - len(rest))
            _send_refusal(client, refusal, method, target)
            return
        with socket.create_connection(proxy.upstream, timeout=IO_TIMEOUT) as upstream:
            if expects_continue and not answered_continue:
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            upstream.sendall(_rewrite_head(head, drop={"expect"}) + rest)
            _copy_exactly(client, upstream, length - len(rest))
            answer = _read_head(upstream)
            if answer is None:
                return
            answer_head, answer_rest = answer
            client.sendall(proxy.rewrite_answer(answer_head) + answer_rest)
            while data := upstream.recv(_BLOCK):
                client.sendall(data)
            client.shutdown(socket.SHUT_WR)


def _send_refusal(client: socket.socket, refusal: Refusal, method: str, target: str) -> None:
    request_id = secrets.token_hex(8).upper()
    resource = target.split("?", 1)[0]
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{refusal.code}</Code><Message>{refusal.message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {refusal.status} {_REASONS.get(refusal.status, 'Error')}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"x-amz-request-id: {request_id}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    client.sendall(head if method == "HEAD" else head + body)
    client.shutdown(socket.SHUT_WR)
    client.settimeout(5.0)
    _drain(client)

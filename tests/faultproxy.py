"""A small fault-injecting HTTP proxy for an S3 server, on 127.0.0.1.

It sits between a client (the ``endpoint_url`` points at the proxy) and the
real server, and decides per request, from a deterministic schedule, whether
to forward it or to fail it:

``Fault.NONE``
    Forward the request and the response byte for byte.
``Fault.RESET``
    Read the request head (and, when the client waits for ``100 Continue``,
    part of the body), then close the connection with an RST: a connection
    reset in the middle of the request. Nothing reaches the server.
``Fault.ERROR_500`` / ``Fault.SLOW_DOWN`` / ``Fault.ACCESS_DENIED``
    Answer ``500 InternalError``, ``503 SlowDown`` or ``403 AccessDenied`` (a
    policy that does not allow this request) with a proper S3 XML error
    body. Nothing reaches the server.
``Fault.STALL``
    Sleep ``stall_seconds``, then forward as ``NONE``.
``Fault.HANG``
    Read the request head, then nothing more, and never answer: a server that
    accepted the connection and went silent (a request body stalls once the
    kernel's buffers are full). The connection is held until the proxy stops.
``Fault.SLOW``
    Forward as ``NONE``, but carry the bytes (both ways) at ``slow_rate``
    bytes per second: a slow link on which the bytes keep moving. With
    ``FaultProxy(..., receive_buffer=N)`` the kernel holds at most about N
    bytes of the client's that the proxy has not read yet, so the client
    waits in its sends as on a real slow link (else loopback's autotuned
    buffers take megabytes at once).
``Fault.DROP_RESPONSE``
    Forward the whole request, let the server answer (so the server *did*
    the work, e.g. stored the object), then reset the connection instead of
    relaying the answer: the client must retry something that already
    succeeded.
``Fault.TRUNCATE_REQUEST``
    Forward the request head and the first half of its body to the server,
    then reset both connections: the server sees an upload cut short, the
    client a connection reset in the middle of sending.
``Fault.CORRUPT_REQUEST``
    Forward the whole request, with one byte of its body (the middle one)
    flipped, and relay the server's answer: a checksum-verifying server must
    refuse it.
``Fault.TRUNCATE_RESPONSE``
    Forward the request; relay the answer's head and the first half of its
    body (``Content-Length``), then close the connection cleanly (FIN): the
    client sees a short body.
``Fault.CORRUPT_RESPONSE``
    Forward the request; relay the whole answer with the middle byte of its
    body flipped: the client must notice from the checksum.

The four body faults apply only where there is a body (a request with a
``Content-Length``; an answer 200/206 with a ``Content-Length``); elsewhere
they act as ``NONE``.

How it stays transparent to SigV4: the request bytes go to the server
unchanged except for hop-by-hop headers that SigV4 never signs (botocore's
``SIGNED_HEADERS_BLACKLIST``): ``Connection: close`` is set on every request,
so each TCP connection carries exactly one request and one response. That is
what makes a per-request decision possible with plain byte forwarding (no
response parsing): the server closes after its answer, the proxy closes the
client side after relaying it, and the client opens a new connection for its
next request. ``DROP_RESPONSE`` also removes ``Expect: 100-continue`` (and
answers the ``100 Continue`` itself).

Bounded: every socket has a timeout, request heads are limited to 64 KiB,
handler threads are daemons, and :meth:`FaultProxy.stop` closes the
listening socket. The proxy binds 127.0.0.1 only, and dials 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import itertools
import secrets
import selectors
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

#: Socket timeout for every read and write, in seconds.
IO_TIMEOUT = 60.0
MAX_HEAD = 64 * 1024
_BLOCK = 256 * 1024
#: Block size of a ``Fault.SLOW`` connection (small, so that the pace is even).
_SLOW_BLOCK = 16 * 1024


class Fault(enum.Enum):
    """What the proxy does with one request."""

    NONE = "none"
    RESET = "reset"
    ERROR_500 = "500"
    SLOW_DOWN = "503"
    ACCESS_DENIED = "403"
    STALL = "stall"
    HANG = "hang"
    SLOW = "slow"
    DROP_RESPONSE = "drop-response"
    TRUNCATE_REQUEST = "truncate-request"
    CORRUPT_REQUEST = "corrupt-request"
    TRUNCATE_RESPONSE = "truncate-response"
    CORRUPT_RESPONSE = "corrupt-response"


#: The faults that alter a body in flight (see the module docstring).
BODY_FAULTS = frozenset({Fault.TRUNCATE_REQUEST, Fault.CORRUPT_REQUEST,
                         Fault.TRUNCATE_RESPONSE, Fault.CORRUPT_RESPONSE})


@dataclass(frozen=True)
class Request:
    """The parts of a request a schedule may look at."""

    index: int
    method: str
    target: str
    headers: dict[str, str]


#: Decides the fault for one request (called under the proxy's lock, in
#: arrival order, so a pure function of the index is deterministic).
Schedule = Callable[[Request], Fault]


def cycle(pattern: Iterable[Fault]) -> Schedule:
    """Request ``i`` gets ``pattern[i % len(pattern)]``."""
    faults = tuple(pattern)
    if not faults:
        raise ValueError("empty fault pattern")
    return lambda request: faults[request.index % len(faults)]


def always(fault: Fault) -> Schedule:
    """Every request gets ``fault``."""
    return lambda _request: fault


def capped(schedule: Schedule, per_target: int) -> Schedule:
    """``schedule``, but no method and target is failed more than ``per_target``
    times: a client that retries enough always gets through, whatever order its
    parallel requests arrive in."""
    failed: collections.Counter[tuple[str, str]] = collections.Counter()

    def decide(request: Request) -> Fault:
        fault = schedule(request)
        if fault in (Fault.NONE, Fault.STALL, Fault.SLOW):
            return fault
        if failed[request.method, request.target] >= per_target:
            return Fault.NONE
        failed[request.method, request.target] += 1
        return fault

    return decide


_ERRORS = {
    Fault.ERROR_500: (500, "Internal Server Error", "InternalError",
                      "We encountered an internal error. Please try again."),
    Fault.SLOW_DOWN: (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    Fault.ACCESS_DENIED: (403, "Forbidden", "AccessDenied", "Access Denied"),
}


class FaultProxy:
    """The proxy: ``with FaultProxy(upstream_port, schedule) as proxy: proxy.url``.

    ``injected`` counts the faults applied (NONE is not counted), ``log``
    lists ``(index, method, target, fault)`` of every request seen.
    """

    def __init__(self, upstream_port: int, schedule: Schedule | None = None, *,
                 stall_seconds: float = 1.0, slow_rate: float = 1 << 20,
                 receive_buffer: int | None = None,
                 upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.schedule = schedule or always(Fault.NONE)
        self.stall_seconds = stall_seconds
        self.slow_rate = slow_rate
        self.injected: collections.Counter[Fault] = collections.Counter()
        self.log: list[tuple[int, str, str, Fault]] = []
        self._lock = threading.Lock()
        self._counter = itertools.count()
        #: Set by stop(): releases the connections that Fault.HANG holds.
        self.stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler, bind_and_activate=False)
        if receive_buffer is not None:
            # On the listening socket, before any connection: accepted sockets
            # inherit it, and the window is negotiated for it (set later, the
            # kernel would drop what the larger window already let in).
            self._server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        try:
            self._server.server_bind()
            self._server.server_activate()
        except OSError:
            self._server.server_close()
            raise
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                         kwargs={"poll_interval": 0.1},
                                         name="fault-proxy", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.log)

    def faults(self) -> int:
        """How many faults were injected so far."""
        with self._lock:
            return sum(self.injected.values())

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def decide(self, method: str, target: str, headers: dict[str, str]) -> Fault:
        with self._lock:
            index = next(self._counter)
            fault = self.schedule(Request(index, method, target, headers))
            self.log.append((index, method, target, fault))
            if fault is not Fault.NONE:
                self.injected[fault] += 1
            return fault


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    proxy: FaultProxy


class _Handler(socketserver.BaseRequestHandler):
    request: socket.socket
    server: _Server

    def handle(self) -> None:
        client = self.request
        client.settimeout(IO_TIMEOUT)
        # OSError: the client gave up or we reset it; nothing to report.
        with contextlib.suppress(OSError):
            self._handle(client, self.server.proxy)

    def _handle(self, client: socket.socket, proxy: FaultProxy) -> None:
        parsed = _read_head(client)
        if parsed is None:
            return
        head, rest = parsed
        method, target, headers = _parse_head(head)
        fault = proxy.decide(method, target, headers)
        expects_continue = headers.get("expect", "").lower() == "100-continue"
        length = int(headers.get("content-length", "0") or "0")
        if fault is Fault.RESET:
            if expects_continue and length:
                # Let the upload start, then cut it off in the middle.
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                _read_exactly(client, max(1, length // 2) - len(rest))
            _reset(client)
            return
        if fault in _ERRORS:
            if not expects_continue:
                _read_exactly(client, length - len(rest))
            _send_error(client, fault, method, target)
            return
        if fault is Fault.HANG:
            proxy.stopping.wait(IO_TIMEOUT)
            _reset(client)
            return
        if fault is Fault.STALL:
            time.sleep(proxy.stall_seconds)
        rate = proxy.slow_rate if fault is Fault.SLOW else None
        with socket.create_connection(proxy.upstream, timeout=IO_TIMEOUT) as upstream:
            if fault in BODY_FAULTS:
                _body_fault(fault, client, upstream, head, rest, length, expects_continue,
                            method)
                return
            if fault is Fault.DROP_RESPONSE:
                if expects_continue:
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                upstream.sendall(_rewrite_head(head, drop={"expect"}) + rest)
                _copy_exactly(client, upstream, length - len(rest))
                _drain(upstream)  # the server answers; the client never hears it
                _reset(client)
                return
            upstream.sendall(_rewrite_head(head) + rest)
            _pipe(client, upstream, rate)


def _body_fault(fault: Fault, client: socket.socket, upstream: socket.socket, head: bytes,
                rest: bytes, length: int, expects_continue: bool, method: str) -> None:
    """Carry one request and its answer, truncating or corrupting one body.

    ``Expect: 100-continue`` is answered here and not passed on, so the
    request body can be handled as plain bytes.
    """
    if expects_continue:
        client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    upstream.sendall(_rewrite_head(head, drop={"expect"}))
    if fault is Fault.TRUNCATE_REQUEST and length:
        _relay_body(client, upstream, rest, length, stop_at=max(1, length // 2))
        _reset(upstream)
        _reset(client)
        return
    flip_at = length // 2 if fault is Fault.CORRUPT_REQUEST and length else None
    _relay_body(client, upstream, rest, length, flip_at=flip_at)
    if fault in (Fault.TRUNCATE_REQUEST, Fault.CORRUPT_REQUEST) or method == "HEAD":
        # No response body to alter (a HEAD answer has a length but no body).
        _pipe(client, upstream)
        return
    _relay_response(fault, client, upstream)


def _relay_body(source: socket.socket, dest: socket.socket, already: bytes, length: int, *,
                stop_at: int | None = None, flip_at: int | None = None) -> None:
    """Copy ``length`` body bytes (``already`` read ones first); stop after
    ``stop_at`` bytes, or flip the byte at offset ``flip_at``."""
    limit = length if stop_at is None else min(stop_at, length)
    sent = 0
    data = already
    while sent < limit:
        if not data:
            data = source.recv(min(_BLOCK, limit - sent))
            if not data:
                return
        data = data[:limit - sent]
        if flip_at is not None and sent <= flip_at < sent + len(data):
            changed = bytearray(data)
            changed[flip_at - sent] ^= 0x01
            data = bytes(changed)
        dest.sendall(data)
        sent += len(data)
        data = b""


def _relay_response(fault: Fault, client: socket.socket, upstream: socket.socket) -> None:
    """Relay the server's answer, truncating or corrupting a body it has."""
    parsed = _read_head(upstream)
    if parsed is None:
        _reset(client)
        return
    head, rest = parsed
    status_line, _, _ = head.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    _method, _target, headers = _parse_head(b"GET / HTTP/1.1\r\n" + head.partition(b"\r\n")[2])
    length = int(headers.get("content-length", "0") or "0")
    client.sendall(head)
    if status not in (200, 206) or not length:
        client.sendall(rest)
        _drain_to(upstream, client)
        return
    if fault is Fault.TRUNCATE_RESPONSE:
        _relay_body(upstream, client, rest, length, stop_at=max(1, length // 2))
    else:
        _relay_body(upstream, client, rest, length, flip_at=length // 2)
    # A clean close: the client has to count the bytes to notice a short body.
    client.shutdown(socket.SHUT_WR)


def _drain_to(source: socket.socket, dest: socket.socket) -> None:
    while data := source.recv(_BLOCK):
        dest.sendall(data)
    dest.shutdown(socket.SHUT_WR)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """The request head up to the blank line, and what was read beyond it."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD:
            raise OSError("request head too long")
        data = sock.recv(_BLOCK)
        if not data:
            return None
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = [*lines[0].split(" ", 2), "", ""][:3]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


def _rewrite_head(head: bytes, drop: Iterable[str] = ()) -> bytes:
    """``head`` with ``Connection: close`` and without the headers in ``drop``
    (all of them unsigned hop-by-hop headers, so SigV4 still verifies)."""
    removed = {"connection", "keep-alive", *drop}
    lines = head.split(b"\r\n")
    kept = [lines[0]]
    for line in lines[1:]:
        if not line:
            continue
        name = line.split(b":", 1)[0].strip().lower().decode("latin-1")
        if name not in removed:
            kept.append(line)
    kept.append(b"Connection: close")
    return b"\r\n".join(kept) + b"\r\n\r\n"


def _read_exactly(sock: socket.socket, count: int) -> None:
    while count > 0:
        data = sock.recv(min(_BLOCK, count))
        if not data:
            return
        count -= len(data)


def _copy_exactly(source: socket.socket, dest: socket.socket, count: int) -> None:
    while count > 0:
        data = source.recv(min(_BLOCK, count))
        if not data:
            return
        dest.sendall(data)
        count -= len(data)


def _drain(sock: socket.socket) -> None:
    while sock.recv(_BLOCK):
        pass


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _send_error(client: socket.socket, fault: Fault, method: str, target: str) -> None:
    status, reason, code, message = _ERRORS[fault]
    request_id = secrets.token_hex(8).upper()
    resource = target.split("?", 1)[0]
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"x-amz-request-id: {request_id}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    client.sendall(head if method == "HEAD" else head + body)
    client.shutdown(socket.SHUT_WR)
    # Wait for the client to close first, so the answer is not lost to an RST.
    client.settimeout(5.0)
    _drain(client)


def _pipe(client: socket.socket, upstream: socket.socket, rate: float | None = None) -> None:
    """Copy both ways until the server has answered and closed; with ``rate``,
    at most that many bytes per second (both ways together)."""
    block = _BLOCK if rate is None else _SLOW_BLOCK
    started = time.monotonic()
    carried = 0
    with selectors.DefaultSelector() as selector:
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        open_sides = 2
        while open_sides:
            events = selector.select(timeout=IO_TIMEOUT)
            if not events:
                raise OSError("proxied connection idle for too long")
            for key, _mask in events:
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                dest: socket.socket = key.data
                data = source.recv(block)
                if data:
                    dest.sendall(data)
                    if rate is not None:
                        carried += len(data)
                        time.sleep(max(0.0, started + carried / rate - time.monotonic()))
                    continue
                selector.unregister(source)
                open_sides -= 1
                if source is upstream:
                    # The response is complete (Connection: close).
                    client.shutdown(socket.SHUT_WR)
                    return
                upstream.shutdown(socket.SHUT_WR)


"""An HTTP proxy on 127.0.0.1 that breaks the traffic to the test S3 server on request.

`FaultProxy(upstream_url)` runs the proxy in a child process (GDAL may hold the GIL, so a server
thread in the test process could not answer) and controls it through the child's stdin and stdout:
one JSON line per command, one JSON line per answer. Control therefore needs no port and keeps
working while the proxy refuses connections; closing stdin stops the child.

Every request, any method, is passed on to the upstream with its headers (Authorization, Range,
Host...) and body; the answer is streamed back. Client connections are kept alive; each forwarded
request opens its own upstream connection. Request bodies, and answers without a Content-Length,
are buffered whole (test objects are small).

Faults, for requests whose path (`/bucket/key`, no query) contains `path_part`; each is used up after
`times` requests it applied to, or never when `times` is None; the first matching fault applies:

- `status(path_part, code)`: any request answers an S3-style XML error with status `code`, without asking upstream.
- `truncate_object(path_part, size)`: the object was stored truncated to `size` bytes. GET and HEAD
  both see the short object consistently: Content-Length, `Content-Range: bytes a-b/size`, a body
  cut at `size`, 416 for a range starting at or past `size`, no stored checksum of the whole object.
  A client that learnt the real size before the fault was switched on then asks for ranges that no
  longer exist. Suffix ranges (`bytes=-n`) and multi-range requests are not modelled (GDAL sends neither).
- `short_ranges(path_part, past_byte)`: a GET of a range starting at or past `past_byte` answers a
  206 whose headers are right (`Content-Range: bytes a-b/size` of the range asked, the object's
  size) but whose body, and Content-Length, hold only the first half of the range (at least one
  byte): a server that answers short on purpose. Ranges before `past_byte` (the header GDAL reads
  at open), HEAD and whole-object GETs pass unchanged.
- `truncate_claiming_size(path_part, size)`: the object was stored truncated to `size` bytes, but
  the store still claims its full size: HEAD answers the full Content-Length and a ranged GET
  `Content-Range: bytes a-b/<full size>` of the range asked, while the body, and Content-Length,
  hold only the stored bytes of it (none for a range starting at or past `size`). A GET of the
  whole object sends the stored bytes.
- `cut_body(path_part, after_bytes)`: GET answers the real status and headers (Content-Length of the
  full answer) but only `after_bytes` body bytes, then closes the connection (FIN).
- `reset_body(path_part, after_bytes)`: the same, then resets the connection (SO_LINGER 0, RST).
- `garbage(path_part)`: GET answers carry random bytes (the same for the same path and first byte)
  instead of the body of a 2xx answer, with the same length.

`refuse_for(seconds)` closes the listening socket and shuts every open client connection, so that
connecting gets ECONNREFUSED, then listens again on the same port after `seconds` (the port stays the
proxy's meanwhile, a `ReservedPort`, so no other process can take it); a later call
replaces the pending one, and `refuse_for(0)` listens again at once. `requests(path_part)` counts
requests that reached the proxy (any method) since `reset_counters()`.
"""

import http.client
import json
import random
import select
import socket
import socketserver
import struct
import sys
import threading
from collections import Counter
from dataclasses import dataclass, replace
from enum import StrEnum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from tasks.testing.servers import LOOPBACK, ChildServer, ReservedPort, TrafficMiddleware

__all__ = ["FaultProxy"]

RELAY_CHUNK_BYTES = 64 * 1024
UPSTREAM_TIMEOUT_S = 60.0
CONTROL_TIMEOUT_S = 10.0
ACCEPT_POLL_S = 0.05
"""How often the accept loop checks whether it must stop; refusing takes at most this long."""
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "http2-settings",
    }
)  # fmt: skip
"""Headers that describe one connection, not the message (curl's h2c upgrade offer among them)."""
NOT_FORWARDED_HEADERS = HOP_BY_HOP_HEADERS | {"expect", "content-length"}
"""Request headers the proxy does not pass on: it answers 100-continue itself and sets Content-Length."""
CHECKSUM_HEADER = "x-amz-checksum-"
"""Prefix of the headers carrying the checksum S3 stored with the whole object."""
BODYLESS_STATUSES = frozenset({HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED})


class FaultKind(StrEnum):
    """What a fault does to the requests it matches (see the module docstring)."""

    STATUS = "status"
    TRUNCATE = "truncate"
    CUT = "cut"
    RESET = "reset"
    GARBAGE = "garbage"
    SHORT_RANGE = "short-range"
    TRUNCATE_CLAIMING_SIZE = "truncate-claiming-size"


GET_ONLY_FAULTS = frozenset(
    {FaultKind.CUT, FaultKind.RESET, FaultKind.GARBAGE, FaultKind.SHORT_RANGE, FaultKind.TRUNCATE_CLAIMING_SIZE}
)
"""Faults that apply to GET requests only; a truncated object is also truncated for HEAD, and an
error status answers every method (a STAC API's POST /search too)."""


@dataclass
class Fault:
    """Requests whose path contains `path_part` get `kind` with `amount` (status, size, offset or bytes; 0 for
    GARBAGE)."""

    kind: FaultKind
    path_part: str
    amount: int
    remaining: int | None


@dataclass
class Answer:
    """What the client is sent for one request: status, headers, how much body, and how it ends."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    """Every header sent, Content-Length included when upstream sent one."""
    body_bytes: int | None = None
    """Body bytes to pass on; None: the whole upstream body."""
    first_byte: int = 0
    """Offset of the body's first byte in the object (seeds `garbage`)."""
    ending: FaultKind | None = None
    """None: the answer is complete; CUT or RESET: the connection ends after `body_bytes`."""
    garbage: bool = False
    """Replace the body by random bytes of the same length."""
    s3_error: bool = False
    """Send an S3 XML error with `status` and `headers` instead of anything from upstream."""


class ProxyServer(socketserver.ThreadingTCPServer):
    """The listening socket; each client connection is handled in its own thread."""

    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False

    def __init__(self, port: int, proxy: "Proxy") -> None:
        self.proxy = proxy
        super().__init__((LOOPBACK, port), ProxyHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up, or a connection `refuse_for` shut, is no error of the proxy."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class Proxy:
    """The proxy inside the child process: listener, open connections, faults and counters."""

    def __init__(self, upstream_url: str) -> None:
        upstream = urlsplit(upstream_url)
        self.upstream_host, self.upstream_port = upstream.hostname or LOOPBACK, upstream.port or 80
        self._reserved_port = ReservedPort()
        self.port = self._reserved_port.port
        self._lock = threading.RLock()
        self._server: ProxyServer | None = None
        self._relisten_timer: threading.Timer | None = None
        self._refusal = 0
        """How many times `refuse_for` was called: a timer ends only the refusal that started it."""
        self._connections: set[socket.socket] = set()
        self._faults: list[Fault] = []
        self._requests: Counter[str] = Counter()

    def listen(self) -> None:
        """Listen on the proxy's reserved `port`."""
        with self._lock:
            if self._server is not None:
                return
            self._server = ProxyServer(self.port, self)
            threading.Thread(target=self._server.serve_forever, args=(ACCEPT_POLL_S,), daemon=True).start()

    def refuse_for(self, seconds: float) -> None:
        """Stop listening, shut every client connection, and listen again after `seconds`."""
        with self._lock:
            self._refusal += 1
            if self._relisten_timer is not None:
                self._relisten_timer.cancel()
            self._stop_listening()
            if seconds <= 0:
                self.listen()
                return
            self._relisten_timer = threading.Timer(seconds, self._end_refusal, args=(self._refusal,))
            self._relisten_timer.daemon = True
            self._relisten_timer.start()

    def _end_refusal(self, refusal: int) -> None:
        """Listen again, unless a later `refuse_for` replaced refusal number `refusal`."""
        with self._lock:
            if refusal == self._refusal:
                self.listen()

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for connection in self._connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the client closed it first
        self._connections.clear()

    def close(self) -> None:
        with self._lock:
            if self._relisten_timer is not None:
                self._relisten_timer.cancel()
            self._stop_listening()
            self._reserved_port.close()

    def register(self, connection: socket.socket) -> bool:
        """Track a new client connection; False when the proxy is refusing (the caller drops it)."""
        with self._lock:
            if self._server is None:
                return False
            self._connections.add(connection)
            return True

    def unregister(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def take_fault(self, method: str, path: str) -> Fault | None:
        """Count the request and return the first fault that applies to it, using up one of its times."""
        with self._lock:
            self._requests[path] += 1
            for fault in self._faults:
                applies = method == "GET" or fault.kind == FaultKind.STATUS or (
                    method == "HEAD" and fault.kind not in GET_ONLY_FAULTS
                )
                if applies and fault.path_part in path and fault.remaining != 0:
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None

    def control(self, command: dict[str, Any]) -> dict[str, Any]:
        """Carry out one command from the parent process; the answer is sent back as JSON."""
        action = command["action"]
        with self._lock:
            if action == "refuse":
                self.refuse_for(command["seconds"])
                return {}
            if action == "fault":
                self._faults.append(
                    Fault(FaultKind(command["kind"]), command["path_part"], command["amount"], command["times"])
                )
                return {}
            if action == "clear":
                self._faults.clear()
                return {}
            if action == "requests":
                return {
                    "requests": sum(count for path, count in self._requests.items() if command["path_part"] in path)
                }
            if action == "reset":
                self._requests.clear()
                return {}
        raise ValueError(f"unknown proxy command {action!r}")


class ProxyHandler(BaseHTTPRequestHandler):
    """One client connection: requests are forwarded one after the other (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"
    server: ProxyServer

    def setup(self) -> None:
        super().setup()
        if not self.server.proxy.register(self.connection):
            self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        self.server.proxy.unregister(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        """Silent: one line per request would drown the test output."""

    def forward(self) -> None:
        """Pass the request on and its answer back, applying the fault that matches it."""
        try:
            path = urlsplit(self.path).path
            body = self._request_body()
            fault = self.server.proxy.take_fault(self.command, path)
            if fault is not None and fault.kind == FaultKind.STATUS:
                self._send_s3_error(fault.amount, [])
                return
            upstream = http.client.HTTPConnection(
                self.server.proxy.upstream_host, self.server.proxy.upstream_port, timeout=UPSTREAM_TIMEOUT_S
            )
            try:
                try:
                    response = self._ask_upstream(upstream, body)
                except (OSError, http.client.HTTPException):
                    self._send_s3_error(HTTPStatus.BAD_GATEWAY, [])
                    return
                self._relay(response, _answer(path, response, fault))
            finally:
                upstream.close()
        except OSError:
            self.close_connection = True  # the client hung up, or refuse_for shut the connection

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = forward

    def _request_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            pieces = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                pieces.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():
                pass  # trailer fields
            return b"".join(pieces)
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length is not None else None

    def _ask_upstream(self, upstream: http.client.HTTPConnection, body: bytes | None) -> http.client.HTTPResponse:
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        dropped = NOT_FORWARDED_HEADERS | _listed_in_connection(self.headers.get_all("Connection", []))
        for name, value in self.headers.items():
            if name.lower() not in dropped:
                upstream.putheader(name, value)
        if body is not None:
            upstream.putheader("Content-Length", str(len(body)))
        upstream.endheaders(body)
        return upstream.getresponse()

    def _send_s3_error(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Answer the error real S3 sends with `status` (code and message of `tasks.testing.servers`), plus `headers`."""
        status_line, error_headers = "", []

        def start_response(line: str, response_headers: list[tuple[str, str]]) -> None:
            nonlocal status_line, error_headers
            status_line, error_headers = line, response_headers

        body = b"".join(TrafficMiddleware._fault_response(status, start_response))
        code, reason = status_line.split(" ", 1)
        self.send_response_only(int(code), reason)
        for name, value in [*error_headers, *headers]:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _relay(self, response: http.client.HTTPResponse, answer: Answer) -> None:
        if answer.s3_error:
            self._send_s3_error(answer.status, answer.headers)
            return
        has_body = self.command != "HEAD" and answer.status >= 200 and answer.status not in BODYLESS_STATUSES
        headers = answer.headers
        buffered = None
        if has_body and not any(name.lower() == "content-length" for name, _ in headers):
            buffered = response.read()
            headers = [*headers, ("Content-Length", str(len(buffered)))]
        self.send_response_only(answer.status, answer.reason)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if has_body:
            self._send_body(response, buffered, answer)
        if answer.ending == FaultKind.CUT:
            self.close_connection = True
        elif answer.ending == FaultKind.RESET:
            self._reset_connection()

    def _send_body(self, response: http.client.HTTPResponse, buffered: bytes | None, answer: Answer) -> None:
        """Send the body (or its first `answer.body_bytes`) in pieces as they come from upstream."""
        available = len(buffered) if buffered is not None else response.length or 0
        limit = min(answer.body_bytes, available) if answer.body_bytes is not None else available
        filler = random.Random(f"{urlsplit(self.path).path} {answer.first_byte}")
        for start in range(0, limit, RELAY_CHUNK_BYTES):
            size = min(RELAY_CHUNK_BYTES, limit - start)
            piece = buffered[start : start + size] if buffered is not None else response.read(size)
            if not piece:
                break
            self.wfile.write(filler.randbytes(len(piece)) if answer.garbage else piece)

    def _reset_connection(self) -> None:
        """Close the client connection with an RST instead of a FIN, as a crashed server's kernel would."""
        self.close_connection = True
        self.server.proxy.unregister(self.connection)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # the socket closes for real only once its file objects are closed
        self.connection.close()


def _listed_in_connection(connection_headers: list[str]) -> frozenset[str]:
    """Header names a Connection header marks as hop-by-hop (e.g. curl's `Upgrade, HTTP2-Settings`)."""
    return frozenset(name.strip().lower() for header in connection_headers for name in header.split(","))


def _answer(path: str, response: http.client.HTTPResponse, fault: Fault | None) -> Answer:
    """What to send the client for the upstream `response`, given the fault that applies, if any."""
    headers = [(name, value) for name, value in response.getheaders() if name.lower() not in HOP_BY_HOP_HEADERS]
    answer = Answer(response.status, response.reason, headers, first_byte=_content_range(response)[0])
    if fault is None:
        return answer
    if fault.kind == FaultKind.GARBAGE:
        answer.garbage = HTTPStatus.OK <= response.status < HTTPStatus.MULTIPLE_CHOICES
    elif fault.kind in (FaultKind.CUT, FaultKind.RESET):
        answer.body_bytes = fault.amount
        answer.ending = fault.kind
    elif fault.kind == FaultKind.TRUNCATE:
        return _truncated(answer, response, fault.amount)
    elif fault.kind == FaultKind.SHORT_RANGE:
        return _short_range(answer, response, fault.amount)
    elif fault.kind == FaultKind.TRUNCATE_CLAIMING_SIZE:
        return _truncated_claiming_size(answer, response, fault.amount)
    return answer


def _content_range(response: http.client.HTTPResponse) -> tuple[int, int | None]:
    """(first byte, last byte) of a 206 answer's Content-Range; (0, None) without one."""
    content_range = response.getheader("Content-Range", "")
    if not content_range.startswith("bytes ") or "-" not in content_range:
        return 0, None
    first, last = content_range.removeprefix("bytes ").split("/")[0].split("-")
    return int(first), int(last)


def _truncated(answer: Answer, response: http.client.HTTPResponse, size: int) -> Answer:
    """The answer of a store whose copy of the object has only its first `size` bytes.

    The stored checksum (`x-amz-checksum-*`) is left out: it belongs to the whole object, while a
    store holding the short object would hold the short object's checksum.
    """
    other_headers = [
        (name, value)
        for name, value in answer.headers
        if name.lower() not in ("content-range", "content-length") and not name.lower().startswith(CHECKSUM_HEADER)
    ]
    declared_length = int(response.getheader("Content-Length", "0"))
    if response.status == HTTPStatus.OK:
        if declared_length <= size:
            return answer
        return replace(answer, headers=[*other_headers, ("Content-Length", str(size))], body_bytes=size)
    first, last = _content_range(response)
    if response.status != HTTPStatus.PARTIAL_CONTENT or last is None:
        return answer
    if first >= size:
        unsatisfiable = HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE
        return Answer(unsatisfiable, unsatisfiable.phrase, [("Content-Range", f"bytes */{size}")], s3_error=True)
    last = min(last, size - 1)
    return replace(
        answer,
        headers=[
            *other_headers,
            ("Content-Range", f"bytes {first}-{last}/{size}"),
            ("Content-Length", str(last - first + 1)),
        ],
        body_bytes=last - first + 1,
    )


def _with_body_bytes(answer: Answer, body_bytes: int) -> Answer:
    """`answer` with only its first `body_bytes` body bytes, its Content-Length saying so, every other header kept."""
    headers = [(name, value) for name, value in answer.headers if name.lower() != "content-length"]
    return replace(answer, headers=[*headers, ("Content-Length", str(body_bytes))], body_bytes=body_bytes)


def _short_range(answer: Answer, response: http.client.HTTPResponse, past_byte: int) -> Answer:
    """The answer of a server that sends half of each range starting at or past `past_byte`."""
    first, last = _content_range(response)
    if response.status != HTTPStatus.PARTIAL_CONTENT or last is None or first < past_byte:
        return answer
    return _with_body_bytes(answer, max((last - first + 1) // 2, 1))


def _truncated_claiming_size(answer: Answer, response: http.client.HTTPResponse, size: int) -> Answer:
    """The answer of a store that holds the first `size` bytes of the object but claims its full size."""
    if response.status == HTTPStatus.OK:
        return _with_body_bytes(answer, min(int(response.getheader("Content-Length", "0")), size))
    first, last = _content_range(response)
    if response.status != HTTPStatus.PARTIAL_CONTENT or last is None:
        return answer
    return _with_body_bytes(answer, max(min(last + 1, size) - first, 0))


def serve(upstream_url: str) -> None:
    """Child-process entry: print the port, then answer one JSON command per stdin line until stdin closes."""
    proxy = Proxy(upstream_url)
    proxy.listen()
    print(proxy.port, flush=True)
    for line in sys.stdin:
        try:
            reply: dict[str, Any] = {"ok": True, **proxy.control(json.loads(line))}
        except (KeyError, ValueError, OSError) as error:
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)
    proxy.close()


class FaultProxy:
    """The proxy in a child process, as seen from the tests: its URL, its faults and its counters."""

    def __init__(self, upstream_url: str) -> None:
        self._child = ChildServer.start(["tasks.testing.fault_proxy", upstream_url], "fault proxy", CONTROL_TIMEOUT_S)
        self._lock = threading.Lock()
        self.endpoint_url = self._child.endpoint_url

    def http_url(self, bucket: str, key: str) -> str:
        """The anonymous http URL of an object, through the proxy."""
        return f"{self.endpoint_url}/{bucket}/{key}"

    def stop(self) -> None:
        self._child.stop(CONTROL_TIMEOUT_S)

    def _command(self, action: str, **arguments: Any) -> dict[str, Any]:
        with self._lock:
            self._child.stdin.write(json.dumps({"action": action, **arguments}) + "\n")
            self._child.stdin.flush()
            ready, _, _ = select.select([self._child.stdout], [], [], CONTROL_TIMEOUT_S)
            reply_line = self._child.stdout.readline() if ready else ""
        if not reply_line:
            raise RuntimeError(f"fault proxy did not answer {action!r} (exit status {self._child.process.poll()})")
        reply = json.loads(reply_line)
        if not reply.pop("ok"):
            raise RuntimeError(f"fault proxy refused {action!r}: {reply['error']}")
        return reply

    def refuse_for(self, seconds: float) -> None:
        """Refuse connections (ECONNREFUSED) and shut open ones now; listen again after `seconds` (0: now)."""
        self._command("refuse", seconds=seconds)

    def _fault(self, kind: FaultKind, path_part: str, amount: int, times: int | None) -> None:
        self._command("fault", kind=kind, path_part=path_part, amount=amount, times=times)

    def status(self, path_part: str, code: int, times: int | None = None) -> None:
        """GET requests whose path contains `path_part` answer an S3 XML error with status `code`."""
        self._fault(FaultKind.STATUS, path_part, code, times)

    def truncate_object(self, path_part: str, size: int, times: int | None = None) -> None:
        """GET and HEAD see the object as stored with only its first `size` bytes (see the module docstring)."""
        self._fault(FaultKind.TRUNCATE, path_part, size, times)

    def short_ranges(self, path_part: str, past_byte: int, times: int | None = None) -> None:
        """GETs of a range starting at or past `past_byte` get half its bytes under the headers of all of them."""
        self._fault(FaultKind.SHORT_RANGE, path_part, past_byte, times)

    def truncate_claiming_size(self, path_part: str, size: int, times: int | None = None) -> None:
        """GETs send only the object's first `size` bytes while HEAD and Content-Range claim its full size."""
        self._fault(FaultKind.TRUNCATE_CLAIMING_SIZE, path_part, size, times)

    def cut_body(self, path_part: str, after_bytes: int, times: int | None = None) -> None:
        """GET answers stop after `after_bytes` body bytes, short of their Content-Length; the connection closes."""
        self._fault(FaultKind.CUT, path_part, after_bytes, times)

    def reset_body(self, path_part: str, after_bytes: int, times: int | None = None) -> None:
        """GET answers stop after `after_bytes` body bytes and the connection is reset (RST)."""
        self._fault(FaultKind.RESET, path_part, after_bytes, times)

    def garbage(self, path_part: str, times: int | None = None) -> None:
        """Successful GET answers carry deterministic random bytes instead of their body."""
        self._fault(FaultKind.GARBAGE, path_part, 0, times)

    def clear(self) -> None:
        """Remove every fault."""
        self._command("clear")

    def requests(self, path_part: str) -> int:
        """Requests (any method) that reached the proxy since `reset_counters()` with `path_part` in their path."""
        return self._command("requests", path_part=path_part)["requests"]

    def reset_counters(self) -> None:
        self._command("reset")


if __name__ == "__main__":
    serve(sys.argv[1])

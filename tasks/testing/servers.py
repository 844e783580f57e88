"""Servers the tests talk to, all on 127.0.0.1: an S3 store (moto) and a STAC API (rustac).

The S3 store counts what it serves and can be told to fail, so tests can assert how many bytes a
read fetched and how the pipeline behaves when the store answers 503. The fixtures in
`tests/conftest.py` start and stop these servers.

Every server gets its port from the kernel (a bind to port 0), never as a port found free and let go
(another process may take it before the server binds it): a server that reports the port it bound
prints it (`ChildServer`), and one that must be told its port beforehand is given a `ReservedPort`.
"""

import json
import logging
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any

import boto3

from tasks.testing import PROJECT_ROOT

__all__ = [
    "LOOPBACK",
    "TEST_CREDENTIALS",
    "S3Server",
    "StacApi",
    "TrafficMiddleware",
    "ChildServer",
    "ReservedPort",
    "child_pipes",
    "wait_or_kill",
]

LOOPBACK = "127.0.0.1"
TEST_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
COUNTED_CHUNK_BYTES = 64 * 1024
"""Response bodies are passed on and counted in pieces of this size."""
RUSTAC_START_TIMEOUT_S = 15.0
S3_ERRORS: dict[int, tuple[str, str]] = {
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}
"""The error code and message real S3 answers with each injected status."""
RUSTAC_BINARY = Path(sys.executable).parent / "rustac"
"""The `rustac` command of the environment running this (requirements-dev.txt installs it)."""
MOTO_AUTH_PATH = "/moto-api/reset-auth"
"""moto's setting of how many requests it serves before it checks credentials (POST the number)."""
CONTROL_PREFIX = "/_traffic/"
"""Path prefix of the S3 server's counter and fault requests; no bucket name can start with '_'."""

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass
class _Fault:
    """GET requests whose path contains `path_part` answer `status`; `remaining` None means always."""

    path_part: str
    status: int
    remaining: int | None


class TrafficMiddleware:
    """WSGI middleware around moto: counts requests and body bytes per path, injects failures.

    It also answers an anonymous HEAD like real S3 does for a public object (moto answers 403),
    by asking moto for a GET and dropping the body, so GDAL needs no test-only option. Requests
    under `CONTROL_PREFIX` (not a valid bucket name) read and set the counters and faults; they are
    not counted. Thread-safe: the server handles each request in its own thread.
    """

    def __init__(self, app: WsgiApp) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._bytes_served = 0
        self._faults: list[_Fault] = []

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path.startswith(CONTROL_PREFIX):
            return self._control(path.removeprefix(CONTROL_PREFIX), environ, start_response)
        with self._lock:
            self._requests[path] += 1
            fault_status = self._take_fault(path) if method == "GET" else None
        if fault_status is not None:
            return self._counted(self._fault_response(fault_status, start_response))
        if method == "HEAD" and not _is_signed(environ):
            body = self._app({**environ, "REQUEST_METHOD": "GET"}, start_response)
            if hasattr(body, "close"):
                body.close()
            return []
        return self._counted(self._app(environ, start_response))

    def _control(self, action: str, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        request = json.loads(environ["wsgi.input"].read(length) or b"{}")
        with self._lock:
            if action == "counters":
                path_part = request.get("path_part", "")
                requests = sum(count for path, count in self._requests.items() if path_part in path)
                answer: dict[str, Any] = {"bytes_served": self._bytes_served, "requests": requests}
            elif action == "reset":
                self._requests.clear()
                self._bytes_served = 0
                answer = {}
            elif action == "fault":
                self._faults.append(_Fault(request["path_part"], request["status"], request["times"]))
                answer = {}
            elif action == "clear-faults":
                self._faults.clear()
                answer = {}
            else:
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [f"unknown control action {action!r}".encode()]
        body = json.dumps(answer).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def _take_fault(self, path: str) -> int | None:
        for fault in self._faults:
            if fault.path_part in path and fault.remaining != 0:
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault.status
        return None

    @staticmethod
    def _fault_response(status: int, start_response: StartResponse) -> list[bytes]:
        phrase = HTTPStatus(status).phrase
        code, message = S3_ERRORS.get(status, (phrase.replace(" ", ""), phrase))
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        ).encode()
        start_response(
            f"{status} {phrase}", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        )
        return [body]

    def _counted(self, body: Iterable[bytes]) -> Iterator[bytes]:
        """Pass the body on in pieces, counting each piece as it is handed to the server.

        A client that hangs up early is charged at most one piece more than it received.
        """
        try:
            for chunk in body:
                for start in range(0, len(chunk), COUNTED_CHUNK_BYTES):
                    piece = chunk[start : start + COUNTED_CHUNK_BYTES]
                    with self._lock:
                        self._bytes_served += len(piece)
                    yield piece
        finally:
            if hasattr(body, "close"):
                body.close()


def _is_signed(environ: dict[str, Any]) -> bool:
    """Whether a request carries AWS credentials (header or presigned query string)."""
    return "HTTP_AUTHORIZATION" in environ or "X-Amz-Signature" in environ.get("QUERY_STRING", "")


def child_pipes(process: subprocess.Popen[str]) -> tuple[IO[str], IO[str]]:
    """(stdin, stdout) of a child process started with both piped."""
    if process.stdin is None or process.stdout is None:
        raise ValueError("start the child process with stdin=subprocess.PIPE and stdout=subprocess.PIPE")
    return process.stdin, process.stdout


def wait_or_kill(process: subprocess.Popen, timeout_s: float) -> None:
    """Wait for a child asked to exit (stdin closed, or terminated); kill it after `timeout_s` seconds."""
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class ChildServer:
    """A server in a child process of this interpreter (`python -m <arguments>`) that prints its port
    on its first line, then serves until its stdin closes."""

    process: subprocess.Popen[str]
    stdin: IO[str]
    stdout: IO[str]
    endpoint_url: str

    @classmethod
    def start(
        cls, arguments: Sequence[str], server: str, stop_timeout_s: float = 10.0, start_timeout_s: float = 60.0
    ) -> "ChildServer":
        """Start it and read its port; RuntimeError naming `server` when it printed none within
        `start_timeout_s` seconds."""
        process = subprocess.Popen(
            [sys.executable, "-m", *arguments], cwd=PROJECT_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        stdin, stdout = child_pipes(process)
        ready, _, _ = select.select([stdout], [], [], start_timeout_s)
        port_line = stdout.readline().strip() if ready else f"nothing within {start_timeout_s:g} s"
        if not port_line.isdigit():
            stdin.close()
            wait_or_kill(process, stop_timeout_s)
            raise RuntimeError(f"{server} did not start (printed {port_line!r}); see the test's stderr")
        return cls(process, stdin, stdout, f"http://{LOOPBACK}:{port_line}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close its stdin (it exits), killing it after `timeout_s` seconds."""
        self.stdin.close()
        wait_or_kill(self.process, timeout_s)


def serve_s3() -> None:
    """Child-process entry: moto behind `TrafficMiddleware`; prints its port, serves until stdin closes."""
    from moto.server import ThreadedMotoServer

    # One log line per request would drown test and benchmark output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    moto = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    moto.start()
    # moto has no hook for middleware; the werkzeug server looks its app up on every request.
    server = moto._server
    if server is None:
        raise RuntimeError("moto's server did not start")
    server.app = TrafficMiddleware(server.app)
    print(moto.get_host_and_port()[1], flush=True)
    sys.stdin.read()
    moto.stop()


class S3Server:
    """A moto S3 server on 127.0.0.1, in a child process, with traffic counters and fault injection.

    The child process matters: GDAL holds the GIL while it uploads (closing a dataset written to
    /vsis3/), so a server thread in the test process could not answer and the write would time out.
    Counters cover every request (any method) since `reset_counters()`; `bytes_served()` is the sum
    of response body bytes sent (ranged reads count only their range). Faults apply to GET requests.
    """

    def __init__(self) -> None:
        self._child = ChildServer.start(["tasks.testing.servers", "s3"], "moto S3 server")
        self.endpoint_url = self._child.endpoint_url
        self._client = boto3.client("s3", endpoint_url=self.endpoint_url, **TEST_CREDENTIALS)

    def stop(self) -> None:
        self._child.stop()

    def _control(self, action: str, **request: Any) -> dict[str, Any]:
        with urllib.request.urlopen(
            urllib.request.Request(
                f"{self.endpoint_url}{CONTROL_PREFIX}{action}", data=json.dumps(request).encode(), method="POST"
            ),
            timeout=10,
        ) as response:
            return json.loads(response.read())

    def make_bucket(self, name: str, versioned: bool = False) -> str:
        """Create bucket `name` (at least 3 characters) readable anonymously; returns the name.

        In a `versioned` bucket every write of a key keeps a version (`version_counts` counts them).
        """
        existing = {bucket["Name"] for bucket in self._client.list_buckets()["Buckets"]}
        if name not in existing:
            self._client.create_bucket(Bucket=name)
        if versioned:
            self._client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        public_read = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{name}/*"}
            ],
        }
        self._client.put_bucket_policy(Bucket=name, Policy=json.dumps(public_read))
        return name

    def upload(self, local_path: str | Path, bucket: str, key: str) -> str:
        """Upload a local file; returns its `s3://bucket/key` URI."""
        self._client.upload_file(str(local_path), bucket, key)
        return f"s3://{bucket}/{key}"

    def keys(self, bucket: str, prefix: str = "") -> set[str]:
        """Every object key under `prefix` in `bucket`."""
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return {entry["Key"] for page in pages for entry in page.get("Contents", [])}

    def version_counts(self, bucket: str, prefix: str = "") -> Counter[str]:
        """{key: versions} of every key under `prefix` in a versioned bucket: how many times each was written."""
        pages = self._client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
        return Counter(entry["Key"] for page in pages for entry in page.get("Versions", []))

    def read(self, bucket: str, key: str) -> bytes:
        """The content of an object."""
        return self._client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def presigned_url(self, bucket: str, key: str) -> str:
        """A signed GET URL of an object, its signature in the query string (as catalogues hand out)."""
        return self._client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600)

    def http_url(self, bucket: str, key: str) -> str:
        """The anonymous (unsigned) http URL of an object."""
        return f"{self.endpoint_url}/{bucket}/{key}"

    def bytes_served(self) -> int:
        return self._control("counters")["bytes_served"]

    def requests_for(self, path_part: str) -> int:
        """Requests since `reset_counters()` whose path (`/bucket/key`) contains `path_part`."""
        return self._control("counters", path_part=path_part)["requests"]

    def reset_counters(self) -> None:
        self._control("reset")

    def fail_next(self, path_part: str, times: int, status: int = 503) -> None:
        """The next `times` GET requests whose path contains `path_part` answer `status`."""
        self._control("fault", path_part=path_part, status=status, times=times)

    def fail_always(self, path_part: str, status: int = 503) -> None:
        """Every GET request whose path contains `path_part` answers `status` until `clear_faults()`."""
        self._control("fault", path_part=path_part, status=status, times=None)

    def clear_faults(self) -> None:
        self._control("clear-faults")

    def user_credentials(self, user: str) -> dict[str, str]:
        """The access key of a new IAM user `user` allowed every S3 action, as boto3 client arguments
        (call before `require_credentials`)."""
        iam = boto3.client("iam", endpoint_url=self.endpoint_url, **TEST_CREDENTIALS)
        iam.create_user(UserName=user)
        every_s3_action = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(every_s3_action))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return {
            "aws_access_key_id": key["AccessKeyId"],
            "aws_secret_access_key": key["SecretAccessKey"],
            "region_name": TEST_CREDENTIALS["region_name"],
        }

    def require_credentials(self) -> None:
        """From now on, check each request's credentials as S3 does: a key no IAM user holds is refused
        with `InvalidAccessKeyId`, a wrong secret with `SignatureDoesNotMatch`, an action the user's
        policy does not allow with `AccessDenied` (moto otherwise accepts any key). For a server of a
        test's own: `TEST_CREDENTIALS` belong to no IAM user."""
        request = urllib.request.Request(  # not a form: moto reads the body as it is
            f"{self.endpoint_url}{MOTO_AUTH_PATH}", data=b"0", headers={"Content-Type": "text/plain"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


class ReservedPort:
    """A port on 127.0.0.1 that the kernel picked (a bind to port 0) and that stays this process's until `close()`.

    The socket is bound with SO_REUSEADDR and never listens, so connecting to the port is refused, no
    other bind to port 0 is given it, and a bind to it without SO_REUSEADDR fails. A server told the
    port binds it with SO_REUSEADDR (rustac, uvicorn and `socketserver` with `allow_reuse_address` do)
    and listens on it; once one listens, every other bind to the port fails. So the port can be handed
    to a server before it starts, kept across its restart, or stand for an endpoint where nothing listens.
    """

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((LOOPBACK, 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> "ReservedPort":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._socket.close()


class StacApi:
    """`rustac serve` of one collection and its items on 127.0.0.1 (in-memory backend).

    rustac writes the address it was given (`--addr`) into the links it answers with (next pages
    included), so it must be told its port before it starts: a `ReservedPort`, held until `stop()`.
    rustac supports collections, bbox/intersects, datetime and paging on POST /search; it ignores
    `sortby` and answers [] to `query`/`filter`, and GET /search with `collections` fails (500).
    """

    def __init__(self, collection: dict[str, Any], items: list[dict[str, Any]], work_dir: Path) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        collection_path = work_dir / "collection.json"
        items_path = work_dir / "items.json"
        collection_path.write_text(json.dumps(collection))
        items_path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
        self._port = ReservedPort()
        self.url = self._port.url
        self._log_path = work_dir / "rustac.log"
        with self._log_path.open("wb") as log:
            address = f"{LOOPBACK}:{self._port.port}"
            self._process = subprocess.Popen(
                [str(RUSTAC_BINARY), "serve", "--addr", address, str(collection_path), str(items_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_answering()

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + RUSTAC_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/collections", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"rustac serve at {self.url} did not start: {self._log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        self._process.terminate()
        wait_or_kill(self._process, 5)
        self._port.close()


if __name__ == "__main__" and sys.argv[1:] == ["s3"]:
    serve_s3()

"""The fault-injecting proxy: transparent forwarding, refused connections and each per-path fault."""

import errno
import http.client
import socket
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest

from tasks.testing.fault_proxy import FaultProxy
from tasks.testing.servers import TEST_CREDENTIALS, S3Server

BUCKET = "fault-proxy-test"
OBJECT_BYTES = 100_000
REFUSAL_S = 1.0
RELISTEN_WAIT_S = 5.0


@pytest.fixture
def uploaded_object(s3_server: S3Server, tmp_path: Path) -> tuple[str, bytes]:
    """A random 100 kB object in a public bucket, uploaded straight to S3: (key, content)."""
    content = np.random.default_rng(2).integers(0, 256, OBJECT_BYTES, dtype=np.uint8).tobytes()
    local = tmp_path / "object.bin"
    local.write_bytes(content)
    key = f"proxied/{tmp_path.name}/object.bin"
    s3_server.upload(local, s3_server.make_bucket(BUCKET), key)
    return key, content


def proxy_connection(proxy: FaultProxy) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(proxy.endpoint_url.removeprefix("http://"), timeout=10)


def request(
    proxy: FaultProxy, key: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, bytes, http.client.HTTPMessage]:
    """(status, body, headers) of one anonymous request through the proxy, errors included."""
    url = proxy.http_url(BUCKET, key)
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, method=method, headers=headers or {}), timeout=10
        ) as answer:
            return answer.status, answer.read(), answer.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers


def port_of(proxy: FaultProxy) -> int:
    return int(proxy.endpoint_url.rsplit(":", 1)[1])


def test_boto3_round_trip_through_the_proxy(fault_proxy: FaultProxy, s3_server: S3Server, tmp_path: Path) -> None:
    client = boto3.client("s3", endpoint_url=fault_proxy.endpoint_url, **TEST_CREDENTIALS)
    bucket = s3_server.make_bucket(BUCKET)
    content = b"uploaded through the proxy " * 1000
    key = f"boto3/{tmp_path.name}/object.bin"

    client.put_object(Bucket=bucket, Key=key, Body=content)
    assert client.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(content)
    ranged = client.get_object(Bucket=bucket, Key=key, Range="bytes=12-23")
    assert ranged["Body"].read() == content[12:24]
    assert ranged["ContentRange"] == f"bytes 12-23/{len(content)}"
    assert key in s3_server.keys(bucket)
    client.delete_object(Bucket=bucket, Key=key)
    assert key not in s3_server.keys(bucket)
    assert fault_proxy.requests(key) == 4


def test_signed_requests_keep_their_authorization(fault_proxy: FaultProxy, s3_server: S3Server) -> None:
    """The bucket has no public policy: the signed GET succeeds only because the proxy passed Authorization on."""
    closed_bucket = f"fault-proxy-closed-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server.endpoint_url, **TEST_CREDENTIALS).create_bucket(Bucket=closed_bucket)
    signed = boto3.client("s3", endpoint_url=fault_proxy.endpoint_url, **TEST_CREDENTIALS)
    signed.put_object(Bucket=closed_bucket, Key="secret.txt", Body=b"secret")

    assert signed.get_object(Bucket=closed_bucket, Key="secret.txt")["Body"].read() == b"secret"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(fault_proxy.http_url(closed_bucket, "secret.txt"), timeout=10)
    assert anonymous.value.code == 403


def test_keep_alive_reuses_one_connection(fault_proxy: FaultProxy, uploaded_object: tuple[str, bytes]) -> None:
    key, content = uploaded_object
    connection = proxy_connection(fault_proxy)
    sockets = []
    for first in (0, 5000, 90_000):
        connection.request("GET", f"/{BUCKET}/{key}", headers={"Range": f"bytes={first}-{first + 999}"})
        answer = connection.getresponse()
        assert (answer.status, answer.read()) == (206, content[first : first + 1000])
        assert not answer.will_close
        sockets.append(connection.sock)
    connection.close()
    assert sockets[0] is sockets[1] is sockets[2]


def test_refuse_for_drops_connections_refuses_then_listens_on_the_same_port(
    fault_proxy: FaultProxy, uploaded_object: tuple[str, bytes]
) -> None:
    """Refusing is checked under a refusal far longer than the test, so a slow machine cannot see it
    end early; a second `refuse_for` then replaces it, and no request may get through sooner than
    `REFUSAL_S` after it was asked for (the child starts its timer before answering, so a clock
    started once the answer is back would see the refusal a little shorter than it was)."""
    key, content = uploaded_object
    open_connection = proxy_connection(fault_proxy)
    open_connection.request("GET", f"/{BUCKET}/{key}")
    assert open_connection.getresponse().read() == content
    fault_proxy.reset_counters()

    fault_proxy.refuse_for(60)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        open_connection.request("GET", f"/{BUCKET}/{key}")
        open_connection.getresponse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port_of(fault_proxy)), timeout=1).close()
    assert fault_proxy.requests(key) == 0

    asked_at = time.monotonic()
    fault_proxy.refuse_for(REFUSAL_S)
    while True:
        try:
            status, body, _ = request(fault_proxy, key)
            break
        except urllib.error.URLError as error:
            assert isinstance(error.reason, ConnectionRefusedError)
            assert time.monotonic() - asked_at < REFUSAL_S + RELISTEN_WAIT_S, "the proxy did not listen again"
            time.sleep(0.05)
    assert time.monotonic() - asked_at >= REFUSAL_S
    assert (status, body) == (200, content)
    assert fault_proxy.requests(key) == 1


def test_refuse_for_zero_listens_again_at_once(fault_proxy: FaultProxy, uploaded_object: tuple[str, bytes]) -> None:
    key, content = uploaded_object
    fault_proxy.refuse_for(60)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port_of(fault_proxy)), timeout=1).close()
    fault_proxy.refuse_for(0)
    assert request(fault_proxy, key)[:2] == (200, content)


def test_while_refusing_the_port_stays_the_proxys(fault_proxy: FaultProxy, uploaded_object: tuple[str, bytes]) -> None:
    key, content = uploaded_object
    fault_proxy.refuse_for(60)
    with socket.socket() as other, pytest.raises(OSError) as taken:
        other.bind(("127.0.0.1", port_of(fault_proxy)))
    assert taken.value.errno == errno.EADDRINUSE, "another process could take the port of a refusing proxy"
    fault_proxy.refuse_for(0)
    assert request(fault_proxy, key)[:2] == (200, content)


def test_status_answers_s3_error_xml_to_any_method_for_its_count(
    fault_proxy: FaultProxy, uploaded_object: tuple[str, bytes]
) -> None:
    key, content = uploaded_object
    fault_proxy.status(key, 503, times=3)

    assert request(fault_proxy, key, method="HEAD")[0] == 503
    for _ in range(2):
        status, body, headers = request(fault_proxy, key)
        assert status == 503
        assert b"<Code>SlowDown</Code>" in body
        assert headers["Content-Type"] == "application/xml"
    assert request(fault_proxy, key)[:2] == (200, content)
    assert request(fault_proxy, "proxied/other-key")[0] == 404


def test_status_until_cleared_matches_a_path_part(fault_proxy: FaultProxy, uploaded_object: tuple[str, bytes]) -> None:
    key, content = uploaded_object
    fault_proxy.status("object.bin", 404)
    for _ in range(3):
        status, body, _ = request(fault_proxy, key)
        assert (status, b"<Code>NoSuchKey</Code>" in body) == (404, True)
    fault_proxy.clear()
    assert request(fault_proxy, key)[:2] == (200, content)


def test_truncate_object_answers_as_a_short_object(fault_proxy: FaultProxy, uploaded_object: tuple[str, bytes]) -> None:
    key, content = uploaded_object
    size = 30_000
    fault_proxy.truncate_object(key, size)

    status, _, headers = request(fault_proxy, key, method="HEAD")
    assert (status, headers["Content-Length"]) == (200, str(size))
    status, body, headers = request(fault_proxy, key)
    assert (status, body, headers["Content-Length"]) == (200, content[:size], str(size))
    status, body, headers = request(fault_proxy, key, headers={"Range": "bytes=29000-30999"})
    assert (status, body, headers["Content-Range"]) == (206, content[29_000:size], f"bytes 29000-29999/{size}")
    status, body, headers = request(fault_proxy, key, headers={"Range": "bytes=40000-40999"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{size}")
    assert b"<Error>" in body


def test_truncate_object_is_seen_by_boto3(fault_proxy: FaultProxy, uploaded_object: tuple[str, bytes]) -> None:
    key, content = uploaded_object
    fault_proxy.truncate_object(key, 1234)
    client = boto3.client("s3", endpoint_url=fault_proxy.endpoint_url, **TEST_CREDENTIALS)
    answer = client.get_object(Bucket=BUCKET, Key=key)
    assert (answer["ContentLength"], answer["Body"].read()) == (1234, content[:1234])


def test_short_ranges_send_half_of_each_range_past_the_offset_under_its_full_headers(
    fault_proxy: FaultProxy, uploaded_object: tuple[str, bytes]
) -> None:
    key, content = uploaded_object
    fault_proxy.short_ranges(key, 32_768)

    status, body, headers = request(fault_proxy, key, headers={"Range": "bytes=0-32767"})
    assert (status, body, headers["Content-Range"]) == (206, content[:32_768], f"bytes 0-32767/{OBJECT_BYTES}")
    status, body, headers = request(fault_proxy, key, headers={"Range": "bytes=40000-49999"})
    assert (status, body) == (206, content[40_000:45_000])
    assert (headers["Content-Range"], headers["Content-Length"]) == (f"bytes 40000-49999/{OBJECT_BYTES}", "5000")
    assert request(fault_proxy, key, method="HEAD")[2]["Content-Length"] == str(OBJECT_BYTES)
    assert request(fault_proxy, key)[:2] == (200, content)


def test_truncate_claiming_size_sends_what_is_held_under_the_full_size(
    fault_proxy: FaultProxy, uploaded_object: tuple[str, bytes]
) -> None:
    key, content = uploaded_object
    held = 40_000
    fault_proxy.truncate_claiming_size(key, held)

    assert request(fault_proxy, key, method="HEAD")[2]["Content-Length"] == str(OBJECT_BYTES)
    status, body, headers = request(fault_proxy, key, headers={"Range": "bytes=30000-49999"})
    assert (status, body, headers["Content-Range"]) == (206, content[30_000:held], f"bytes 30000-49999/{OBJECT_BYTES}")
    status, body, headers = request(fault_proxy, key, headers={"Range": "bytes=60000-60999"})
    assert (status, body, headers["Content-Range"]) == (206, b"", f"bytes 60000-60999/{OBJECT_BYTES}")
    assert request(fault_proxy, key)[:2] == (200, content[:held])
    client = boto3.client("s3", endpoint_url=fault_proxy.endpoint_url, **TEST_CREDENTIALS)
    assert client.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == OBJECT_BYTES
    ranged = client.get_object(Bucket=BUCKET, Key=key, Range="bytes=39000-40999")
    assert (ranged["ContentRange"], ranged["Body"].read()) == (f"bytes 39000-40999/{OBJECT_BYTES}", content[39_000:held])


def test_cut_body_sends_fewer_bytes_than_announced_then_closes(
    fault_proxy: FaultProxy, uploaded_object: tuple[str, bytes]
) -> None:
    key, content = uploaded_object
    fault_proxy.cut_body(key, 4096, times=1)
    connection = proxy_connection(fault_proxy)
    connection.request("GET", f"/{BUCKET}/{key}")
    answer = connection.getresponse()
    assert (answer.status, answer.getheader("Content-Length")) == (200, str(len(content)))
    with pytest.raises(http.client.IncompleteRead) as short:
        answer.read()
    assert short.value.partial == content[:4096]
    connection.close()
    assert request(fault_proxy, key)[:2] == (200, content)


def test_reset_body_resets_the_connection(fault_proxy: FaultProxy, uploaded_object: tuple[str, bytes]) -> None:
    key, content = uploaded_object
    fault_proxy.reset_body(key, 4096, times=1)
    received = b""
    with socket.create_connection(("127.0.0.1", port_of(fault_proxy)), timeout=10) as client:
        client.sendall(f"GET /{BUCKET}/{key} HTTP/1.1\r\nHost: proxy\r\n\r\n".encode())
        with pytest.raises(ConnectionResetError):
            while piece := client.recv(65536):
                received += piece
    assert received.startswith(b"HTTP/1.1 200")
    assert len(received.partition(b"\r\n\r\n")[2]) <= 4096
    assert request(fault_proxy, key)[:2] == (200, content)


def test_garbage_keeps_length_and_is_deterministic(fault_proxy: FaultProxy, uploaded_object: tuple[str, bytes]) -> None:
    key, content = uploaded_object
    fault_proxy.garbage(key, times=3)
    first_status, first_body, _ = request(fault_proxy, key)
    second_body = request(fault_proxy, key)[1]
    ranged_status, ranged_body, _ = request(fault_proxy, key, headers={"Range": "bytes=100-199"})

    assert (first_status, len(first_body)) == (200, len(content))
    assert first_body != content
    assert second_body == first_body
    assert (ranged_status, len(ranged_body)) == (206, 100)
    assert ranged_body != content[100:200]
    assert request(fault_proxy, key)[1] == content


def test_counters_count_every_method_by_path_part(fault_proxy: FaultProxy, uploaded_object: tuple[str, bytes]) -> None:
    key, _ = uploaded_object
    request(fault_proxy, key, method="HEAD")
    request(fault_proxy, key)
    request(fault_proxy, "proxied/missing.bin")
    assert fault_proxy.requests(key) == 2
    assert fault_proxy.requests("proxied/") == 3
    assert fault_proxy.requests("never-asked") == 0
    fault_proxy.reset_counters()
    assert fault_proxy.requests("proxied/") == 0

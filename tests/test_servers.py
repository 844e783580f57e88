"""The test servers themselves: S3 byte counting, fault injection, GDAL reads, rustac paging, and
ports no other process can take from them."""

import errno
import math
import os
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pystac_client import Client
from rasterio.windows import Window

from tasks.storage.gdal_env import gdal_env, gdal_path
from tasks.testing.dask_cluster import DaskCluster
from tasks.testing.prefect_server import PrefectServer
from tasks.testing.servers import ReservedPort, S3Server
from tasks.testing.synthetic import stac_collection

BUCKET = "servers-test"
TILED_BLOCK = 256
PORT_OPTIONS = ("--addr", "--port")
"""The options by which `rustac serve`, `prefect server start` and `dask scheduler` are told their port."""


def _get(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


@pytest.fixture
def uploaded_blob(s3_server: S3Server, tmp_path: Path) -> tuple[str, bytes]:
    """A random 100 kB object in a public bucket: (key, content)."""
    content = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    local = tmp_path / "blob.bin"
    local.write_bytes(content)
    key = f"counting/{tmp_path.name}/blob.bin"
    s3_server.upload(local, s3_server.make_bucket(BUCKET), key)
    s3_server.reset_counters()
    return key, content


@pytest.fixture
def uploaded_geotiff(s3_server: S3Server, tmp_path: Path) -> tuple[str, np.ndarray]:
    """A 1024 x 1024 uint16 tiled, uncompressed GeoTIFF in S3: (key, pixels)."""
    pixels = np.random.default_rng(1).integers(1, 10_000, (1024, 1024), dtype=np.uint16)
    local = tmp_path / "tiled.tif"
    profile = {
        "driver": "GTiff", "width": 1024, "height": 1024, "count": 1, "dtype": "uint16", "crs": "EPSG:32633",
        "transform": rasterio.transform.from_origin(500_000, 5_000_000, 10, 10), "tiled": True,
        "blockxsize": TILED_BLOCK, "blockysize": TILED_BLOCK,
    }  # fmt: skip
    with rasterio.open(local, "w", **profile) as dataset:
        dataset.write(pixels, 1)
    key = f"rasters/{tmp_path.name}/tiled.tif"
    s3_server.upload(local, s3_server.make_bucket(BUCKET), key)
    s3_server.reset_counters()
    return key, pixels


def test_environment_points_at_the_server(s3_server: S3Server) -> None:
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server.endpoint_url
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")


def test_counts_body_bytes_and_requests(s3_server: S3Server, uploaded_blob: tuple[str, bytes]) -> None:
    key, content = uploaded_blob
    url = s3_server.http_url(BUCKET, key)

    status, body, _ = _get(url)
    assert (status, body) == (200, content)
    assert s3_server.bytes_served() == len(content)

    status, body, _ = _get(url, headers={"Range": "bytes=1000-1999"})
    assert (status, body) == (206, content[1000:2000])
    assert s3_server.bytes_served() == len(content) + 1000
    assert s3_server.requests_for(key) == 2
    assert s3_server.requests_for("no-such-key") == 0

    s3_server.reset_counters()
    assert (s3_server.bytes_served(), s3_server.requests_for(key)) == (0, 0)


def test_anonymous_head_answers_like_s3(s3_server: S3Server, uploaded_blob: tuple[str, bytes]) -> None:
    key, content = uploaded_blob
    status, body, headers = _get(s3_server.http_url(BUCKET, key), method="HEAD")
    assert status == 200
    assert int(headers["Content-Length"]) == len(content)
    assert s3_server.bytes_served() == 0


def test_fail_next_then_recovers(s3_server: S3Server, uploaded_blob: tuple[str, bytes]) -> None:
    key, content = uploaded_blob
    url = s3_server.http_url(BUCKET, key)
    s3_server.fail_next("blob.bin", times=2, status=503)
    assert [_get(url)[0] for _ in range(3)] == [503, 503, 200]
    assert s3_server.requests_for(key) == 3

    s3_server.fail_next("other-object", times=1, status=500)
    assert _get(url)[0] == 200


def test_fail_always_until_cleared(s3_server: S3Server, uploaded_blob: tuple[str, bytes]) -> None:
    key, _ = uploaded_blob
    url = s3_server.http_url(BUCKET, key)
    s3_server.fail_always(key, status=500)
    assert [_get(url)[0] for _ in range(4)] == [500] * 4
    s3_server.clear_faults()
    assert _get(url)[0] == 200


def test_gdal_windowed_read_over_vsis3_fetches_a_fraction(
    s3_server: S3Server, uploaded_geotiff: tuple[str, np.ndarray]
) -> None:
    key, pixels = uploaded_geotiff
    window = Window(256, 512, TILED_BLOCK, TILED_BLOCK)
    with gdal_env(), rasterio.open(gdal_path(f"s3://{BUCKET}/{key}")) as dataset:
        read = dataset.read(1, window=window)
    np.testing.assert_array_equal(read, pixels[512:768, 256:512])
    one_block = TILED_BLOCK * TILED_BLOCK * 2
    assert one_block <= s3_server.bytes_served() < pixels.nbytes / 4
    assert s3_server.requests_for(key) >= 2


def test_gdal_reads_anonymous_http_href(s3_server: S3Server, uploaded_geotiff: tuple[str, np.ndarray]) -> None:
    key, pixels = uploaded_geotiff
    with gdal_env(), rasterio.open(gdal_path(s3_server.http_url(BUCKET, key))) as dataset:
        read = dataset.read(1, window=Window(0, 0, TILED_BLOCK, TILED_BLOCK))
    np.testing.assert_array_equal(read, pixels[:TILED_BLOCK, :TILED_BLOCK])
    assert s3_server.bytes_served() < pixels.nbytes / 4


def test_gdal_writes_a_cog_to_vsis3(s3_server: S3Server, tmp_path: Path) -> None:
    pixels = np.arange(512 * 512, dtype=np.uint16).reshape(512, 512)
    profile = {
        "driver": "COG", "width": 512, "height": 512, "count": 1, "dtype": "uint16", "crs": "EPSG:32633",
        "transform": rasterio.transform.from_origin(500_000, 5_000_000, 10, 10), "compress": "deflate",
        "blocksize": 256,
    }  # fmt: skip
    uri = f"s3://{s3_server.make_bucket(BUCKET)}/written/{tmp_path.name}/cog.tif"
    with gdal_env(GDAL_HTTP_TIMEOUT=10, GDAL_HTTP_MAX_RETRY=0):
        with rasterio.open(gdal_path(uri), "w", **profile) as dataset:
            dataset.write(pixels, 1)
        with rasterio.open(gdal_path(uri)) as dataset:
            np.testing.assert_array_equal(dataset.read(1), pixels)
            assert dataset.overviews(1)


def test_gdal_sees_injected_failures(s3_server: S3Server, uploaded_geotiff: tuple[str, np.ndarray]) -> None:
    key, _ = uploaded_geotiff
    s3_server.fail_always(key, status=503)
    with pytest.raises(rasterio.errors.RasterioIOError):
        with gdal_env(GDAL_HTTP_MAX_RETRY=0), rasterio.open(gdal_path(f"s3://{BUCKET}/{key}")) as dataset:
            dataset.read(1)


def _point_item(index: int) -> dict:
    longitude = 10.0 + index * 0.01
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": f"item-{index:02d}",
        "collection": "test-collection",
        "geometry": {"type": "Point", "coordinates": [longitude, 47.5]},
        "bbox": [longitude, 47.5, longitude, 47.5],
        "properties": {"datetime": f"2020-03-{index + 1:02d}T10:00:00Z"},
        "links": [],
        "assets": {},
    }


def test_stac_api_pages_through_all_items(stac_api_factory) -> None:
    items = [_point_item(index) for index in range(7)]
    url = stac_api_factory(stac_collection(items, "test-collection"), items)
    page_size = 3

    search = Client.open(url).search(collections=["test-collection"], bbox=[9, 47, 11, 48], limit=page_size)
    pages = list(search.pages_as_dicts())

    assert len(pages) == math.ceil(len(items) / page_size)
    assert sorted(feature["id"] for page in pages for feature in page["features"]) == [item["id"] for item in items]


def test_stac_api_filters_by_datetime_and_space(stac_api_factory) -> None:
    items = [_point_item(index) for index in range(7)]
    url = stac_api_factory(stac_collection(items, "test-collection"), items)
    search = Client.open(url).search(
        collections=["test-collection"], bbox=[10.015, 47, 11, 48], datetime="2020-03-01/2020-03-05"
    )
    assert sorted(item["id"] for item in search.items_as_dicts()) == ["item-02", "item-03", "item-04"]


def port_is_free(port: int) -> bool:
    """Whether another process could bind 127.0.0.1:`port` now (as a server does, without SO_REUSEADDR)."""
    with socket.socket() as other:
        try:
            other.bind(("127.0.0.1", port))
        except OSError as error:
            assert error.errno == errno.EADDRINUSE, error
            return False
    return True


@pytest.fixture
def launched_ports(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, bool]]:
    """(option, port, whether the port was free) of each program started with `PORT_OPTIONS` during the
    test, seen as it starts: a free port could be taken by another process before the program binds it."""
    launches: list[tuple[str, int, bool]] = []
    real_popen = subprocess.Popen

    def spying_popen(args: list[str], *more: object, **keywords: object) -> subprocess.Popen:
        for option in PORT_OPTIONS:
            if option in args:
                port = int(args[args.index(option) + 1].rsplit(":", 1)[-1])
                launches.append((option, port, port != 0 and port_is_free(port)))
        return real_popen(args, *more, **keywords)

    monkeypatch.setattr(subprocess, "Popen", spying_popen)
    return launches


def test_a_reserved_port_refuses_connections_and_no_other_socket_binds_it() -> None:
    with ReservedPort() as reserved:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", reserved.port), timeout=5).close()
        assert not port_is_free(reserved.port)
    assert port_is_free(reserved.port), "close() lets go of the port"


def test_rustac_is_started_on_a_port_no_other_process_can_take(
    stac_api_factory, launched_ports: list[tuple[str, int, bool]]
) -> None:
    items = [_point_item(index) for index in range(2)]
    url = stac_api_factory(stac_collection(items, "test-collection"), items)

    assert launched_ports == [("--addr", int(url.rsplit(":", 1)[1]), False)]
    assert Client.open(url).get_collection("test-collection").id == "test-collection"


@pytest.mark.slow
def test_a_prefect_server_keeps_its_port_across_a_restart(
    tmp_path: Path, launched_ports: list[tuple[str, int, bool]]
) -> None:
    with PrefectServer(tmp_path) as server, server.logs_on_failure():
        server.restart()
        with server.client() as client:
            assert client.api_healthcheck() is None
        port = int(server.api_url.removesuffix("/api").rsplit(":", 1)[1])

    assert launched_ports == [("--port", port, False), ("--port", port, False)], "free at a start: another process could take it"
    assert port_is_free(port), "stop() lets go of the port"


@pytest.mark.slow
def test_the_dask_scheduler_binds_a_port_of_the_kernels_choosing(
    tmp_path: Path, launched_ports: list[tuple[str, int, bool]]
) -> None:
    with DaskCluster(tmp_path, workers=1) as cluster:
        assert cluster.client.scheduler_info()["address"] == cluster.address
        assert cluster.address.startswith("tcp://127.0.0.1:") and not cluster.address.endswith(":0")

    assert launched_ports == [("--port", 0, False)]

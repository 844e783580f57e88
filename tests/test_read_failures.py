"""The read-failure classifier over the real GDAL 3.10 messages, as rasterio chains them.

The messages are those GDAL gave through a fault-injecting proxy (refused connections, S3 errors,
truncated, cut, short or garbage bodies, a host that does not resolve), at open and at read, over
/vsis3/ and /vsicurl/; the chains have the shapes rasterio builds: at open `RasterioIOError` with the
GDAL error as its context, at read `RasterioIOError("Read failed...")` caused by GDAL's
`IReadBlock`/`TIFFReadEncodedTile` errors. Where the bytes a short read missed are found, GDAL reads
a real file cut short and gives its own messages.
"""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio._err import (
    CPLE_AppDefinedError,
    CPLE_AWSAccessDeniedError,
    CPLE_AWSError,
    CPLE_AWSObjectNotFoundError,
    CPLE_HttpResponseError,
    CPLE_OpenFailedError,
)
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

import tasks.acquisition.read_failures
from tasks.acquisition.read_failures import (
    FIRST_BYTES,
    ByteRange,
    ProbeAnswer,
    classify_read_failure,
    failure_of_probe,
    missing_bytes,
    probe_object,
    tiff_extent,
    without_url_queries,
)
from tasks.core.retry import Failure

PATH = "/vsis3/scenes/S2B_29RKH_20200305_0_L2A/B08.tif"
HREF = "s3://scenes/S2B_29RKH_20200305_0_L2A/B08.tif"


def at_open(gdal_error: Exception) -> RasterioIOError:
    """rasterio's error for a failed open: GDAL's error is its context."""
    try:
        try:
            raise gdal_error
        except Exception:
            raise RasterioIOError(str(gdal_error)) from None
    except RasterioIOError as error:
        error.__context__ = gdal_error
        return error


def at_read(innermost: Exception) -> RasterioIOError:
    """rasterio's error for a failed block read: a cause chain ending in GDAL's own message."""
    tiff = CPLE_AppDefinedError(1, 1, "TIFFReadEncodedTile() failed.")
    tiff.__cause__ = innermost
    block = CPLE_AppDefinedError(1, 1, f"{PATH}, band 1: IReadBlock failed at X offset 0, Y offset 0: TIFFReadEncodedTile() failed.")
    block.__cause__ = tiff
    failed = RasterioIOError("Read failed. See previous exception for details.")
    failed.__cause__ = block
    return failed


NAMED = [
    ("refused at open", at_open(CPLE_HttpResponseError(11, 11, "CURL error: Failed to connect to 127.0.0.1 port 40111 after 0 ms: Could not connect to server")), True, "CURL error: Failed to connect"),
    ("404 at open, /vsis3/", at_open(CPLE_AWSObjectNotFoundError(13, 13, "The specified key does not exist.")), False, "not found (HTTP 404)"),
    ("403 at open, /vsis3/", at_open(CPLE_AWSAccessDeniedError(14, 14, "Access Denied")), False, "access denied (HTTP 403)"),
    ("500 at open, /vsis3/", at_open(CPLE_AWSError(17, 17, "We encountered an internal error. Please try again.")), True, "We encountered an internal error"),
    ("503 at open, /vsis3/", at_open(CPLE_AWSError(17, 17, "Please reduce your request rate.")), True, "Please reduce your request rate."),
    ("404 at open, /vsicurl/", at_open(CPLE_HttpResponseError(11, 11, "HTTP response code: 404 - Failure writing output to destination, passed 127 returned 0")), False, "not found (HTTP 404)"),
    ("503 at open, /vsicurl/", at_open(CPLE_HttpResponseError(11, 11, "HTTP response code: 503 - Failure writing output to destination, passed 125 returned 0")), True, "server error (HTTP 503)"),
    ("cached 403 on reopen", at_open(CPLE_HttpResponseError(11, 11, "HTTP response code: 403")), False, "access denied (HTTP 403)"),
    ("range past the end", at_read(CPLE_AppDefinedError(1, 1, '416: Range downloading not supported by this server: <?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidRange</Code></Error>')), False, "truncated: HTTP 416"),
    ("corrupt block", at_read(CPLE_AppDefinedError(1, 1, "ZIPDecode:Decoding error at scanline 0")), False, "corrupt: ZIPDecode:Decoding error"),
]  # fmt: skip
"""(case, rasterio error, transient, start of the reason): failures GDAL names itself; no probe."""

HIDDEN = [
    ("anything failed at read", at_read(CPLE_AppDefinedError(1, 1, "TIFFFillTile:Read error at row 4294967295, col 4294967295, tile 0; got 0 bytes, expected 95373"))),
    ("short block", at_read(CPLE_AppDefinedError(1, 1, "TIFFFillTile:Read error at row 0, col 0, tile 5; got 43829 bytes, expected 95502"))),
    ("not a TIFF, or a cached failure", at_open(CPLE_OpenFailedError(4, 4, f"'{PATH}' not recognized as being in a supported file format."))),
    ("cached failure after a refused open", at_open(CPLE_OpenFailedError(4, 4, f"'{PATH}' does not exist in the file system, and is not recognized as a supported dataset name."))),
    ("header cut short", at_read(CPLE_AppDefinedError(1, 1, "_TIFFPartialReadStripArray:Cannot read offset/size for strile around ~15"))),
    ("host does not resolve", at_open(CPLE_HttpResponseError(11, 11, "CURL error: Could not resolve host: assets.example.invalid"))),
]  # fmt: skip
"""(case, rasterio error): failures whose message does not tell the cause; the object is probed."""


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ByteRange]]:
    """Record probes (href, bytes asked) instead of sending them; a probe that is sent fails the test's expectation."""
    sent: list[tuple[str, ByteRange]] = []

    def probe(href: str, asked: ByteRange = FIRST_BYTES) -> ProbeAnswer:
        sent.append((href, asked))
        return ProbeAnswer(None, no_answer="no connection: [Errno 111] Connection refused", asked=asked)

    monkeypatch.setattr(tasks.acquisition.read_failures, "probe_object", probe)
    return sent


@pytest.mark.parametrize(("error", "transient", "reason"), [case[1:] for case in NAMED], ids=[case[0] for case in NAMED])
def test_failures_gdal_names_are_classified_without_a_probe(
    error: Exception, transient: bool, reason: str, probes: list[tuple[str, ByteRange]]
) -> None:
    failure = classify_read_failure(error, HREF, file_extent=122_388)
    assert failure.transient is transient and failure.reason.startswith(reason), failure
    assert probes == []


@pytest.mark.parametrize("error", [case[1] for case in HIDDEN], ids=[case[0] for case in HIDDEN])
def test_hidden_causes_are_decided_by_one_probe(error: Exception, probes: list[tuple[str, ByteRange]]) -> None:
    failure = classify_read_failure(error, HREF, file_extent=122_388)
    assert probes == [(HREF, FIRST_BYTES)]
    assert failure == Failure("no connection: [Errno 111] Connection refused", transient=True)


def test_a_short_block_is_probed_where_it_came_short(probes: list[tuple[str, ByteRange]]) -> None:
    short_block = at_read(CPLE_AppDefinedError(1, 1, "TIFFFillTile:Read error at row 0, col 0, tile 5; got 43829 bytes, expected 95502"))
    missed = ByteRange(61_194 + 43_829, 61_194 + 95_502 - 1)
    classify_read_failure(short_block, HREF, file_extent=122_388, missing=missed)
    assert probes == [(HREF, missed)]


TIFF_START = b"II*\x00"
MISSED = ByteRange(60_000, 99_999)
"""The bytes of a block a read did not get, which the probe asks for."""


@pytest.mark.parametrize(
    ("answer", "file_extent", "header_unreadable", "transient", "reason"),
    [
        (ProbeAnswer(None, no_answer="no connection: timed out"), 122_388, False, True, "no connection: timed out"),
        (ProbeAnswer(503), 122_388, False, True, "server error (HTTP 503)"),
        (ProbeAnswer(429), 122_388, False, True, "too many requests (HTTP 429)"),
        (ProbeAnswer(404), 122_388, False, False, "not found (HTTP 404)"),
        (ProbeAnswer(403), 122_388, False, False, "access denied (HTTP 403)"),
        (ProbeAnswer(416), None, False, False, "truncated: the object is empty"),
        (ProbeAnswer(206, 122_388, b"\x8f\x02\x11x"), 122_388, False, False, "not a GeoTIFF (it starts with b'\\x8f\\x02\\x11x')"),
        (ProbeAnswer(206, 61_194, TIFF_START), 122_388, False, False, "truncated at byte 61194 (its tile index reaches byte 122388)"),
        (ProbeAnswer(206, 1_000, TIFF_START), None, True, False, "truncated at byte 1000: shorter than the header GDAL reads at open"),
        (ProbeAnswer(206, 122_388, TIFF_START), 122_388, False, True, "the read failed in transit; the object answers now"),
        (ProbeAnswer(206, 8_000, TIFF_START), None, False, True, "the read failed in transit; the object answers now"),
        (ProbeAnswer(None, no_answer="host assets.example.invalid does not resolve (DNS)", name_not_found=True), None, False,
         False, "host assets.example.invalid does not resolve (DNS)"),
        (ProbeAnswer(206, 122_388, bytes(20_000), asked=MISSED), 122_388, False, False,
         "truncated: 20000 of the 40000 bytes at 60000-99999 arrived, twice (the object claims 122388 bytes)"),
        (ProbeAnswer(206, 122_388, b"", asked=MISSED), 122_388, False, False,
         "truncated: 0 of the 40000 bytes at 60000-99999 arrived, twice (the object claims 122388 bytes)"),
        (ProbeAnswer(416, 61_194, asked=MISSED), 122_388, False, False, "truncated at byte 61194 (its tile index reaches byte 122388)"),
        (ProbeAnswer(416, asked=MISSED), 122_388, False, False, "truncated: HTTP 416 for bytes 60000-99999 that its tile index names"),
        (ProbeAnswer(206, 122_388, bytes(40_000), asked=MISSED), 122_388, False, True, "the read failed in transit; the object answers now"),
        (ProbeAnswer(None, no_answer="the answer was cut in transit (1000 of 40000 bytes)", asked=MISSED), 122_388, False,
         True, "the answer was cut in transit (1000 of 40000 bytes)"),
    ],
    ids=["unreachable", "busy", "throttled", "missing", "forbidden", "empty", "garbage", "truncated", "header truncated",
         "cut in transit", "small file cut in transit", "host unknown to DNS", "short range", "claimed size not held",
         "range past a truncated end", "range past the end", "block answers now", "probe cut in transit"],
)  # fmt: skip
def test_the_probe_answer_decides(
    answer: ProbeAnswer, file_extent: int | None, header_unreadable: bool, transient: bool, reason: str
) -> None:
    assert failure_of_probe(answer, file_extent, header_unreadable) == Failure(reason, transient)


def test_reasons_never_carry_url_signatures() -> None:
    signed = "HTTP error code: 503 - https://example.blob.core.windows.net/s2/B08.tif?sv=2021&sig=SECRET. Retrying"
    assert without_url_queries(signed) == "HTTP error code: 503 - https://example.blob.core.windows.net/s2/B08.tif Retrying"


@pytest.fixture(scope="module")
def cog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1024 x 1024 COG of noise in 256 px blocks, with overviews (stored before the full resolution)."""
    pixels = np.random.default_rng(0).integers(1, 10_000, (1, 1024, 1024), dtype=np.uint16)
    path = tmp_path_factory.mktemp("cog") / "noise.tif"
    profile = {
        "driver": "COG", "width": 1024, "height": 1024, "count": 1, "dtype": "uint16", "blocksize": 256,
        "compress": "deflate", "crs": "EPSG:32633", "transform": Affine(10, 0, 500_000, 0, -10, 5_000_000),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as target:
        target.write(pixels)
    return path


@pytest.mark.parametrize(
    ("level", "column", "row", "read"),
    [(None, 2, 1, {"window": Window(512, 256, 256, 256)}), (0, 1, 1, {"out_shape": (1, 512, 512)})],
    ids=["full resolution", "overview"],
)
def test_the_bytes_a_short_block_read_missed_are_found_in_the_tile_index(
    level: int | None, column: int, row: int, read: dict, cog: Path, tmp_path: Path
) -> None:
    with rasterio.open(cog) as intact:
        offset = int(intact.get_tag_item(f"BLOCK_OFFSET_{column}_{row}", "TIFF", bidx=1, ovr=level))
        size = int(intact.get_tag_item(f"BLOCK_SIZE_{column}_{row}", "TIFF", bidx=1, ovr=level))
    cut_at = offset + size // 3
    cut = tmp_path / "cut.tif"
    cut.write_bytes(cog.read_bytes()[:cut_at])
    with rasterio.open(cut) as source:
        with pytest.raises(RasterioIOError) as failed:
            source.read(1, **read)
        missed, extent = missing_bytes(failed.value, source), tiff_extent(source)
    assert missed == ByteRange(cut_at, offset + size - 1)
    assert classify_read_failure(failed.value, str(cut), extent, missed) == Failure(
        f"truncated at byte {cut_at} (its tile index reaches byte {extent})", transient=False
    )


@pytest.mark.parametrize("scheme", ["http", "s3"])
def test_a_host_dns_does_not_know_is_a_permanent_probe_answer(
    scheme: str, unresolvable_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{unresolvable_host}:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # credentials from the environment: boto3 asks nothing else
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    href = f"http://{unresolvable_host}/scenes/B08.tif" if scheme == "http" else "s3://scenes/B08.tif"
    answer = probe_object(href)
    assert (answer.status, answer.name_not_found) == (None, True)
    assert failure_of_probe(answer) == Failure(f"host {unresolvable_host} does not resolve (DNS)", transient=False)

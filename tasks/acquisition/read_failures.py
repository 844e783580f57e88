"""Why a scene asset could not be read, and whether another attempt can fix it.

`classify_read_failure(error, href)` looks at the whole error chain rasterio raised and answers a
`Failure` with a one-line reason. What GDAL 3.10 says (catalogued against a fault-injecting proxy):

- At open it names most failures: `CPLE_AWSObjectNotFoundError`, `CPLE_AWSAccessDeniedError`,
  `CURL error: Failed to connect ...`, an S3 message such as "Please reduce your request rate.",
  `HTTP response code: 404 - ...` (over /vsicurl/).
- At read it names a range past the object's end (`416: Range downloading not supported`) and a
  corrupt block (`ZIPDecode:Decoding error`).
- Otherwise it hides the cause: a refused connection, an S3 error, a body cut in transit, a missing
  object, an object truncated on the store and a server that answers a range with fewer bytes than
  asked (a short 206, a store claiming bytes it does not hold) all end in `got N bytes, expected M`
  at read; after a failed attempt GDAL's cache makes a reopen say "not recognized as being in a
  supported file format" or "does not exist in the file system" without asking the server.
- A host that does not resolve is `CURL error: Could not resolve host: <name>`, the same whether DNS
  said the name does not exist or did not answer.

When the chain does not tell, the object is asked for directly (`probe_object`: one request) and the
answer decides. The probe asks where the read failed: GDAL names the block that came short
(`IReadBlock failed at X offset C, Y offset R`) and libtiff how many of its bytes arrived (`got N
bytes, expected M`), the file's own tile index (`BLOCK_OFFSET_*`/`BLOCK_SIZE_*`) places the block,
and the probe asks for the bytes the read missed (`missing_bytes`); otherwise it asks for the first
bytes. No answer or HTTP 5xx is transient; a host name DNS says does not exist, 404 and 403
permanent; first bytes that are not a TIFF header "not a GeoTIFF"; an object shorter than its own
tile index reaches (`tiff_extent`) truncated; a complete answer with fewer bytes than asked truncated,
as the read met the same short answer; an answer cut short of its own Content-Length, or an object
that answers well now, failed in transit (transient). So a permanently broken asset costs one
attempt: its failing request, and at most the probe. URLs in reasons lose their query strings, so
signed URLs never reach metadata.json or Slack.
"""

import http.client
import math
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from rasterio.io import DatasetReader

from tasks.core.errors import error_chain, first_line, name_not_found
from tasks.core.retry import Failure
from tasks.storage.gdal_env import INGESTED_BYTES_AT_OPEN

__all__ = [
    "FIRST_BYTES",
    "ByteRange",
    "ProbeAnswer",
    "classify_read_failure",
    "failure_of_probe",
    "missing_bytes",
    "probe_object",
    "tiff_extent",
    "without_url_queries",
]

PROBE_TIMEOUT_S = 15
PROBE_BYTES = 4
"""Without a failing range the probe asks for the first bytes of the object: enough for the TIFF signature."""
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
"""Little- and big-endian TIFF, then BigTIFF."""
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
STATUS_NAMES = {401: "access denied", 403: "access denied", 404: "not found", 408: "timed out", 410: "gone", 429: "too many requests"}

PERMANENT_BY_TYPE = {
    "CPLE_AWSObjectNotFoundError": "not found (HTTP 404)",
    "CPLE_AWSBucketNotFoundError": "bucket not found",
    "CPLE_AWSAccessDeniedError": "access denied (HTTP 403)",
    "CPLE_AWSInvalidCredentialsError": "credentials refused",
    "CPLE_AWSSignatureDoesNotMatchError": "credentials refused (signature does not match)",
}
"""GDAL's error classes that name a permanent failure, with the reason to record."""
HTTP_STATUS = re.compile(r"HTTP (?:response|error) code(?: on \S+)?\s*:\s*(\d{3})", re.IGNORECASE)
RANGE_PAST_END = re.compile(r"\b416: Range downloading not supported")
TRANSIENT_MESSAGE = re.compile(
    r"CURL error|could not connect|connection (?:refused|reset|closed|aborted)|timed? ?out|"
    r"please try again|reduce your request rate|slow ?down|service unavailable",
    re.IGNORECASE,
)
"""Messages of failures in transport or of a busy server, as GDAL passes them on."""
HEADER_UNREADABLE = re.compile(r"Cannot read offset/size for strile")
SHORT_BLOCK_PLACE = re.compile(
    r"(?:band (?P<band>\d+): )?IReadBlock failed at X offset (?P<column>\d+), Y offset (?P<row>\d+)"
)
"""GDAL's message for a block it could not read: the band (none in an overview), the block's column and row."""
SHORT_TILE = re.compile(r"got (?P<received>\d+) bytes, expected (?P<expected>\d+)")
"""libtiff's message for a tile whose bytes came short: how many arrived, and its size."""
UNRESOLVED_HOST = re.compile(r"Could not resolve (?:host|proxy)")
"""curl's message for a name it could not resolve: the probe's own lookup tells whether DNS said the
name does not exist (permanent) or did not answer (transient)."""
CORRUPT_BLOCK = re.compile(r"Decoding error|decode|decompress|inflate", re.IGNORECASE)
URL_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")


@dataclass(frozen=True)
class ByteRange:
    """Bytes `first` to `last` of an object, both included, as an HTTP Range names them."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def header(self) -> str:
        """The value of the Range header asking for these bytes."""
        return f"bytes={self.first}-{self.last}"


FIRST_BYTES = ByteRange(0, PROBE_BYTES - 1)


@dataclass(frozen=True)
class ProbeAnswer:
    """What the server said when asked for the bytes `asked` of an object.

    `status` is None when no whole answer came (`no_answer` says why; `name_not_found`: DNS said the
    host does not exist); `size` is the object's length in bytes from Content-Range, when the server
    gave it; `body` holds the bytes the answer carried, at most `asked.length` of them.
    """

    status: int | None
    size: int | None = None
    body: bytes = b""
    no_answer: str = ""
    asked: ByteRange = FIRST_BYTES
    name_not_found: bool = False


def without_url_queries(text: str) -> str:
    """`text` with the query string of every URL removed (signatures, tokens)."""
    return URL_QUERY.sub(r"\1", text)


def classify_read_failure(
    error: BaseException, href: str, file_extent: int | None = None, missing: ByteRange | None = None
) -> Failure:
    """Whether a failed open or read of the asset at `href` is transient, and why, in one line.

    `file_extent` is where the file's own tile index says its last block ends (`tiff_extent`), when
    the file had opened: an object shorter than that is truncated. `missing` are the bytes the read
    asked for and did not get (`missing_bytes`), when GDAL tells: the probe asks for them.
    """
    links = list(error_chain(error))
    text = without_url_queries(" | ".join(str(link) for link in links))
    for link in links:
        if reason := PERMANENT_BY_TYPE.get(type(link).__name__):
            return Failure(reason, transient=False)
    if RANGE_PAST_END.search(text):
        return Failure("truncated: HTTP 416 for a range past the object's end", transient=False)
    if status := _http_status(text):
        return failure_of_status(status)
    if TRANSIENT_MESSAGE.search(text) and not UNRESOLVED_HOST.search(text):
        return Failure(_innermost_line(links), transient=True)
    if CORRUPT_BLOCK.search(text):
        return Failure(f"corrupt: {_innermost_line(links)}", transient=False)
    answer = probe_object(href, missing or FIRST_BYTES)
    return failure_of_probe(answer, file_extent, header_unreadable=bool(HEADER_UNREADABLE.search(text)))


def _innermost_line(links: Sequence[BaseException]) -> str:
    return without_url_queries(first_line(links[-1]))


def _http_status(text: str) -> int | None:
    match = HTTP_STATUS.search(text)
    return int(match.group(1)) if match else None


def failure_of_status(status: int) -> Failure:
    """The failure an HTTP error status means: 408/429/5xx transient, any other permanent."""
    transient = status in TRANSIENT_HTTP_STATUSES or status >= 500
    name = STATUS_NAMES.get(status, "server error" if status >= 500 else "refused")
    return Failure(f"{name} (HTTP {status})", transient=transient)


def failure_of_probe(answer: ProbeAnswer, file_extent: int | None = None, header_unreadable: bool = False) -> Failure:
    """What a probe's answer says of an object whose read failed for a reason GDAL did not name.

    An object shorter than its tile index reaches (`file_extent`) is truncated. `header_unreadable`:
    GDAL could not read the tile index itself; then an object shorter than what GDAL reads at open is
    truncated. A complete answer with fewer bytes than asked repeats the read's short answer: the
    server does not hold, or does not send, what the file needs. Otherwise a short block arrived cut
    short in transit.
    """
    asked = answer.asked
    if answer.status is None:
        return Failure(answer.no_answer, transient=not answer.name_not_found)
    if answer.size is not None and file_extent is not None and answer.size < file_extent:
        return Failure(f"truncated at byte {answer.size} (its tile index reaches byte {file_extent})", transient=False)
    if answer.status == 416:
        if asked.first == 0:  # not even the first bytes exist
            return Failure("truncated: the object is empty", transient=False)
        return Failure(f"truncated: HTTP 416 for bytes {asked.first}-{asked.last} that its tile index names", transient=False)
    if answer.status >= 300:
        return failure_of_status(answer.status)
    if asked.first == 0 and not answer.body.startswith(TIFF_SIGNATURES):
        return Failure(f"not a GeoTIFF (it starts with {answer.body[:PROBE_BYTES]!r})", transient=False)
    if header_unreadable and answer.size is not None and answer.size < INGESTED_BYTES_AT_OPEN:
        return Failure(f"truncated at byte {answer.size}: shorter than the header GDAL reads at open", transient=False)
    if answer.status == 206 and len(answer.body) < asked.length:
        claimed = f" (the object claims {answer.size} bytes)" if answer.size is not None else ""
        arrived = f"{len(answer.body)} of the {asked.length} bytes at {asked.first}-{asked.last}"
        return Failure(f"truncated: {arrived} arrived, twice{claimed}", transient=False)
    return Failure("the read failed in transit; the object answers now", transient=True)


def probe_object(href: str, asked: ByteRange = FIRST_BYTES) -> ProbeAnswer:
    """Ask for the bytes `asked` of the object at `href` (s3://, http(s):// or a local path): one request."""
    if href.startswith("s3://"):
        return _probe_s3(href, asked)
    if href.startswith(("http://", "https://")):
        return _probe_http(href, asked)
    try:
        with open(href, "rb") as local_file:
            local_file.seek(asked.first)
            body = local_file.read(asked.length)
            return ProbeAnswer(206, os.fstat(local_file.fileno()).st_size, body, asked=asked)
    except OSError as error:
        return ProbeAnswer(404 if isinstance(error, FileNotFoundError) else 403, asked=asked)


def _total_size(content_range: str | None) -> int | None:
    """The object length of a `Content-Range: bytes 0-3/441474` (or `bytes */441474`) header."""
    total = (content_range or "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


def _received(
    status: int, body: bytes, declared_length: int | None, content_range: str | None, asked: ByteRange
) -> ProbeAnswer:
    """The probe's answer once its body is read: a body short of its own Content-Length was cut in transit."""
    if declared_length is not None and len(body) < min(declared_length, asked.length):
        cut = f"the answer was cut in transit ({len(body)} of {declared_length} bytes)"
        return ProbeAnswer(None, no_answer=cut, asked=asked)
    return ProbeAnswer(status, _total_size(content_range), body, asked=asked)


def _no_answer(error: BaseException, host: str, asked: ByteRange, cause: BaseException | None = None) -> ProbeAnswer:
    """No answer came: DNS said `host` does not exist (permanent for the run), or the request failed on its way.

    `cause`: the failure under `error` when its chain does not lead there."""
    if name_not_found(error) or (cause is not None and name_not_found(cause)):
        return ProbeAnswer(None, no_answer=f"host {host} does not resolve (DNS)", asked=asked, name_not_found=True)
    reason = getattr(error, "reason", error)
    return ProbeAnswer(None, no_answer=without_url_queries(f"no connection: {reason}"), asked=asked)


def _probe_s3(href: str, asked: ByteRange) -> ProbeAnswer:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = href.removeprefix("s3://").partition("/")
    client = boto3.client(
        "s3",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=PROBE_TIMEOUT_S, read_timeout=PROBE_TIMEOUT_S),
    )
    try:
        answer = client.get_object(Bucket=bucket, Key=key, Range=asked.header)
        body = answer["Body"].read(asked.length)
    except ClientError as refusal:
        metadata = refusal.response.get("ResponseMetadata", {})
        content_range = metadata.get("HTTPHeaders", {}).get("content-range")
        return ProbeAnswer(metadata.get("HTTPStatusCode", 0), _total_size(content_range), asked=asked)
    except BotoCoreError as no_answer:
        host = urlsplit(client.meta.endpoint_url).hostname or client.meta.endpoint_url
        # botocore re-raises a failed connection after its retry handler, so the chain leads to whatever
        # was being handled then (the read's own error); it keeps the connection's error in `kwargs`.
        cause = no_answer.kwargs.get("error")
        return _no_answer(no_answer, host, asked, cause if isinstance(cause, BaseException) else None)
    status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode", 200)
    return _received(status, body, answer.get("ContentLength"), answer.get("ContentRange"), asked)


def _probe_http(href: str, asked: ByteRange) -> ProbeAnswer:
    request = urllib.request.Request(href, headers={"Range": asked.header})
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as answer:
            declared_length = answer.headers.get("Content-Length")
            return _received(
                answer.status,
                answer.read(asked.length),
                int(declared_length) if declared_length and declared_length.isdigit() else None,
                answer.headers.get("Content-Range"),
                asked,
            )
    except urllib.error.HTTPError as refusal:
        return ProbeAnswer(refusal.code, _total_size(refusal.headers.get("Content-Range")), asked=asked)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as no_answer:
        cause = getattr(no_answer, "reason", None)  # urllib's URLError wraps the socket's error
        host = urlsplit(href).hostname or href
        return _no_answer(no_answer, host, asked, cause if isinstance(cause, BaseException) else None)


def tiff_extent(source: DatasetReader) -> int | None:
    """The byte where the last block of an open GeoTIFF ends, by its own tile index (every band and
    overview); None when GDAL does not tell (another format)."""
    extent = 0
    for band in range(1, source.count + 1):
        block_height, block_width = source.block_shapes[band - 1]
        levels = [(None, source.height, source.width)] + [
            (level, math.ceil(source.height / factor), math.ceil(source.width / factor))
            for level, factor in enumerate(source.overviews(band))
        ]
        for level, height, width in levels:
            for row in range(math.ceil(height / block_height)):
                for column in range(math.ceil(width / block_width)):
                    block = _block_bytes(source, band, level, column, row)
                    if block is None:
                        return None
                    extent = max(extent, block.last + 1)
    return extent


def missing_bytes(error: BaseException, source: DatasetReader) -> ByteRange | None:
    """The bytes of a block that a failed read of the open GeoTIFF `source` asked for and did not get.

    GDAL names the block by its column and row (`IReadBlock failed at X offset 1, Y offset 1`, with
    `band N:` before it except in an overview), libtiff how many of its bytes arrived and its size
    (`tile 4; got 367921 bytes, expected 389358`); the block is the one at that place, in the full
    resolution or an overview, that has that size by the file's tile index. None when the error
    names no short block, or the tile index does not place it.
    """
    text = " | ".join(str(link) for link in error_chain(error))
    place, short = SHORT_BLOCK_PLACE.search(text), SHORT_TILE.search(text)
    if place is None or short is None:
        return None
    column, row = int(place.group("column")), int(place.group("row"))
    received, expected = int(short.group("received")), int(short.group("expected"))
    bands = [int(place.group("band"))] if place.group("band") else range(1, source.count + 1)
    for band in bands:
        for level in [None, *range(len(source.overviews(band)))]:
            block = _block_bytes(source, band, level, column, row)
            if block is not None and block.length == expected and received < expected:
                return ByteRange(block.first + received, block.last)
    return None


def _block_bytes(source: DatasetReader, band: int, level: int | None, column: int, row: int) -> ByteRange | None:
    """Where a block lies in the file, by the file's tile index; None when GDAL does not tell."""
    offset = source.get_tag_item(f"BLOCK_OFFSET_{column}_{row}", "TIFF", bidx=band, ovr=level)
    size = source.get_tag_item(f"BLOCK_SIZE_{column}_{row}", "TIFF", bidx=band, ovr=level)
    if offset is None or size is None:
        return None
    return ByteRange(int(offset), int(offset) + int(size) - 1)

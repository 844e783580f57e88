"""Why a scene asset could not be read, and whether another attempt can fix it.

`classify_read_failure(error, href)` looks at the whole error chain rasterio raised and answers a
`Failure` with a one-line reason. What GDAL 3.10 says (catalogued against a fault-injecting proxy):

- At open it names most failures: `CPLE_AWSObjectNotFoundError`, `CPLE_AWSAccessDeniedError`,
  `CURL error: Failed to connect ...`, an S3 message such as "Please reduce your request rate.",
  `HTTP response code: 404 - ...` (over /vsicurl/).
- At read it names a range past the object's end (`416: Range downloading not supported`) and a
  corrupt block (`ZIPDecode:Decoding error`).
- Otherwise it hides the cause: a refused connection, an S3 error, a body cut in transit, a missing
  object and an object truncated on the store all end in `got N bytes, expected M` at read; after a
  failed attempt GDAL's cache makes a reopen say "not recognized as being in a supported file
  format" or "does not exist in the file system" without asking the server.

When the chain does not tell, the object is asked for directly (`probe_object`: one request for its
first bytes) and the answer decides: unreachable or HTTP 5xx is transient, 404/403 permanent, bytes
that are not a TIFF header "not a GeoTIFF", an object shorter than its own tile index reaches
(`tiff_extent`) truncated, and an object that answers well now failed in transit (transient). So a permanently broken asset costs one
attempt: its failing request, and at most the probe. URLs in reasons lose their query strings, so
signed URLs never reach metadata.json or Slack.
"""

import math
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from rasterio.io import DatasetReader

from tasks.errors import error_chain, first_line
from tasks.gdal_env import INGESTED_BYTES_AT_OPEN
from tasks.retry import Failure

__all__ = [
    "ProbeAnswer",
    "classify_read_failure",
    "failure_of_probe",
    "probe_object",
    "tiff_extent",
    "without_url_queries",
]

PROBE_TIMEOUT_S = 15
PROBE_BYTES = 4
"""The probe asks for the first bytes of the object: enough for the TIFF signature."""
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
CORRUPT_BLOCK = re.compile(r"Decoding error|decode|decompress|inflate", re.IGNORECASE)
URL_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")


@dataclass(frozen=True)
class ProbeAnswer:
    """What the server said when asked for the first bytes of an object.

    `status` is None when no answer came (`no_answer` says why); `size` is the object's length in
    bytes from Content-Range, when the server gave it.
    """

    status: int | None
    size: int | None = None
    first_bytes: bytes = b""
    no_answer: str = ""


def without_url_queries(text: str) -> str:
    """`text` with the query string of every URL removed (signatures, tokens)."""
    return URL_QUERY.sub(r"\1", text)


def classify_read_failure(error: BaseException, href: str, file_extent: int | None = None) -> Failure:
    """Whether a failed open or read of the asset at `href` is transient, and why, in one line.

    `file_extent` is where the file's own tile index says its last block ends (`tiff_extent`), when
    the file had opened: an object shorter than that is truncated.
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
    if TRANSIENT_MESSAGE.search(text):
        return Failure(_innermost_line(links), transient=True)
    if CORRUPT_BLOCK.search(text):
        return Failure(f"corrupt: {_innermost_line(links)}", transient=False)
    return failure_of_probe(probe_object(href), file_extent, header_unreadable=bool(HEADER_UNREADABLE.search(text)))


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
    truncated. Otherwise a short block arrived cut short in transit.
    """
    if answer.status is None:
        return Failure(answer.no_answer, transient=True)
    if answer.status == 416:  # not even the first bytes exist
        return Failure("truncated: the object is empty", transient=False)
    if answer.status >= 300:
        return failure_of_status(answer.status)
    if not answer.first_bytes.startswith(TIFF_SIGNATURES):
        return Failure(f"not a GeoTIFF (it starts with {answer.first_bytes!r})", transient=False)
    if answer.size is not None and file_extent is not None and answer.size < file_extent:
        return Failure(f"truncated at byte {answer.size} (its tile index reaches byte {file_extent})", transient=False)
    if header_unreadable and answer.size is not None and answer.size < INGESTED_BYTES_AT_OPEN:
        return Failure(f"truncated at byte {answer.size}: shorter than the header GDAL reads at open", transient=False)
    return Failure("the read failed in transit; the object answers now", transient=True)


def probe_object(href: str) -> ProbeAnswer:
    """Ask for the first `PROBE_BYTES` of the object at `href` (s3:// or http(s)://): one request."""
    if href.startswith("s3://"):
        return _probe_s3(href)
    if href.startswith(("http://", "https://")):
        return _probe_http(href)
    try:
        with open(href, "rb") as local_file:
            return ProbeAnswer(200, first_bytes=local_file.read(PROBE_BYTES))
    except OSError as error:
        return ProbeAnswer(404 if isinstance(error, FileNotFoundError) else 403)


def _total_size(content_range: str | None) -> int | None:
    """The object length of a `Content-Range: bytes 0-3/441474` header."""
    total = (content_range or "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


def _probe_s3(href: str) -> ProbeAnswer:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = href.removeprefix("s3://").partition("/")
    client = boto3.client(
        "s3",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=PROBE_TIMEOUT_S, read_timeout=PROBE_TIMEOUT_S),
    )
    try:
        answer = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{PROBE_BYTES - 1}")
    except ClientError as refusal:
        return ProbeAnswer(refusal.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    except BotoCoreError as no_answer:
        return ProbeAnswer(None, no_answer=without_url_queries(first_line(no_answer)))
    return ProbeAnswer(200, _total_size(answer.get("ContentRange")), answer["Body"].read())


def _probe_http(href: str) -> ProbeAnswer:
    request = urllib.request.Request(href, headers={"Range": f"bytes=0-{PROBE_BYTES - 1}"})
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as answer:
            return ProbeAnswer(answer.status, _total_size(answer.headers.get("Content-Range")), answer.read(PROBE_BYTES))
    except urllib.error.HTTPError as refusal:
        return ProbeAnswer(refusal.code)
    except (urllib.error.URLError, OSError) as no_answer:
        reason = getattr(no_answer, "reason", no_answer)
        return ProbeAnswer(None, no_answer=without_url_queries(f"no connection: {reason}"))


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
                    offset = source.get_tag_item(f"BLOCK_OFFSET_{column}_{row}", "TIFF", bidx=band, ovr=level)
                    size = source.get_tag_item(f"BLOCK_SIZE_{column}_{row}", "TIFF", bidx=band, ovr=level)
                    if offset is None or size is None:
                        return None
                    extent = max(extent, int(offset) + int(size))
    return extent

"""The one place where GDAL is configured for reading and writing remote Cloud Optimized GeoTIFFs.

S3-compatible stores are reached through the standard AWS variables that boto3 also reads:
credentials from the usual chain, and `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`) for a store
other than AWS, translated here into GDAL's own endpoint options.
"""

import functools
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import rasterio
from rasterio.session import Session

__all__ = [
    "INGESTED_BYTES_AT_OPEN",
    "REMOTE_COG_OPTIONS",
    "environment_session",
    "gdal_env",
    "gdal_path",
    "s3_endpoint_options",
]

INGESTED_BYTES_AT_OPEN = 32 * 1024
"""Bytes of a COG read by the first request at open: its header, and the first tile of a small file.
GDAL's default (16 KB) makes it read again just past it before the first tile (measured: a one-tile
COG took 3 requests, now 2; a file that is no TIFF 2, now 1)."""

CURL_CACHE_BYTES = 128 * 1024 * 1024
"""GDAL's process-wide cache of fetched COG bytes. It holds the COG blocks a tile shares with the next
one its process builds (a tile edge across a block, the masker's halo); a tile row later they are gone
whatever its size, and every megabyte of it is memory each worker keeps."""

REMOTE_COG_OPTIONS: Mapping[str, str | int] = {
    # Opening a COG must not list its directory: one request per file, not one per sibling.
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.vrt",
    # No retry inside GDAL: the asset reader (tasks/acquisition/read.py) is the one layer that retries a read.
    "GDAL_HTTP_MAX_RETRY": 0,
    "GDAL_HTTP_TIMEOUT": 60,
    "GDAL_HTTP_CONNECTTIMEOUT": 15,
    # Ranges one after another: a failing read stops at its first failed request, and what was
    # fetched stays in GDAL's process-wide cache (below) for the next window of the same file.
    "GDAL_INGESTED_BYTES_AT_OPEN": INGESTED_BYTES_AT_OPEN,
    "GDAL_HTTP_MULTIRANGE": "SERIAL",
    "CPL_VSIL_CURL_CACHE_SIZE": CURL_CACHE_BYTES,
    "GDAL_HTTP_VERSION": 2,
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": 64 * 1024 * 1024,
    # Decoded blocks: reads already fetch each byte once through the cache above, so this only saves
    # decoding a block twice at the edge of two read windows; small, so memory does not grow with the AOI.
    "GDAL_CACHEMAX": 64,
    # Writing a GeoTIFF straight to /vsis3/ needs a local temporary file for random writes.
    "CPL_VSIL_USE_TEMP_FILE_FOR_RANDOM_WRITE": "YES",
}


def s3_endpoint_options(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """GDAL options for the S3 endpoint named by `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`.

    Empty when neither is set, so AWS itself is used.
    """
    endpoint_url = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if not endpoint_url:
        return {}
    endpoint = urlsplit(endpoint_url)
    return {
        "AWS_S3_ENDPOINT": endpoint.netloc,
        "AWS_HTTPS": "YES" if endpoint.scheme == "https" else "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }


ENVIRONMENT_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION")
"""The variables rasterio builds its session from when credentials are in the environment."""


@functools.lru_cache(maxsize=8)
def _session_for(credentials: tuple[str | None, ...]) -> Session:
    """rasterio's session from the environment; `credentials` (their values) only key the cache."""
    return Session.from_environ()


def environment_session() -> Session | None:
    """rasterio's AWS session for the credentials in the environment, built once per set of them.

    Without it each `rasterio.Env` builds its own boto3 session (about 6 ms each, measured; a scene
    read took several). The session asks boto3 for fresh frozen credentials at every use, so
    expiring ones are still refreshed. None when the environment holds no credentials (rasterio's
    own default then applies: the usual chain, or unsigned).
    """
    if not ("AWS_ACCESS_KEY_ID" in os.environ and "AWS_SECRET_ACCESS_KEY" in os.environ):
        return None
    return _session_for(tuple(os.environ.get(name) for name in ENVIRONMENT_CREDENTIALS))


def gdal_env(**overrides: str | int) -> rasterio.Env:
    """A `rasterio.Env` with the remote-COG options, the S3 endpoint, and any overrides.

    Overrides that carry credentials (`aws_access_key_id`, ...: a products block's) make their own
    session; otherwise the environment's is reused (`environment_session`).
    """
    session = None if "aws_access_key_id" in overrides else environment_session()
    return rasterio.Env(session=session, **{**REMOTE_COG_OPTIONS, **s3_endpoint_options(), **overrides})


def gdal_path(uri: str) -> str:
    """The path GDAL opens for a local path, an `s3://` URI or an `http(s)://` URL."""
    if uri.startswith("s3://"):
        return "/vsis3/" + uri.removeprefix("s3://")
    if uri.startswith(("http://", "https://")):
        return "/vsicurl/" + uri
    return uri

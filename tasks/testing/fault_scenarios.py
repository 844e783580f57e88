"""Faults a month meets in production, staged on loopback for the fault tests and `bench/faults.py`.

A served synthetic month (COGs in moto S3, items in rustac) is read through a `FaultProxy`: the
flow's S3 endpoint (`AWS_ENDPOINT_URL`, read by GDAL and boto3) points at the proxy while it runs,
so every asset request can be refused, cut or answered wrongly. The workspace and the products stay
on local disk, so only the scene reads meet the faults.
"""

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.warp import Resampling, calculate_default_transform, reproject

from tasks.core.errors import NAME_NOT_FOUND_CODES
from tasks.storage.gdal_env import INGESTED_BYTES_AT_OPEN
from tasks.testing.fault_proxy import FaultProxy
from tasks.testing.served_month import ServedMonth
from tasks.testing.servers import S3Server
from tasks.testing.synthetic import DEFAULT_DATES

__all__ = [
    "CLAIMS_FULL_SIZE",
    "OUTAGE_DATES",
    "PERMANENT_FAULTS",
    "PERMANENT_FAULT_DATES",
    "RESOLVER_WAIT_S",
    "RUNNERS",
    "SHORT_RANGES",
    "UNRESOLVABLE_HOST",
    "OutageTrigger",
    "PermanentFault",
    "asset_file",
    "asset_path",
    "break_assets",
    "failure_requests",
    "metadata_of",
    "reads_through",
    "reprojected",
    "unresolvable_host",
    "upload_over",
    "with_wrong_crs_label",
    "without_georeferencing",
]

RUNNERS = {
    "threads": {"task_runner": "threads", "max_concurrent_scenes": 2},
    "dask": {"task_runner": "dask", "dask_workers": 2},
}
OUTAGE_DATES = tuple(DEFAULT_DATES) + tuple(date.replace(day=date.day + 2) for date in DEFAULT_DATES[:4])
"""Ten dates: enough scenes for an outage to land while most are still to be read."""


def metadata_of(report: Any) -> dict[str, Any]:
    """The metadata.json of a finished run's report, as a dict."""
    return json.loads(Path(report.product_urls["metadata"]).read_text())


ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL"
OUTAGE_AFTER_REQUESTS = 12
"""An outage starts once this many asset requests went through: a few scenes are read, most are not."""


SHORT_RANGES_NAME = "short 206"
CLAIMS_FULL_SIZE_NAME = "40 % claiming full size"
CLAIMED_SIZE_HELD_PERCENT = 40
"""The share of the object that a store claiming its full size holds."""


@dataclass(frozen=True)
class PermanentFault:
    """One asset broken for good, and the start of the reason the run must record for its scene.

    `shows_at_open`: the first request already fails; else (a truncated object) the reads before
    the missing part succeed as on an intact copy, and only what follows is spent on the fault.
    """

    name: str
    band: str
    expected_reason: str
    shows_at_open: bool = True

    def apply(self, proxy: FaultProxy, path: str, size: int) -> None:
        """Break the asset at `path` (`/bucket/key`, `size` bytes) on the proxy."""
        if self.name == "truncated":
            proxy.truncate_object(path, size // 2)
        elif self.name == SHORT_RANGES_NAME:  # the header GDAL reads at open comes whole, then every range short
            proxy.short_ranges(path, INGESTED_BYTES_AT_OPEN)
        elif self.name == CLAIMS_FULL_SIZE_NAME:
            proxy.truncate_claiming_size(path, size * CLAIMED_SIZE_HELD_PERCENT // 100)
        elif self.name == "garbage":
            proxy.garbage(path)
        else:
            proxy.status(path, int(self.name.removeprefix("http ")))


def failure_requests(fault: PermanentFault, broken_requests: int, intact_requests: int) -> int:
    """Requests a broken asset cost from its failing request on (that one, probes and retries).

    `intact_requests` is what the same read of an intact asset of the same layout takes: of those,
    all but the last succeed on a truncated object too before the missing part is reached.
    """
    return broken_requests if fault.shows_at_open else broken_requests - (intact_requests - 1)


SHORT_RANGES = PermanentFault(SHORT_RANGES_NAME, "nir", "nir: truncated", shows_at_open=False)
"""A server answering each range past the header with half its bytes, under the headers of all of them."""
CLAIMS_FULL_SIZE = PermanentFault(CLAIMS_FULL_SIZE_NAME, "blue", "blue: truncated", shows_at_open=False)
"""A store holding 40 % of the object while HEAD and Content-Range claim all of it."""
PERMANENT_FAULTS = (
    PermanentFault("truncated", "nir", "nir: truncated", shows_at_open=False),
    PermanentFault("garbage", "nir", "nir: not a GeoTIFF"),
    PermanentFault("http 404", "red", "red: not found (HTTP 404)"),
    PermanentFault("http 403", "green", "green: access denied (HTTP 403)"),
    SHORT_RANGES,
    CLAIMS_FULL_SIZE,
)
PERMANENT_FAULT_DATES = OUTAGE_DATES[: len(PERMANENT_FAULTS) + 2]
"""Dates of the month the permanent faults are staged on: item 0 intact as the reference, one item
per fault, and one more intact item."""


def break_assets(proxy: FaultProxy, served: ServedMonth, work_dir: Path) -> dict[str, PermanentFault]:
    """Stage each of `PERMANENT_FAULTS` on an asset of its own item of `served` (items 1..; item 0
    stays intact as the reference); the broken items and their faults. `work_dir` is the folder
    `served` was made in (it holds the uploaded files, whose sizes the faults need)."""
    broken_items = served.item_ids[1 : len(PERMANENT_FAULTS) + 1]
    if len(broken_items) < len(PERMANENT_FAULTS):
        raise ValueError(
            f"{len(PERMANENT_FAULTS)} permanent faults need {len(PERMANENT_FAULTS) + 1} items, the month has "
            f"{len(served.item_ids)}: serve PERMANENT_FAULT_DATES"
        )
    broken = dict(zip(broken_items, PERMANENT_FAULTS, strict=True))
    for item_id, fault in broken.items():
        size = asset_file(served, work_dir, item_id, fault.band).stat().st_size
        fault.apply(proxy, asset_path(served, item_id, fault.band), size)
    return broken


def asset_path(served: ServedMonth, item_id: str, band: str) -> str:
    """The `/bucket/key` request path of one asset of a served item."""
    return "/" + served.month.item(item_id)["assets"][band]["href"].removeprefix("s3://")


def asset_file(served: ServedMonth, work_dir: Path, item_id: str, band: str) -> Path:
    """The local file a served asset was uploaded from (`serve_synthetic_month` keeps them under `work_dir/month`)."""
    return work_dir / "month" / asset_path(served, item_id, band).split("/", 2)[2]


@contextmanager
def reads_through(proxy: FaultProxy) -> Iterator[None]:
    """Point GDAL and boto3 at the proxy for the block (worker processes started inside inherit it)."""
    previous = os.environ[ENDPOINT_VARIABLE]
    os.environ[ENDPOINT_VARIABLE] = proxy.endpoint_url
    try:
        yield
    finally:
        os.environ[ENDPOINT_VARIABLE] = previous


UNRESOLVABLE_HOST = "assets.example.invalid"
"""A host name under the reserved `.invalid` TLD (RFC 6761): no resolver answers it with an address."""
RESOLVER_WAIT_S = 5.0


def unresolvable_host() -> str | None:
    """`UNRESOLVABLE_HOST` when this machine's resolver says within `RESOLVER_WAIT_S` that it does not
    exist; None otherwise (a resolver that does not answer would turn a DNS failure into a wait)."""
    answers: list[int | None] = []

    def resolve() -> None:
        try:
            socket.getaddrinfo(UNRESOLVABLE_HOST, 80)
            answers.append(None)
        except socket.gaierror as failure:
            answers.append(failure.errno)

    resolver = threading.Thread(target=resolve, daemon=True)
    resolver.start()
    resolver.join(RESOLVER_WAIT_S)
    return UNRESOLVABLE_HOST if answers and answers[0] in NAME_NOT_FOUND_CODES else None


class OutageTrigger:
    """Refuses every connection for `seconds`, once `after_requests` asset requests went through."""

    def __init__(self, proxy: FaultProxy, seconds: float, after_requests: int = OUTAGE_AFTER_REQUESTS) -> None:
        self.requests_before = self.requests_after = 0
        self.started_at: float | None = None
        self._proxy, self._seconds, self._after = proxy, seconds, after_requests
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            if self._proxy.requests("/") >= self._after:
                self.requests_before = self._proxy.requests("/")
                self._proxy.refuse_for(self._seconds)
                self.started_at = time.monotonic()
                return
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop watching; record the requests that came after the outage."""
        self._done.set()
        self._thread.join()
        if self.started_at is not None:
            self.requests_after = self._proxy.requests("/") - self.requests_before


def upload_over(s3_server: S3Server, served: ServedMonth, item_id: str, band: str, raster: Path) -> None:
    """Replace a served asset by `raster`."""
    bucket, key = asset_path(served, item_id, band).split("/", 2)[1:]
    s3_server.upload(raster, bucket, key)


def with_wrong_crs_label(source: Path, target: Path, crs: str = "EPSG:32634") -> Path:
    """A copy of `source` whose pixels and transform are kept but whose CRS says another zone."""
    with rasterio.open(source) as original:
        profile = {**original.profile, "crs": CRS.from_user_input(crs)}
        pixels = original.read()
    with rasterio.open(target, "w", **profile) as copy:
        copy.write(pixels)
    return target


def without_georeferencing(source: Path, target: Path) -> Path:
    """A copy of `source` with neither CRS nor geotransform."""
    with rasterio.open(source) as original:
        profile = {key: value for key, value in original.profile.items() if key not in ("crs", "transform")}
        pixels = original.read()
    with rasterio.open(target, "w", **profile) as copy:
        copy.write(pixels)
    return target


def reprojected(source: Path, target: Path, crs: str, resampling: Resampling) -> Path:
    """`source` warped into `crs` at about its own resolution: correctly georeferenced, in another CRS."""
    with rasterio.open(source) as original:
        transform, width, height = calculate_default_transform(
            original.crs, crs, original.width, original.height, *original.bounds
        )
        profile = {**original.profile, "crs": CRS.from_user_input(crs), "transform": transform, "width": width, "height": height}
        warped = np.zeros((original.count, height, width), dtype=original.dtypes[0])
        reproject(
            rasterio.band(original, 1), warped[0], dst_transform=transform, dst_crs=crs, resampling=resampling,
            src_nodata=original.nodata, dst_nodata=original.nodata,
        )  # fmt: skip
    with rasterio.open(target, "w", **profile) as copy:
        copy.write(warped)
    return target

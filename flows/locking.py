"""One run at a time per AOI and month, across processes and machines, through the Prefect API.

`month_lock(aoi_name, month)` holds the only slot of a Prefect global concurrency limit named
`basemap-<aoi name>-<YYYY-MM>` (created on first use). A second run of the same AOI and month waits
for the first to end, then finds its cached scenes and published products. The slot is a lease the
holder renews while it runs; a killed holder's lease expires after `LEASE_S` and the next run goes on
(`prefect gcl delete basemap-<aoi name>-<YYYY-MM>` frees it at once).
"""

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from tasks.logs import stage_logger
from tasks.month import Month

LEASE_S = 120.0
"""Seconds a killed run keeps the AOI and month locked, at most."""


def month_lock_name(aoi_name: str, month: Month) -> str:
    """The concurrency limit of one AOI and month: `basemap-<aoi name>-<YYYY-MM>`."""
    return f"basemap-{aoi_name}-{month.label}"


def ensure_lock(name: str) -> None:
    """Create the limit `name` with one slot unless it exists (Prefect creates none on first use).

    Looked up first: asking the server to create an existing limit makes it log an error.
    """
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass  # another run created it in between


@contextmanager
def month_lock(aoi_name: str, month: Month) -> Iterator[None]:
    """Hold the AOI and month's lock for the block, waiting as long as another run holds it."""
    name = month_lock_name(aoi_name, month)
    ensure_lock(name)
    stage_logger(__name__).info("taking lock %s (a run of the same AOI and month may hold it)", name)
    with concurrency(name, occupy=1, strict=True, lease_duration=LEASE_S):
        yield

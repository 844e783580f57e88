"""One run at a time per AOI and month, across processes and machines.

`month_lock(aoi_name, month, lock_dir)` makes a second run of the same AOI and month wait for the
first to end; it then finds the first's cached scenes and published products.

- With a Prefect server (`PREFECT_API_URL` set: deployments, workers, runs on several machines) the
  lock is the only slot of the global concurrency limit `basemap-<aoi name>-<YYYY-MM>`, created on
  first use. The slot is a lease the holder renews while it runs; the server's lease service frees
  a killed holder's slot after `LEASE_S` (`prefect gcl delete basemap-<aoi name>-<YYYY-MM>` at once).
- Without one (the CLI and `make demo` on Prefect's ephemeral API, which starts anew in each process
  and keeps no lease service), it is an exclusive `flock` on `<lock_dir>/basemap-<aoi>-<YYYY-MM>.lock`:
  runs on this machine take turns, and the kernel frees the lock of a process that dies.
"""

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL

from tasks.logs import stage_logger
from tasks.month import Month

__all__ = ["LEASE_S", "month_lock", "month_lock_name"]

LEASE_S = 120.0
"""Seconds a killed run keeps the AOI and month locked on a Prefect server, at most."""


def month_lock_name(aoi_name: str, month: Month) -> str:
    """The lock of one AOI and month: `basemap-<aoi name>-<YYYY-MM>`."""
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
def month_lock(aoi_name: str, month: Month, lock_dir: Path) -> Iterator[None]:
    """Hold the AOI and month's lock for the block, waiting as long as another run holds it."""
    name = month_lock_name(aoi_name, month)
    stage_logger(__name__).info("taking lock %s (a run of the same AOI and month may hold it)", name)
    if PREFECT_API_URL.value():
        ensure_lock(name)
        with concurrency(name, occupy=1, strict=True, lease_duration=LEASE_S):
            yield
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)

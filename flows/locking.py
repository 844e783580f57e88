"""One run at a time per AOI and month, and one update at a time of an AOI's collection, across
processes and machines.

`month_lock(aoi_name, month, lock_dir)` makes a second run of the same AOI and month wait for the
first to end; it then finds the first's cached scenes and published products. `aoi_lock(aoi_name,
lock_dir)` makes runs of different months of one AOI take turns at updating what they share, the
AOI's STAC Collection (`flows.collection`). Both are one exclusive lock by name:

- With a Prefect server (`PREFECT_API_URL` set: deployments, workers, runs on several machines) the
  lock is the only slot of the global concurrency limit of that name (`basemap-<aoi name>-<YYYY-MM>`,
  `basemap-<aoi name>-collection`), created on first use. The slot is a lease the holder renews while
  it runs (`flows.server_lock`); the server's lease service frees a killed holder's slot after
  the lease (`BASEMAP_LOCK_LEASE_S`, 120 s; `prefect gcl delete <name>` at once). A run waiting for it
  says who holds it every `BASEMAP_LOCK_REPORT_S` (60 s) and frees the slot of a holder whose flow run
  has ended, which a server restart (it loses the leases, not the slots) needs (`flows.lock_holders`).
- Without one (the CLI and `make demo` on Prefect's ephemeral API, which starts anew in each process
  and keeps no lease service), it is an exclusive `flock` on `<lock_dir>/<name>.lock`: runs on this
  machine take turns, and the kernel frees the lock of a process that dies.
"""

import fcntl
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from prefect.settings import PREFECT_API_URL

from flows.server_lock import server_lock
from tasks.core.logs import stage_logger
from tasks.core.month import Month

__all__ = ["aoi_lock", "aoi_lock_name", "month_lock", "month_lock_name"]

AOI_LOCK_SUFFIX = "collection"
"""Ends the AOI lock's name; a month lock's name ends with its month, so no AOI name makes them clash."""


def month_lock_name(aoi_name: str, month: Month) -> str:
    """The lock of one AOI and month: `basemap-<aoi name>-<YYYY-MM>`."""
    return f"basemap-{aoi_name}-{month.label}"


def aoi_lock_name(aoi_name: str) -> str:
    """The lock of one AOI's collection: `basemap-<aoi name>-collection`."""
    return f"basemap-{aoi_name}-{AOI_LOCK_SUFFIX}"


@contextmanager
def exclusive_lock(name: str, lock_dir: Path, holder: str) -> Iterator[None]:
    """Hold the lock `name` for the block, waiting as long as another holds it; `holder` says who may."""
    stage_logger(__name__).info("taking lock %s (%s may hold it)", name, holder)
    if PREFECT_API_URL.value():
        with server_lock(name):
            yield
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def month_lock(aoi_name: str, month: Month, lock_dir: Path) -> AbstractContextManager[None]:
    """Hold the AOI and month's lock for the block, waiting as long as another run holds it."""
    return exclusive_lock(month_lock_name(aoi_name, month), lock_dir, "a run of the same AOI and month")


def aoi_lock(aoi_name: str, lock_dir: Path) -> AbstractContextManager[None]:
    """Hold the AOI's collection lock for the block, waiting as long as another run holds it."""
    return exclusive_lock(aoi_lock_name(aoi_name), lock_dir, "a run of another month of the AOI")

"""An exclusive lock on a Prefect server: the only slot of a global concurrency limit, held under a lease.

`server_lock(name)` creates the limit `name` with one slot unless it exists (Prefect creates none on
first use), takes its slot under a lease of `LockIntervals.lease_s` seconds, records itself as the holder
(`flows.lock_holders`), renews the lease while the block runs and releases it after, with the
`prefect.concurrency-limit.acquired` and `.released` events Prefect's own `concurrency()` sends.
The server's lease service (repossessor) frees a killed holder's slot once its lease expires.

Taking and renewing the slot go through the client rather than Prefect's `concurrency()`, for three
reasons: the lease's id goes into the holder's record; a waiting run logs who holds the lock every
`LockIntervals.wait_report_s` instead of Prefect's error line for each timed-out wait; and a holder whose lease
the server lost (a restart: leases live in the server's memory, the slot count in its database) keeps
running instead of being cancelled. Its slot stays counted, so no other run gets in while it runs,
and the first run to wait after it ended frees the slot.

Both intervals are settings of the process that takes the lock (a worker's or work pool's environment):
`BASEMAP_LOCK_LEASE_S` (default 120, the server's minimum is 60), how long a killed run keeps a lock at
most, and `BASEMAP_LOCK_REPORT_S` (default 60), how often a waiting run says who holds the lock and frees
the slot of a holder that has ended. Shorter ones free a killed run's lock sooner, for more API calls.
"""

import contextvars
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse, MinimalConcurrencyLimitResponse
from prefect.events import Event, emit_event
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError

from flows.lock_holders import HTTP_GONE, LockHolder, record_holder, report_or_free_holder
from tasks.core.errors import InvalidSettings
from tasks.core.logs import stage_logger

__all__ = [
    "LEASE_S",
    "LEASE_VARIABLE",
    "WAIT_REPORT_S",
    "WAIT_REPORT_VARIABLE",
    "LockIntervals",
    "ensure_lock",
    "server_lock",
]

LEASE_S = 120.0
"""Default seconds a killed run keeps a lock on a Prefect server, at most."""
LEASE_VARIABLE = "BASEMAP_LOCK_LEASE_S"
LEASE_RANGE_S = (60.0, 86400.0)
"""The lease durations the Prefect server accepts."""
RENEW_AT_SHARE = 0.75
"""A lease is renewed well before it ends, at this share of it, as Prefect's own `concurrency()` does."""
WAIT_REPORT_S = 60.0
"""Default seconds between two lines of a run waiting for a lock saying who holds it; each time it also
frees the slot of a holder that has ended."""
WAIT_REPORT_VARIABLE = "BASEMAP_LOCK_REPORT_S"
WAIT_REPORT_RANGE_S = (1.0, 3600.0)
ACQUIRED_EVENT = "prefect.concurrency-limit.acquired"
RELEASED_EVENT = "prefect.concurrency-limit.released"
HTTP_LOCKED = 423
"""The server's answer to taking a slot that is held; its Retry-After header says when to ask again."""
DEFAULT_RETRY_S = 5.0
"""Seconds before asking again when the server names none."""


@dataclass(frozen=True)
class LockIntervals:
    """How long a lock's lease lasts and how often a waiting run reports (seconds), from the environment."""

    lease_s: float = LEASE_S
    wait_report_s: float = WAIT_REPORT_S

    @property
    def renew_every_s(self) -> float:
        """Seconds between two renewals of a held lease."""
        return RENEW_AT_SHARE * self.lease_s

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "LockIntervals":
        """`BASEMAP_LOCK_LEASE_S` and `BASEMAP_LOCK_REPORT_S`, each its default when unset;
        `InvalidSettings` naming the variable when one is not a number of seconds in its range."""
        return cls(
            lease_s=_seconds(environ, LEASE_VARIABLE, LEASE_S, LEASE_RANGE_S),
            wait_report_s=_seconds(environ, WAIT_REPORT_VARIABLE, WAIT_REPORT_S, WAIT_REPORT_RANGE_S),
        )

    def environment(self) -> dict[str, str]:
        """The variables that give a process these intervals."""
        return {LEASE_VARIABLE: f"{self.lease_s:g}", WAIT_REPORT_VARIABLE: f"{self.wait_report_s:g}"}


def _seconds(environ: Mapping[str, str], variable: str, default: float, bounds: tuple[float, float]) -> float:
    text = environ.get(variable, "").strip()
    if not text:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not bounds[0] <= seconds <= bounds[1]:
        raise InvalidSettings(
            f"{variable}={text!r} is not {bounds[0]:g}..{bounds[1]:g} seconds: set it in range or unset it"
        )
    return seconds


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
def server_lock(name: str) -> Iterator[None]:
    """Hold the only slot of the limit `name` for the block, waiting as long as a running holder has it."""
    intervals = LockIntervals.from_environment()
    ensure_lock(name)
    with get_client(sync_client=True) as client:
        granted = _take_slot(client, name, intervals)
    (limit,) = granted.limits
    acquired = _limit_event(ACQUIRED_EVENT, limit)
    try:
        record_holder(name, LockHolder.here(granted.lease_id))
        with _renewing(name, granted.lease_id, intervals):
            yield
    finally:
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(granted.lease_id)
        _limit_event(RELEASED_EVENT, limit, follows=acquired)


def _take_slot(client: SyncPrefectClient, name: str, intervals: LockIntervals) -> ConcurrencyLimitWithLeaseResponse:
    """The slot of `name` and its lease, once taken; says who holds it every `wait_report_s` meanwhile."""
    report_at = time.monotonic() + intervals.wait_report_s
    while True:
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[name], slots=1, mode="concurrency", lease_duration=intervals.lease_s
            )
        except PrefectHTTPStatusError as error:
            if error.response.status_code != HTTP_LOCKED:
                raise
            retry_s = float(error.response.headers.get("Retry-After", DEFAULT_RETRY_S))
        else:
            granted = ConcurrencyLimitWithLeaseResponse.model_validate(response.json())
            if granted.limits:
                return granted
            ensure_lock(name)  # deleted while waiting (`prefect gcl delete` frees a lock at once)
            continue
        time.sleep(max(min(retry_s, report_at - time.monotonic()), 0.0))
        if time.monotonic() >= report_at:
            report_or_free_holder(name, intervals.lease_s)
            report_at = time.monotonic() + intervals.wait_report_s


def _limit_event(event: str, limit: MinimalConcurrencyLimitResponse, follows: Event | None = None) -> Event | None:
    """Emit the event Prefect's `concurrency()` emits for a slot taken or given back (the run's page shows it)."""
    resource = {
        "prefect.resource.id": f"prefect.concurrency-limit.{limit.id}",
        "prefect.resource.name": limit.name,
        "slots-acquired": "1",
        "limit": str(limit.limit),
    }
    return emit_event(event, resource=resource, follows=follows)


@contextmanager
def _renewing(name: str, lease_id: UUID, intervals: LockIntervals) -> Iterator[None]:
    """Renew the lease every `renew_every_s` in a thread while the block runs; stop when the server lost it."""
    stop = threading.Event()

    def renew() -> None:
        logger = stage_logger(__name__)
        with get_client(sync_client=True) as client:
            while not stop.wait(intervals.renew_every_s):
                try:
                    client.renew_concurrency_lease(lease_id, lease_duration=intervals.lease_s)
                except httpx.HTTPError as error:
                    lost = isinstance(error, httpx.HTTPStatusError) and error.response.status_code == HTTP_GONE
                    if stop.is_set():
                        return
                    if not lost:
                        logger.warning("lease of lock %s not renewed (%s); trying again", name, error)
                        continue
                    logger.warning(
                        "the Prefect server lost the lease of lock %s (it restarted): holding on; the slot "
                        "stays counted until a run waiting for it finds this run ended and frees it",
                        name,
                    )
                    return

    thread = threading.Thread(target=contextvars.copy_context().run, args=(renew,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()

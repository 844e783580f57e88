"""Who holds a lock on a Prefect server, kept where a server restart does not lose it, and what a
waiting run does about a holder that has ended.

The lock is the only slot of a global concurrency limit (`flows.server_lock`). The server counts the
slot in its database but keeps the lease that frees a dead holder's slot only in memory, and it
names no holder through its API. A restart therefore leaves the slot of a run that held it counted
for ever, with no lease left to expire. So each holder writes `LockHolder` (its flow run, its lease,
since when) to the Prefect Variable `holder_record_name(lock)` right after taking the slot; the next
holder overwrites it, nobody deletes it. A run that waits calls `report_or_free_holder` once per
`LockIntervals.wait_report_s` (`flows.server_lock`): it logs who holds the lock, and when that holder's
flow run has ended (a final state, deleted, or an earlier attempt of the waiting run itself) frees its slot:

- the server still has the holder's lease (no restart): the lease is released, as its repossessor
  would do once it expires (the renewal first keeps it from expiring in between, so the slot is not
  freed twice);
- the lease is gone (the server restarted) and the record still names that holder: one slot is
  taken off the limit. Freeing is not atomic: a run that takes the freed slot and has not written
  its record yet could lose it to a second waiter deciding at the same instant, a window of a few
  API calls.

A holder still running keeps the lock, also after a restart: only its flow run's end (COMPLETED,
FAILED, CANCELLED, or CRASHED as marked by its worker or the heartbeat automation of
`blocks.crash_detection`) frees it.
"""

import hashlib
import os
import re
import socket
from datetime import UTC, datetime
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.runtime import flow_run as current_flow_run
from pydantic import BaseModel

from tasks.core.logs import stage_logger

__all__ = ["LockHolder", "holder_record_name", "record_holder", "report_or_free_holder"]

HTTP_GONE = 410
"""The server's answer to renewing a lease it does not have."""
RECORD_DIGEST_CHARS = 8


class LockHolder(BaseModel, frozen=True):
    """A run that took a lock, as it recorded itself."""

    flow_run_id: UUID | None
    """None when the lock was taken outside a flow run: such a holder is never freed by a waiter."""
    lease_id: UUID
    since: datetime
    """When the slot was taken (UTC)."""
    process: str
    """`<pid>@<host>` of the process that took it."""

    @classmethod
    def here(cls, lease_id: UUID) -> "LockHolder":
        """This process, in its flow run if any, taking a slot now under `lease_id`."""
        flow_run_id = current_flow_run.get_id()
        return cls(
            flow_run_id=UUID(flow_run_id) if flow_run_id else None,
            lease_id=lease_id,
            since=datetime.now(UTC).replace(microsecond=0),
            process=f"{os.getpid()}@{socket.gethostname()}",
        )


def holder_record_name(lock_name: str) -> str:
    """The Variable holding `lock_name`'s holder: the name in lowercase, then a digest of it.

    Variable names allow only lowercase letters, digits, '-' and '_'; the digest keeps two lock names
    that differ only in case or in other characters apart.
    """
    readable = re.sub(r"[^a-z0-9_-]", "_", lock_name.lower())
    digest = hashlib.sha256(lock_name.encode()).hexdigest()[:RECORD_DIGEST_CHARS]
    return f"{readable}-holder-{digest}"


def record_holder(lock_name: str, holder: LockHolder) -> None:
    """Write `holder` as the holder of `lock_name` (called right after taking the slot)."""
    name = holder_record_name(lock_name)
    value = holder.model_dump(mode="json")
    with get_client(sync_client=True) as client:
        if client.read_variable_by_name(name) is None:
            client.create_variable(VariableCreate(name=name, value=value))
        else:
            client.update_variable(VariableUpdate(name=name, value=value))


def report_or_free_holder(lock_name: str, lease_s: float) -> None:
    """Log who holds `lock_name` and since when; free its slot when that holder's flow run has ended.

    `lease_s` is the locks' lease duration (s), for which an ended holder's lease is kept until released.
    """
    logger = stage_logger(__name__)
    with get_client(sync_client=True) as client:
        holder = _read_holder(client, lock_name)
        if holder is None or holder.flow_run_id is None:
            who = f"process {holder.process}, outside a flow run," if holder else "a run that left no record"
            since = f" since {holder.since.isoformat()}" if holder else ""
            logger.info("lock %s held by %s%s; waiting", lock_name, who, since)
            return
        flow_run = _flow_run_or_none(client, holder.flow_run_id)
        state = flow_run.state.type.value if flow_run and flow_run.state else "no longer exists"
        name = flow_run.name if flow_run else "?"
        said = f"lock {lock_name} held by flow run {holder.flow_run_id} ({name}, {state}) since {holder.since.isoformat()}"
        if not _has_ended(flow_run):
            logger.info("%s; waiting", said)
            return
        if _lease_kept(client, holder.lease_id, lease_s):
            client.release_concurrency_slots_with_lease(holder.lease_id)
            logger.warning("%s, which has ended: released its lease", said)
        elif _read_holder(client, lock_name) == holder:
            occupied_s = max((datetime.now(UTC) - holder.since).total_seconds(), 1.0)
            client.release_concurrency_slots([lock_name], slots=1, occupancy_seconds=occupied_s)
            logger.warning("%s, which has ended, and the Prefect server lost its lease (restarted): freed its slot", said)


def _read_holder(client: SyncPrefectClient, lock_name: str) -> LockHolder | None:
    variable = client.read_variable_by_name(holder_record_name(lock_name))
    return LockHolder.model_validate(variable.value) if variable else None


def _flow_run_or_none(client: SyncPrefectClient, flow_run_id: UUID) -> FlowRun | None:
    try:
        return client.read_flow_run(flow_run_id)
    except ObjectNotFound:
        return None


def _has_ended(flow_run: FlowRun | None) -> bool:
    """Whether the holder's run holds nothing any more: deleted, final, or this very run (an earlier
    attempt of it took the lock, and a run takes a lock once at a time)."""
    if flow_run is None or str(flow_run.id) == current_flow_run.get_id():
        return True
    return flow_run.state is not None and flow_run.state.is_final()


def _lease_kept(client: SyncPrefectClient, lease_id: UUID, lease_s: float) -> bool:
    """Whether the server still has the lease; renewing it, so it cannot expire before it is released."""
    try:
        client.renew_concurrency_lease(lease_id, lease_duration=lease_s)
    except PrefectHTTPStatusError as error:
        if error.response.status_code == HTTP_GONE:
            return False
        raise
    return True

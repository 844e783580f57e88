"""Faults of the AOI-and-month lock on a Prefect server, staged on loopback for the locking tests and
`bench/faults.py`.

Each runs a flow run that takes the lock of one AOI and month (`flows.locking`) and holds it, starts
a second run of the same AOI and month that waits for it, stages the fault, and returns what happened
(`LockFaultOutcome`):

- `lock_after_api_restart(server)`: the server restarts while the first run holds the lock (it keeps
  leases in memory only); the first holds on past its next lease renewal and completes.
- `lock_after_holder_kill(server, marked_crashed)`: the first run's process is SIGKILLed; with
  `marked_crashed` its run is then set CRASHED as a live worker does, else it stays RUNNING as when
  its worker died too, and only its lease expiring frees the lock.

Both take the runs' `LockIntervals` (lease, waiting run's report), given to them as the settings
`flows.server_lock` reads; by default production's, 2 to 2.5 minutes a fault. Tests pass shorter ones.

The runs are child processes (`python -m tasks.testing.lock_faults HOLD_S LOCK_DIR`) of the flow
`hold_month_lock`, each printing `HELD_LINE` once it holds the lock; their logs are files under the
server's home.
"""

import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from prefect.runtime import flow_run
from prefect.states import Crashed

from flows.locking import month_lock, month_lock_name
from flows.server_lock import LockIntervals
from tasks.core.month import Month
from tasks.testing import PROJECT_ROOT
from tasks.testing.prefect_server import BackgroundProcess, PrefectProcessError, PrefectServer

__all__ = [
    "FREED_BY_LEASE_WITHIN_S",
    "FREED_BY_WAITER_WITHIN_S",
    "PRODUCTION_INTERVALS",
    "LockFaultOutcome",
    "freed_by_lease_within_s",
    "freed_by_waiter_within_s",
    "hold_across_restart_s",
    "hold_month_lock",
    "lock_after_api_restart",
    "lock_after_holder_kill",
    "mark_crashed",
]

AOI_NAME = "fault-farm"
MONTH = Month(2024, 5)
HELD_LINE = "holding lock as flow run {flow_run_id}"
HELD_PATTERN = re.compile(r"holding lock as flow run ([0-9a-f-]{36})")
TAKING_PATTERN = re.compile(r"taking lock ")
"""`flows.locking`'s line as a run starts to wait."""
PRODUCTION_INTERVALS = LockIntervals()
"""The lease and report intervals runs have unless their environment sets others."""
RENEWAL_MARGIN_S = 10.0
KILLED_MESSAGE = "Process exited with status code: -9"
"""The state message a process worker gives the run of a child it saw SIGKILLed."""
KILLED_HOLD_S = 600.0
"""How long a first run that is killed would hold the lock."""
REPOSSESSOR_LOOP_S = 15.0
"""How often the server's repossessor frees the slots of expired leases (its default)."""
SLOT_RETRY_S = 30.0
"""The longest the server tells a waiting run to sleep between two tries for a slot (its Retry-After
cap); the run also tries again after each report."""


def hold_across_restart_s(intervals: LockIntervals) -> float:
    """How long the first run holds the lock across a restart: past its first renewal, which meets the
    restarted server."""
    return intervals.renew_every_s + RENEWAL_MARGIN_S


def freed_by_waiter_within_s(intervals: LockIntervals) -> float:
    """The bound for an ended holder (completed after a restart, or marked CRASHED): the waiting run
    checks on it every `wait_report_s`, so the lock frees within two of those of its end."""
    return 2 * intervals.wait_report_s


def freed_by_lease_within_s(intervals: LockIntervals) -> float:
    """The bound for a killed holder nobody marks: its lease expires, the repossessor frees the slot,
    the waiter tries again."""
    return intervals.lease_s + REPOSSESSOR_LOOP_S + min(SLOT_RETRY_S, intervals.wait_report_s)


HOLD_S = hold_across_restart_s(PRODUCTION_INTERVALS)
FREED_BY_WAITER_WITHIN_S = freed_by_waiter_within_s(PRODUCTION_INTERVALS)
"""Production's promise for an ended holder: 2 minutes."""
FREED_BY_LEASE_WITHIN_S = freed_by_lease_within_s(PRODUCTION_INTERVALS)
START_TIMEOUT_S = 90.0
"""From starting a run's process to its holding (or waiting for) the lock."""
EXIT_TIMEOUT_S = 60.0
POLL_S = 0.5
LOG_CHARS = 1 << 20


@flow(name="hold-month-lock")
def hold_month_lock(hold_s: float, lock_dir: str) -> None:
    """Take the lock of `AOI_NAME` and `MONTH`, print `HELD_LINE`, keep it `hold_s` seconds."""
    with month_lock(AOI_NAME, MONTH, Path(lock_dir)):
        print(HELD_LINE.format(flow_run_id=flow_run.get_id()), flush=True)
        time.sleep(hold_s)


@dataclass(frozen=True)
class LockFaultOutcome:
    """What happened to two runs of one AOI and month around a fault of the first.

    `survived`: the second run held the lock within `free_within_s` of the first's end, having said
    who held it, and after a restart the first run completed although the server lost its lease.
    """

    fault: str
    lock_name: str
    holder_flow_run_id: UUID
    holder_state: StateType | None
    """The first run's state at the end (COMPLETED after a restart; CRASHED or RUNNING when killed)."""
    holder_must_complete: bool
    second_ran: bool
    """Whether the second run got the lock at all (within `free_within_s` + the runs' `wait_report_s`)."""
    second_waited_s: float | None
    """Seconds from the second run's start to its holding the lock; None when it did not."""
    freed_after_holder_end_s: float | None
    """Seconds from the first run's end (completion or kill) to the second's holding the lock."""
    free_within_s: float
    waiting_lines: tuple[str, ...]
    """The second run's log lines saying who held the lock."""

    @property
    def survived(self) -> bool:
        return (
            (self.holder_state == StateType.COMPLETED or not self.holder_must_complete)
            and self.freed_after_holder_end_s is not None
            and self.freed_after_holder_end_s <= self.free_within_s
            and any(f"held by flow run {self.holder_flow_run_id}" in line for line in self.waiting_lines)
        )


def mark_crashed(client: SyncPrefectClient, flow_run_id: UUID) -> None:
    """Set the flow run of a SIGKILLed process CRASHED, as the worker that started it does."""
    client.set_flow_run_state(flow_run_id, Crashed(message=KILLED_MESSAGE), force=True)


def lock_after_api_restart(
    server: PrefectServer,
    down_s: float = 20.0,
    hold_s: float = HOLD_S,
    intervals: LockIntervals = PRODUCTION_INTERVALS,
) -> LockFaultOutcome:
    """The server down `down_s` seconds while the first run holds the lock for `hold_s` (past its first
    renewal: `hold_across_restart_s(intervals)`) and the second waits. About `hold_s` + `wait_report_s`:
    2.5 min with the defaults."""

    def restart(holder: BackgroundProcess, holder_id: UUID) -> float:
        server.restart(down_s)
        return _wait_for_exit(holder, hold_s + EXIT_TIMEOUT_S)

    fault = f"API restart ({down_s:.0f} s down)"
    return _two_runs(server, fault, hold_s, restart, freed_by_waiter_within_s(intervals), True, intervals)


def lock_after_holder_kill(
    server: PrefectServer, marked_crashed: bool, intervals: LockIntervals = PRODUCTION_INTERVALS
) -> LockFaultOutcome:
    """SIGKILL of the first run's process while the second waits; `marked_crashed`: its run is then
    set CRASHED (as its worker would). About 1.5 min marked, 2.5 min not, with the default intervals."""

    def kill(holder: BackgroundProcess, holder_id: UUID) -> float:
        os.killpg(holder.pid, signal.SIGKILL)
        killed = _wait_for_exit(holder, EXIT_TIMEOUT_S)
        if marked_crashed:
            with server.client() as client:
                mark_crashed(client, holder_id)
        return killed

    fault, free_within_s = (
        ("holder killed, marked CRASHED", freed_by_waiter_within_s(intervals))
        if marked_crashed
        else ("holder killed, left RUNNING", freed_by_lease_within_s(intervals))
    )
    return _two_runs(server, fault, KILLED_HOLD_S, kill, free_within_s, False, intervals)


def _two_runs(
    server: PrefectServer,
    fault: str,
    hold_s: float,
    stage: Callable[[BackgroundProcess, UUID], float],
    free_within_s: float,
    holder_must_complete: bool,
    intervals: LockIntervals,
) -> LockFaultOutcome:
    """The first run holds the lock, the second waits for it (both with `intervals`), `stage(holder,
    holder id)` stages the fault and returns when (time.monotonic()) the holder ended; then the second
    gets `free_within_s` + `wait_report_s` more to hold the lock."""
    lock_dir = server.home / "locks"
    holder = _start_run(server, "lock-holder", hold_s, lock_dir, intervals)
    second: BackgroundProcess | None = None
    try:
        holder_id = UUID(_wait_for_line(holder, HELD_PATTERN, START_TIMEOUT_S).group(1))
        second = _start_run(server, "lock-waiter", 0.0, lock_dir, intervals)
        second_started = time.monotonic()
        _wait_for_line(second, TAKING_PATTERN, START_TIMEOUT_S)
        holder_ended = stage(holder, holder_id)
        second_bound_s = holder_ended + free_within_s + intervals.wait_report_s - time.monotonic()
        try:
            _wait_for_line(second, HELD_PATTERN, max(second_bound_s, POLL_S))
            second_held: float | None = time.monotonic()
        except PrefectProcessError:
            second_held = None
        with server.client() as client:
            state = client.read_flow_run(holder_id).state
        return LockFaultOutcome(
            fault=fault,
            lock_name=month_lock_name(AOI_NAME, MONTH),
            holder_flow_run_id=holder_id,
            holder_state=state.type if state else None,
            holder_must_complete=holder_must_complete,
            second_ran=second_held is not None,
            second_waited_s=None if second_held is None else second_held - second_started,
            freed_after_holder_end_s=None if second_held is None else second_held - holder_ended,
            free_within_s=free_within_s,
            waiting_lines=tuple(line for line in second.log_tail(chars=LOG_CHARS).splitlines() if "held by" in line),
        )
    finally:
        for process in (holder, second):
            if process is not None:
                process.stop()


def _start_run(
    server: PrefectServer, name: str, hold_s: float, lock_dir: Path, intervals: LockIntervals
) -> BackgroundProcess:
    stamp = datetime.now(UTC).strftime("%H%M%S")
    return BackgroundProcess(
        name,
        [sys.executable, "-m", "tasks.testing.lock_faults", str(hold_s), str(lock_dir)],
        server.environment(intervals.environment()),
        server.home / f"{name}-{stamp}.log",
        PROJECT_ROOT,
    )


def _wait_for_line(process: BackgroundProcess, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
    """The first match of `pattern` in the process's log; `PrefectProcessError` when it ends or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = pattern.search(process.log_tail(chars=LOG_CHARS))
        if match:
            return match
        if not process.running:
            raise PrefectProcessError(f"{process.name} exited before printing the line:\n{process.log_tail()}")
        time.sleep(POLL_S)
    raise PrefectProcessError(f"{process.name} printed no such line within {timeout_s:.0f} s:\n{process.log_tail()}")


def _wait_for_exit(process: BackgroundProcess, timeout_s: float) -> float:
    """When (time.monotonic()) the process ended; `PrefectProcessError` when it still runs after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while process.running:
        if time.monotonic() > deadline:
            raise PrefectProcessError(f"{process.name} still runs after {timeout_s:.0f} s:\n{process.log_tail()}")
        time.sleep(POLL_S)
    return time.monotonic()


if __name__ == "__main__":
    hold_month_lock(float(sys.argv[1]), sys.argv[2])

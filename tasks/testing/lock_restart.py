"""The month lock across a Prefect server restart, staged on loopback for the locking tests and
`bench/faults.py`.

`lock_after_api_restart(server, ...)` runs a flow run that takes an AOI-and-month lock (`flows.locking`)
and holds it, starts a second run of the same AOI and month that waits for it, restarts the server
(which keeps leases in memory only), lets the holder hold past its next lease renewal and finish,
and returns what happened (`LockRestartOutcome`). The runs are child processes
(`python -m tasks.testing.lock_restart HOLD_S`) of flow `hold_month_lock`, each printing `HELD_LINE`
once it holds the lock; their logs are files under the server's home.
"""

import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from prefect import flow
from prefect.client.schemas.objects import StateType
from prefect.runtime import flow_run

from flows.locking import month_lock, month_lock_name
from flows.server_lock import LEASE_S, WAIT_REPORT_S
from tasks.month import Month
from tasks.testing import PROJECT_ROOT
from tasks.testing.prefect_server import BackgroundProcess, PrefectProcessError, PrefectServer

__all__ = ["FREE_WITHIN_S", "LockRestartOutcome", "hold_month_lock", "lock_after_api_restart"]

AOI_NAME = "restart-farm"
MONTH = Month(2024, 5)
HELD_LINE = "holding lock as flow run {flow_run_id}"
HELD_PATTERN = re.compile(r"holding lock as flow run ([0-9a-f-]{36})")
TAKING_PATTERN = re.compile(r"taking lock ")
"""`flows.locking`'s line as a run starts to wait."""
RENEWAL_AFTER_S = 0.75 * LEASE_S
"""When a holder first renews its lease after taking it (Prefect renews at 75 % of the lease)."""
HOLD_S = RENEWAL_AFTER_S + 10.0
"""How long the first run holds the lock: past its first renewal, which meets the restarted server."""
FREE_WITHIN_S = 2 * WAIT_REPORT_S
"""The promise: a lock frees itself within 2 minutes of its holder's end, also after a restart."""
START_TIMEOUT_S = 90.0
"""From starting a run's process to its holding the lock, when nobody else holds it."""
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
class LockRestartOutcome:
    """What happened to two runs of one AOI and month around a restart of the Prefect server.

    It survived when `survived`: the first run completed although the server lost its lease, and the
    second held the lock within `FREE_WITHIN_S` of the first's end, having said who held it.
    """

    lock_name: str
    holder_flow_run_id: UUID
    holder_state: StateType | None
    """The first run's final state (COMPLETED when its lost lease did not end it)."""
    second_ran: bool
    """Whether the second run got the lock at all (within the bound this function waits)."""
    second_waited_s: float | None
    """Seconds from the second run's start to its holding the lock; None when it did not."""
    freed_after_holder_end_s: float | None
    """Seconds from the first run's end to the second's holding the lock; None when it did not."""
    waiting_lines: tuple[str, ...]
    """The second run's log lines saying who held the lock."""

    @property
    def survived(self) -> bool:
        return (
            self.holder_state == StateType.COMPLETED
            and self.freed_after_holder_end_s is not None
            and self.freed_after_holder_end_s <= FREE_WITHIN_S
            and any(str(self.holder_flow_run_id) in line for line in self.waiting_lines)
        )


def lock_after_api_restart(server: PrefectServer, down_s: float = 20.0, hold_s: float = HOLD_S) -> LockRestartOutcome:
    """Stage the restart (server down `down_s` seconds while the first run holds the lock for `hold_s`
    and the second waits); every wait is bounded, the second run's by the holder's end plus 3 x
    `WAIT_REPORT_S`. Takes about `hold_s` + `WAIT_REPORT_S`: 2.5 min with the defaults."""
    lock_dir = server.home / "locks"
    holder = _start_run(server, "lock-holder", hold_s, lock_dir)
    second: BackgroundProcess | None = None
    try:
        holder_id = UUID(_wait_for_line(holder, HELD_PATTERN, START_TIMEOUT_S).group(1))
        second = _start_run(server, "lock-waiter", 0.0, lock_dir)
        second_started = time.monotonic()
        _wait_for_line(second, TAKING_PATTERN, START_TIMEOUT_S)
        server.restart(down_s)
        holder_ended = _wait_for_exit(holder, hold_s + EXIT_TIMEOUT_S)
        second_bound = holder_ended + 3 * WAIT_REPORT_S - time.monotonic()
        try:
            _wait_for_line(second, HELD_PATTERN, max(second_bound, POLL_S))
            second_held: float | None = time.monotonic()
        except PrefectProcessError:
            second_held = None
        with server.client() as client:
            state = client.read_flow_run(holder_id).state
        return LockRestartOutcome(
            lock_name=month_lock_name(AOI_NAME, MONTH),
            holder_flow_run_id=holder_id,
            holder_state=state.type if state else None,
            second_ran=second_held is not None,
            second_waited_s=None if second_held is None else second_held - second_started,
            freed_after_holder_end_s=None if second_held is None else second_held - holder_ended,
            waiting_lines=tuple(line for line in second.log_tail(chars=LOG_CHARS).splitlines() if "held by" in line),
        )
    finally:
        for process in (holder, second):
            if process is not None:
                process.stop()


def _start_run(server: PrefectServer, name: str, hold_s: float, lock_dir: Path) -> BackgroundProcess:
    stamp = datetime.now(UTC).strftime("%H%M%S")
    return BackgroundProcess(
        name,
        [sys.executable, "-m", "tasks.testing.lock_restart", str(hold_s), str(lock_dir)],
        server.environment(),
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

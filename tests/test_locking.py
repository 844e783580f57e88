"""The AOI-and-month lock without a Prefect server (a file lock the kernel frees when its holder
dies), and on a real `prefect server start` when its holder's process is killed or the server
restarts. The server tests give their runs the shortest lease the server takes (60 s) and a waiting
run's check every 10 s (`BASEMAP_LOCK_LEASE_S`, `BASEMAP_LOCK_REPORT_S`; production: 120 s and 60 s,
staged by bench/faults.py): about 1, 2 and 2 min.
"""

import contextvars
import os
import select
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL

from flows.locking import aoi_lock, aoi_lock_name, month_lock
from flows.server_lock import LEASE_VARIABLE, WAIT_REPORT_VARIABLE, LockIntervals
from tasks.core.errors import InvalidSettings
from tasks.core.month import Month
from tasks.testing.lock_faults import (
    FREED_BY_WAITER_WITHIN_S,
    LockFaultOutcome,
    hold_across_restart_s,
    lock_after_api_restart,
    lock_after_holder_kill,
)
from tasks.testing.prefect_server import PrefectServer
from tests import REPO_ROOT

MONTH = Month(2024, 6)
HOLDER_START_S = 60.0
"""Seconds the holder process may take to import the project and take its lock (2 loaded cores)."""
UNCONTENDED_LOCK_S = 10.0
"""Seconds a lock nobody holds may take: a lock that waits longer is taken as contended."""
COLLECTION_TURN_TIMEOUT_S = 60.0
"""Bound on each step of two holders taking turns at a lock on a server (a refused holder asks again
after the server's Retry-After, at most 30 s)."""
SHORT_INTERVALS = LockIntervals(lease_s=60.0, wait_report_s=10.0)
"""The server's shortest lease and a check every 10 s: each fault takes a minute or two, not 2.5."""
HOLD_SCRIPT = (
    "import sys, time; from pathlib import Path; from flows.locking import month_lock; from tasks.core.month import Month\n"
    "with month_lock('farm', Month(2024, 6), Path(sys.argv[1])):\n"
    "    print('held', flush=True); time.sleep(600)\n"
)


def holder(lock_dir: Path) -> subprocess.Popen:
    """Another process that takes the lock of 'farm' 2024-06 and keeps it."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT, str(lock_dir)],
        cwd=REPO_ROOT,
        env={key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"},
        stdout=subprocess.PIPE,
        text=True,
    )
    ready, _, _ = select.select([process.stdout], [], [], HOLDER_START_S)
    said = process.stdout.readline().strip() if ready else f"nothing within {HOLDER_START_S:g} s"
    if said != "held":
        process.kill()
        process.wait()
    assert said == "held", f"the holder process did not take the lock: it said {said!r}"
    return process


def taken_within(lock: Callable[[], AbstractContextManager[None]], seconds: float) -> bool:
    """Whether this process gets `lock()` within `seconds` (the attempt goes on in a thread after)."""
    taken = threading.Event()

    def take() -> None:
        with lock():
            taken.set()

    in_thread(take)
    return taken.wait(seconds)


def held_month(lock_dir: Path) -> Callable[[], AbstractContextManager[None]]:
    """The lock the holder process takes: 'farm' 2024-06."""
    return lambda: month_lock("farm", MONTH, lock_dir)


def test_a_second_run_waits_and_a_killed_holder_frees_the_lock(no_prefect_server: None, tmp_path: Path) -> None:
    process = holder(tmp_path)
    try:
        assert not taken_within(held_month(tmp_path), 2.0), "the lock must wait while another process holds it"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert taken_within(held_month(tmp_path), 30.0), "the kernel frees a dead holder's lock"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_other_months_and_the_aois_collection_do_not_wait(no_prefect_server: None, tmp_path: Path) -> None:
    others = {
        "farm 2024-07": lambda: month_lock("farm", Month(2024, 7), tmp_path),
        "field 2024-06": lambda: month_lock("field", MONTH, tmp_path),
        "farm's collection": lambda: aoi_lock("farm", tmp_path),
    }
    process = holder(tmp_path)
    try:
        waited = [name for name, lock in others.items() if not taken_within(lock, UNCONTENDED_LOCK_S)]
        assert waited == [], f"waited {UNCONTENDED_LOCK_S:g} s for a lock other than the held one: {waited}"
        assert not taken_within(held_month(tmp_path), 1.0), "the holder's own month must still wait"
    finally:
        process.kill()
        process.wait(timeout=30)


def test_on_a_prefect_server_the_collection_lock_is_a_one_slot_limit_its_holders_take_turns(
    prefect_harness: None, tmp_path: Path
) -> None:
    aoi = f"farm-{uuid.uuid4().hex[:8]}"
    first_holds, first_may_end, second_holds = threading.Event(), threading.Event(), threading.Event()
    turns: list[str] = []

    def hold(name: str, holding: threading.Event, may_end: threading.Event | None) -> None:
        with aoi_lock(aoi, tmp_path):
            turns.append(f"{name} took")
            holding.set()
            if may_end is not None:
                may_end.wait(COLLECTION_TURN_TIMEOUT_S)
            turns.append(f"{name} gave back")

    assert PREFECT_API_URL.value(), "the harness is a Prefect server"
    first = in_thread(hold, "first", first_holds, first_may_end)
    assert first_holds.wait(COLLECTION_TURN_TIMEOUT_S), "the first holder never got the lock"
    second = in_thread(hold, "second", second_holds, None)
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(aoi_lock_name(aoi))
    assert (limit.limit, limit.active_slots) == (1, 1)
    assert not second_holds.wait(2.0), "the second holder got in while the first held the lock"

    first_may_end.set()
    assert second_holds.wait(COLLECTION_TURN_TIMEOUT_S), "the second holder never got the lock"
    for thread in (first, second):
        thread.join(COLLECTION_TURN_TIMEOUT_S)
        assert not thread.is_alive()
    assert turns == ["first took", "first gave back", "second took", "second gave back"]
    assert not list(tmp_path.iterdir()), "a file lock was taken"


def in_thread(target: Callable[..., None], *args: object) -> threading.Thread:
    """`target(*args)` started in a thread that sees this test's Prefect settings."""
    settings = contextvars.copy_context()  # a new thread would see the process's settings, not the test's
    thread = threading.Thread(target=settings.run, args=(target, *args), daemon=True)
    thread.start()
    return thread


def test_the_lock_intervals_are_settings_named_when_out_of_range() -> None:
    assert LockIntervals.from_environment({}) == LockIntervals(lease_s=120.0, wait_report_s=60.0)
    assert LockIntervals.from_environment({LEASE_VARIABLE: "60", WAIT_REPORT_VARIABLE: "10"}) == SHORT_INTERVALS
    assert FREED_BY_WAITER_WITHIN_S == 120.0, "README: an ended holder's lock frees within 2 minutes"
    with pytest.raises(InvalidSettings, match=f"{LEASE_VARIABLE}='30' is not 60..86400 seconds"):
        LockIntervals.from_environment({LEASE_VARIABLE: "30"})
    with pytest.raises(InvalidSettings, match=f"{WAIT_REPORT_VARIABLE}='soon' is not 1..3600 seconds"):
        LockIntervals.from_environment({WAIT_REPORT_VARIABLE: "soon"})


@pytest.mark.slow
def test_a_server_restart_neither_ends_the_holder_nor_keeps_its_lock(tmp_path: Path) -> None:
    with PrefectServer(tmp_path) as server, server.logs_on_failure():
        outcome = lock_after_api_restart(
            server, down_s=5.0, hold_s=hold_across_restart_s(SHORT_INTERVALS), intervals=SHORT_INTERVALS
        )

    assert outcome.holder_state == StateType.COMPLETED, "the holder must outlive its lease lost in the restart"
    assert_freed_within(outcome)
    assert_said(outcome, "COMPLETED", ", which has ended, and the Prefect server lost its lease (restarted): freed its slot")
    assert outcome.survived


@pytest.mark.slow
@pytest.mark.parametrize(
    ("marked_crashed", "holder_state", "ending"),
    [(True, "CRASHED", ", which has ended: released its lease"), (False, "RUNNING", "; waiting")],
    ids=["marked crashed", "left running"],
)
def test_a_killed_holders_lock_frees_itself(tmp_path: Path, marked_crashed: bool, holder_state: str, ending: str) -> None:
    """README: a killed run's slot frees itself: the waiting run sees it CRASHED and releases its lease at
    its next check, or (its worker dead too, the run left RUNNING) the lease expires and the server's
    repossessor frees the slot."""
    with PrefectServer(tmp_path) as server, server.logs_on_failure():
        outcome = lock_after_holder_kill(server, marked_crashed=marked_crashed, intervals=SHORT_INTERVALS)

    assert_freed_within(outcome)
    assert_said(outcome, holder_state, ending)
    assert outcome.survived


def assert_freed_within(outcome: LockFaultOutcome) -> None:
    """The second run held the lock within the fault's bound (`outcome.free_within_s`) of the holder's end."""
    assert outcome.second_ran, f"the second run never got {outcome.lock_name} (waiting: {outcome.waiting_lines})"
    freed_s = outcome.freed_after_holder_end_s
    assert freed_s is not None and freed_s <= outcome.free_within_s, outcome


def assert_said(outcome: LockFaultOutcome, holder_state: str, ending: str) -> None:
    """A line of the second run names the holder's flow run, its state and since when, and ends with `ending`."""
    said = f"lock {outcome.lock_name} held by flow run {outcome.holder_flow_run_id} ("
    lines = outcome.waiting_lines
    assert any(said in line and f", {holder_state}) since " in line and line.endswith(ending) for line in lines), lines

"""Flows that only sleep, for tests that kill their process mid-run (tests/test_crash_detection.py):
one alone, and one sleeping in a subflow (one process, two flow runs, as a backfill's months).

It imports nothing but Prefect, so its process is running within seconds.
"""

import time

from prefect import flow

SLEEP_S = 600.0


@flow(name="sleeping-probe")
def sleep_until_killed(seconds: float = SLEEP_S) -> None:
    """Sleep `seconds` (s); the test kills the process long before."""
    time.sleep(seconds)


@flow(name="sleeping-parent-probe")
def sleep_in_subflow(seconds: float = SLEEP_S) -> None:
    """Run `sleep_until_killed` as a subflow, in this run's process."""
    sleep_until_killed(seconds)

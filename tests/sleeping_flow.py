"""A flow that only sleeps, for tests that kill its process mid-run (tests/test_crash_detection.py).

It imports nothing but Prefect, so its process is running within seconds.
"""

import time

from prefect import flow

SLEEP_S = 600.0


@flow(name="sleeping-probe")
def sleep_until_killed(seconds: float = SLEEP_S) -> None:
    """Sleep `seconds` (s); the test kills the process long before."""
    time.sleep(seconds)

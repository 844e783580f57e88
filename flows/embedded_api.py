"""Prefect's embedded (ephemeral) API, as the command line, `make demo`, the benchmarks and the tests use it.

Without `PREFECT_API_URL` Prefect starts a throw-away API server in a child process at the first run
and waits `PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS` for it (Prefect's default: 20 s). On a
busy machine, and on a first start that migrates a new SQLite database, that is too short (seen on
2 loaded cores), so the project waits `STARTUP_TIMEOUT_S` unless the setting was given another value;
a start that still times out ends in one line naming the setting (`startup_failure`).
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings
from prefect.settings.models.server.ephemeral import ServerEphemeralSettings

__all__ = ["STARTUP_TIMEOUT_S", "startup_failure", "waiting_long_enough"]

STARTUP_TIMEOUT_S = 180
"""Seconds the project waits for the embedded API to answer."""
PREFECT_DEFAULT_TIMEOUT_S = ServerEphemeralSettings.model_fields["startup_timeout_seconds"].default
STARTUP_TIMED_OUT = re.compile(r"Timed out while attempting to connect to ephemeral Prefect API server")


@contextmanager
def waiting_long_enough() -> Iterator[None]:
    """For the block, wait `STARTUP_TIMEOUT_S` for the embedded API to start, unless the user set the
    timeout to a value of their own (kept) or named a server in `PREFECT_API_URL` (nothing starts)."""
    if PREFECT_API_URL.value() or PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() != PREFECT_DEFAULT_TIMEOUT_S:
        yield
        return
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: STARTUP_TIMEOUT_S}):
        yield


def startup_failure(error: BaseException) -> str | None:
    """The one-line explanation of `error` when it is the embedded API failing to start; else None."""
    if not isinstance(error, RuntimeError) or not STARTUP_TIMED_OUT.search(str(error)):
        return None
    waited = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    return (
        f"Prefect's embedded API did not start within {waited} s (a busy machine, or a first start migrating "
        "its database); raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or set PREFECT_API_URL to a "
        "running `prefect server start`"
    )

"""Prefect retry conditions shared by the stage tasks: retry only what another attempt can fix.

The conditions follow Prefect's `retry_condition_fn(task, task_run, state) -> bool` signature.
"""

from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prefect.tasks import exponential_backoff

from tasks.errors import TransientReadError


def _error_of(state: Any) -> BaseException | None:
    error = state.result(raise_on_failure=False)
    return error if isinstance(error, BaseException) else None


def retry_transient_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only a failure that is, or was caused by, a `TransientReadError` (5xx, timeout, truncation)."""
    error = _error_of(state)
    return isinstance(error, TransientReadError) or isinstance(getattr(error, "__cause__", None), TransientReadError)


def retry_io_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O failures (workspace or S3, transient reads), never a missing file, a bug or a bad input."""
    error = _error_of(state)
    if isinstance(error, FileNotFoundError):
        return False
    return isinstance(error, (OSError, TransientReadError, BotoCoreError, ClientError))


IO_TASK_RETRIES = 3
IO_RETRY_FIRST_DELAY_S = 10
"""Delay before a task's first retry; each further retry doubles it (10, 20, 40 s) before jitter."""
IO_RETRY_JITTER = 0.5
"""Each delay is stretched by a random factor of up to this share, so retries of many tasks spread out."""


def io_task_retries(condition: Callable[[Any, Any, Any], bool]) -> dict[str, Any]:
    """Prefect task options of an I/O task: exponential backoff with jitter, retrying when `condition` says so."""
    return {
        "retries": IO_TASK_RETRIES,
        "retry_delay_seconds": exponential_backoff(backoff_factor=IO_RETRY_FIRST_DELAY_S),
        "retry_jitter_factor": IO_RETRY_JITTER,
        "retry_condition_fn": condition,
    }

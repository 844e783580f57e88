"""Prefect retry conditions shared by the stage tasks: retry only what another attempt can fix.

Both follow Prefect's `retry_condition_fn(task, task_run, state) -> bool` signature.
"""

from typing import Any

from tasks.errors import MosaicError, TransientReadError


def _error_of(state: Any) -> BaseException | None:
    error = state.result(raise_on_failure=False)
    return error if isinstance(error, BaseException) else None


def retry_transient_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only a failure that is, or was caused by, a `TransientReadError` (5xx, timeout, truncation)."""
    error = _error_of(state)
    return isinstance(error, TransientReadError) or isinstance(getattr(error, "__cause__", None), TransientReadError)


def retry_unless_mosaic_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry unexpected failures (workspace or S3 I/O), never our own one-line errors or a missing file."""
    return not isinstance(_error_of(state), (MosaicError, FileNotFoundError))

"""Retries: each kind of failure is retried by exactly one layer.

- Remote reads (scene assets, the STAC API) retry inside the stage with `retried`: exponential
  backoff with jitter, capped, for failures a classifier calls transient; a permanent failure ends
  at its first attempt. GDAL's own HTTP retry is off (`tasks.storage.gdal_env`) and the Prefect tasks around
  these stages do not retry read failures.
- Workspace and publishing I/O (local files, the S3 workspace, the products bucket) retry at the
  Prefect task level (`io_task_retries`), on the conditions below, which follow Prefect's
  `retry_condition_fn(task, task_run, state) -> bool` signature.
"""

import errno
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError
from prefect.tasks import exponential_backoff

from tasks.core.errors import StoreUnreachable, TransientReadError, error_chain
from tasks.core.logs import stage_logger

__all__ = [
    "NOT_FOUND_CODES",
    "NO_SPACE_ERRNOS",
    "Failure",
    "RetriesEnded",
    "RetryPolicy",
    "io_task_retries",
    "is_no_space",
    "is_transient_io_failure",
    "retried",
    "retry_io_failure",
    "s3_error_code",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """What went wrong in one attempt, in one line, and whether another attempt can fix it."""

    reason: str
    transient: bool


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and delays of a retried operation: delay k is first_delay_s x 2^(k-1), capped at
    max_delay_s, times a random factor in [0.5, 1.5)."""

    attempts: int
    first_delay_s: float
    max_delay_s: float

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based)."""
        return self._nominal_delay_s(attempt) * (0.5 + random.random())

    @property
    def longest_wait_s(self) -> float:
        """The most seconds spent waiting between all attempts."""
        return sum(1.5 * self._nominal_delay_s(attempt) for attempt in range(1, self.attempts))

    def _nominal_delay_s(self, attempt: int) -> float:
        return min(self.first_delay_s * 2 ** (attempt - 1), self.max_delay_s)


class RetriesEnded(Exception):
    """A retried operation gave up: `failure` is the last attempt's, after `attempts` attempts over `seconds`."""

    def __init__(self, failure: Failure, attempts: int, seconds: float) -> None:
        super().__init__(failure, attempts, seconds)
        self.failure, self.attempts, self.seconds = failure, attempts, seconds

    def __str__(self) -> str:
        return self.reason

    @property
    def reason(self) -> str:
        """The last failure; for a transient one, how long it was retried."""
        if not self.failure.transient:
            return self.failure.reason
        return f"{self.failure.reason} (transient; gave up after {self.attempts} attempts over {self.seconds:.0f} s)"


def retried(
    operation: Callable[[int], T], classify: Callable[[Exception], Failure | None], policy: RetryPolicy, what: str
) -> T:
    """`operation(attempt)` (attempt counts from 1), retried while `classify` calls its failures transient.

    Raises `RetriesEnded` from the last error at the first permanent failure, or when the attempts
    are spent; an error `classify` maps to None is not a failure of the operation (a bad input, a
    bug) and propagates unchanged. `what` names the operation in the log lines of each retry.
    """
    started = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        try:
            return operation(attempt)
        except Exception as error:
            failure = classify(error)
            if failure is None:
                raise
            if not failure.transient or attempt == policy.attempts:
                raise RetriesEnded(failure, attempt, time.monotonic() - started) from error
        delay = policy.delay_s(attempt)
        stage_logger(__name__).warning(
            "%s: attempt %d of %d failed (%s); retrying in %.1f s", what, attempt, policy.attempts, failure.reason, delay
        )
        time.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


THROTTLING_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestLimitExceeded"})
"""S3 error codes that ask the client to come back later."""
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
"""S3 error codes of a missing object (HEAD answers a bare 404)."""
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""OS errors of a full disk or an exhausted quota."""
IO_TASK_RETRIES = 3
IO_RETRY_FIRST_DELAY_S = 10
"""Delay before a task's first retry; each further retry doubles it (10, 20, 40 s) before jitter."""
IO_RETRY_JITTER = 0.5
"""Each delay is stretched by a random factor of up to this share, so retries of many tasks spread out."""


def s3_error_in(error: BaseException) -> ClientError | None:
    """The S3 answer behind `error`: itself, or the `ClientError` in its chain (boto3's transfers
    wrap it in an `S3UploadFailedError`)."""
    return next((link for link in error_chain(error) if isinstance(link, ClientError)), None)


def s3_error_code(error: BaseException) -> str:
    """The S3 error code behind `error` ('NoSuchBucket', 'SlowDown', ...), or '' when S3 gave none."""
    s3_answer = s3_error_in(error)
    return s3_answer.response.get("Error", {}).get("Code", "") if s3_answer is not None else ""


def is_transient_io_failure(error: object) -> bool:
    """Whether a workspace or S3 failure may pass: an OS-level I/O error (not a missing file, not a full
    disk), a transient workspace read, a store that did not answer, a connection failure, S3 5xx or
    throttling. Never a failed scene read (its reader already retried), an S3 refusal (no bucket, no
    access), a bug or a bad input."""
    if not isinstance(error, BaseException) or isinstance(error, FileNotFoundError) or is_no_space(error):
        return False
    if (s3_answer := s3_error_in(error)) is not None:
        answer = s3_answer.response
        return answer.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500 or s3_error_code(error) in THROTTLING_CODES
    return isinstance(error, (OSError, TransientReadError, StoreUnreachable, BotoCoreError, S3UploadFailedError))


def is_no_space(error: BaseException) -> bool:
    """Whether a full disk or quota is behind `error` (an OSError ENOSPC or EDQUOT in its chain): no retry frees it."""
    return any(isinstance(link, OSError) and link.errno in NO_SPACE_ERRNOS for link in error_chain(error))


def retry_io_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: the task's failure `is_transient_io_failure`."""
    return is_transient_io_failure(state.result(raise_on_failure=False))


def io_task_retries() -> dict[str, Any]:
    """Prefect task options of an I/O task: exponential backoff with jitter, retrying `retry_io_failure`."""
    return {
        "retries": IO_TASK_RETRIES,
        "retry_delay_seconds": exponential_backoff(backoff_factor=IO_RETRY_FIRST_DELAY_S),
        "retry_jitter_factor": IO_RETRY_JITTER,
        "retry_condition_fn": retry_io_failure,
    }

"""Retries: one layer per failure kind, and only what another attempt can fix is retried."""

import errno

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, EndpointConnectionError
from prefect.states import Failed
from rasterio.errors import RasterioIOError

from tasks.core.errors import DiskFull, InvalidSettings, SceneReadError, TransientReadError
from tasks.core.retry import Failure, RetriesEnded, RetryPolicy, retried, retry_io_failure

NO_WAIT = RetryPolicy(attempts=4, first_delay_s=0.0, max_delay_s=0.0)


def s3_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def upload_failed(cause: ClientError) -> S3UploadFailedError:
    """What boto3's upload_file raises for an S3 error: the error as its context."""
    try:
        try:
            raise cause
        except ClientError as error:
            raise S3UploadFailedError(f"Failed to upload x.tif to bucket/x.tif: {error}")  # noqa: B904 (as boto3 does)
    except S3UploadFailedError as wrapped:
        return wrapped


def staging_failed(cause: OSError) -> OSError:
    """An I/O error raised while handling a full disk (GDAL's, say): the full disk is its context."""
    try:
        try:
            raise cause
        except OSError:
            raise OSError("could not stage the file")  # noqa: B904 (the context is the point)
    except OSError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("error", "is_retried"),
    [
        (OSError("connection reset"), True),
        (RasterioIOError("HTTP response code: 503"), True),
        (TransientReadError("read timed out"), True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
        (s3_error("InternalError", 500), True),
        (s3_error("SlowDown", 503), True),
        (s3_error("NoSuchBucket", 404), False),
        (s3_error("AccessDenied", 403), False),
        (upload_failed(s3_error("SlowDown", 503)), True),
        (upload_failed(s3_error("AccessDenied", 403)), False),
        (SceneReadError("S2B_X", "red", "HTTP 503 (transient; gave up after 8 attempts over 60 s)", True), False),
        (FileNotFoundError("scenes/x.tif"), False),
        (OSError(errno.ENOSPC, "No space left on device", "/staging/x.tif"), False),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), False),
        (staging_failed(OSError(errno.ENOSPC, "No space left on device")), False),
        (DiskFull([("/staging", "staging_dir")], 10**9, 0), False),
        (InvalidSettings("bad month"), False),
        (ValueError("a bug"), False),
    ],
)
def test_io_failures_are_retried_and_nothing_else(error: Exception, is_retried: bool) -> None:
    assert retry_io_failure(None, None, Failed(data=error)) is is_retried


def classify(error: Exception) -> Failure | None:
    if isinstance(error, ConnectionError):
        return Failure("connection refused", transient=True)
    if isinstance(error, FileNotFoundError):
        return Failure("not found", transient=False)
    return None


def failing(errors: list[Exception], result: str = "read") -> tuple[list[int], object]:
    """An operation raising `errors` in turn, then returning `result`; and the attempts it saw."""
    attempts: list[int] = []

    def operation(attempt: int) -> str:
        attempts.append(attempt)
        if errors:
            raise errors.pop(0)
        return result

    return attempts, operation


def test_transient_failures_are_retried_until_success() -> None:
    attempts, operation = failing([ConnectionRefusedError(), ConnectionRefusedError()])
    assert retried(operation, classify, NO_WAIT, "asset") == "read"
    assert attempts == [1, 2, 3]


def test_a_permanent_failure_costs_one_attempt() -> None:
    attempts, operation = failing([FileNotFoundError()])
    with pytest.raises(RetriesEnded) as ended:
        retried(operation, classify, NO_WAIT, "asset")
    assert attempts == [1] and ended.value.reason == "not found"


def test_spent_attempts_say_how_long_they_tried() -> None:
    attempts, operation = failing([ConnectionRefusedError()] * 5)
    with pytest.raises(RetriesEnded) as ended:
        retried(operation, classify, NO_WAIT, "asset")
    assert attempts == [1, 2, 3, 4]
    assert ended.value.reason == "connection refused (transient; gave up after 4 attempts over 0 s)"


def test_errors_that_are_no_failure_of_the_operation_pass_unchanged() -> None:
    attempts, operation = failing([ValueError("a bug")])
    with pytest.raises(ValueError, match="a bug"):
        retried(operation, classify, NO_WAIT, "asset")
    assert attempts == [1]


def test_delays_double_up_to_the_cap_with_jitter() -> None:
    """Of 200 delays drawn uniformly in [0.5, 1.5) x nominal, some lie in its lowest and in its highest quarter (all but
    certainly: a quarter is missed with a chance of 0.75^200, 1e-25)."""
    policy = RetryPolicy(attempts=8, first_delay_s=1.0, max_delay_s=16.0)
    for attempt, nominal in enumerate([1, 2, 4, 8, 16, 16, 16], start=1):
        delays = [policy.delay_s(attempt) for _ in range(200)]
        assert 0.5 * nominal <= min(delays) and max(delays) < 1.5 * nominal
        assert min(delays) < 0.75 * nominal and max(delays) > 1.25 * nominal, (
            f"attempt {attempt}: delays only {min(delays):.3f}..{max(delays):.3f} s around a nominal {nominal} s"
        )
    assert policy.longest_wait_s == pytest.approx(1.5 * 63)

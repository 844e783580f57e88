"""Retry conditions: only what another attempt can fix is retried."""

import pytest
from botocore.exceptions import EndpointConnectionError
from prefect.states import Failed
from rasterio.errors import RasterioIOError

from tasks.errors import InvalidSettings, SceneReadError, TransientReadError
from tasks.retry import retry_io_failure, retry_transient_failure


def scene_read_error_caused_by(cause: Exception) -> SceneReadError:
    try:
        raise SceneReadError("S2B_X", "red", "gave up") from cause
    except SceneReadError as error:
        return error


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (OSError("connection reset"), True),
        (RasterioIOError("HTTP response code: 503"), True),
        (TransientReadError("read timed out"), True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
        (FileNotFoundError("scenes/x.tif"), False),
        (InvalidSettings("bad month"), False),
        (ValueError("a bug"), False),
    ],
)
def test_io_failures_are_retried_and_nothing_else(error: Exception, retried: bool) -> None:
    assert retry_io_failure(None, None, Failed(data=error)) is retried


def test_only_transient_read_failures_are_retried() -> None:
    assert retry_transient_failure(None, None, Failed(data=TransientReadError("api down")))
    assert retry_transient_failure(None, None, Failed(data=scene_read_error_caused_by(TransientReadError("503"))))
    assert not retry_transient_failure(None, None, Failed(data=scene_read_error_caused_by(OSError("no such key"))))
    assert not retry_transient_failure(None, None, Failed(data=InvalidSettings("bad url")))

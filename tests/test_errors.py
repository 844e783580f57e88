"""Errors travel between processes: every error a task can raise comes back from pickle whole.

Dask sends a failed task's error from the worker to the flow with its chain, through tblib; rasterio's
`CPLE_*` errors do not survive that, so the task wrappers (`portable_errors`) replace them.
"""

import pickle
from pathlib import Path

import pytest
import rasterio
import tblib.pickling_support
from botocore.exceptions import ClientError, EndpointConnectionError

from tasks.core import errors
from tasks.core.errors import (
    DiskFull,
    ErrorCause,
    MonthsFailed,
    MosaicError,
    PartsFailed,
    SceneOutsideAOI,
    SceneReadError,
    TilesFailed,
    TooManyFailedScenes,
    error_chain,
    portable,
    portable_errors,
    root_cause,
    scene_reason,
)
from tasks.core.retry import Failure, RetriesEnded

CONSTRUCTOR_ARGUMENTS: dict[type[MosaicError], tuple] = {
    SceneReadError: ("S2B_X", "nir", "truncated: HTTP 416 for a range past the object's end", False),
    SceneOutsideAOI: ("S2B_X",),
    TooManyFailedScenes: ("2 of 6 scenes failed", [("S2B_X", "nir: not found (HTTP 404)")]),
    TilesFailed: ("1 of 4 tiles failed", [("r000c001", "cannot publish to s3://b/p: AccessDenied")]),
    MonthsFailed: ("1 of 3 months failed", [("2020-02", "no scene of the AOI in 2020-02")]),
    PartsFailed: ("2 parts failed", [("a", "why"), ("b", "why not")]),
    DiskFull: ([("/data/ws/.staging", "staging_dir"), ("/data/ws", "workspace")], 1_240_000_000, 310_000_000),
}
"""Arguments of the errors whose constructor is not (message)."""


def all_subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *all_subclasses(direct))]


def project_errors() -> list[MosaicError]:
    """One instance of every error class in `tasks.core.errors`."""
    return [
        error_class(*CONSTRUCTOR_ARGUMENTS.get(error_class, (f"{error_class.__name__}: one line; the fix",)))
        for error_class in all_subclasses(MosaicError)
        if error_class.__module__ == errors.__name__
    ]


def real_rasterio_failure(tmp_path: Path) -> Exception:
    """What rasterio raises reading a file that is not a GeoTIFF: a chain with `CPLE_*` errors."""
    not_a_tiff = tmp_path / "scene.tif"
    not_a_tiff.write_bytes(b"not a tiff at all" * 100)
    try:
        rasterio.open(not_a_tiff)
    except rasterio.errors.RasterioIOError as error:
        return error
    raise AssertionError("rasterio opened a file that is not a GeoTIFF")


def raised_from(error: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise error from inner
    except BaseException as outer:
        return outer


@pytest.fixture(scope="module", autouse=True)
def tblib_installed() -> None:
    """Pickle as a Dask worker does: with tracebacks and chains (distributed installs tblib)."""
    tblib.pickling_support.install()


def round_trip(error: BaseException) -> BaseException:
    return pickle.loads(pickle.dumps(error))


def test_rasterio_errors_do_not_survive_pickling_as_they_are(tmp_path: Path) -> None:
    with pytest.raises(AttributeError, match="args"):
        round_trip(real_rasterio_failure(tmp_path))


@pytest.mark.parametrize("error", project_errors(), ids=lambda error: type(error).__name__)
def test_every_project_error_round_trips_with_a_real_rasterio_cause(error: MosaicError, tmp_path: Path) -> None:
    cause = real_rasterio_failure(tmp_path)

    @portable_errors
    def task_body() -> None:
        raise error from cause

    with pytest.raises(MosaicError) as raised:
        task_body()
    copy = round_trip(raised.value)

    assert type(copy) is type(error) and str(copy) == str(error) and copy.args == error.args
    assert vars(copy) == vars(error)
    assert [str(link) for link in error_chain(copy)] == [str(link) for link in error_chain(raised.value)]
    assert "not recognized as being in a supported file format" in root_cause(copy)


def test_tiles_failed_keeps_its_tiles_through_pickling() -> None:
    error = TilesFailed("2 of 4 tiles failed; re-run the month", [("r000c000", "a"), ("r001c001", "b")])

    copy = round_trip(portable(error))

    assert type(copy) is TilesFailed and str(copy) == "2 of 4 tiles failed; re-run the month"
    assert copy.failed_tiles == [("r000c000", "a"), ("r001c001", "b")]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (SceneReadError("S2B_X", "nir", "not found (HTTP 404)"), "nir: not found (HTTP 404)"),
        (SceneOutsideAOI("S2B_X"), "its footprint covers no pixel of the AOI on the grid"),
        (ValueError("out of memory\nwhile masking"), "out of memory"),
        (ValueError(), "ValueError"),
    ],
    ids=["read error", "outside", "other error", "no message"],
)
def test_scene_reason_is_one_line(error: Exception, reason: str) -> None:
    assert scene_reason(error) == reason


@pytest.mark.parametrize(
    "library_error",
    [
        ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}, "PutObject"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
        OSError(28, "No space left on device"),
        RetriesEnded(Failure("connection refused", transient=True), 8, 63.0),
    ],
    ids=lambda error: type(error).__name__,
)
def test_library_errors_keep_their_type_so_retry_conditions_still_apply(
    library_error: Exception, tmp_path: Path
) -> None:
    @portable_errors
    def task_body() -> None:
        raise library_error from real_rasterio_failure(tmp_path)

    with pytest.raises(type(library_error)) as raised:
        task_body()
    copy = round_trip(raised.value)
    assert type(copy) is type(library_error) and str(copy) == str(library_error)
    *_, innermost = error_chain(copy)
    assert isinstance(innermost, ErrorCause) and innermost.type_name.endswith("CPLE_OpenFailedError")


def test_an_unpicklable_error_itself_becomes_its_stand_in(tmp_path: Path) -> None:
    failure = real_rasterio_failure(tmp_path)
    copy = round_trip(portable(raised_from(failure.__context__, ValueError("inner"))))
    assert isinstance(copy, ErrorCause) and copy.type_name.endswith("CPLE_OpenFailedError")
    assert str(copy.__cause__) == "inner"

"""Errors of the mosaic pipeline: one base class, a few precise subclasses, and their travel between processes.

Every message is one line that names the problem and the fix, so a command-line user or a Prefect
run page shows it without a stack trace.

An error that leaves a task may be pickled (Dask sends it from a worker to the flow, with its whole
`__cause__`/`__context__` chain, through tblib). So every error here is rebuilt from its `args`,
and `portable_errors` replaces each link of a chain that does not survive pickling (rasterio's
`CPLE_*` errors, for one) by an `ErrorCause` holding its type name and message.
"""

import functools
import pickle
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import ParamSpec, TypeVar

__all__ = [
    "NAME_NOT_FOUND_CODES",
    "DiskFull",
    "ErrorCause",
    "InferenceOutOfMemory",
    "InvalidAOI",
    "InvalidProduct",
    "InvalidSettings",
    "MissingModelWeights",
    "MonthsFailed",
    "MosaicError",
    "NoScenesFound",
    "OutputCollision",
    "PartsFailed",
    "PublishError",
    "SceneOutsideAOI",
    "SceneReadError",
    "StacApiError",
    "StoreUnreachable",
    "TilesFailed",
    "TooFewClearPixels",
    "TooManyFailedScenes",
    "TransientReadError",
    "error_chain",
    "first_line",
    "name_not_found",
    "portable",
    "portable_errors",
    "root_cause",
    "scene_reason",
]

P = ParamSpec("P")
R = TypeVar("R")


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type name when it has none."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """The error, then what caused it (`__cause__`, else `__context__`), down to the innermost one."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


NAME_NOT_FOUND_CODES = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})
"""getaddrinfo's answers that DNS knows no address for the name; EAI_AGAIN (the resolver did not
answer) and EAI_FAIL may pass."""


def name_not_found(error: BaseException) -> bool:
    """Whether `error`, or an error in its chain (under a client's wrappers), is DNS saying a host name does not exist."""
    return any(isinstance(link, socket.gaierror) and link.errno in NAME_NOT_FOUND_CODES for link in error_chain(error))


def root_cause(error: BaseException) -> str:
    """The first line of the innermost error of a chain (the DNS failure under a client's wrapper)."""
    *_, innermost = error_chain(error)
    return first_line(innermost)


class MosaicError(Exception):
    """Base class of every error this project raises on purpose; `args` are the constructor's arguments."""


class InvalidAOI(MosaicError):
    """The area of interest cannot be read, is empty, or is not a valid polygon."""


class InvalidSettings(MosaicError):
    """A setting is out of range or inconsistent with another."""


class NoScenesFound(MosaicError):
    """The search returned no usable scene for the AOI and month."""


class StacApiError(MosaicError):
    """The STAC API could not be reached after retries, or refused the search."""


class SceneReadError(MosaicError):
    """A scene asset could not be read; the scene is skipped and recorded with `scene_reason`.

    `transient` tells whether the last failure was of the kind another attempt can fix (the
    reader's retries were exhausted) or permanent (missing, forbidden, truncated, not a GeoTIFF).
    """

    def __init__(self, item_id: str, asset_key: str, reason: str, transient: bool = False) -> None:
        super().__init__(item_id, asset_key, reason, transient)
        self.item_id, self.asset_key, self.reason, self.transient = item_id, asset_key, reason, transient

    def __str__(self) -> str:
        return f"scene {self.item_id}: {self.scene_reason}"

    @property
    def scene_reason(self) -> str:
        """'<asset>: <reason>', as metadata.json and Slack list it."""
        return f"{self.asset_key}: {self.reason}"


class SceneOutsideAOI(MosaicError):
    """The scene's footprint covers no pixel of the AOI on the grid: there is nothing to read (skipped, not failed)."""

    def __init__(self, item_id: str) -> None:
        super().__init__(item_id)
        self.item_id = item_id

    def __str__(self) -> str:
        return f"scene {self.item_id}: {self.scene_reason}"

    @property
    def scene_reason(self) -> str:
        return "its footprint covers no pixel of the AOI on the grid"


class TransientReadError(MosaicError):
    """A workspace read failed in a way worth retrying (HTTP 5xx, timeout, truncated response)."""


class MissingModelWeights(MosaicError):
    """OmniCloudMask weights are not on disk and cannot be downloaded."""


class InferenceOutOfMemory(MosaicError):
    """The device ran out of memory even at batch size 1."""


class PartsFailed(MosaicError):
    """A failure of several named parts of a run; `failures` lists (name, reason), and survives pickling."""

    def __init__(self, message: str, failures: Sequence[tuple[str, str]]) -> None:
        super().__init__(message, tuple(failures))
        self.failures = list(failures)

    def __str__(self) -> str:
        return str(self.args[0])


class TooManyFailedScenes(PartsFailed):
    """More scenes failed than the allowed fraction, or none is usable."""

    @property
    def failed_scenes(self) -> list[tuple[str, str]]:
        """(item id, reason) of each failed scene (Slack's failure notice lists them)."""
        return self.failures


class MonthsFailed(PartsFailed):
    """Months of a backfill that could not be built; the others are published."""

    @property
    def failed_months(self) -> list[tuple[str, str]]:
        """('YYYY-MM', reason) of each failed month."""
        return self.failures


class TilesFailed(PartsFailed):
    """Output tiles could not be built or published after their retries."""

    @property
    def failed_tiles(self) -> list[tuple[str, str]]:
        """(tile label, reason) of each failed tile."""
        return self.failures


class TooFewClearPixels(MosaicError):
    """Less of the AOI than `min_valid_share` has a clear observation: the month is not published."""


class OutputCollision(MosaicError):
    """The month's product folder holds the products of another AOI."""


class PublishError(MosaicError):
    """The products cannot be published for a reason no retry fixes (missing bucket, refused credentials)."""


class DiskFull(MosaicError):
    """A local folder of the run (staging_dir, workspace, output_dir) lacks the disk space the run needs.

    `folders` are ('/abs/path', role) of the run's folders on the full filesystem; sizes are bytes.
    """

    def __init__(self, folders: Sequence[tuple[str, str]], needed_bytes: int, free_bytes: int) -> None:
        super().__init__(tuple(folders), needed_bytes, free_bytes)
        self.folders, self.needed_bytes, self.free_bytes = tuple(folders), needed_bytes, free_bytes

    def __str__(self) -> str:
        where = ", ".join(f"{folder} ({role})" for folder, role in self.folders)
        roles = ", ".join(role for _, role in self.folders)
        return (
            f"no space left on device in {where}: needs about {_megabytes(self.needed_bytes)} MB, "
            f"{_megabytes(self.free_bytes)} MB free; free space there, or point {roles} at a larger disk"
        )


def _megabytes(size_bytes: int) -> str:
    """A size in MB (10^6 bytes) for a message: one decimal below 10 MB, whole MB above."""
    size_mb = size_bytes / 1e6
    return f"{size_mb:.1f}" if size_mb < 10 else f"{size_mb:,.0f}"


class StoreUnreachable(MosaicError):
    """An object store did not answer (connection refused, timed out): another attempt may reach it,
    so the I/O tasks retry it; the message names the store, its endpoint and what to check."""


class InvalidProduct(MosaicError):
    """A product raster is off the grid, badly laid out, not a valid COG, or its STAC Item does not validate."""


class ErrorCause(Exception):
    """A picklable stand-in for a link of an error chain: the original's type name and message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(type_name, message)
        self.type_name, self.message = type_name, message

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"

    @classmethod
    def of(cls, error: BaseException) -> "ErrorCause":
        return cls(f"{type(error).__module__}.{type(error).__qualname__}", str(error))


def _survives_pickling(error: BaseException) -> bool:
    """Whether the error alone (its chain aside) comes back from pickle as the same type and message."""
    cause, context = error.__cause__, error.__context__
    try:
        error.__cause__ = error.__context__ = None
        copy = pickle.loads(pickle.dumps(error))
        return type(copy) is type(error) and str(copy) == str(error)
    except Exception:
        return False
    finally:
        error.__cause__, error.__context__ = cause, context


def scene_reason(error: BaseException) -> str:
    """Why a scene was not used, in one line: '<asset>: <reason>' for our errors, else the error's first line."""
    return getattr(error, "scene_reason", None) or first_line(error)


def portable(error: BaseException) -> BaseException:
    """`error` with every link of its chain that does not survive pickling replaced by an `ErrorCause`.

    The chain is rebuilt through `__cause__` only (the context of each link becomes its cause when it
    has none), so the rebuilt error tells the same story in fewer, picklable links.
    """
    links = [link if _survives_pickling(link) else ErrorCause.of(link) for link in error_chain(error)]
    for outer, inner in zip(links, links[1:], strict=False):
        outer.__cause__, outer.__context__, outer.__suppress_context__ = inner, None, True
    links[-1].__cause__ = links[-1].__context__ = None
    return links[0]


def portable_errors(function: Callable[P, R]) -> Callable[P, R]:
    """Decorate a task function so that any error leaving it survives pickling (see `portable`)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except Exception as error:
            failure = error
        raise portable(failure)

    return wrapper


"""Errors of the mosaic pipeline: one base class, a few precise subclasses.

Every message is one line that names the problem and the fix, so a command-line user or a Prefect
run page shows it without a stack trace.
"""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type name when it has none."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class MosaicError(Exception):
    """Base class of every error this project raises on purpose."""


class InvalidAOI(MosaicError):
    """The area of interest cannot be read, is empty, or is not a valid polygon."""


class InvalidSettings(MosaicError):
    """A setting is out of range or inconsistent with another."""


class NoScenesFound(MosaicError):
    """The search returned no usable scene for the AOI and month."""


class SceneReadError(MosaicError):
    """A scene asset could not be read after retries; the scene is skipped and recorded."""

    def __init__(self, item_id: str, asset_key: str, reason: str) -> None:
        self.item_id = item_id
        self.asset_key = asset_key
        self.reason = reason
        super().__init__(f"scene {item_id} asset {asset_key!r} could not be read: {reason}")


class SceneOutsideAOI(SceneReadError):
    """The scene's footprint covers no pixel of the AOI on the grid: there is nothing to read (skipped, not failed)."""

    def __init__(self, item_id: str) -> None:
        super().__init__(
            item_id, "footprint", "it covers no pixel of the AOI on the grid; search with the AOI geometry to skip it"
        )


class TransientReadError(MosaicError):
    """A read failed in a way worth retrying (HTTP 5xx, timeout, truncated response)."""


class MissingModelWeights(MosaicError):
    """OmniCloudMask weights are not on disk and cannot be downloaded."""


class InferenceOutOfMemory(MosaicError):
    """The device ran out of memory even at batch size 1."""


class TooManyFailedScenes(MosaicError):
    """More scenes failed than the allowed fraction; `failed_scenes` lists (item id, reason)."""

    def __init__(self, message: str, failed_scenes: list[tuple[str, str]]) -> None:
        self.failed_scenes = failed_scenes
        super().__init__(message)


class InvalidProduct(MosaicError):
    """A product raster is off the grid, badly laid out, not a valid COG, or its STAC Item does not validate."""

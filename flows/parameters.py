"""The monthly flow's one parameter: a typed settings model the Prefect UI renders as a form.

Block names are settings; secrets never are (they live in the blocks).
"""

import os
from typing import Literal

from pydantic import Field, field_validator

from tasks.core.errors import InvalidSettings
from tasks.core.month import Month
from tasks.core.settings import (
    CompositeSettings,
    FrozenSettings,
    GridSettings,
    MaskSettings,
    ReadSettings,
    SearchSettings,
    TileSettings,
)
from tasks.gap_fill.fill import FillMethod
from tasks.geometry.aoi import AOI_NAME_PATTERN

__all__ = ["MosaicSettings", "RunnerSettings", "tile_concurrency", "tiles_in_flight"]


class RunnerSettings(FrozenSettings):
    """Where scene work runs."""

    task_runner: Literal["threads", "dask"] = Field(
        "threads", description="Thread pool in the flow process, or Dask (a scheduler address or a local cluster)."
    )
    max_concurrent_tiles: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Output tiles in flight at once on threads (memory and scratch disk grow with it). "
        "None: half the CPU cores, at least 2. On Dask, each worker runs its own threads' worth.",
    )
    max_concurrent_scenes: int = Field(4, ge=1, le=256, description="Scene reads at the same time within a tile.")
    dask_address: str | None = Field(
        None, description="Dask scheduler address, e.g. 'tcp://10.0.0.5:8786'; None starts a local cluster."
    )
    dask_workers: int = Field(2, ge=1, le=256, description="Worker processes of the local Dask cluster.")


def tile_concurrency(runner: RunnerSettings) -> int:
    """Tiles in flight at once on threads: `max_concurrent_tiles`, else half the CPU cores, at least 2."""
    return runner.max_concurrent_tiles or max(2, (os.cpu_count() or 1) // 2)


def tiles_in_flight(runner: RunnerSettings) -> int:
    """Tiles in flight at once: `tile_concurrency` on threads, one per worker of the local Dask cluster (each
    runs one thread; a remote cluster's workers are not known here, and each tile checks its own disk as it starts)."""
    return tile_concurrency(runner) if runner.task_runner == "threads" else runner.dask_workers


class MosaicSettings(FrozenSettings):
    """Everything one monthly mosaic run needs."""

    aoi: str = Field(
        description="AOI: path or URL of a vector file (GeoPackage, GeoJSON, Shapefile; any CRS), "
        "a WKT polygon, or a bbox 'minx,miny,maxx,maxy' in EPSG:4326."
    )
    aoi_name: str | None = Field(
        None,
        pattern=AOI_NAME_PATTERN.pattern,
        description="Name of the AOI's product folder and files (letters, digits, '_', '-'); deployments set it. "
        "None: the file's stem and a digest of the AOI, e.g. 'fields-3fa2b1c0', which no other AOI gets.",
    )
    month: str | None = Field(
        None, description="Month 'YYYY-MM'. None: the month before the run's scheduled start time."
    )
    grid: GridSettings = Field(default_factory=GridSettings)
    tiles: TileSettings = Field(default_factory=TileSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    read: ReadSettings = Field(default_factory=ReadSettings)
    mask: MaskSettings = Field(default_factory=MaskSettings)
    composite: CompositeSettings = Field(default_factory=CompositeSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    workspace: str = Field(
        "./workspace", description="Intermediate files: a local directory or an 's3://bucket/prefix'."
    )
    output_dir: str = Field("./output", description="Where products go when no S3 block is named.")
    s3_block: str | None = Field(None, description="Name of a prefect-aws S3Bucket block for the products.")
    slack_block: str | None = Field(None, description="Name of a Slack notifier block; None sends no message.")
    staging_dir: str | None = Field(
        None,
        description="Local directory where products are built before publishing (a retry finds them there). "
        "None: '<workspace>/.staging' for a local workspace, the system temp directory for an S3 one.",
    )
    max_failed_fraction: float = Field(
        0.1, ge=0, le=1, description="Largest share of scenes allowed to fail before the run fails."
    )
    min_valid_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Smallest share of the AOI with a clear observation for the month to be published; "
        "below it the run fails and publishes nothing.",
    )
    fill: FillMethod = Field(
        "interpolate",
        description="Gap fill of pixels with no clear observation this month, from the same AOI's published months "
        "on the same grid: 'previous' copies the nearest earlier month that observed the pixel; 'interpolate' "
        "interpolates linearly in time between the nearest earlier and later ones (the nearest one where only one "
        "side observed it); 'none' leaves gaps as nodata. Observed pixels and the count never change; a fill layer "
        "tells filled pixels apart.",
    )
    fill_max_months: int = Field(
        3, ge=1, le=24, description="Months away a gap may take its value from, at most (each side)."
    )
    max_grid_pixels: float = Field(
        2e10, gt=0, description="Largest output grid, in pixels; a bigger grid (a bbox typo?) is refused before any read."
    )

    @field_validator("month")
    @classmethod
    def _check_month(cls, month: str | None) -> str | None:
        if month is not None:
            try:
                Month.parse(month)
            except InvalidSettings as error:
                raise ValueError(str(error)) from None
        return month

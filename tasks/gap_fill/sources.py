"""The published months of an AOI that can fill a month's gaps, and their rasters over one tile.

A neighbour is a month of the same AOI within `fill_max_months` (earlier only for `previous`)
that was published and whose grid equals this month's (a month built on another grid is left out,
with a warning). Published means its metadata.json is out: it is put after every layer, and unlike
the STAC Item it is not withdrawn while the month is re-run or refilled, so months refilled at the
same time (a backfill) still see each other; their observed pixels do not change in a refill. Its
layers are read from where it was published (single COG or mosaic index) through its own
`MonthDestination`, so an S3 month is read with the products block's credentials. Each neighbour
offers its observed pixels only: where its count is > 0.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox
from rasterio.windows import Window

from blocks.publish import MonthDestination
from tasks.core.logs import stage_logger
from tasks.core.month import Month
from tasks.gap_fill.fill import FillMethod
from tasks.geometry.grid import grid_metadata
from tasks.products.metadata import COUNT_LAYER, ProductNames
from tasks.storage.gdal_env import gdal_env
from tasks.storage.workspace import content_digest

__all__ = [
    "OBSERVATION_KEYS",
    "MonthFill",
    "NeighbourMonth",
    "NeighbourTile",
    "neighbour_months",
    "read_neighbour_tile",
    "read_published_window",
]


OBSERVATION_KEYS = ("files", "grid", "scenes_used", "composite", "masking")
"""The parts of a neighbour's metadata.json that decide its observed pixels: its version. Its own fill
(statistics, filled share) is left out, so refilling a neighbour does not make this month's fill stale."""


@dataclass(frozen=True)
class NeighbourMonth:
    """A published month that may fill gaps: `offset` months from the filled one (negative: earlier).

    `files` maps each raster layer the month published ('mosaic', 'count', indices) to its file in
    `destination`; `item_url` is where its STAC Item is; `version` identifies what it observed
    (a digest of its metadata.json's `OBSERVATION_KEYS`), so a rebuilt neighbour changes the fill's inputs.
    """

    offset: int
    month: str
    destination: MonthDestination
    files: dict[str, str]
    item_url: str
    version: str


@dataclass(frozen=True)
class NeighbourTile:
    """A neighbour's layers over one tile: {layer: (band, y, x) array}, and its observed pixels (y, x) bool."""

    offset: int
    layers: dict[str, np.ndarray]
    observed: np.ndarray


def neighbour_months(
    destination_of: Callable[[Month], MonthDestination],
    aoi_name: str,
    month: Month,
    grid: GeoBox,
    method: FillMethod,
    max_months: int,
) -> tuple[NeighbourMonth, ...]:
    """The published months of `aoi_name` on `grid` that may fill `month`'s gaps, nearest first."""
    if method == "none":
        return ()
    sides = (-1, 1) if method == "interpolate" else (-1,)
    offsets = sorted((side * distance for distance in range(1, max_months + 1) for side in sides), key=abs)
    expected_grid = json.loads(json.dumps(grid_metadata(grid)))
    found = []
    for offset in offsets:
        other = month.shifted(offset)
        destination = destination_of(other)
        names = ProductNames.for_run(aoi_name, other)
        metadata = destination.read_json(names.metadata)  # kept while a re-run withdraws the Item
        if metadata is None:
            continue
        if metadata.get("grid") != expected_grid:
            stage_logger(__name__).warning("%s %s is on another grid; it fills no gap of %s", aoi_name, other.label, month.label)
            continue
        files = {layer: name for layer, name in metadata.get("files", {}).items() if isinstance(name, str)}
        version = content_digest(*(metadata.get(key) for key in OBSERVATION_KEYS))
        found.append(NeighbourMonth(offset, other.label, destination, files, destination.url(names.item), version))
    return tuple(found)


@dataclass(frozen=True)
class MonthFill:
    """How a month's gaps are filled: the method, the reach in months and the neighbours found."""

    method: FillMethod
    max_months: int
    neighbours: tuple[NeighbourMonth, ...] = ()

    @property
    def enabled(self) -> bool:
        """Whether the month is filled at all (and so has a fill layer)."""
        return self.method != "none"

    @property
    def digest(self) -> str:
        """What the fill depends on: the method, the reach and each neighbour's published version."""
        return content_digest(self.method, self.max_months, *((neighbour.offset, neighbour.version) for neighbour in self.neighbours))


def read_published_window(destination: MonthDestination, file_name: str, tile_box: GeoBox) -> np.ndarray:
    """The (band, y, x) pixels over `tile_box` (a part of the month's grid) of a raster published in
    `destination` (a tile COG, a single COG or a mosaic index), read with the destination's credentials."""
    path, options = destination.gdal_location(file_name)
    with destination.errors_named(), gdal_env(**options), rasterio.open(path) as raster:
        window = raster.window(*tile_box.boundingbox).round_offsets().round_lengths()
        return raster.read(window=Window(window.col_off, window.row_off, *tile_box.shape.xy))


def read_neighbour_tile(neighbour: NeighbourMonth, tile_box: GeoBox, layers: tuple[str, ...]) -> NeighbourTile:
    """`layers` of a neighbour over `tile_box` (a part of the shared grid), and where it observed."""
    arrays = {layer: read_published_window(neighbour.destination, neighbour.files[layer], tile_box) for layer in layers}
    count = read_published_window(neighbour.destination, neighbour.files[COUNT_LAYER], tile_box)[0]
    return NeighbourTile(neighbour.offset, arrays, count > 0)

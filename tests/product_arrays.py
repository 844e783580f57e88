"""A month's mosaic and count in memory, as the tiles compose them, and the `ProductRun` of them.

The AOI is an L-shaped polygon (not a rectangle), so the grid holds pixels outside it; its grid comes
from `tasks.geometry.grid.grid_for_aoi` and is larger than one 512-pixel COG block, so its COGs get overviews
and a 512-pixel tiling cuts it into 2 x 2 tiles of unequal sizes.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry

from tasks.core.month import Month
from tasks.core.scene import NODATA, FailedScene, SkippedScene, UsedScene
from tasks.core.settings import CompositeSettings, MaskSettings
from tasks.geometry.aoi import aoi_digest, aoi_pixel_mask, load_aoi
from tasks.geometry.grid import grid_for_aoi
from tasks.geometry.tiles import OutputTile, tile_layout
from tasks.products.cog import (
    COUNT_DESCRIPTION,
    COUNT_PROFILE,
    MOSAIC_BANDS,
    MOSAIC_PROFILE,
    REFLECTANCE_SCALE_FACTOR,
    write_count_cog,
    write_mosaic_cog,
)
from tasks.products.metadata import MonthStatistics, ProductRun, statistics_from_histogram
from tasks.products.mosaic_index import IndexBand, IndexTile, mosaic_index_xml
from tasks.tiling.tile import COUNT_VALUES, REFLECTANCE_VALUES

L_SHAPED_AOI_WKT = (
    "POLYGON((15.00 45.00, 15.09 45.00, 15.09 45.03, 15.03 45.03, 15.03 45.07, 15.00 45.07, 15.00 45.00))"
)
"""About 7 x 7.8 km in EPSG:4326 near 15 E 45 N: ~710 x 780 pixels at 10 m in UTM 33N."""
RESOLUTION_M = 10.0
INDEX_TILE_PX = 512
MOSAIC_INDEX_BANDS = tuple(
    IndexBand(band.description, nodata=NODATA, scale=REFLECTANCE_SCALE_FACTOR, offset=0.0) for band in MOSAIC_BANDS
)
COUNT_INDEX_BANDS = (IndexBand(COUNT_DESCRIPTION),)
AOI_SOURCE = "tests/l-shaped.gpkg"
SCENE_DATES = (datetime(2024, 6, 3, 10, 5, tzinfo=UTC), datetime(2024, 6, 18, 10, 7, tzinfo=UTC))
FAILED_SCENE = FailedScene(
    "S2A_33TWL_20240611_0_L2A", "red: server error (HTTP 503) (transient; gave up after 8 attempts over 61 s)"
)
SKIPPED_SCENE = SkippedScene("S2B_33TWL_20240614_0_L2A", "no clear pixel in the AOI")


@dataclass(frozen=True)
class ProductArrays:
    """A mosaic (4, y, x) uint16 and a count (y, x) uint8 on `grid`, empty outside `aoi`.

    A strip of AOI pixels along the top is empty too (no clear observation there): mosaic 0, count 0.
    """

    aoi: Geometry
    grid: GeoBox
    inside_aoi: np.ndarray
    mosaic: np.ndarray
    count: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """AOI pixels with a mosaic value."""
        return self.inside_aoi & (self.mosaic != NODATA).all(axis=0)


def make_product_arrays(seed: int = 0) -> ProductArrays:
    """Random reflectance on a west-east ramp (nir brighter) and counts of 1..11, over the L-shaped AOI."""
    aoi = load_aoi(L_SHAPED_AOI_WKT)
    grid = grid_for_aoi(aoi, None, RESOLUTION_M)
    inside_aoi = aoi_pixel_mask(aoi, grid)
    random = np.random.default_rng(seed)
    height, width = grid.shape.yx
    ramp = np.linspace(200, 3000, width, dtype=np.float32)[None, None, :]
    mosaic = (ramp + random.integers(0, 400, size=(4, height, width))).astype(np.uint16)
    mosaic[3] += 2000
    count = random.integers(1, 12, size=(height, width), dtype=np.uint8)
    empty = ~inside_aoi
    empty[: height // 10, :] = True
    mosaic[:, empty] = NODATA
    count[empty] = 0
    return ProductArrays(aoi, grid, inside_aoi, mosaic, count)


def product_statistics(arrays: ProductArrays) -> MonthStatistics:
    """The mosaic's and count's statistics as the month stage makes them: from histograms of the AOI pixels."""
    aoi_pixels, grid_pixels = int(arrays.inside_aoi.sum()), arrays.inside_aoi.size
    mosaic = tuple(
        statistics_from_histogram(
            band.common_name, np.bincount(values[arrays.valid], minlength=REFLECTANCE_VALUES), aoi_pixels, grid_pixels
        )
        for band, values in zip(MOSAIC_BANDS, arrays.mosaic, strict=True)
    )
    count_histogram = np.bincount(arrays.count[arrays.inside_aoi], minlength=COUNT_VALUES)
    return MonthStatistics(mosaic, statistics_from_histogram("count", count_histogram, aoi_pixels, grid_pixels))


def write_indexed_tiles(arrays: ProductArrays, folder: Path) -> tuple[Path, Path, list[IndexTile]]:
    """Cut the arrays into `INDEX_TILE_PX` tiles, write each as COGs under `folder/tiles/` and the mosaic and
    count indexes over them in `folder`; returns (mosaic index, count index, the mosaic tiles)."""
    layout = tile_layout(arrays.grid, INDEX_TILE_PX)
    (folder / "tiles").mkdir(parents=True)
    mosaic_tiles, count_tiles = [], []
    for row, col in np.ndindex(*layout.shape.yx):
        rows, cols = layout.roi[row, col]
        label = OutputTile(row, col).label
        placement = (rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start)
        mosaic_tiles.append(IndexTile(f"tiles/{label}_mosaic.tif", *placement))
        count_tiles.append(IndexTile(f"tiles/{label}_count.tif", *placement))
        mosaic = np.ascontiguousarray(arrays.mosaic[:, rows, cols])
        write_mosaic_cog(folder / mosaic_tiles[-1].path, mosaic, layout[row, col], MOSAIC_PROFILE)
        write_count_cog(
            folder / count_tiles[-1].path,
            np.ascontiguousarray(arrays.count[rows, cols]),
            layout[row, col],
            COUNT_PROFILE,
        )
    mosaic_index, count_index = folder / "mosaic.vrt", folder / "count.vrt"
    mosaic_index.write_text(mosaic_index_xml(arrays.grid, "uint16", MOSAIC_INDEX_BANDS, mosaic_tiles))
    count_index.write_text(mosaic_index_xml(arrays.grid, "uint8", COUNT_INDEX_BANDS, count_tiles))
    return mosaic_index, count_index, mosaic_tiles


def make_product_run(arrays: ProductArrays, scene_dates: tuple[datetime, ...] = SCENE_DATES) -> ProductRun:
    """The flow's record of a June 2024 month over `arrays`: one used scene per date, one failed, one skipped."""
    scenes = tuple(
        UsedScene(
            item_id=f"S2B_33TWL_{acquired:%Y%m%d}_0_L2A",
            acquired=acquired,
            processing_baseline="05.10",
            valid_fraction=0.9,
        )
        for acquired in scene_dates
    )
    return ProductRun(
        aoi_name="l-shaped",
        aoi_source=AOI_SOURCE,
        aoi=arrays.aoi,
        aoi_digest=aoi_digest(arrays.aoi),
        grid=arrays.grid,
        month=Month(2024, 6),
        composite=CompositeSettings(),
        mask=MaskSettings(masker="scl"),
        scenes_used=scenes,
        scenes_failed=(FAILED_SCENE,),
        scenes_skipped=(SKIPPED_SCENE,),
    )

"""Small staging rasters like the composite stage writes them, for the product tests.

The AOI is an L-shaped polygon (not a rectangle), so the grid holds pixels outside it; its grid
comes from `tasks.grid.grid_for_aoi` and is larger than one 512-pixel COG block, so the COG gets
overviews.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry

from tasks.aoi import aoi_digest, aoi_pixel_mask, load_aoi
from tasks.grid import grid_for_aoi
from tasks.metadata import ProductRun
from tasks.month import Month
from tasks.scene import ClippedScene, FailedScene, SkippedScene
from tasks.settings import CompositeSettings, MaskSettings

L_SHAPED_AOI_WKT = (
    "POLYGON((15.00 45.00, 15.09 45.00, 15.09 45.03, 15.03 45.03, 15.03 45.07, 15.00 45.07, 15.00 45.00))"
)
"""About 7 x 7.8 km in EPSG:4326 near 15 E 45 N: ~710 x 780 pixels at 10 m in UTM 33N."""
RESOLUTION_M = 10.0


@dataclass(frozen=True)
class StagingRasters:
    """A staging mosaic and count on `grid`, with the pixels they hold inside `aoi`."""

    aoi: Geometry
    grid: GeoBox
    inside_aoi: np.ndarray
    mosaic_path: Path
    count_path: Path
    mosaic: np.ndarray
    count: np.ndarray


def make_staging_rasters(out_dir: Path, data_outside_aoi: bool = False, seed: int = 0) -> StagingRasters:
    """Write a 4-band uint16 mosaic and a uint8 count like the composite's.

    Pixels outside the AOI are empty, unless `data_outside_aoi` (a composite that forgot to clip).
    A strip of AOI pixels stays empty too (no clear observation there).
    """
    aoi = load_aoi(L_SHAPED_AOI_WKT)
    grid = grid_for_aoi(aoi, None, RESOLUTION_M)
    inside_aoi = aoi_pixel_mask(aoi, grid)
    random = np.random.default_rng(seed)
    height, width = grid.shape.yx
    ramp = np.linspace(200, 3000, width, dtype=np.float32)[None, None, :]
    mosaic = (ramp + random.integers(0, 400, size=(4, height, width))).astype(np.uint16)
    mosaic[3] += 2000
    count = random.integers(1, 12, size=(1, height, width), dtype=np.uint8)
    empty = np.zeros((height, width), dtype=bool)
    empty[: height // 10, :] = inside_aoi[: height // 10, :]
    if not data_outside_aoi:
        empty |= ~inside_aoi
    mosaic[:, empty] = 0
    count[:, empty] = 0
    out_dir.mkdir(parents=True, exist_ok=True)
    mosaic_path = out_dir / "staging_mosaic.tif"
    count_path = out_dir / "staging_count.tif"
    _write(mosaic_path, mosaic, grid, nodata=0)
    _write(count_path, count, grid, nodata=None)
    product_mosaic = np.where(inside_aoi, mosaic, 0).astype(np.uint16)
    product_count = np.where(inside_aoi, count, 0).astype(np.uint8)
    return StagingRasters(aoi, grid, inside_aoi, mosaic_path, count_path, product_mosaic, product_count)


def _write(path: Path, array: np.ndarray, grid: GeoBox, nodata: int | None) -> None:
    profile = {
        "driver": "GTiff",
        "count": array.shape[0],
        "height": array.shape[1],
        "width": array.shape[2],
        "dtype": array.dtype.name,
        "crs": grid.crs.to_wkt(),
        "transform": grid.affine,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(array)


AOI_SOURCE = "tests/l-shaped.gpkg"
SCENE_DATES = (datetime(2024, 6, 3, 10, 5, tzinfo=UTC), datetime(2024, 6, 18, 10, 7, tzinfo=UTC))


def make_product_run(staging: StagingRasters, scene_dates: tuple[datetime, ...] = SCENE_DATES) -> ProductRun:
    """The flow's record for the staging rasters: June 2024, one scene per date, one failed scene."""
    scenes = tuple(
        ClippedScene(
            item_id=f"S2B_33TWL_{acquired:%Y%m%d}_0_L2A",
            acquired=acquired,
            processing_baseline="05.10",
            name=f"scenes/S2B_33TWL_{acquired:%Y%m%d}_0_L2A.tif",
            grid=staging.grid,
            valid_fraction=0.9,
        )
        for acquired in scene_dates
    )
    return ProductRun(
        aoi_name="l-shaped",
        aoi_source=AOI_SOURCE,
        aoi=staging.aoi,
        aoi_digest=aoi_digest(staging.aoi),
        grid=staging.grid,
        month=Month(2024, 6),
        composite=CompositeSettings(),
        mask=MaskSettings(masker="scl"),
        scenes_used=scenes,
        scenes_failed=(FailedScene("S2A_33TWL_20240611_0_L2A", "red: server error (HTTP 503) (transient; gave up after 8 attempts over 61 s)"),),
        scenes_skipped=(SkippedScene("S2B_33TWL_20240614_0_L2A", "no clear pixel in the AOI"),),
    )

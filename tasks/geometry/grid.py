"""The target grid: one `odc.geo.geobox.GeoBox` (CRS + affine transform + shape) for every stage.

The grid is snapped to whole pixels of its resolution, so the same AOI gives the same grid every
month and scenes of different dates stack pixel for pixel. Sub-grids (a scene's part of the AOI, a
composite block) are slices of it: `grid[roi]`, with `roi` from `grid.overlap_roi(other)`.
"""

import math
from collections.abc import Iterator

import numpy as np
from odc.geo import CRS
from odc.geo.geobox import GeoBox, GeoboxTiles
from odc.geo.geom import Geometry
from odc.geo.types import NormalizedROI
from pyproj import CRS as ProjCRS
from rasterio.windows import Window

from tasks.core.errors import InvalidSettings
from tasks.geometry.aoi import aoi_centre_lonlat, aoi_in_crs
from tasks.geometry.crs import crs_code, crs_of

__all__ = [
    "METRES_PER_DEGREE_LATITUDE",
    "check_grid_size",
    "grid_blocks",
    "grid_for_aoi",
    "grid_key",
    "grid_metadata",
    "pixel_size_m",
    "raster_profile",
    "roi_slices",
    "utm_crs_for",
]

METRES_PER_DEGREE_LATITUDE = 111_320.0
"""Length of one degree of latitude in metres (spherical approximation, good to 0.5 %)."""


def utm_crs_for(aoi: Geometry) -> CRS:
    """The WGS 84 / UTM zone CRS (north or south) that holds the AOI's true centre (`aoi_centre_lonlat`:
    right across the antimeridian too)."""
    longitude, latitude = aoi_centre_lonlat(aoi)
    zone = int((longitude + 180.0) // 6.0) + 1
    return CRS(f"EPSG:{32600 + zone if latitude >= 0 else 32700 + zone}")


def resolution_in_crs_units(crs: CRS, resolution_m: float) -> float:
    """The pixel size in the CRS's own unit for a pixel of `resolution_m` metres.

    Geographic CRSs get degrees of latitude; projected CRSs in feet or other units are converted
    with the unit's factor to metres.
    """
    if crs.geographic:
        return resolution_m / METRES_PER_DEGREE_LATITUDE
    axis_units_in_metres = ProjCRS.from_wkt(crs.wkt).axis_info[0].unit_conversion_factor
    return resolution_m / axis_units_in_metres


def pixel_size_m(grid: GeoBox) -> float:
    """The grid's pixel width in metres (degrees of latitude, or feet, converted)."""
    return abs(grid.resolution.x) / resolution_in_crs_units(crs_of(grid), 1.0)


def grid_for_aoi(aoi: Geometry, target_crs: str | None, resolution_m: float) -> GeoBox:
    """The pixel-aligned grid covering `aoi` in `target_crs` (None: UTM of the centroid).

    `resolution_m` is the pixel size in metres; pixels are square in the CRS's units.
    """
    try:
        crs = CRS(target_crs) if target_crs else utm_crs_for(aoi)
    except Exception as error:  # pyproj raises several types for an unknown CRS
        raise InvalidSettings(
            f"target_crs {target_crs!r} is not a known CRS ({error}); give e.g. 'EPSG:32633'"
        ) from None
    resolution = resolution_in_crs_units(crs, resolution_m)
    grid = GeoBox.from_geopolygon(aoi_in_crs(aoi, crs), resolution=resolution, crs=crs)
    if grid.is_empty() or not all(math.isfinite(v) for v in grid.affine[:6]):
        raise InvalidSettings(
            f"the AOI does not project into {crs} at {resolution_m} m; choose a CRS that covers it"
        )
    return grid


def grid_blocks(grid: GeoBox, block_size: int) -> Iterator[tuple[Window, GeoBox]]:
    """The grid cut into blocks of `block_size` pixels: each block's raster window and its sub-grid."""
    tiles = GeoboxTiles(grid, (block_size, block_size))
    for index in np.ndindex(*tiles.shape.yx):
        roi = tiles.roi[index]
        yield Window.from_slices(*roi), grid[roi]


def roi_slices(roi: NormalizedROI) -> tuple[slice, slice]:
    """`roi` (a (y, x) pair from `GeoBox.overlap_roi`) as plain slices, which numpy's types accept as an index."""
    rows, cols = roi
    return slice(rows.start, rows.stop, rows.step), slice(cols.start, cols.stop, cols.step)


def raster_profile(grid: GeoBox) -> dict[str, object]:
    """The rasterio profile entries that put a raster on `grid`: size, CRS and transform."""
    return {"width": grid.shape.x, "height": grid.shape.y, "crs": crs_of(grid).to_wkt(), "transform": grid.affine}


def grid_key(grid: GeoBox) -> str:
    """A stable text identity of a grid, for cache keys and metadata."""
    affine = grid.affine
    coefficients = ",".join(f"{value:.12g}" for value in affine[:6])
    return f"{crs_of(grid).to_wkt()}|{coefficients}|{grid.shape.y}x{grid.shape.x}"


def grid_metadata(grid: GeoBox) -> dict[str, object]:
    """The grid as plain JSON values: CRS (EPSG code when it has one, else WKT), transform, shape."""
    crs = crs_of(grid)
    return {
        "crs": crs_code(crs) or crs.to_wkt(),
        "transform": list(grid.affine[:6]),
        "shape": [grid.shape.y, grid.shape.x],
        "bounds": list(grid.extent.boundingbox),
    }


def check_grid_size(grid: GeoBox, max_pixels: float) -> None:
    """Raise `InvalidSettings` when `grid` has more than `max_pixels` pixels (checked before any read)."""
    pixels = grid.shape.x * grid.shape.y
    if pixels > max_pixels:
        raise InvalidSettings(
            f"the output grid is {grid.shape.x:,} x {grid.shape.y:,} px ({pixels:.2g} px), more than "
            f"max_grid_pixels {max_pixels:.2g}; check the AOI (a bbox typo?) and grid.resolution_m, or raise max_grid_pixels"
        )

"""Writing and validating the raster products as Cloud Optimized GeoTIFFs.

Two rasters leave a run, both on the target grid (`odc.geo.geobox.GeoBox`, its CRS and affine):

- the mosaic: 4 uint16 bands red (B04), green (B03), blue (B02), nir (B08), surface reflectance
  x 10000 (scale 0.0001 is stored in the file), nodata 0;
- the count: 1 uint8 band, the number of clear observations behind each mosaic pixel. It has no
  nodata value: 0 means no valid observation (and is the value outside the AOI).

The composite stage writes both as plain tiled GeoTIFFs on a local staging path. `finalise_*` puts
the product metadata on that staging file and makes sure every pixel outside the AOI polygon is
empty; `write_cog` copies it to a COG with GDAL's COG driver (512-pixel blocks, DEFLATE with
horizontal predictor, internal overviews); `validate_cog` checks the result with rio-cogeo.
"""

from dataclasses import dataclass
from pathlib import Path

import rasterio
import rasterio.shutil
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from rasterio.crs import CRS
from rio_cogeo.cogeo import cog_validate

from tasks.aoi import aoi_pixel_mask
from tasks.errors import InvalidProduct
from tasks.grid import grid_blocks
from tasks.logs import stage_logger
from tasks.scene import NODATA, REFLECTANCE_BANDS, REFLECTANCE_SCALE

COG_BLOCK_SIZE = 512
"""Edge of the internal tiles of the products, in pixels."""
PROCESSING_BLOCK_SIZE = 2048
"""Edge of the blocks read and written while finalising a staging raster, in pixels; bounds memory."""
REFLECTANCE_SCALE_FACTOR = 1.0 / REFLECTANCE_SCALE
"""Multiply a mosaic value by this to get surface reflectance (0.0001)."""
MOSAIC_DTYPE = "uint16"
COUNT_DTYPE = "uint8"
COUNT_DESCRIPTION = "clear observation count (0 = no valid observation)"


@dataclass(frozen=True)
class SpectralBand:
    """A Sentinel-2 MSI band as carried by the mosaic; wavelengths in micrometres (S2A values)."""

    common_name: str
    sentinel_band: str
    center_wavelength_um: float
    full_width_half_max_um: float

    @property
    def description(self) -> str:
        return f"{self.common_name} ({self.sentinel_band})"


SENTINEL2_BANDS: dict[str, SpectralBand] = {
    "red": SpectralBand("red", "B04", 0.665, 0.038),
    "green": SpectralBand("green", "B03", 0.560, 0.045),
    "blue": SpectralBand("blue", "B02", 0.490, 0.098),
    "nir": SpectralBand("nir", "B08", 0.842, 0.145),
}
MOSAIC_BANDS: tuple[SpectralBand, ...] = tuple(SENTINEL2_BANDS[name] for name in REFLECTANCE_BANDS)
"""The mosaic's bands in file order (red, green, blue, nir)."""


@dataclass(frozen=True)
class CogProfile:
    """GDAL COG driver settings of one product."""

    overview_resampling: str
    compress: str = "DEFLATE"
    predictor: int = 2
    block_size: int = COG_BLOCK_SIZE
    num_threads: str = "ALL_CPUS"

    def creation_options(self) -> dict[str, str | int]:
        return {
            "COMPRESS": self.compress,
            "PREDICTOR": self.predictor,
            "BLOCKSIZE": self.block_size,
            "OVERVIEWS": "AUTO",
            "OVERVIEW_RESAMPLING": self.overview_resampling.upper(),
            "BIGTIFF": "IF_SAFER",
            "NUM_THREADS": self.num_threads,
        }


MOSAIC_PROFILE = CogProfile(overview_resampling="average")
"""Reflectance overviews average the valid pixels beneath them (GDAL skips nodata)."""
COUNT_PROFILE = CogProfile(overview_resampling="nearest")
"""Counts are whole numbers: overviews pick one pixel rather than inventing fractions."""


def finalise_mosaic(path: Path, aoi: Geometry, grid: GeoBox) -> int:
    """Make the staging mosaic at `path` product-ready, in place; return the pixels it had to empty.

    Checks it is 4 uint16 bands on `grid`, sets band descriptions, nodata 0 and scale 0.0001 /
    offset 0, and sets every pixel whose centre lies outside `aoi` to nodata (the composite should
    already have; a non-zero return is logged as a warning).
    """
    with rasterio.open(path, "r+") as dataset:
        _check_layout(dataset, path, grid, len(MOSAIC_BANDS), MOSAIC_DTYPE)
        dataset.nodata = NODATA
        for band_index, band in enumerate(MOSAIC_BANDS, start=1):
            dataset.set_band_description(band_index, band.description)
        dataset.scales = (REFLECTANCE_SCALE_FACTOR,) * dataset.count
        dataset.offsets = (0.0,) * dataset.count
        emptied = _empty_outside_aoi(dataset, aoi, grid)
    _warn_if_emptied(emptied, path)
    return emptied


def finalise_count(path: Path, aoi: Geometry, grid: GeoBox) -> int:
    """Make the staging count at `path` product-ready, in place; return the pixels it had to zero.

    Checks it is 1 uint8 band on `grid`, removes any nodata value (0 is a real count), sets the band
    description and zeroes every pixel whose centre lies outside `aoi`.
    """
    with rasterio.open(path, "r+") as dataset:
        _check_layout(dataset, path, grid, 1, COUNT_DTYPE)
        dataset.nodata = None
        dataset.set_band_description(1, COUNT_DESCRIPTION)
        emptied = _empty_outside_aoi(dataset, aoi, grid)
    _warn_if_emptied(emptied, path)
    return emptied


def _check_layout(dataset: rasterio.io.DatasetWriter, path: Path, grid: GeoBox, band_count: int, dtype: str) -> None:
    if dataset.count != band_count or any(band_dtype != dtype for band_dtype in dataset.dtypes):
        raise InvalidProduct(
            f"{path} has {dataset.count} bands of {set(dataset.dtypes)}; the product needs {band_count} {dtype} "
            "band(s): write it with the composite stage"
        )
    on_grid = (
        dataset.crs is not None
        and dataset.crs == CRS.from_wkt(grid.crs.to_wkt())
        and dataset.shape == grid.shape.yx
        and dataset.transform.almost_equals(grid.affine)
    )
    if not on_grid:
        raise InvalidProduct(
            f"{path} ({dataset.crs}, {dataset.shape}, {tuple(dataset.transform)[:6]}) is not on the target grid "
            f"({grid.crs}, {grid.shape.yx}, {tuple(grid.affine)[:6]}); write it on the grid of tasks.grid.grid_for_aoi"
        )


def _empty_outside_aoi(dataset: rasterio.io.DatasetWriter, aoi: Geometry, grid: GeoBox) -> int:
    emptied = 0
    for window, block_grid in grid_blocks(grid, PROCESSING_BLOCK_SIZE):
        outside = ~aoi_pixel_mask(aoi, block_grid)
        if not outside.any():
            continue
        block = dataset.read(window=window)
        stray = outside & (block != NODATA).any(axis=0)
        if stray.any():
            emptied += int(stray.sum())
            block[:, outside] = NODATA
            dataset.write(block, window=window)
    return emptied


def _warn_if_emptied(emptied: int, path: Path) -> None:
    if emptied:
        stage_logger(__name__).warning("%s had %d pixels with data outside the AOI; set to empty", path, emptied)


def write_cog(source: Path, destination: Path, profile: CogProfile) -> None:
    """Copy the GeoTIFF `source` to a Cloud Optimized GeoTIFF at `destination` with `profile`.

    Band descriptions, nodata, scales and offsets are carried over. `destination` is overwritten;
    callers make it a temporary name that is renamed once validated (see `tasks.products`).
    """
    rasterio.shutil.copy(str(source), str(destination), driver="COG", **profile.creation_options())


def validate_cog(path: Path | str, strict: bool = True) -> list[str]:
    """Check `path` with rio-cogeo; raise `InvalidProduct` when it is not a valid COG.

    With `strict` warnings (e.g. a large raster without overviews) count as errors; otherwise they
    are returned.
    """
    is_valid, errors, warnings = cog_validate(str(path), strict=strict, quiet=True)
    if not is_valid:
        problems = "; ".join(errors + (warnings if strict else []))
        raise InvalidProduct(f"{path} is not a valid Cloud Optimized GeoTIFF ({problems}); rewrite it with write_cog")
    return warnings

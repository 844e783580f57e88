"""Writing and validating the raster products as Cloud Optimized GeoTIFFs.

Two rasters leave a run, both on the target grid (`odc.geo.geobox.GeoBox`, its CRS and affine):

- the mosaic: 4 uint16 bands red (B04), green (B03), blue (B02), nir (B08), surface reflectance
  x 10000 (scale 0.0001 is stored in the file), nodata 0;
- the count: 1 uint8 band, the number of clear observations behind each mosaic pixel. It has no
  nodata value: 0 means no valid observation (and is the value outside the AOI);
- a spectral index when asked for (`tasks.compositing.indices`, e.g. NDVI): 1 int16 band, the index x 10000
  (scale 0.0001 is stored in the file), nodata -32768.

Each output tile's arrays are written as COGs (`write_mosaic_cog`, `write_count_cog`,
`write_index_cog`) with the product metadata; a tiled month's single COGs are copied from its mosaic index (`write_cog`). All use
GDAL's COG driver (512-pixel blocks, DEFLATE with horizontal predictor, internal overviews);
`validate_cog` checks the result with rio-cogeo.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from odc.geo.geobox import GeoBox
from rio_cogeo.cogeo import cog_validate

from tasks.compositing.indices import INDEX_DTYPE, INDEX_NODATA, INDEX_SCALE_FACTOR, SpectralIndex
from tasks.core.errors import InvalidProduct
from tasks.core.scene import NODATA, REFLECTANCE_BANDS, REFLECTANCE_SCALE
from tasks.gap_fill.fill import NO_VALUE
from tasks.geometry.grid import raster_profile

__all__ = [
    "COG_BLOCK_SIZE",
    "COUNT_DESCRIPTION",
    "COUNT_DTYPE",
    "COUNT_PROFILE",
    "FILL_DESCRIPTION",
    "FILL_DTYPE",
    "FILL_NODATA",
    "FILL_PROFILE",
    "HIGH_PERCENTILE",
    "INDEX_PROFILE",
    "LOW_PERCENTILE",
    "MOSAIC_BANDS",
    "MOSAIC_DTYPE",
    "MOSAIC_PROFILE",
    "REFLECTANCE_SCALE_FACTOR",
    "CogProfile",
    "validate_cog",
    "write_cog",
    "write_count_cog",
    "write_fill_cog",
    "write_index_cog",
    "write_mosaic_cog",
]

COG_BLOCK_SIZE = 512
"""Edge of the internal tiles of the products, in pixels."""
REFLECTANCE_SCALE_FACTOR = 1.0 / REFLECTANCE_SCALE
"""Multiply a mosaic value by this to get surface reflectance (0.0001)."""
MOSAIC_DTYPE = "uint16"
COUNT_DTYPE = "uint8"
COUNT_DESCRIPTION = "clear observation count (0 = no valid observation)"
FILL_DTYPE = "uint8"
FILL_NODATA = NO_VALUE
FILL_DESCRIPTION = (
    f"gap fill: 0 = observed this month, 1..{NO_VALUE - 1} = months to the nearest month that gave the value, "
    f"{NO_VALUE} = no value"
)
LOW_PERCENTILE = 2.0
HIGH_PERCENTILE = 98.0
"""The display stretch of a mosaic band: its 2nd to 98th percentile (the Item's statistics, the quicklook)."""


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
INDEX_PROFILE = CogProfile(overview_resampling="average")
"""Index overviews average the valid pixels beneath them, as the reflectance does (GDAL skips nodata)."""
FILL_PROFILE = CogProfile(overview_resampling="nearest")
"""Fill distances are whole months: overviews pick one pixel."""


def write_mosaic_cog(path: Path, mosaic: np.ndarray, grid: GeoBox, profile: CogProfile) -> None:
    """Write a (4, y, x) uint16 mosaic on `grid` as a COG with its band descriptions, nodata 0 and scale 0.0001."""
    with rasterio.open(path, "w", **_cog_creation(grid, len(MOSAIC_BANDS), MOSAIC_DTYPE, NODATA, profile)) as dataset:
        dataset.write(mosaic)
        for band_index, band in enumerate(MOSAIC_BANDS, start=1):
            dataset.set_band_description(band_index, band.description)
        dataset.scales = (REFLECTANCE_SCALE_FACTOR,) * dataset.count
        dataset.offsets = (0.0,) * dataset.count


def write_count_cog(path: Path, count: np.ndarray, grid: GeoBox, profile: CogProfile) -> None:
    """Write a (y, x) uint8 count on `grid` as a COG with no nodata value (0 is a real count)."""
    with rasterio.open(path, "w", **_cog_creation(grid, 1, COUNT_DTYPE, None, profile)) as dataset:
        dataset.write(count, 1)
        dataset.set_band_description(1, COUNT_DESCRIPTION)


def write_fill_cog(path: Path, distance: np.ndarray, grid: GeoBox, profile: CogProfile) -> None:
    """Write a (y, x) uint8 gap-fill distance layer on `grid` as a COG, nodata `FILL_NODATA` (no value)."""
    with rasterio.open(path, "w", **_cog_creation(grid, 1, FILL_DTYPE, FILL_NODATA, profile)) as dataset:
        dataset.write(distance, 1)
        dataset.set_band_description(1, FILL_DESCRIPTION)


def write_index_cog(path: Path, values: np.ndarray, grid: GeoBox, index: SpectralIndex, profile: CogProfile) -> None:
    """Write a (y, x) int16 spectral index on `grid` as a COG with its description, nodata -32768 and
    scale 0.0001."""
    with rasterio.open(path, "w", **_cog_creation(grid, 1, INDEX_DTYPE, INDEX_NODATA, profile)) as dataset:
        dataset.write(values, 1)
        dataset.set_band_description(1, index.description)
        dataset.scales = (INDEX_SCALE_FACTOR,)
        dataset.offsets = (0.0,)


def _cog_creation(grid: GeoBox, band_count: int, dtype: str, nodata: int | None, profile: CogProfile) -> dict[str, object]:
    """rasterio open arguments of a COG on `grid` (rasterio builds it in memory, then GDAL copies it)."""
    return {
        "driver": "COG",
        "count": band_count,
        "dtype": dtype,
        "nodata": nodata,
        **raster_profile(grid),
        **profile.creation_options(),
    }


def write_cog(source: Path | str, destination: Path, profile: CogProfile) -> None:
    """Copy the GeoTIFF `source` (a file, or a GDAL path such as /vsis3/...) to a Cloud Optimized GeoTIFF
    at `destination` with `profile`.

    Band descriptions, nodata, scales and offsets are carried over. `destination` is overwritten;
    callers make it a temporary name that is renamed once validated (see `tasks.products.month`).
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

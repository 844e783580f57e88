"""An RGB quicklook PNG of the mosaic COG, read from its overviews.

The quicklook is at most `QUICKLOOK_MAX_SIDE` pixels on its longest side. It is read from the
finest internal overview that fits (the full raster only when that already fits), so making it
costs a small read even for a continent-sized mosaic. Each band is stretched linearly between its
2nd and 98th percentile over the valid pixels of that read; nodata is transparent (RGBA).
"""

import math
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling

from tasks.core.scene import NODATA
from tasks.products.cog import HIGH_PERCENTILE, LOW_PERCENTILE, MOSAIC_BANDS

__all__ = ["QUICKLOOK_MAX_SIDE", "overview_level_for", "read_rgb_overview", "stretch_to_rgba", "write_quicklook"]

QUICKLOOK_MAX_SIDE = 1024
"""Longest side of the quicklook, in pixels."""
RGB_BAND_INDEXES: tuple[int, ...] = tuple(
    1 + [band.common_name for band in MOSAIC_BANDS].index(name) for name in ("red", "green", "blue")
)
"""1-based mosaic band indexes of red, green and blue."""
OPAQUE = 255


def overview_level_for(shape: tuple[int, int], overview_factors: list[int], max_side: int) -> int | None:
    """Index of the finest overview whose longest side fits in `max_side` pixels.

    None when the full raster fits; the coarsest overview when none fits (it is then read smaller).
    """
    if max(shape) <= max_side:
        return None
    for level, factor in enumerate(overview_factors):
        if max(math.ceil(side / factor) for side in shape) <= max_side:
            return level
    return len(overview_factors) - 1 if overview_factors else None


def read_rgb_overview(mosaic_path: Path | str, max_side: int = QUICKLOOK_MAX_SIDE) -> np.ndarray:
    """The mosaic's red, green, blue as a (3, y, x) uint16 array no larger than `max_side`, from an overview."""
    with rasterio.open(mosaic_path) as dataset:
        level = overview_level_for(dataset.shape, dataset.overviews(1), max_side)
    with rasterio.open(mosaic_path, overview_level=level) as overview:
        scale = min(1.0, max_side / max(overview.shape))
        out_shape = (len(RGB_BAND_INDEXES), *(max(1, math.floor(side * scale)) for side in overview.shape))
        return overview.read(RGB_BAND_INDEXES, out_shape=out_shape, resampling=Resampling.average)


def stretch_to_rgba(rgb: np.ndarray) -> np.ndarray:
    """(3, y, x) reflectance -> (y, x, 4) uint8: per-band 2-98 percentile stretch, nodata transparent."""
    valid = (rgb != NODATA).all(axis=0)
    rgba = np.zeros((*rgb.shape[1:], 4), dtype=np.uint8)
    if not valid.any():
        return rgba
    for band_index, band in enumerate(rgb):
        low, high = np.percentile(band[valid], [LOW_PERCENTILE, HIGH_PERCENTILE])
        span = max(float(high - low), 1.0)
        scaled = np.clip((band.astype(np.float32) - low) / span, 0.0, 1.0) * OPAQUE
        rgba[..., band_index] = np.where(valid, np.round(scaled), 0).astype(np.uint8)
    rgba[..., 3] = np.where(valid, OPAQUE, 0)
    return rgba


def write_quicklook(mosaic_path: Path | str, destination: Path, max_side: int = QUICKLOOK_MAX_SIDE) -> tuple[int, int]:
    """Write the RGBA PNG quicklook of the mosaic COG at `mosaic_path` (a file, or a GDAL path such as
    /vsis3/...); return its (height, width)."""
    rgba = stretch_to_rgba(read_rgb_overview(mosaic_path, max_side))
    Image.fromarray(rgba, mode="RGBA").save(destination, format="PNG", optimize=True)
    return rgba.shape[0], rgba.shape[1]

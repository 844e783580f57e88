"""Pure rules that turn model output, the SCL band and data coverage into one `MaskClass` per pixel.

No I/O, no torch: arrays in, arrays out, all on one (sub-)grid with axes (y, x).

SCL (Sentinel-2 L2A scene classification) classes that are unusable by default:
0 no data, 1 saturated or defective, 3 cloud shadow, 8 cloud medium probability, 9 cloud high
probability, 10 thin cirrus, 11 snow or ice. Two doubtful classes are kept on purpose:
2 "dark area pixels" are mostly valid dark surfaces (dark soil, burnt areas, terrain shadow) that a
basemap needs, and 7 "unclassified" (formerly low-probability cloud) is commonly valid land; where it
is a real cloud, OmniCloudMask catches it.

Class precedence when several apply to one pixel, strongest first:
NODATA (5) > OmniCloudMask THICK_CLOUD / THIN_CLOUD / CLOUD_SHADOW (1, 2, 3) > INVALID_SCL (4) > CLEAR (0).
Nodata wins because there is nothing to look at; the model's classes beat SCL's because they say
why the pixel is unusable more precisely; only a pixel no rule objects to is CLEAR.
"""

import functools
import math
from collections.abc import Iterable
from enum import IntEnum

import numpy as np

from tasks.core.scene import NODATA, MaskClass

__all__ = [
    "SclClass",
    "average_down",
    "buffer_cloud_and_shadow",
    "buffer_radius_px",
    "classes_from_scl",
    "combine_classes",
    "dilate_disk",
    "downsample_factor",
    "has_data",
    "scl_invalid",
    "upsample_nearest",
]


class SclClass(IntEnum):
    """Sentinel-2 L2A scene classification values."""

    NO_DATA = 0
    SATURATED_OR_DEFECTIVE = 1
    DARK_AREA = 2
    CLOUD_SHADOW = 3
    VEGETATION = 4
    NOT_VEGETATED = 5
    WATER = 6
    UNCLASSIFIED = 7
    CLOUD_MEDIUM_PROBABILITY = 8
    CLOUD_HIGH_PROBABILITY = 9
    THIN_CIRRUS = 10
    SNOW_OR_ICE = 11


SCL_CLOUD_CLASSES: dict[int, MaskClass] = {
    SclClass.CLOUD_MEDIUM_PROBABILITY: MaskClass.THICK_CLOUD,
    SclClass.CLOUD_HIGH_PROBABILITY: MaskClass.THICK_CLOUD,
    SclClass.THIN_CIRRUS: MaskClass.THIN_CLOUD,
    SclClass.CLOUD_SHADOW: MaskClass.CLOUD_SHADOW,
}
"""How the SCL-only masker names an invalid SCL class; other invalid classes become INVALID_SCL."""

SCL_VALUE_COUNT = 1 << 16
"""SCL arrives as an unsigned integer of at most 16 bits: a table of this many entries covers any value."""
BUFFERED_CLASSES: tuple[MaskClass, ...] = (MaskClass.CLOUD_SHADOW, MaskClass.THIN_CLOUD, MaskClass.THICK_CLOUD)
"""Classes grown by the buffer, weakest first: where two buffers meet, the later (thicker) one wins."""
CLOUD_OR_SHADOW_TABLE = np.isin(np.arange(np.iinfo(np.uint8).max + 1), BUFFERED_CLASSES)
"""Whether a uint8 class value is one of `BUFFERED_CLASSES`, indexed by the value."""


def has_data(reflectance: np.ndarray) -> np.ndarray:
    """True where every reflectance band (band, y, x) holds data (valid data is >= 1, nodata is 0)."""
    return np.all(reflectance != NODATA, axis=0)


@functools.cache
def _scl_class_table(invalid_classes: frozenset[int]) -> np.ndarray:
    """The mask class (uint8) of every possible SCL value, indexed by the value."""
    table = np.full(SCL_VALUE_COUNT, MaskClass.CLEAR, dtype=np.uint8)
    for scl_class in invalid_classes:
        table[scl_class] = SCL_CLOUD_CLASSES.get(scl_class, MaskClass.INVALID_SCL)
    return table


def scl_invalid(scl: np.ndarray, invalid_classes: Iterable[int]) -> np.ndarray:
    """True where the SCL class (y, x) is one of `invalid_classes`."""
    return _scl_class_table(frozenset(invalid_classes))[scl] != MaskClass.CLEAR


def classes_from_scl(scl: np.ndarray, invalid_classes: Iterable[int]) -> np.ndarray:
    """Cloud and shadow classes (uint8, y, x) read from SCL alone, for the model-free masker.

    Among `invalid_classes`: 8 and 9 become THICK_CLOUD, 10 THIN_CLOUD, 3 CLOUD_SHADOW; any other
    invalid class becomes INVALID_SCL. A class left out of `invalid_classes` is CLEAR. One table
    lookup per pixel.
    """
    return _scl_class_table(frozenset(invalid_classes))[scl]


def dilate_disk(region: np.ndarray, radius_px: float) -> np.ndarray:
    """`region` (bool, y, x) grown by every pixel whose centre lies within `radius_px` pixels of it.

    A disk is a stack of horizontal runs: each row offset dy contributes a run of half-width
    floor(sqrt(r^2 - dy^2)), found with a running sum, so the cost is O(pixels x radius).
    """
    reach = math.floor(radius_px)
    if reach < 1 or not region.any():
        return region.copy()
    height, width = region.shape
    row_prefix = np.zeros((height, width + 1), dtype=np.int32)
    np.cumsum(region, axis=1, out=row_prefix[:, 1:])
    columns = np.arange(width)
    grown = np.zeros_like(region)
    # Offsets of a whole scene height or more reach no row of the region.
    for row_offset in range(-min(reach, height - 1), min(reach, height - 1) + 1):
        half_width = math.floor(math.sqrt(radius_px**2 - row_offset**2))
        right = np.minimum(columns + half_width + 1, width)
        left = np.maximum(columns - half_width, 0)
        run_hit = (row_prefix[:, right] - row_prefix[:, left]) > 0
        if row_offset >= 0:
            grown[row_offset:] |= run_hit[: height - row_offset]
        else:
            grown[:row_offset] |= run_hit[-row_offset:]
    return grown


def buffer_cloud_and_shadow(cloud_classes: np.ndarray, radius_px: float) -> np.ndarray:
    """Grow THICK_CLOUD, THIN_CLOUD and CLOUD_SHADOW (uint8, y, x) by `radius_px` pixels.

    A buffer pixel takes the class it was grown from; detected pixels keep their class; where
    buffers of two classes meet, cloud beats shadow and thick beats thin.
    """
    buffered = cloud_classes.copy()
    was_other = ~np.isin(cloud_classes, BUFFERED_CLASSES)
    for mask_class in BUFFERED_CLASSES:
        grown = dilate_disk(cloud_classes == mask_class, radius_px)
        buffered[grown & was_other] = mask_class
    return buffered


def combine_classes(cloud_classes: np.ndarray | None, invalid_by_scl: np.ndarray | None, data: np.ndarray) -> np.ndarray:
    """The scene mask (uint8 `MaskClass`, y, x) from its parts, with the module's precedence.

    `cloud_classes`: model (or SCL-derived) classes 0..3, None when not used; `invalid_by_scl`: bool,
    None when SCL is not used; `data`: bool, True where the pixel has data.
    """
    mask = np.full(data.shape, MaskClass.CLEAR, dtype=np.uint8)
    if invalid_by_scl is not None:
        mask[invalid_by_scl] = MaskClass.INVALID_SCL
    if cloud_classes is not None:
        is_cloud_or_shadow = CLOUD_OR_SHADOW_TABLE[cloud_classes]
        mask[is_cloud_or_shadow] = cloud_classes[is_cloud_or_shadow]
    mask[~data] = MaskClass.NODATA
    return mask


def buffer_radius_px(buffer_m: float, pixel_size_m: float) -> float:
    """The buffer in pixels of the grid (may be fractional; 0 means no buffer)."""
    return buffer_m / pixel_size_m


def downsample_factor(grid_pixel_m: float, mask_resolution_m: float) -> int:
    """How many grid pixels per side the model input is averaged over: round(mask / grid) when >= 2, else 1."""
    factor = round(mask_resolution_m / grid_pixel_m)
    return factor if factor >= 2 else 1


def average_down(bands: np.ndarray, factor: int) -> np.ndarray:
    """Block means (float32, band, y, x) of `bands` over `factor` x `factor` pixels, ignoring nodata (0).

    Edge blocks that do not fill a whole block average what they have; a block without data is 0.
    A factor of 1 returns `bands` itself.
    """
    if factor == 1:
        return bands
    band_count, height, width = bands.shape
    out_height, out_width = -(-height // factor), -(-width // factor)
    padded = np.zeros((band_count, out_height * factor, out_width * factor), dtype=np.float32)
    padded[:, :height, :width] = bands
    blocks = padded.reshape(band_count, out_height, factor, out_width, factor)
    valid_count = (blocks != NODATA).sum(axis=(2, 4))
    block_sum = blocks.sum(axis=(2, 4))
    return np.divide(block_sum, valid_count, out=np.zeros_like(block_sum), where=valid_count > 0)


def upsample_nearest(classes: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Repeat each pixel of `classes` (y, x) `factor` times per side and crop to `shape` (y, x)."""
    if factor == 1:
        return classes[: shape[0], : shape[1]]
    return classes.repeat(factor, axis=0).repeat(factor, axis=1)[: shape[0], : shape[1]]

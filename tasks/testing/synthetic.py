"""A synthetic cloudy month of Sentinel-2 L2A scenes over one tile, with its known clear surface.

Each date is written as Earth Search v1 style Cloud Optimized GeoTIFFs (B04 B03 B02 B08 on the tile
grid, SCL on the grid at half resolution) plus a STAC item dict, and comes with boolean masks of
what was put on it: thick clouds, thin (semi-transparent) clouds, and cloud shadows displaced from
the thick clouds by a fixed sun-geometry offset. The SCL classes every cloud and shadow as such,
unless told to miss the faintest share of the thin clouds as the real SCL does (`scl_missed_thin_share`). The ground under them is either the real L2A tile
29RKH of 2020-02-19 (`tile_dir`) or a fully synthetic surface (soil, vegetation, water) on any grid.

Reflectance conventions (every array here is "harmonised": surface reflectance x 10000, BOA offset
removed, in red, green, blue, nir order):

- `truth` is the clear surface. A date's clear pixels are that surface after a small per-date
  radiometric jitter (gain within 1 +- `JITTER_GAIN`, offset within +- `JITTER_OFFSET_DN`):
  `SyntheticMonth.clear_value(item_id) = round(truth * gain + offset_dn)`, so a clear pixel differs
  from `truth` by at most 1 % + 5.5 DN (under 1.5 % for reflectance above 0.11).
- Items with processing baseline >= 04.00 store DN = harmonised + 1000 and declare
  `raster:bands` offset -0.1; older baselines store DN = harmonised with offset 0. Both have scale
  0.0001 and nodata 0.

Used by the tests of every stage and by the demo, so it imports nothing from pytest.
"""

import json
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, polygon

from tasks.geometry.crs import crs_of
from tasks.geometry.grid import pixel_size_m

__all__ = [
    "BOA_OFFSET_DN",
    "COLLECTION_ID",
    "DEFAULT_DATES",
    "JITTER_GAIN",
    "JITTER_OFFSET_DN",
    "NEW_BASELINE",
    "REFLECTANCE_ASSETS",
    "SCL_FILE",
    "SCL_THIN_CIRRUS",
    "SHADOW_DARKENING",
    "THIN_ALPHA_RANGE",
    "THIN_CLOUD_DN",
    "TILE_GRID",
    "RadiometricJitter",
    "SyntheticMonth",
    "footprint_4326",
    "full_resolution",
    "make_sky",
    "make_surface",
    "make_synthetic_month",
    "observed_scene",
    "shadow_offset_px",
    "shifted",
    "stac_collection",
    "stac_item",
    "synthetic_grid",
    "write_aoi",
]

# --- Product conventions (Earth Search v1, collection sentinel-2-l2a) ---------------------------
COLLECTION_ID = "sentinel-2-l2a"
STAC_VERSION = "1.0.0"
STAC_EXTENSIONS = (
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.0.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
)
REFLECTANCE_ASSETS: dict[str, str] = {"red": "B04", "green": "B03", "blue": "B02", "nir": "B08"}
"""Earth Search asset key -> band file name, in the `truth` band order."""
SCL_ASSET, SCL_FILE = "scl", "SCL"
DN_SCALE = 0.0001
OLD_BASELINE, NEW_BASELINE = "02.14", "05.00"
BOA_OFFSET_DN = 1000
"""DN added to reflectance x 10000 by processing baseline 04.00 and later."""
BOA_OFFSET = -0.1
"""The `raster:bands` offset those items declare (= -BOA_OFFSET_DN * DN_SCALE)."""
NODATA = 0
ACQUISITION_TIME = time(11, 34, 25)
"""Time of day of the real 29RKH acquisition; every synthetic date uses it."""
REVISIT_REFERENCE = date(2020, 2, 19)
"""A Sentinel-2A date of tile 29RKH; A and B alternate every 5 days from it."""

# --- Scene classification (SCL) classes --------------------------------------------------------
SCL_NO_DATA, SCL_CLOUD_SHADOW, SCL_VEGETATION, SCL_NOT_VEGETATED, SCL_WATER = 0, 3, 4, 5, 6
SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_THIN_CIRRUS = 8, 9, 10
REAL_SKY_CLASSES = (SCL_CLOUD_SHADOW, SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_THIN_CIRRUS)
"""Classes of the real tile's own clouds (3.8 % of it, mostly thin cirrus): taken as ground here, so
their SCL becomes `SCL_NOT_VEGETATED` and `truth` is the tile as observed."""

# --- Real tile and default grid --------------------------------------------------------------
TILE_ID = "29RKH"
TILE_GRID = GeoBox((1098, 1098), Affine(100.0, 0.0, 199980.0, 0.0, -100.0, 2800020.0), "EPSG:32629")
"""The grid of the real tile files (100 m, EPSG:32629); also the default synthetic-surface grid."""
DEFAULT_DATES: tuple[date, ...] = tuple(date(2020, 3, day) for day in (5, 10, 15, 20, 25, 30))
DEFAULT_CLOUD_COVER: tuple[float, ...] = (0.10, 0.35, 0.05, 0.55, 0.20, 0.30)
"""Thick-cloud fraction of each date, repeated when there are more dates."""
DEFAULT_THIN_COVER = 0.08
"""Thin-cloud fraction of each date (besides the thick clouds)."""

# --- Sky and radiometry -----------------------------------------------------------------------
SUN_AZIMUTH_DEG, SUN_ELEVATION_DEG = 147.7, 48.3
CLOUD_HEIGHT_M = 2000.0
SHADOW_DARKENING = 0.35
"""Reflectance factor of the ground in a cloud shadow."""
THICK_CLOUD_DN = np.array([7000.0, 7100.0, 7400.0, 7200.0])
THIN_CLOUD_DN = np.array([4200.0, 4300.0, 4600.0, 4400.0])
THIN_ALPHA_RANGE = (0.15, 0.5)
"""Opacity of thin clouds: from their edge to their core."""
JITTER_GAIN = 0.01
JITTER_OFFSET_DN = 5.0
CLOUD_FEATURE_M = 12_000.0
"""Typical size of a cloud field's structures, in metres."""
PARTIAL_SWATH_EDGE = (0.45, 0.25)
"""On a partial date, data lies east of a line from this fraction of the width at the top to that at the bottom."""

SyntheticSurface = tuple[np.ndarray, np.ndarray]
"""(reflectance (4,H,W) uint16 on the grid, SCL classes (h,w) uint8 on the half-resolution grid)."""


@dataclass(frozen=True)
class RadiometricJitter:
    """A date's departure from the true surface: observed = truth * gain + offset_dn (x 10000 units)."""

    gain: float
    offset_dn: float


NO_JITTER = RadiometricJitter(1.0, 0.0)
"""A date that shows the true surface exactly."""


@dataclass(frozen=True)
class SyntheticMonth:
    """What `make_synthetic_month` wrote and the truth behind it.

    `items` are STAC item dicts in date order (a duplicated date: its `_0_` then its `_1_` item);
    the per-item dicts are keyed by item id and hold (H, W) arrays on `grid`; both publications of
    a date share the same arrays. `clear_mask` = data and no thick cloud, thin cloud or shadow.
    """

    items: list[dict[str, Any]]
    collection: dict[str, Any]
    truth: np.ndarray
    grid: GeoBox
    dates: tuple[date, ...]
    cloud_mask: Mapping[str, np.ndarray]
    thin_mask: Mapping[str, np.ndarray]
    shadow_mask: Mapping[str, np.ndarray]
    clear_mask: Mapping[str, np.ndarray]
    data_mask: Mapping[str, np.ndarray]
    jitter: Mapping[str, RadiometricJitter]

    def clear_value(self, item_id: str) -> np.ndarray:
        """The harmonised (4,H,W) uint16 values that item shows where the sky is clear."""
        return jittered(self.truth, self.jitter[item_id]).astype(np.uint16)

    def item(self, item_id: str) -> dict[str, Any]:
        return next(item for item in self.items if item["id"] == item_id)


@dataclass(frozen=True)
class _Sky:
    """One date's sky: class masks on the half-resolution grid (`scl_thin`: the thin cloud the SCL
    classes as cirrus), thin-cloud opacity and thick-cloud brightness (0..1 factors) at full resolution."""

    thick: np.ndarray
    high: np.ndarray
    thin: np.ndarray
    scl_thin: np.ndarray
    shadow: np.ndarray
    thin_alpha: np.ndarray
    texture: np.ndarray


def synthetic_grid(
    shape: tuple[int, int] = (1024, 1024),
    resolution: float = 10.0,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (499_980.0, 5_100_000.0),
) -> GeoBox:
    """A north-up grid of `shape` (y, x) pixels of `resolution` CRS units, top-left corner at `origin`."""
    return GeoBox(shape, Affine(resolution, 0.0, origin[0], 0.0, -resolution, origin[1]), crs)


def fft_friendly(size: int) -> int:
    """The smallest 5-smooth number (only factors 2, 3, 5) >= `size`: a fast FFT length."""
    candidate = size
    while True:
        remainder = candidate
        for factor in (2, 3, 5):
            while remainder % factor == 0:
                remainder //= factor
        if remainder == 1:
            return candidate
        candidate += 1


def fractal_field(rng: np.random.Generator, shape: tuple[int, int], feature_px: float) -> np.ndarray:
    """A smooth random (H, W) float32 field, zero mean and unit deviation, structures of ~`feature_px` pixels."""
    padded = (fft_friendly(shape[0]), fft_friendly(shape[1]))
    noise = rng.standard_normal(padded, dtype=np.float32)
    frequency_y = np.fft.fftfreq(padded[0])[:, None]
    frequency_x = np.fft.rfftfreq(padded[1])[None, :]
    lowest = 1.0 / max(feature_px, 2.0)
    amplitude = np.maximum(np.hypot(frequency_y, frequency_x), lowest) ** -1.6
    amplitude[0, 0] = 0.0
    field = np.fft.irfft2(np.fft.rfft2(noise) * amplitude, s=padded)[: shape[0], : shape[1]]
    return ((field - field.mean()) / (field.std() or 1.0)).astype(np.float32)


def half_resolution_mean(array: np.ndarray) -> np.ndarray:
    """Mean of each 2x2 block of the last two axes (an odd edge is padded by repetition)."""
    height, width = array.shape[-2:]
    padded = np.pad(array, [(0, 0)] * (array.ndim - 2) + [(0, height % 2), (0, width % 2)], mode="edge")
    blocks = padded.reshape(*padded.shape[:-2], padded.shape[-2] // 2, 2, padded.shape[-1] // 2, 2)
    return blocks.mean(axis=(-3, -1))


def full_resolution(half: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Each half-resolution pixel repeated over its 2x2 block, cropped to `shape`."""
    return half.repeat(2, axis=-2).repeat(2, axis=-1)[..., : shape[0], : shape[1]]


def shifted(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """`mask` moved by (rows, cols) pixels (down, right positive); what enters is False."""
    moved = np.zeros_like(mask)
    height, width = mask.shape
    source_rows = slice(max(0, -rows), min(height, height - rows))
    source_cols = slice(max(0, -cols), min(width, width - cols))
    target_rows = slice(max(0, rows), min(height, height + rows))
    target_cols = slice(max(0, cols), min(width, width + cols))
    moved[target_rows, target_cols] = mask[source_rows, source_cols]
    return moved


def jittered(truth: np.ndarray, jitter: RadiometricJitter) -> np.ndarray:
    """The clear-sky observation of `truth` under `jitter`, rounded and kept within [1, 65535] (float64)."""
    return np.clip(np.round(truth * jitter.gain + jitter.offset_dn), 1, 65535)


def shadow_offset_px(grid: GeoBox) -> tuple[int, int]:
    """(rows, cols) from a cloud to its shadow on `grid`: away from the sun, cloud height x tan(zenith)."""
    distance_px = CLOUD_HEIGHT_M * math.tan(math.radians(90.0 - SUN_ELEVATION_DEG)) / pixel_size_m(grid)
    azimuth = math.radians(SUN_AZIMUTH_DEG)
    return round(math.cos(azimuth) * distance_px), round(-math.sin(azimuth) * distance_px)


def read_tile_surface(tile_dir: Path) -> tuple[GeoBox, SyntheticSurface]:
    """The real tile's grid, reflectance (red, green, blue, nir) and SCL with its own clouds taken as ground."""
    bands = []
    for file_name in REFLECTANCE_ASSETS.values():
        with rasterio.open(tile_dir / f"{file_name}.tif") as dataset:
            bands.append(dataset.read(1))
            grid = GeoBox(dataset.shape, dataset.transform, dataset.crs)
    with rasterio.open(tile_dir / f"{SCL_FILE}.tif") as dataset:
        scl = dataset.read(1)
    scl = np.where(np.isin(scl, REAL_SKY_CLASSES), SCL_NOT_VEGETATED, scl).astype(np.uint8)
    return grid, (np.stack(bands), scl)


def make_surface(grid: GeoBox, rng: np.random.Generator) -> SyntheticSurface:
    """A procedural ground on `grid`: bare soil, vegetation (bright NIR, dark red) and water bodies."""
    shape = grid.shape.yx
    feature_px = 20_000.0 / pixel_size_m(grid)
    vegetation = 1.0 / (1.0 + np.exp(-2.5 * (fractal_field(rng, shape, feature_px) - 0.3)))
    water = fractal_field(rng, shape, 2 * feature_px) > 1.6
    brightness = 1.0 + 0.15 * fractal_field(rng, shape, feature_px / 8)
    soil = np.array([2500.0, 2000.0, 1500.0, 3000.0])[:, None, None] * brightness
    leaves = np.array([400.0, 800.0, 300.0, 4000.0])[:, None, None] * (0.5 + 0.5 * brightness)
    open_water = np.array([200.0, 400.0, 500.0, 100.0])[:, None, None] * np.ones(shape)
    ground = np.where(water, open_water, soil * (1 - vegetation) + leaves * vegetation)
    reflectance = np.clip(np.round(ground), 1, 65535).astype(np.uint16)
    half_vegetation = half_resolution_mean(vegetation)
    half_water = half_resolution_mean(water.astype(np.float32)) >= 0.5
    scl = np.where(half_vegetation > 0.5, SCL_VEGETATION, SCL_NOT_VEGETATED)
    return reflectance, np.where(half_water, SCL_WATER, scl).astype(np.uint8)


def make_sky(
    grid: GeoBox, rng: np.random.Generator, cloud_cover: float, thin_cover: float, scl_missed_thin_share: float = 0.0
) -> _Sky:
    """Thick clouds covering `cloud_cover` of the tile, thin clouds `thin_cover` more, and their shadows.

    Drawn on the half-resolution (SCL) grid, so the masks at full resolution agree with the SCL exactly,
    except that the SCL misses the faintest `scl_missed_thin_share` (0..1) of the thin-cloud pixels: those
    of lowest opacity, the outer rim of each thin cloud.
    """
    half_grid = grid.zoom_out(2)
    field = fractal_field(rng, half_grid.shape.yx, CLOUD_FEATURE_M / pixel_size_m(half_grid))
    thick_level, thin_level = np.quantile(field, np.clip([1.0 - cloud_cover, 1.0 - cloud_cover - thin_cover], 0, 1))
    thick = field > thick_level if cloud_cover > 0 else np.zeros(field.shape, bool)
    high_level = np.quantile(field[thick], 0.5) if thick.any() else np.inf
    thin = (field > thin_level) & ~thick if thin_cover > 0 else np.zeros_like(thick)
    shadow = shifted(thick, *shadow_offset_px(half_grid)) & ~thick & ~thin
    opacity = np.clip((field - thin_level) / max(thick_level - thin_level, 1e-6), 0.0, 1.0)
    missed = np.zeros_like(thin)
    if scl_missed_thin_share > 0 and thin.any():
        missed = thin & (opacity <= np.quantile(opacity[thin], scl_missed_thin_share))
    low_alpha, high_alpha = THIN_ALPHA_RANGE
    full_shape = grid.shape.yx
    return _Sky(
        thick=thick,
        high=thick & (field > high_level),
        thin=thin,
        scl_thin=thin & ~missed,
        shadow=shadow,
        thin_alpha=full_resolution(low_alpha + (high_alpha - low_alpha) * opacity, full_shape).astype(np.float32),
        texture=full_resolution(0.9 + 0.05 * np.clip(field - thick_level, -2, 2), full_shape).astype(np.float32),
    )


def overcast(sky: _Sky, west_share: float) -> _Sky:
    """`sky` with thick cloud (and nothing else) over the western `west_share` of its columns."""
    if west_share <= 0:
        return sky
    rows, columns = sky.thick.shape
    west = np.zeros((rows, columns), bool)
    west[:, : round(west_share * columns)] = True
    return replace(sky, thick=sky.thick | west, thin=sky.thin & ~west, scl_thin=sky.scl_thin & ~west, shadow=sky.shadow & ~west)


def swath_data_mask(half_shape: tuple[int, int]) -> np.ndarray:
    """The half-resolution data area of a date at the swath edge: east of a slanted line."""
    rows, cols = np.indices(half_shape)
    top, bottom = PARTIAL_SWATH_EDGE
    edge = (top + (bottom - top) * (rows + 0.5) / half_shape[0]) * half_shape[1]
    return cols + 0.5 >= edge


def observed_scene(
    truth: np.ndarray, scl: np.ndarray, sky: _Sky, jitter: RadiometricJitter, data: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A date's harmonised reflectance (4,H,W) float32 (0 = no data) and SCL (h,w) uint8 under `sky`."""
    shape = truth.shape[1:]
    observed = jittered(truth, jitter).astype(np.float32)
    shadow, thin, thick = (full_resolution(mask, shape) for mask in (sky.shadow, sky.thin, sky.thick))
    observed[:, shadow] *= SHADOW_DARKENING
    alpha = sky.thin_alpha[thin]
    observed[:, thin] = (1 - alpha) * observed[:, thin] + alpha * THIN_CLOUD_DN[:, None].astype(np.float32)
    observed[:, thick] = THICK_CLOUD_DN[:, None].astype(np.float32) * sky.texture[thick]
    np.clip(np.round(observed, out=observed), 1, 65535, out=observed)
    observed[:, ~full_resolution(data, shape)] = NODATA
    classes = np.select(
        [~data, sky.high, sky.thick, sky.scl_thin, sky.shadow],
        [SCL_NO_DATA, SCL_CLOUD_HIGH, SCL_CLOUD_MEDIUM, SCL_THIN_CIRRUS, SCL_CLOUD_SHADOW],
        scl.astype(np.int64),
    )
    return observed, classes.astype(np.uint8)


def write_cog(path: Path, pixels: np.ndarray, grid: GeoBox, block_size: int) -> None:
    """One band as a deflate, predictor 2 COG of `block_size` tiles (no overviews: the pipeline reads full resolution)."""
    profile = {
        "driver": "COG", "width": grid.shape.x, "height": grid.shape.y, "count": 1, "dtype": pixels.dtype.name,
        "crs": crs_of(grid).to_wkt(), "transform": grid.affine, "nodata": NODATA, "compress": "DEFLATE",
        "predictor": 2, "level": 1, "blocksize": block_size, "overviews": "NONE",
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(pixels, 1)


def platform_for(day: date) -> str:
    """Sentinel-2A or -2B, alternating every 5 days as on tile 29RKH."""
    return "S2A" if ((day - REVISIT_REFERENCE).days // 5) % 2 == 0 else "S2B"


def footprint_4326(grid: GeoBox, data: np.ndarray) -> Geometry:
    """The data area of a date (whole grid, or east of the swath edge) in EPSG:4326.

    A polygon; for a grid across the antimeridian a MultiPolygon split there, as RFC 7946 and Earth
    Search have it (odc-geo's `wrapdateline`, which changes nothing for other grids).
    """
    height, width = grid.shape.yx
    if data.all():
        corners: list[tuple[float, float]] = [(0, 0), (width, 0), (width, height), (0, height)]
    else:
        top, bottom = PARTIAL_SWATH_EDGE
        corners = [(top * width, 0), (width, 0), (width, height), (bottom * width, height)]
    world = [grid.affine @ corner for corner in corners]
    outline = polygon([*world, world[0]], crs=grid.crs)
    return outline.to_crs("EPSG:4326", resolution=pixel_size_m(grid) * 10, wrapdateline=True)


def mgrs_properties(tile_id: str) -> dict[str, Any]:
    """The `mgrs:*`, `grid:code` and `s2:mgrs_tile` properties of an MGRS tile id like '29RKH'."""
    return {
        "mgrs:utm_zone": int(tile_id[:2]),
        "mgrs:latitude_band": tile_id[2],
        "mgrs:grid_square": tile_id[3:],
        "grid:code": f"MGRS-{tile_id}",
        "s2:mgrs_tile": tile_id,
    }


def stac_item(
    item_id: str,
    day: date,
    baseline: str,
    hrefs: Mapping[str, str],
    grid: GeoBox,
    footprint: Geometry,
    tile_id: str,
    sky_percentages: Mapping[str, float],
) -> dict[str, Any]:
    """An Earth Search v1 style item dict for one publication of one date."""
    boa_offset = BOA_OFFSET if baseline >= "04.00" else 0.0
    scl_grid = grid.zoom_out(2)
    epsg = crs_of(grid).epsg
    properties = {
        "datetime": datetime.combine(day, ACQUISITION_TIME, tzinfo=UTC).isoformat().replace("+00:00", "Z"),
        "platform": f"sentinel-2{platform_for(day)[-1].lower()}",
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": sky_percentages["eo:cloud_cover"],
        "proj:epsg": epsg,
        "proj:code": f"EPSG:{epsg}",
        **mgrs_properties(tile_id),
        "view:sun_azimuth": SUN_AZIMUTH_DEG,
        "view:sun_elevation": SUN_ELEVATION_DEG,
        **{key: value for key, value in sky_percentages.items() if key.startswith("s2:")},
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": baseline,
        "s2:sequence": item_id.split("_")[3],
        "earthsearch:boa_offset_applied": bool(boa_offset),
    }
    assets = {
        key: _asset(hrefs[key], grid, {"scale": DN_SCALE, "offset": boa_offset, "data_type": "uint16"}, f"{key} ({file_name})")
        for key, file_name in REFLECTANCE_ASSETS.items()
    }
    assets[SCL_ASSET] = _asset(hrefs[SCL_ASSET], scl_grid, {"data_type": "uint8"}, "Scene classification map (SCL)")
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": list(STAC_EXTENSIONS),
        "id": item_id,
        "collection": COLLECTION_ID,
        "geometry": footprint.json,
        "bbox": list(footprint.boundingbox.bbox),
        "properties": properties,
        "links": [],
        "assets": assets,
    }


def _asset(href: str, grid: GeoBox, band: dict[str, Any], title: str) -> dict[str, Any]:
    return {
        "href": href,
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "title": title,
        "proj:shape": [grid.shape.y, grid.shape.x],
        "proj:transform": list(grid.affine[:6]),
        "raster:bands": [{"nodata": NODATA, "spatial_resolution": pixel_size_m(grid), **band}],
        "roles": ["data"],
    }


def stac_collection(items: Sequence[dict[str, Any]], collection_id: str = COLLECTION_ID) -> dict[str, Any]:
    """A minimal STAC Collection dict covering `items` (their bbox and datetime extent)."""
    boxes = np.array([item["bbox"] for item in items if "bbox" in item]).reshape(-1, 4)
    datetimes = sorted(item["properties"]["datetime"] for item in items if item["properties"].get("datetime"))
    bbox = [*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist()] if len(boxes) else [-180.0, -90.0, 180.0, 90.0]
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "id": collection_id,
        "description": f"{collection_id}: Sentinel-2 L2A scenes in the layout of Earth Search v1.",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [bbox]},
            "temporal": {"interval": [[datetimes[0], datetimes[-1]] if datetimes else [None, None]]},
        },
        "links": [],
    }


def sky_percentages(sky: _Sky, data: np.ndarray) -> dict[str, float]:
    """Scene-level cover percentages of the data area, as Earth Search reports them."""
    def percent(mask: np.ndarray) -> float:
        return round(100.0 * float((mask & data).sum()) / max(int(data.sum()), 1), 4)

    return {
        "eo:cloud_cover": percent(sky.thick | sky.thin),
        "s2:high_proba_clouds_percentage": percent(sky.high),
        "s2:medium_proba_clouds_percentage": percent(sky.thick & ~sky.high),
        "s2:thin_cirrus_percentage": percent(sky.thin),
        "s2:cloud_shadow_percentage": percent(sky.shadow),
        "s2:nodata_pixel_percentage": round(100.0 * (1.0 - float(data.mean())), 4),
    }


def make_synthetic_month(
    out_dir: Path,
    dates: Sequence[date] = DEFAULT_DATES,
    tile_dir: Path | None = None,
    *,
    grid: GeoBox | None = None,
    tile_id: str = TILE_ID,
    new_baseline_dates: Collection[date] = (),
    duplicated_dates: Collection[date] = (),
    partial_dates: Collection[date] = (),
    cloud_cover: Sequence[float] = DEFAULT_CLOUD_COVER,
    thin_cover: float = DEFAULT_THIN_COVER,
    scl_missed_thin_share: float = 0.0,
    seed: int = 0,
    surface_seed: int | None = None,
    surface_gain: float = 1.0,
    overcast_share: float = 0.0,
    radiometric_jitter: bool = True,
    href_for: Callable[[Path], str] = str,
    block_size: int = 512,
) -> SyntheticMonth:
    """Write a cloudy month of COGs and STAC items under `out_dir`; return them with their truth.

    Ground: the real tile in `tile_dir` (its own grid), else a procedural surface on `grid` (default
    `TILE_GRID`; e.g. `synthetic_grid()` for 10 m 1024 x 1024 in EPSG:32633). Publication: dates in
    `new_baseline_dates` get baseline 05.00 (DN offset +1000), others 02.14; dates in
    `duplicated_dates` are published twice like Earth Search, `_0_` (02.14) and `_1_` (05.00), with
    the same sky. Dates in `partial_dates` have data only east of a swath edge. `cloud_cover` gives
    each date's thick-cloud fraction (repeated as needed); the SCL classes the faintest
    `scl_missed_thin_share` of each date's thin-cloud pixels as their ground (`make_sky`), while
    `thin_mask` and `clear_mask` keep the truth. A series of months shares one procedural surface
    when each gets the same `surface_seed` (else the surface comes from `seed`); `surface_gain`
    scales its reflectance (a surface changing in time), and the western `overcast_share` of the grid
    is under thick cloud on every date (a gap no observation of the month fills). Without
    `radiometric_jitter` every date shows the surface exactly where it is clear. `href_for(local_path)`
    is called once each file is written and gives the asset href (e.g. after uploading it). Same
    seeds, same month.
    """
    rng = np.random.default_rng(seed)
    if tile_dir is not None:
        grid, (truth, base_scl) = read_tile_surface(Path(tile_dir))
    else:
        grid = grid or TILE_GRID
        truth, base_scl = make_surface(grid, rng if surface_seed is None else np.random.default_rng(surface_seed))
    if surface_gain != 1.0:
        truth = np.clip(np.rint(truth * surface_gain), 1, 65535).astype(truth.dtype)
    items: list[dict[str, Any]] = []
    masks: dict[str, dict[str, np.ndarray]] = {name: {} for name in ("cloud", "thin", "shadow", "clear", "data")}
    jitters: dict[str, RadiometricJitter] = {}
    shape = grid.shape.yx
    for index, day in enumerate(sorted(dates)):
        sky = overcast(make_sky(grid, rng, cloud_cover[index % len(cloud_cover)], thin_cover, scl_missed_thin_share), overcast_share)
        jitter = RadiometricJitter(1.0 + rng.uniform(-JITTER_GAIN, JITTER_GAIN), rng.uniform(-JITTER_OFFSET_DN, JITTER_OFFSET_DN))
        if not radiometric_jitter:  # drawn all the same, so the skies stay those of the same seed
            jitter = NO_JITTER
        data = swath_data_mask(base_scl.shape) if day in partial_dates else np.ones(base_scl.shape, bool)
        reflectance, scl = observed_scene(truth, base_scl, sky, jitter, data)
        day_masks = {
            "cloud": full_resolution(sky.thick & data, shape),
            "thin": full_resolution(sky.thin & data, shape),
            "shadow": full_resolution(sky.shadow & data, shape),
            "data": full_resolution(data, shape),
        }
        day_masks["clear"] = day_masks["data"] & ~day_masks["cloud"] & ~day_masks["thin"] & ~day_masks["shadow"]
        publications = [(0, OLD_BASELINE), (1, NEW_BASELINE)] if day in duplicated_dates else [
            (0, NEW_BASELINE if day in new_baseline_dates else OLD_BASELINE)
        ]
        for sequence, baseline in publications:
            item_id = f"{platform_for(day)}_{tile_id}_{day:%Y%m%d}_{sequence}_L2A"
            dn_offset = BOA_OFFSET_DN if baseline >= "04.00" else 0
            digital_numbers = np.where(reflectance > 0, np.minimum(reflectance + dn_offset, 65535), NODATA)
            hrefs = {}
            for key, file_name in REFLECTANCE_ASSETS.items():
                path = Path(out_dir) / item_id / f"{file_name}.tif"
                write_cog(path, digital_numbers[list(REFLECTANCE_ASSETS).index(key)].astype(np.uint16), grid, block_size)
                hrefs[key] = href_for(path)
            scl_path = Path(out_dir) / item_id / f"{SCL_FILE}.tif"
            write_cog(scl_path, scl, grid.zoom_out(2), block_size)
            hrefs[SCL_ASSET] = href_for(scl_path)
            footprint = footprint_4326(grid, data)
            items.append(stac_item(item_id, day, baseline, hrefs, grid, footprint, tile_id, sky_percentages(sky, data)))
            jitters[item_id] = jitter
            for name, mask in day_masks.items():
                masks[name][item_id] = mask
    return SyntheticMonth(
        items=items,
        collection=stac_collection(items),
        truth=truth,
        grid=grid,
        dates=tuple(sorted(dates)),
        cloud_mask=masks["cloud"],
        thin_mask=masks["thin"],
        shadow_mask=masks["shadow"],
        clear_mask=masks["clear"],
        data_mask=masks["data"],
        jitter=jitters,
    )


def write_aoi(grid: GeoBox, path: Path, inset_px: int) -> Path:
    """A GeoJSON AOI in the grid's CRS: a quadrilateral `inset_px` inside the grid's edges."""
    left, bottom, right, top = grid.extent.boundingbox
    inset = inset_px * abs(grid.resolution.x)
    ring = [
        [left + inset, bottom + inset],
        [right - inset, bottom + 2 * inset],
        [right - inset, top - inset],
        [left + 2 * inset, top - inset],
        [left + inset, bottom + inset],
    ]
    epsg = crs_of(grid).epsg
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}},
                "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}],
            }
        )
    )
    return path

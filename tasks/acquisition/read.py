"""Reading one scene's window of an output tile onto the target grid, harmonised, into memory.

Only the part of the tile's read grid that the item footprint and the AOI both cover is read (a
pixel-aligned slice, the sub-grid): each asset is warped onto the sub-grid by GDAL (`WarpedVRT`) and
read window by window (`ReadSettings.block_size`), so a remote COG is fetched only for its internal
tiles under the window. Reflectance becomes uint16 surface reflectance x 10000 with the BOA offset
removed, whatever the processing baseline; the result is a `tasks.core.scene.SceneWindow`. Fetched COG
bytes stay in GDAL's process-wide cache (`tasks.storage.gdal_env`), so the next tile of the same process
that reads the same COG tiles (its halo, a shared edge) fetches them again only once evicted.

Transient read failures (no connection, timeouts, HTTP 5xx/429) are retried per asset with
exponential backoff and jitter, in `AssetReader` only (GDAL's own HTTP retry is off and the task
does not retry a failed read); a permanent one (missing, forbidden, truncated, not a GeoTIFF, not
georeferenced where the item says) ends at once. What fails raises `SceneReadError` with a one-line
reason (`tasks.acquisition.read_failures`).
"""

import functools
import json
import math
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass

import numpy as np
import rasterio
from odc.geo import CRS as OdcCRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from shapely.geometry import box

from tasks.acquisition.read_failures import ByteRange, classify_read_failure, missing_bytes, tiff_extent
from tasks.core.errors import SceneOutsideAOI, SceneReadError
from tasks.core.retry import Failure, RetriesEnded, RetryPolicy, retried
from tasks.core.scene import (
    NODATA,
    REFLECTANCE_BANDS,
    REFLECTANCE_SCALE,
    SCENE_BANDS,
    SCL_BAND,
    SceneAsset,
    SceneItem,
    SceneWindow,
)
from tasks.core.settings import ReadSettings
from tasks.geometry.aoi import aoi_in_crs, aoi_pixel_mask, footprint_in_crs
from tasks.geometry.crs import crs_of
from tasks.geometry.grid import grid_blocks
from tasks.storage.gdal_env import gdal_env, gdal_path

__all__ = [
    "Lattice",
    "harmonised_reflectance",
    "item_footprint_in",
    "read_scene_window",
    "scene_subgrid",
    "source_lattice",
]

FOOTPRINT_SEGMENT_DEG = 0.001
"""Footprint edges are split into pieces this long (about 100 m) before reprojection to the grid CRS."""
FOOTPRINTS_CACHED = 8192
"""Footprints kept per process, in the grid CRS: a state-sized month has a few hundred items."""
EDGE_TOLERANCE_PX = 1e-4
"""Region edges this close to a pixel edge (in pixels) count as on it."""
WARP_TOLERANCE_PX = 0.001
"""Largest error, in pixels, of GDAL's approximate reprojection. GDAL's default (0.125) moves
samples enough to change values by tens of DN near sharp edges, and differently for each block;
this costs no measurable time more."""
MAX_HARMONISED = np.iinfo(np.uint16).max
ASSET_DRIVER = "GTiff"
"""Scene assets are Cloud Optimized GeoTIFFs; no other GDAL driver is tried (each would read more of a
file that is not one)."""
def item_footprint_in(item: SceneItem, crs: OdcCRS) -> Geometry:
    """The item's footprint in `crs`, densified (`FOOTPRINT_SEGMENT_DEG`); computed once per process
    for each item and CRS, as every tile of a month asks again (about 25 ms each)."""
    return _footprint_in(item.item_id, json.dumps(item.footprint, sort_keys=True), crs.to_wkt())


@functools.lru_cache(maxsize=FOOTPRINTS_CACHED)
def _footprint_in(item_id: str, footprint_json: str, crs_wkt: str) -> Geometry:
    return footprint_in_crs(json.loads(footprint_json), crs_wkt, FOOTPRINT_SEGMENT_DEG)


def scene_subgrid(item: SceneItem, grid: GeoBox, aoi: Geometry) -> GeoBox:
    """The pixel-aligned slice of `grid` covering the item footprint intersected with the AOI.

    Raises `SceneOutsideAOI` when they share no pixel.
    """
    footprint = item_footprint_in(item, crs_of(grid))
    # Shrunk by a hair so that reprojection noise on an edge that lies on a pixel edge adds no pixel.
    region = (footprint & aoi_in_crs(aoi, grid.crs) & grid.extent).buffer(-EDGE_TOLERANCE_PX * abs(grid.resolution.x))
    if region.is_empty or region.area == 0:
        raise SceneOutsideAOI(item.item_id)
    subgrid = grid[grid.overlap_roi(grid.enclosing(region))]
    if subgrid.is_empty():
        raise SceneOutsideAOI(item.item_id)
    return subgrid


def harmonised_reflectance(digital_numbers: np.ndarray, asset: SceneAsset) -> np.ndarray:
    """uint16 reflectance x 10000 from DNs: round((DN * scale + offset) * 10000), valid data in [1, 65535].

    Pixels equal to 0 (nodata after the warp) stay 0. Integer DNs (a read on the source's lattice)
    are looked up in the table of every uint16 DN, computed with the same formula.
    """
    if digital_numbers.dtype == np.uint16:
        return _harmonised_table(asset.scale, asset.offset)[digital_numbers]
    reflectance = (digital_numbers.astype(np.float64) * asset.scale + asset.offset) * REFLECTANCE_SCALE
    harmonised = np.clip(np.round(reflectance), 1, MAX_HARMONISED)
    return np.where(digital_numbers == NODATA, NODATA, harmonised).astype(np.uint16)


@functools.cache
def _harmonised_table(scale: float, offset: float) -> np.ndarray:
    """`harmonised_reflectance` of every uint16 DN, indexed by the DN."""
    every_dn = np.arange(MAX_HARMONISED + 1, dtype=np.float64)
    return harmonised_reflectance(every_dn, SceneAsset(href="", scale=scale, offset=offset))


@dataclass(frozen=True)
class Lattice:
    """How a sub-grid sits on a source's pixels: grid pixel (row, col) lies in source pixel
    ((row + row_offset) // factor, (col + col_offset) // factor)."""

    row_offset: int
    col_offset: int
    factor: int


def source_lattice(source: rasterio.DatasetReader, subgrid: GeoBox, resampling: Resampling) -> Lattice | None:
    """The sub-grid's place on the source's pixels when no resampling is needed, else None.

    Same CRS, north up, every source pixel edge on a grid pixel edge: a source pixel is `factor`
    grid pixels wide (1 for a 10 m band on a 10 m grid; 2 for the 20 m SCL, read by nearest). Each
    grid pixel centre then lies inside one source pixel, so the warp would give that pixel's value
    (factor 1: any resampling; above 1: nearest only), and the read skips it.
    """
    source_affine, grid_affine = source.transform, subgrid.affine
    if source.crs is None or source.crs != CRS.from_wkt(crs_of(subgrid).to_wkt()):
        return None
    if source_affine.b or source_affine.d or grid_affine.b or grid_affine.d:
        return None
    factor = source_affine.a / grid_affine.a
    if abs(factor - round(factor)) > EDGE_TOLERANCE_PX or not math.isclose(source_affine.e / grid_affine.e, factor):
        return None
    if round(factor) < 1 or (round(factor) > 1 and resampling != Resampling.nearest):
        return None
    col = (grid_affine.c - source_affine.c) / grid_affine.a
    row = (grid_affine.f - source_affine.f) / grid_affine.e
    if abs(col - round(col)) > EDGE_TOLERANCE_PX or abs(row - round(row)) > EDGE_TOLERANCE_PX:
        return None
    return Lattice(round(row), round(col), round(factor))


def _on_lattice(grid_span: slice, offset: int, factor: int, source_size: int) -> tuple[slice, slice, slice]:
    """For one axis: (source pixels to read, where their upsampled pixels go in the output, which of them)."""
    start, stop = grid_span.start + offset, grid_span.stop + offset  # in grid pixels from the source's edge
    first, last = max(start // factor, 0), min(-(-stop // factor), source_size)
    low, high = max(first * factor, start), min(last * factor, stop)
    if low >= high:
        return slice(0, 0), slice(0, 0), slice(0, 0)
    return slice(first, last), slice(low - start, high - start), slice(low - first * factor, high - first * factor)


@dataclass
class AssetReader:
    """One asset of a scene warped onto the scene's sub-grid, read window by window.

    The warp is set up once for the whole sub-grid. When the sub-grid lies on the source's own pixel
    lattice (`source_lattice`) windows are read straight from the source, which gives the warp's
    values without its cost. In the source's own CRS the values do not depend on the block size;
    across CRSs GDAL's warper still chooses its source windows and resampling scale per request, so
    a few pixels may differ by some DN between block sizes.
    This is the one layer that retries a remote read (`tasks.core.retry.retried`, per `ReadSettings`):
    after a transient failure the file is reopened, past GDAL's cache of the failed attempt; a
    permanent one raises `SceneReadError` at once. Use inside `gdal_env()`; `close()` releases the files.
    """

    item_id: str
    asset_key: str
    asset: SceneAsset
    subgrid: GeoBox
    resampling: Resampling
    settings: ReadSettings
    _source: rasterio.DatasetReader | None = None
    _warped: WarpedVRT | None = None
    _lattice: Lattice | None = None
    _file_extent: int | None = None
    _missing: ByteRange | None = None

    def read(self, roi: tuple[slice, slice]) -> np.ndarray:
        """The asset on `subgrid[roi]` as (y, x): float32 DNs for reflectance, native integers for SCL; 0 = nodata."""
        policy = RetryPolicy(self.settings.read_attempts, self.settings.retry_base_delay_s, self.settings.retry_max_delay_s)

        def read_once(attempt: int) -> np.ndarray:
            try:
                warped = self._opened(attempt)
                if self._lattice is not None and self._source is not None:
                    return self._read_on_lattice(self._source, roi, self._lattice)
                return warped.read(1, window=Window.from_slices(*roi))
            except (RasterioError, OSError) as error:
                # The file's tile index is read while it is open: the failure is classified after close.
                self._file_extent = tiff_extent(self._source) if self._source is not None else None
                self._missing = missing_bytes(error, self._source) if self._source is not None else None
                self.close()
                raise

        try:
            return retried(read_once, self._classify, policy, f"{self.item_id} {self.asset_key}")
        except RetriesEnded as ended:
            failure = SceneReadError(self.item_id, self.asset_key, ended.reason, ended.failure.transient)
        raise failure

    def _classify(self, error: Exception) -> Failure | None:
        if isinstance(error, SceneReadError):
            return Failure(error.reason, transient=False)
        if isinstance(error, (RasterioError, OSError)):
            return classify_read_failure(error, self.asset.href, self._file_extent, self._missing)
        return None

    def _opened(self, attempt: int) -> WarpedVRT:
        if self._warped is None:
            path = gdal_path(self.asset.href)
            # A retry must not see what GDAL cached of the failed attempt (e.g. "no such file").
            with rasterio.Env(CPL_VSIL_CURL_NON_CACHED=path) if attempt > 1 else nullcontext():
                self._source = rasterio.open(path, driver=ASSET_DRIVER)
            check_georeferencing(self._source, self.subgrid, self.item_id, self.asset_key)
            self._warped = WarpedVRT(
                self._source,
                crs=crs_of(self.subgrid).to_wkt(),
                transform=self.subgrid.affine,
                width=self.subgrid.shape.x,
                height=self.subgrid.shape.y,
                resampling=self.resampling,
                src_nodata=self.asset.nodata if self.asset.nodata is not None else self._source.nodata,
                nodata=NODATA,
                dtype="float32" if self.resampling != Resampling.nearest else None,
                tolerance=WARP_TOLERANCE_PX,
            )
            self._lattice = source_lattice(self._source, self.subgrid, self.resampling)
        return self._warped

    def _read_on_lattice(self, source: rasterio.DatasetReader, roi: tuple[slice, slice], lattice: Lattice) -> np.ndarray:
        """`subgrid[roi]` read straight from the source's pixels (`source_lattice`), 0 off the source."""
        rows, cols = roi
        pixels = np.zeros((rows.stop - rows.start, cols.stop - cols.start), dtype=source.dtypes[0])
        source_rows, out_rows, up_rows = _on_lattice(rows, lattice.row_offset, lattice.factor, source.height)
        source_cols, out_cols, up_cols = _on_lattice(cols, lattice.col_offset, lattice.factor, source.width)
        if out_rows.stop == out_rows.start or out_cols.stop == out_cols.start:
            return pixels
        read = source.read(1, window=Window.from_slices(source_rows, source_cols))
        source_nodata = self.asset.nodata if self.asset.nodata is not None else source.nodata
        if source_nodata is not None and source_nodata != NODATA:
            read[read == source_nodata] = NODATA
        if lattice.factor > 1:
            read = read.repeat(lattice.factor, axis=0).repeat(lattice.factor, axis=1)
        pixels[out_rows, out_cols] = read[up_rows, up_cols]
        return pixels

    def close(self) -> None:
        for dataset in (self._warped, self._source):
            if dataset is not None:
                dataset.close()
        self._source = self._warped = None


def check_georeferencing(source: rasterio.DatasetReader, subgrid: GeoBox, item_id: str, asset_key: str) -> None:
    """Raise `SceneReadError` unless the asset is georeferenced and its extent overlaps `subgrid`.

    The sub-grid is where the item's footprint meets the AOI; an asset whose own georeferencing
    lies elsewhere (another CRS than its item claims, a wrong transform) would give only nodata.
    """
    if source.crs is None or source.transform.is_identity:
        raise SceneReadError(item_id, asset_key, "not georeferenced (no CRS or no geotransform)")
    extent = Geometry(box(*source.bounds), crs=source.crs.to_wkt())
    try:
        overlaps = extent.to_crs(crs_of(subgrid)).intersects(subgrid.extent)
    except ValueError:
        overlaps = False
    if not overlaps:
        raise SceneReadError(
            item_id,
            asset_key,
            f"its georeferencing ({source.crs.to_string()}, bounds {', '.join(f'{v:.0f}' for v in source.bounds)}) "
            "does not cover the item's footprint over the AOI; the item's metadata and the file disagree",
        )


def _asset_readers(item: SceneItem, subgrid: GeoBox, settings: ReadSettings, stack: ExitStack) -> dict[str, AssetReader]:
    missing = [band for band in SCENE_BANDS if band not in item.assets]
    if missing:
        raise SceneReadError(item.item_id, missing[0], "the item has no such asset; search must map all of " + ", ".join(SCENE_BANDS))
    readers = {}
    for band in SCENE_BANDS:
        resampling = Resampling.nearest if band == SCL_BAND else Resampling[settings.reflectance_resampling]
        reader = AssetReader(item.item_id, band, item.assets[band], subgrid, resampling, settings)
        stack.callback(reader.close)
        readers[band] = reader
    return readers


def read_scene_window(item: SceneItem, read_grid: GeoBox, aoi: Geometry, settings: ReadSettings) -> SceneWindow:
    """The item's pixels where its footprint meets the AOI within `read_grid`, harmonised, in memory.

    `read_grid` is a pixel-aligned slice of the target grid, or one padded beyond it (a tile and
    its halo). The window lies on `scene_subgrid(item, read_grid, aoi)` and holds the five
    `SCENE_BANDS` as uint16 (reflectance x 10000, then SCL), 0 outside the data and outside the AOI
    polygon; assets are read block by block (`settings.block_size`), so the warp's memory stays
    bounded. Raises `SceneOutsideAOI` when there is nothing to read and `SceneReadError` when an
    asset cannot be read.
    """
    subgrid = scene_subgrid(item, read_grid, aoi)
    bands = np.zeros((len(SCENE_BANDS), *subgrid.shape.yx), dtype=np.uint16)
    with gdal_env(), ExitStack() as stack:
        inside_aoi = aoi_pixel_mask(aoi, subgrid)  # in the environment: rasterio would build one of its own
        readers = _asset_readers(item, subgrid, settings, stack)
        for window, _ in grid_blocks(subgrid, settings.block_size):
            roi = window.toslices()
            block = bands[(slice(None), *roi)]
            for band_index, band in enumerate(REFLECTANCE_BANDS):
                block[band_index] = harmonised_reflectance(readers[band].read(roi), readers[band].asset)
            block[SCENE_BANDS.index(SCL_BAND)] = readers[SCL_BAND].read(roi)
    valid = inside_aoi & (bands[: len(REFLECTANCE_BANDS)] != NODATA).all(axis=0)
    bands *= valid
    return SceneWindow(item.item_id, subgrid, bands)

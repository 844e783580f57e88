"""Reading one scene's AOI window onto the target grid, harmonised, into the workspace.

Only the part of the grid that the item footprint and the AOI both cover is read (a pixel-aligned
slice of the grid, the sub-grid): each asset is warped onto the sub-grid by GDAL (`WarpedVRT`) and
read window by window (`ReadSettings.block_size`), so a remote COG is fetched only for the tiles
under the AOI and memory stays bounded however large the AOI. Reflectance becomes uint16 surface reflectance x 10000 with the BOA offset
removed, whatever the processing baseline; the result is the clipped scene file of `tasks.scene`.

Transient read failures (no connection, timeouts, HTTP 5xx/429) are retried per asset with
exponential backoff and jitter, in `AssetReader` only (GDAL's own HTTP retry is off and the task
does not retry a failed read); a permanent one (missing, forbidden, truncated, not a GeoTIFF, not
georeferenced where the item says) ends at once. What fails raises `SceneReadError` with a one-line
reason (`tasks.read_failures`), and no partial file is left behind.
"""

from collections.abc import Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from prefect import task
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from shapely.geometry import box

from tasks.aoi import WGS84, aoi_in_crs, aoi_pixel_mask, footprint_in_crs
from tasks.errors import SceneOutsideAOI, SceneReadError, portable_errors
from tasks.gdal_env import gdal_env, gdal_path
from tasks.grid import grid_blocks, raster_profile
from tasks.read_failures import classify_read_failure, tiff_extent
from tasks.retry import Failure, RetriesEnded, RetryPolicy, io_task_retries, retried
from tasks.scene import (
    NODATA,
    REFLECTANCE_BANDS,
    REFLECTANCE_SCALE,
    SCENE_BANDS,
    SCL_BAND,
    ClippedScene,
    SceneAsset,
    SceneItem,
)
from tasks.settings import ReadSettings
from tasks.workspace import Workspace

SCENES_DIR = "scenes"
FOOTPRINT_SEGMENT_DEG = 0.001
"""Footprint edges are split into pieces this long (about 100 m) before reprojection to the grid CRS."""
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
SCENE_PROFILE = {
    "driver": "GTiff",
    "dtype": "uint16",
    "count": len(SCENE_BANDS),
    "nodata": NODATA,
    "tiled": True,
    "blockxsize": 512,
    "blockysize": 512,
    "compress": "deflate",
    "predictor": 2,
    "bigtiff": "IF_SAFER",
}
TAG_ITEM_ID, TAG_DATETIME, TAG_BASELINE = "item_id", "datetime", "processing_baseline"
TAG_VALID_FRACTION, TAG_FOOTPRINT = "valid_fraction", "footprint_wkt"

def scene_file_name(item_id: str) -> str:
    """Workspace name of a clipped scene: `scenes/<item_id>.tif`."""
    return f"{SCENES_DIR}/{item_id}.tif"


def scene_subgrid(item: SceneItem, grid: GeoBox, aoi: Geometry) -> GeoBox:
    """The pixel-aligned slice of `grid` covering the item footprint intersected with the AOI.

    Raises `SceneOutsideAOI` when they share no pixel.
    """
    footprint = footprint_in_crs(item.footprint, grid.crs, FOOTPRINT_SEGMENT_DEG)
    # Shrunk by a hair so that reprojection noise on an edge that lies on a pixel edge adds no pixel.
    region = (footprint & aoi_in_crs(aoi, grid.crs)).buffer(-EDGE_TOLERANCE_PX * abs(grid.resolution.x))
    if region.is_empty or region.area == 0:
        raise SceneOutsideAOI(item.item_id)
    subgrid = grid[grid.overlap_roi(grid.enclosing(region))]
    if subgrid.is_empty():
        raise SceneOutsideAOI(item.item_id)
    return subgrid


def harmonised_reflectance(digital_numbers: np.ndarray, asset: SceneAsset) -> np.ndarray:
    """uint16 reflectance x 10000 from DNs: round((DN * scale + offset) * 10000), valid data in [1, 65535].

    Pixels equal to 0 (nodata after the warp) stay 0.
    """
    reflectance = (digital_numbers.astype(np.float64) * asset.scale + asset.offset) * REFLECTANCE_SCALE
    harmonised = np.clip(np.round(reflectance), 1, MAX_HARMONISED)
    return np.where(digital_numbers == NODATA, NODATA, harmonised).astype(np.uint16)


@dataclass
class AssetReader:
    """One asset of a scene warped onto the scene's sub-grid, read window by window.

    The warp is set up once for the whole sub-grid. In the source's own CRS the values then do not
    depend on the block size; across CRSs GDAL's warper still chooses its source windows and
    resampling scale per request, so a few pixels may differ by some DN between block sizes.
    This is the one layer that retries a remote read (`tasks.retry.retried`, per `ReadSettings`):
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
    _file_extent: int | None = None

    def read(self, roi: tuple[slice, slice]) -> np.ndarray:
        """The asset on `subgrid[roi]` as (y, x): float32 DNs for reflectance, native integers for SCL; 0 = nodata."""
        policy = RetryPolicy(self.settings.read_attempts, self.settings.retry_base_delay_s, self.settings.retry_max_delay_s)

        def read_once(attempt: int) -> np.ndarray:
            try:
                return self._opened(attempt).read(1, window=Window.from_slices(*roi))
            except (RasterioError, OSError):
                self._file_extent = tiff_extent(self._source) if self._source is not None else None
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
            return classify_read_failure(error, self.asset.href, self._file_extent)
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
                crs=self.subgrid.crs.to_wkt(),
                transform=self.subgrid.affine,
                width=self.subgrid.shape.x,
                height=self.subgrid.shape.y,
                resampling=self.resampling,
                src_nodata=self.asset.nodata if self.asset.nodata is not None else self._source.nodata,
                nodata=NODATA,
                dtype="float32" if self.resampling != Resampling.nearest else None,
                tolerance=WARP_TOLERANCE_PX,
            )
        return self._warped

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
        overlaps = extent.to_crs(subgrid.crs).intersects(subgrid.extent)
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


def _scene_blocks(
    readers: dict[str, AssetReader], subgrid: GeoBox, aoi: Geometry, block_size: int
) -> Iterator[tuple[Window, np.ndarray, int, int]]:
    """(window, (5, y, x) uint16 block, valid AOI pixels, AOI pixels) for each block of the sub-grid."""
    for window, block_grid in grid_blocks(subgrid, block_size):
        roi = window.toslices()
        reflectance = np.stack(
            [harmonised_reflectance(readers[band].read(roi), readers[band].asset) for band in REFLECTANCE_BANDS]
        )
        scl = readers[SCL_BAND].read(roi).astype(np.uint16)
        inside = aoi_pixel_mask(aoi, block_grid)
        valid = inside & (reflectance != NODATA).all(axis=0)
        yield window, np.concatenate([reflectance, scl[None]]) * valid, int(valid.sum()), int(inside.sum())


def read_scene(item: SceneItem, grid: GeoBox, aoi: Geometry, workspace: Workspace, settings: ReadSettings) -> ClippedScene:
    """Read the item's AOI window onto `grid` and store it in `workspace` as `scenes/<item_id>.tif`.

    The file lies on the sub-grid from `scene_subgrid` (a slice of `grid`, same CRS and pixels)
    and holds the five `SCENE_BANDS` as uint16 (reflectance x 10000, then SCL), nodata 0 outside the
    data and outside the AOI polygon. Raises `SceneOutsideAOI` when there is nothing to read and
    `SceneReadError` when an asset cannot be read; the workspace is then left unchanged.
    """
    subgrid = scene_subgrid(item, grid, aoi)
    name = scene_file_name(item.item_id)
    valid_pixels = aoi_pixels = 0
    profile = {
        **SCENE_PROFILE,
        **raster_profile(subgrid),
    }
    with gdal_env(), ExitStack() as stack, workspace.staged(name) as staged_path:
        readers = _asset_readers(item, subgrid, settings, stack)
        with rasterio.open(staged_path, "w", **profile) as scene_file:
            for window, pixels, valid_count, aoi_count in _scene_blocks(readers, subgrid, aoi, settings.block_size):
                scene_file.write(pixels, window=window)
                valid_pixels += valid_count
                aoi_pixels += aoi_count
            valid_fraction = valid_pixels / aoi_pixels if aoi_pixels else 0.0
            scene_file.descriptions = SCENE_BANDS
            scene_file.update_tags(
                **{
                    TAG_ITEM_ID: item.item_id,
                    TAG_DATETIME: item.acquired.isoformat(),
                    TAG_BASELINE: item.processing_baseline or "",
                    TAG_VALID_FRACTION: f"{valid_fraction:.6f}",
                    TAG_FOOTPRINT: Geometry(item.footprint, crs=WGS84).wkt,
                }
            )
    return ClippedScene(
        item_id=item.item_id,
        acquired=item.acquired,
        processing_baseline=item.processing_baseline,
        name=name,
        grid=subgrid,
        valid_fraction=valid_fraction,
    )


read_scene_task = task(
    portable_errors(read_scene),
    name="read-scene",
    **io_task_retries(),
)

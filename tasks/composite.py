"""The streaming composite: clipped scenes and their masks become one mosaic and a count, block by block.

The target grid (`odc.geo.geobox.GeoBox`, its CRS and affine) is cut into blocks of
`CompositeSettings.block_size` pixels (`GeoboxTiles`). For each block only the scenes whose sub-grid
overlaps it are read, and only that window of them and of their `_mask.tif` files. An observation
is usable where its mask is `MaskClass.CLEAR`, none of its reflectance bands is 0 (nodata) and the
pixel centre lies inside the AOI polygon. `tasks.percentile.percentile_composite` gives each pixel
the percentile of its usable observations, and the block is written at once. Memory is bounded by
block size x number of overlapping scenes, never by the AOI's size.

Outputs are plain tiled GeoTIFFs at local staging paths on the full grid (the products stage turns
them into COGs): the mosaic, 4 uint16 bands red, green, blue, nir (reflectance x 10000, nodata 0),
and the count, 1 uint8 band of usable observations (0 where there is none and outside the AOI;
saturates at 255). Each is written under a temporary name and renamed when complete.
"""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from odc.geo.roi import roi_is_empty
from prefect import task
from prefect.cache_policies import NO_CACHE
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from tasks.aoi import aoi_pixel_mask
from tasks.device import compute_device
from tasks.errors import SceneReadError, TransientReadError, portable_errors
from tasks.gdal_env import gdal_env
from tasks.grid import grid_blocks, raster_profile
from tasks.logs import stage_logger
from tasks.mask import mask_name_for
from tasks.percentile import percentile_composite, percentile_value
from tasks.retry import io_task_retries
from tasks.scene import NODATA, REFLECTANCE_BANDS, SCENE_BANDS, ClippedScene, MaskClass, check_scene_file
from tasks.settings import CompositeSettings
from tasks.workspace import Workspace

REFLECTANCE_BAND_INDEXES = [SCENE_BANDS.index(name) + 1 for name in REFLECTANCE_BANDS]
"""1-based band indexes of red, green, blue, nir in a clipped scene file."""
STAGING_TILE_PX = 256
"""Internal tile edge of the staging rasters; block sizes that are multiples of it write whole tiles."""
STAGING_PROFILE: dict[str, object] = {
    "driver": "GTiff",
    "tiled": True,
    "blockxsize": STAGING_TILE_PX,
    "blockysize": STAGING_TILE_PX,
    "compress": "deflate",
    "zlevel": 1,
    "predictor": 2,
    "bigtiff": "if_safer",
}
READ_CACHE_MB = 64
"""GDAL block cache while compositing: each window is read once, so a small cache keeps memory
independent of the AOI's size (the shared remote-COG setting is 512 MB)."""


@dataclass(frozen=True)
class CompositeResult:
    """What `composite` wrote, with the figures the run reports (band statistics come from the COG)."""

    mosaic_path: Path
    count_path: Path
    percentile: float
    aoi_pixels: int
    valid_pixels: int
    """AOI pixels with at least one usable observation."""
    max_count: int
    contributing_scenes: tuple[str, ...]
    """Item ids of the scenes that gave at least one usable observation, in input order."""

    @property
    def valid_share(self) -> float:
        """Share of AOI pixels with at least one usable observation, 0..1."""
        return self.valid_pixels / self.aoi_pixels if self.aoi_pixels else 0.0


@dataclass
class _PixelTally:
    """Running counts over the blocks written so far."""

    aoi_pixels: int = 0
    valid_pixels: int = 0
    max_count: int = 0

    def add(self, count: np.ndarray, inside_aoi: np.ndarray) -> None:
        self.aoi_pixels += int(inside_aoi.sum())
        self.valid_pixels += int(np.count_nonzero(count))
        self.max_count = max(self.max_count, int(count.max(initial=0)))


@dataclass(frozen=True)
class SceneFiles:
    """A clipped scene and its mask, opened for windowed reads."""

    scene: ClippedScene
    bands: rasterio.io.DatasetReader
    mask: rasterio.io.DatasetReader


def _open_scene(scene: ClippedScene, grid: GeoBox, workspace: Workspace, files: ExitStack) -> SceneFiles:
    """Open a clipped scene and its mask, checking both lie on its sub-grid of `grid`."""
    try:
        aligned = grid[grid.overlap_roi(scene.grid)] == scene.grid
    except ValueError:
        aligned = False
    if not aligned:
        raise SceneReadError(
            scene.item_id,
            "clipped scene",
            "its grid is not a pixel-aligned slice of the target grid; re-run the read stage",
        )
    opened = []
    for name, band_count in ((scene.name, len(SCENE_BANDS)), (mask_name_for(scene.name), 1)):
        try:
            dataset = files.enter_context(rasterio.open(workspace.gdal_path(name)))
        except RasterioIOError as error:
            reason = f"cannot be opened ({error}); re-run the read and mask stages"
            raise SceneReadError(scene.item_id, name, reason) from None
        check_scene_file(dataset, scene, name, band_count)
        opened.append(dataset)
    return SceneFiles(scene, *opened)


def read_block_stack(sources: list[SceneFiles], block_grid: GeoBox) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The observations of the scenes that overlap `block_grid`.

    Returns `(stack, usable, item_ids)`: stack (obs, band, y, x) uint16 reflectance, usable (obs, y, x)
    bool (mask CLEAR and no band at 0; False where the scene does not cover the block), and the item
    id of each observation.
    """
    overlapping = []
    for source in sources:
        block_roi = block_grid.overlap_roi(source.scene.grid)
        if not roi_is_empty(block_roi):
            overlapping.append((source, block_roi, source.scene.grid.overlap_roi(block_grid)))
    stack = np.zeros((len(overlapping), len(REFLECTANCE_BANDS), *block_grid.shape.yx), dtype=np.uint16)
    usable = np.zeros((len(overlapping), *block_grid.shape.yx), dtype=bool)
    for index, (source, block_roi, scene_roi) in enumerate(overlapping):
        window = Window.from_slices(*scene_roi)
        try:
            reflectance = source.bands.read(REFLECTANCE_BAND_INDEXES, window=window)
            mask = source.mask.read(1, window=window)
        except RasterioIOError as error:  # the file opened: a failing read is I/O trouble, worth a retry
            raise TransientReadError(f"{source.scene.name}: window read failed ({error})") from error
        stack[(index, slice(None), *block_roi)] = reflectance
        usable[(index, *block_roi)] = (mask == MaskClass.CLEAR) & (reflectance != NODATA).all(axis=0)
    return stack, usable, [source.scene.item_id for source, _, _ in overlapping]


def composite_block(
    stack: np.ndarray, usable: np.ndarray, inside_aoi: np.ndarray, percentile: float, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Mosaic (band, y, x) uint16 and count (y, x) uint8 of one block's observations, 0 outside the AOI."""
    usable_in_aoi = torch.from_numpy(usable & inside_aoi)
    mosaic, count = percentile_composite(torch.from_numpy(stack).to(device), usable_in_aoi.to(device), percentile)
    return mosaic.cpu().numpy(), count.cpu().numpy()


@contextmanager
def _staged_raster(path: Path, grid: GeoBox, band_count: int, dtype: str, nodata: int | None) -> Iterator:
    """An open GeoTIFF on `grid` under a temporary name beside `path`, renamed to `path` on success."""
    profile = {**STAGING_PROFILE, "count": band_count, "dtype": dtype, "nodata": nodata, **raster_profile(grid)}
    with Workspace(str(path.parent)).staged(path.name) as staged_path, rasterio.open(staged_path, "w", **profile) as dataset:
        yield dataset


def composite(
    scenes: list[ClippedScene],
    grid: GeoBox,
    aoi: Geometry,
    workspace: Workspace,
    settings: CompositeSettings,
    mosaic_path: Path,
    count_path: Path,
) -> CompositeResult:
    """Composite the clipped `scenes` (and their masks) in `workspace` onto `grid`, block by block.

    `aoi` may be in any CRS; pixels whose centre lies outside it are nodata (0) in the mosaic and 0
    in the count. `mosaic_path` and `count_path` are local paths for the staging GeoTIFFs.
    """
    percentile = percentile_value(settings.percentile)
    device = compute_device(settings.device)
    tally = _PixelTally()
    contributing: set[str] = set()
    with ExitStack() as files:
        files.enter_context(gdal_env(GDAL_CACHEMAX=READ_CACHE_MB))
        sources = [_open_scene(scene, grid, workspace, files) for scene in scenes]
        mosaic_out = files.enter_context(_staged_raster(mosaic_path, grid, len(REFLECTANCE_BANDS), "uint16", NODATA))
        count_out = files.enter_context(_staged_raster(count_path, grid, 1, "uint8", None))
        for window, block_grid in grid_blocks(grid, settings.block_size):
            inside_aoi = aoi_pixel_mask(aoi, block_grid)
            # A block the AOI misses reads nothing: no observation gives an empty block.
            stack, usable, item_ids = read_block_stack(sources if inside_aoi.any() else [], block_grid)
            mosaic, count = composite_block(stack, usable, inside_aoi, percentile, device)
            mosaic_out.write(mosaic, window=window)
            count_out.write(count, 1, window=window)
            tally.add(count, inside_aoi)
            used = (usable & inside_aoi).any(axis=(1, 2))
            contributing.update(item_id for item_id, is_used in zip(item_ids, used, strict=True) if is_used)
    result = CompositeResult(
        mosaic_path=mosaic_path,
        count_path=count_path,
        percentile=percentile,
        aoi_pixels=tally.aoi_pixels,
        valid_pixels=tally.valid_pixels,
        max_count=tally.max_count,
        contributing_scenes=tuple(scene.item_id for scene in scenes if scene.item_id in contributing),
    )
    stage_logger(__name__).info(
        "composite p%g of %d scenes (%d contributed): %.1f %% of AOI pixels have a value, max count %d",
        result.percentile,
        len(scenes),
        len(result.contributing_scenes),
        100 * result.valid_share,
        result.max_count,
    )
    return result


composite_task = task(
    portable_errors(composite),
    name="composite",
    **io_task_retries(),
    cache_policy=NO_CACHE,
)

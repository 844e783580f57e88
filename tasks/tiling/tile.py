"""One output tile of a month, end to end: read the scenes over it, mask, composite, write, publish, record.

A tile task gets the month's `MonthPlan` (small: AOI, grid, names, where things go) and a tile. It
reads the found items from the run's workspace (never from its parameters), reads the window of
each scene over the tile and its masker's halo (`tasks.masking.stage.mask_halo_px`) with up to
`max_concurrent_scenes` reads at once, masks each window as its read finishes, crops the windows to
the tile, composites, fills its gaps from neighbouring months (`tasks.gap_fill.tile_fill`), and writes the
tile's mosaic and count COGs (and one per spectral index of `CompositeSettings.indices`, and the fill
distance layer unless `fill` is none) to a local scratch folder. The COGs are published into the
month's product folder, then the tile's record is written to the workspace: the record is the
tile's commit. The scratch folder is removed whatever happens, so a tile's scratch disk lasts only
while the tile is in flight.

A scene that cannot be read or masked in a tile is recorded in that tile's record with its reason
and left out of the tile; the month merges the records (`tasks.products.month`). A tile whose record
and histograms exist and can be read, and whose record names no failed scene, is committed: a
re-run of the month skips it, or, when its fill is stale (`stale_fill`: it has gaps and the month's
fill inputs changed since, `MonthFill.digest`, e.g. a neighbour was published; or the month started
or stopped filling), refills it from its published layers without reading a scene (`refill_tile`);
one whose record cannot be read is built again, with a warning naming the file.
A tile task that runs again within the build run that committed its tile returns that commit: Dask
runs a task again when the worker holding its result dies while the flow still holds the task's
future, and a tile is never committed twice.

The tile's figures travel in its record: AOI pixels, valid pixels, per-scene valid pixels, the
histograms of its mosaic bands and count (for exact month statistics without reading the mosaic
back), so the month's products never need a full-resolution read.
"""

import contextvars
import functools
import io
import json
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from odc.geo.roi import roi_is_empty
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.publish import MonthDestination
from tasks.acquisition.read import item_footprint_in, read_scene_window, scene_subgrid
from tasks.compositing.composite import MaskedWindow, composite_tile
from tasks.compositing.indices import INDEX_NODATA, SPECTRAL_INDICES
from tasks.core.errors import SceneOutsideAOI, first_line, portable_errors, scene_reason
from tasks.core.logs import stage_logger
from tasks.core.memory import releasing_memory
from tasks.core.retry import io_task_retries
from tasks.core.scene import NODATA, REFLECTANCE_BANDS, SceneItem, SceneWindow, scene_items_from_json
from tasks.core.settings import CompositeSettings, MaskSettings, ReadSettings
from tasks.gap_fill.sources import MonthFill, read_published_window
from tasks.gap_fill.tile_fill import FilledTile, TileLayers, fill_tile
from tasks.geometry.aoi import aoi_in_crs, aoi_pixel_mask
from tasks.geometry.crs import crs_of
from tasks.geometry.grid import pixel_size_m, roi_slices
from tasks.geometry.tiles import OutputTile, read_grid, tile_grid
from tasks.masking.registry import masker_named
from tasks.masking.stage import mask_from_bands, mask_halo_px
from tasks.products.cog import (
    COUNT_PROFILE,
    FILL_PROFILE,
    INDEX_PROFILE,
    MOSAIC_PROFILE,
    validate_cog,
    write_count_cog,
    write_fill_cog,
    write_index_cog,
    write_mosaic_cog,
)
from tasks.products.metadata import COUNT_LAYER, FILL_LAYER, MOSAIC_LAYER, TILES_FOLDER, ProductNames
from tasks.storage.disk_space import DiskNeeds, named_disk_full
from tasks.storage.gdal_env import gdal_env
from tasks.storage.workspace import Workspace, partial_prefix

__all__ = [
    "COUNT_VALUES",
    "INDEX_VALUES",
    "RECORD_SUFFIX",
    "REFLECTANCE_VALUES",
    "MonthPlan",
    "TileHistograms",
    "TileRecord",
    "build_tile",
    "build_tile_task",
    "committed_record",
    "refill_tile",
    "refill_tile_task",
    "scratch_folder",
    "stale_fill",
    "unpublished_files",
]

REFLECTANCE_VALUES = int(np.iinfo(np.uint16).max) + 1
COUNT_VALUES = int(np.iinfo(np.uint8).max) + 1
INDEX_VALUES = int(np.iinfo(np.int16).max) - INDEX_NODATA + 1
INDEX_KEY_PREFIX = "index_"
"""Names an index's histogram in a tile's histograms file."""
RECORD_SUFFIX, HISTOGRAMS_SUFFIX = ".json", ".npz"
UNREADABLE_RECORD_ERRORS = (ValueError, LookupError, TypeError, EOFError, zipfile.BadZipFile, zlib.error)
"""What parsing a truncated or garbled record (JSON: ValueError, a missing field) or histograms file (npz) raises."""
T = TypeVar("T")


@dataclass(frozen=True)
class MonthPlan:
    """What every tile of one AOI and month shares; small, so each tile task can carry it.

    `aoi` may be in any CRS; `grid` is the target grid. `items_name` names the found items in
    `workspace`; `tiles_digest` identifies the inputs (`flows.caching.tiles_digest`) and names the
    folders of the tile records and tile COGs. Products go to `destination`, the month folder of
    `aoi_name`; `scratch_dir` is local and holds tiles in flight. `fill` says how gaps are filled
    and from which published months; `disk` what the run needs of its local disks (nothing is
    checked when empty). `build_run_id` names the build run the tile tasks belong to (None outside
    one): each tile commits once in it.
    """

    aoi: Geometry
    grid: GeoBox
    workspace: Workspace
    items_name: str
    tiles_digest: str
    aoi_name: str
    month_label: str
    names: ProductNames
    tile_size_px: int
    single_tile: bool
    read: ReadSettings
    mask: MaskSettings
    composite: CompositeSettings
    max_concurrent_scenes: int
    scratch_dir: Path
    destination: MonthDestination
    fill: MonthFill = MonthFill("none", 0)
    disk: DiskNeeds = DiskNeeds()
    build_run_id: str | None = None

    @property
    def records_folder(self) -> str:
        """Where the month's tile records lie in the workspace."""
        return f"{TILES_FOLDER}/{self.month_label}/{self.tiles_digest}"

    @property
    def tiles_folder(self) -> str:
        """Where the tile COGs of these inputs lie in the month folder."""
        return f"{TILES_FOLDER}/{self.tiles_digest}"

    def tile_files(self, tile: OutputTile) -> dict[str, str]:
        """{'mosaic': name, 'count': name, index name: name...} of a tile's COGs, relative to the month folder."""
        return {
            "mosaic": self.names.tile_mosaic(tile.label, self.tiles_digest),
            "count": self.names.tile_count(tile.label, self.tiles_digest),
            **{name: self.names.tile_layer(name, tile.label, self.tiles_digest) for name in self.composite.indices},
            **({FILL_LAYER: self.names.tile_layer(FILL_LAYER, tile.label, self.tiles_digest)} if self.fill.enabled else {}),
        }

    def record_name(self, tile: OutputTile) -> str:
        return f"{self.records_folder}/{tile.label}{RECORD_SUFFIX}"

    def histograms_name(self, tile: OutputTile) -> str:
        return f"{self.records_folder}/{tile.label}{HISTOGRAMS_SUFFIX}"


@dataclass(frozen=True)
class TileRecord:
    """What a committed tile holds, as JSON in the workspace.

    `scene_pixels` maps each scene read over the tile to (its valid AOI pixels, the AOI pixels under
    its window) within the tile; `failed` maps scenes that could not be read or masked to the reason.
    """

    row: int
    col: int
    files: dict[str, str]
    aoi_pixels: int
    valid_pixels: int
    max_count: int
    contributing_scenes: tuple[str, ...]
    scene_pixels: dict[str, tuple[int, int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    filled_pixels: int = 0
    """AOI pixels with no observation that took a value from another month."""
    fill_months: tuple[str, ...] = ()
    """Months ('YYYY-MM') that gave at least one of them a value."""
    fill_digest: str = ""
    """The `MonthFill.digest` the tile was filled with."""
    build_run_id: str | None = None
    """The `MonthPlan.build_run_id` of the run that committed it (built or refilled)."""

    @property
    def tile(self) -> OutputTile:
        return OutputTile(self.row, self.col)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> "TileRecord":
        fields = json.loads(payload)
        return cls(
            **{
                **fields,
                "contributing_scenes": tuple(fields["contributing_scenes"]),
                "fill_months": tuple(fields.get("fill_months", ())),
                "scene_pixels": {item_id: tuple(pixels) for item_id, pixels in fields["scene_pixels"].items()},
            }
        )


@dataclass(frozen=True)
class TileHistograms:
    """Exact value histograms of a tile's AOI pixels: mosaic (band, 65536) over valid pixels, count (256),
    each index (65536, bin i counts the value `INDEX_NODATA + i`) over its pixels other than nodata,
    and the fill distance layer (256) when the month is filled."""

    mosaic: np.ndarray
    count: np.ndarray
    indices: dict[str, np.ndarray] = field(default_factory=dict)
    fill: np.ndarray | None = None

    @classmethod
    def of(cls, layers: TileLayers, inside_aoi: np.ndarray, fill_distance: np.ndarray | None = None) -> "TileHistograms":
        valid = inside_aoi & (layers.mosaic != NODATA).all(axis=0)
        mosaic = np.stack([np.bincount(band[valid], minlength=REFLECTANCE_VALUES) for band in layers.mosaic])
        indices = {
            name: np.bincount(values[inside_aoi & (values != INDEX_NODATA)].astype(np.int32) - INDEX_NODATA, minlength=INDEX_VALUES)
            for name, values in layers.indices.items()
        }
        fill = None if fill_distance is None else np.bincount(fill_distance[inside_aoi], minlength=COUNT_VALUES)
        return cls(mosaic, np.bincount(layers.count[inside_aoi], minlength=COUNT_VALUES), indices, fill)

    def __add__(self, other: "TileHistograms") -> "TileHistograms":
        """The histograms of two tiles' pixels together (tiles of one month have the same layers)."""
        indices = {name: histogram + other.indices[name] for name, histogram in self.indices.items()}
        fill = None if self.fill is None or other.fill is None else self.fill + other.fill
        return TileHistograms(self.mosaic + other.mosaic, self.count + other.count, indices, fill)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        arrays = {"mosaic": self.mosaic, "count": self.count}
        arrays.update({f"{INDEX_KEY_PREFIX}{name}": histogram for name, histogram in self.indices.items()})
        if self.fill is not None:
            arrays[FILL_LAYER] = self.fill
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]  # the stub takes ** as allow_pickle
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> "TileHistograms":
        with np.load(io.BytesIO(payload)) as arrays:
            indices = {key.removeprefix(INDEX_KEY_PREFIX): arrays[key] for key in arrays.files if key.startswith(INDEX_KEY_PREFIX)}
            fill = arrays[FILL_LAYER] if FILL_LAYER in arrays.files else None
            return cls(arrays["mosaic"], arrays["count"], indices, fill)


@functools.lru_cache(maxsize=4)
def month_items(workspace: Workspace, items_name: str) -> tuple[SceneItem, ...]:
    """The found items of a month, read once per process (`items_name` is content-addressed)."""
    return tuple(scene_items_from_json(workspace.read_bytes(items_name)))


def items_over(items: tuple[SceneItem, ...], read_box: GeoBox, aoi: Geometry) -> list[SceneItem]:
    """The items whose footprint meets the AOI within `read_box`."""
    over = []
    for item in items:
        try:
            scene_subgrid(item, read_box, aoi)
        except SceneOutsideAOI:
            continue
        over.append(item)
    return over


def masked_in_tile(window: SceneWindow, mask: np.ndarray, tile_box: GeoBox) -> MaskedWindow | None:
    """The window and its mask cropped to the tile (the halo served the masker only); None when outside."""
    roi = roi_slices(window.grid.overlap_roi(tile_box))
    if roi_is_empty(roi) or any(part.stop <= part.start for part in roi):  # odc-geo leaves stops unclamped
        return None
    cropped = window.grid[roi]
    if cropped == window.grid:  # no halo to drop
        return MaskedWindow(window, mask)
    # Copies, so that the halo's memory is freed with the uncropped window.
    return MaskedWindow(SceneWindow(window.item_id, cropped, window.bands[(slice(None), *roi)].copy()), mask[roi].copy())


def scene_pixels_in_tile(item: SceneItem, observation: MaskedWindow, inside_aoi: np.ndarray, tile_box: GeoBox) -> tuple[int, int]:
    """(valid AOI pixels, AOI pixels under the item's footprint) of a cropped window within the tile."""
    window_grid = observation.window.grid
    footprint = item_footprint_in(item, crs_of(window_grid))
    under_footprint = inside_aoi[roi_slices(tile_box.overlap_roi(window_grid))] & aoi_pixel_mask(footprint, window_grid)
    valid = (observation.window.bands[: len(REFLECTANCE_BANDS)] != NODATA).all(axis=0)
    return int((valid & under_footprint).sum()), int(under_footprint.sum())


def observe_tile(
    plan: MonthPlan, tile_box: GeoBox, aoi_on_grid: Geometry, inside_aoi: np.ndarray
) -> tuple[list[MaskedWindow], dict[str, tuple[int, int]], dict[str, str]]:
    """Read and mask every scene over the tile; returns the masked windows (in item order), each
    one's `scene_pixels_in_tile`, and the failures. `aoi_on_grid` is the AOI in the grid's CRS.

    Reads run `max_concurrent_scenes` at once; each window is masked, in this thread, as its read
    finishes; model inference batches patches with the other tiles' (`tasks.masking.ocm_inference`).
    """
    halo_box = read_grid(tile_box, mask_halo_px(plan.mask, pixel_size_m(plan.grid)))
    items = items_over(month_items(plan.workspace, plan.items_name), halo_box, aoi_on_grid)
    order = {item.item_id: index for index, item in enumerate(items)}
    observations: list[MaskedWindow] = []
    scene_pixels: dict[str, tuple[int, int]] = {}
    failed: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=plan.max_concurrent_scenes) as pool:
        # Each read runs in a copy of this thread's context, so its log lines reach the tile's run.
        reads = {
            pool.submit(contextvars.copy_context().run, read_scene_window, item, halo_box, aoi_on_grid, plan.read): item
            for item in items
        }
        for finished in as_completed(reads):
            item = reads[finished]
            try:
                window = finished.result()
                mask = mask_from_bands(window.bands, pixel_size_m(plan.grid), plan.mask)
            except SceneOutsideAOI:
                continue
            except Exception as error:  # any scene's failure is recorded with its reason; the tile goes on
                failed[item.item_id] = scene_reason(error)
                continue
            observation = masked_in_tile(window, mask, tile_box)
            if observation is not None:
                observations.append(observation)
                scene_pixels[item.item_id] = scene_pixels_in_tile(item, observation, inside_aoi, tile_box)
    observations.sort(key=lambda observation: order[observation.window.item_id])
    return observations, scene_pixels, failed


@contextmanager
def scratch_folder(plan: MonthPlan, label: str) -> Iterator[Path]:
    """A local folder in the month's scratch for files in the making (a tile's, or the month's own,
    named by `label`), removed on exit."""
    plan.scratch_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{partial_prefix()}{label}-", dir=plan.scratch_dir))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish_tile_layers(plan: MonthPlan, tile: OutputTile, tile_box: GeoBox, inside_aoi: np.ndarray, filled: FilledTile) -> dict[str, str]:
    """Write, validate and publish the tile's layer COGs and write its histograms; returns {layer: file}."""
    files = plan.tile_files(tile)
    layers = filled.layers
    with scratch_folder(plan, tile.label) as scratch:
        local = {name: scratch / Path(file_name).name for name, file_name in files.items()}
        write_mosaic_cog(local[MOSAIC_LAYER], layers.mosaic, tile_box, MOSAIC_PROFILE)
        write_count_cog(local[COUNT_LAYER], layers.count, tile_box, COUNT_PROFILE)
        for name, values in layers.indices.items():
            write_index_cog(local[name], values, tile_box, SPECTRAL_INDICES[name], INDEX_PROFILE)
        if FILL_LAYER in local:
            write_fill_cog(local[FILL_LAYER], filled.distance, tile_box, FILL_PROFILE)
        for path in local.values():
            validate_cog(path)
        plan.destination.put({files[name]: path for name, path in local.items()})
    fill_distance = filled.distance if plan.fill.enabled else None
    plan.workspace.write_bytes(plan.histograms_name(tile), TileHistograms.of(layers, inside_aoi, fill_distance).to_bytes())
    return files


def build_tile(plan: MonthPlan, tile: OutputTile) -> TileRecord:
    """Read, mask, composite, fill and publish one tile; write and return its record (the commit).
    A tile this build run committed already is not built again: its record is returned.

    Raises `DiskFull` before reading a scene when a disk lacks the tile's share, or when one fills up meanwhile.
    """
    own = own_commit(plan, tile)
    if own is not None:
        return own
    with named_disk_full(plan.disk, "tile"):
        plan.disk.check_tile()
        return observed_tile(plan, tile)


def observed_tile(plan: MonthPlan, tile: OutputTile) -> TileRecord:
    """`build_tile`'s work: read, mask, composite, fill, publish, record."""
    tile_box = tile_grid(plan.grid, plan.tile_size_px, tile)
    # One GDAL environment for the tile's own rasterio calls (each would otherwise build its own
    # AWS session: 14 ms a call).
    # The AOI goes to the grid's CRS once per tile, not once per scene.
    aoi_on_grid = aoi_in_crs(plan.aoi, plan.grid.crs)
    with gdal_env():
        inside_aoi = aoi_pixel_mask(aoi_on_grid, tile_box)
        observations, scene_pixels, failed = observe_tile(plan, tile_box, aoi_on_grid, inside_aoi)
    stack_check = masker_named(plan.mask.masker).stack_check
    refine_usable = None if stack_check is None else functools.partial(stack_check, plan.mask)
    composite = composite_tile(observations, tile_box, inside_aoi, plan.composite, refine_usable)
    filled = fill_tile(plan.fill, tile_box, inside_aoi, TileLayers(composite.mosaic, composite.count, composite.indices))
    record = TileRecord(
        row=tile.row,
        col=tile.col,
        files=publish_tile_layers(plan, tile, tile_box, inside_aoi, filled),
        aoi_pixels=composite.aoi_pixels,
        valid_pixels=composite.valid_pixels,
        max_count=int(composite.count.max(initial=0)),
        contributing_scenes=composite.contributing_scenes,
        scene_pixels=scene_pixels,
        failed=failed,
        filled_pixels=filled.filled_pixels,
        fill_months=filled.months_used,
        fill_digest=plan.fill.digest,
        build_run_id=plan.build_run_id,
    )
    plan.workspace.write_bytes(plan.record_name(tile), record.to_json())
    return record


def published_layers(plan: MonthPlan, record: TileRecord, tile_box: GeoBox) -> TileLayers:
    """A committed tile's mosaic, count and indices, read back from where they were published."""

    def read(layer: str) -> np.ndarray:
        return read_published_window(plan.destination, record.files[layer], tile_box)

    return TileLayers(read(MOSAIC_LAYER), read(COUNT_LAYER)[0], {name: read(name)[0] for name in plan.composite.indices})


def refill_tile(plan: MonthPlan, tile: OutputTile, record: TileRecord) -> TileRecord:
    """Fill a committed tile again from its published layers and the month's current neighbours,
    without reading a scene; republish its layers and return its updated record (the commit). A tile
    this build run refilled already is returned as it is. Raises `DiskFull` as `build_tile` does."""
    own = own_commit(plan, tile)
    if own is not None:
        return own
    with named_disk_full(plan.disk, "tile"):
        plan.disk.check_tile()
        return refilled_tile(plan, tile, record)


def refilled_tile(plan: MonthPlan, tile: OutputTile, record: TileRecord) -> TileRecord:
    """`refill_tile`'s work: fill, republish, record."""
    tile_box = tile_grid(plan.grid, plan.tile_size_px, tile)
    with gdal_env():
        inside_aoi = aoi_pixel_mask(aoi_in_crs(plan.aoi, plan.grid.crs), tile_box)
    filled = fill_tile(plan.fill, tile_box, inside_aoi, published_layers(plan, record, tile_box))
    files = publish_tile_layers(plan, tile, tile_box, inside_aoi, filled)
    for stale in set(record.files.values()) - set(files.values()):  # the fill layer of a month no longer filled
        plan.destination.delete(stale)
    refilled = replace(
        record,
        files=files,
        filled_pixels=filled.filled_pixels,
        fill_months=filled.months_used,
        fill_digest=plan.fill.digest,
        build_run_id=plan.build_run_id,
    )
    plan.workspace.write_bytes(plan.record_name(tile), refilled.to_json())
    return refilled


def parsed_workspace_file(workspace: Workspace, name: str, parse: Callable[[bytes], T], tile: OutputTile) -> T | None:
    """`parse` of the tile's workspace file `name`; None, with a warning naming the file, when it cannot be
    parsed (a truncated or garbled record, from a full disk or a copy cut short)."""
    try:
        return parse(workspace.read_bytes(name))
    except UNREADABLE_RECORD_ERRORS as error:
        stage_logger(__name__).warning(
            "tile %s: %s cannot be read (%s: %s); building the tile again",
            tile.label,
            workspace.uri(name),
            type(error).__name__,
            first_line(error),
        )
        return None


def own_commit(plan: MonthPlan, tile: OutputTile) -> TileRecord | None:
    """The tile's record when this build run committed it already (its task runs again), else None. A record
    that cannot be read is no commit of this run (the flow warned of it when it found the tile uncommitted)."""
    name = plan.record_name(tile)
    if plan.build_run_id is None or not plan.workspace.exists(name):
        return None
    try:
        record = TileRecord.from_json(plan.workspace.read_bytes(name))
    except UNREADABLE_RECORD_ERRORS:
        return None
    return record if record.build_run_id == plan.build_run_id else None


def committed_record(plan: MonthPlan, tile: OutputTile) -> TileRecord | None:
    """The tile's record when an earlier attempt committed it with no failed scene and its COGs are
    still published (a month judged unpublishable, or a user, may have removed them), else None.

    So does a missing histograms file, and, with a warning naming it, a record or histograms file that
    cannot be read (truncated, garbled): the tile is built again.
    """
    name, histograms_name = plan.record_name(tile), plan.histograms_name(tile)
    if not (plan.workspace.exists(name) and plan.workspace.exists(histograms_name)):
        return None
    record = parsed_workspace_file(plan.workspace, name, TileRecord.from_json, tile)
    if record is None or parsed_workspace_file(plan.workspace, histograms_name, TileHistograms.from_bytes, tile) is None:
        return None
    if record.failed:
        return None
    return None if unpublished_files(plan.destination, record) else record


def unpublished_files(destination: MonthDestination, record: TileRecord) -> list[str]:
    """The files `record` lists that `destination` no longer holds (removed since the tile was committed)."""
    return [file_name for file_name in record.files.values() if not destination.exists(file_name)]


def stale_fill(plan: MonthPlan, record: TileRecord) -> bool:
    """Whether a committed tile must be refilled: it has gaps (AOI pixels with no observation) and the
    month's fill inputs changed since it was filled (`MonthFill.digest`), or its layers lack or keep a
    fill layer the month no longer has or now has. A tile without gaps takes nothing from its neighbours,
    so their publication leaves it as it is."""
    has_gaps = record.valid_pixels < record.aoi_pixels
    return record.files != plan.tile_files(record.tile) or (has_gaps and record.fill_digest != plan.fill.digest)


build_tile_task = task(
    name="build-tile",
    task_run_name="tile-{tile.label}",
    **io_task_retries(),
    cache_policy=NO_CACHE,
)(portable_errors(releasing_memory(build_tile)))

refill_tile_task = task(
    name="refill-tile",
    task_run_name="refill-{tile.label}",
    **io_task_retries(),
    cache_policy=NO_CACHE,
)(portable_errors(releasing_memory(refill_tile)))

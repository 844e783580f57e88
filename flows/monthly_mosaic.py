"""The monthly mosaic flow: search, build each output tile, then the month's products, publish.

`monthly_mosaic(settings)` is what deployments run. One run at a time works on an AOI and month
(`flows.locking.month_lock`). Before any scene is read, its local folders are checked for the disk
the tiles in flight and the month's own files need (`tasks.storage.disk_space`); a disk too small, or one
that fills up later, ends the run in one `DiskFull` line. The AOI's grid is cut into output tiles
(`tasks.geometry.tiles`); the `build-tiles` subflow maps the tiles that are not committed yet over the
selected task runner, threads or Dask, and each tile reads, masks, composites and publishes its part
(`tasks.tiling.tile`). A re-run skips committed tiles. The tiles' records are merged (`tasks.products.month`): a
scene that failed is recorded and skipped while the failed share stays within `max_failed_fraction`;
above it the run fails listing them. A month with less than `min_valid_share` of the AOI clear fails with no STAC
Item. Otherwise the mosaic index, single COGs, quicklook, metadata and the Item (last) are
published, then the month joins the AOI's STAC Collection (`flows.collection`). Slack hooks report
start, success (with the returned `RunReport`) and failure.
"""

import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_aws import S3Bucket

from blocks.publish import MonthDestination, check_month_folder_owner, month_destination
from blocks.slack import RunReport, slack_state_hooks
from flows.caching import scene_folder_digest, tiles_digest
from flows.collection import publish_collection_task
from flows.locking import month_lock
from flows.parameters import MosaicSettings, RunnerSettings, tile_concurrency, tiles_in_flight
from tasks.acquisition.search import search_scenes_task
from tasks.compositing.indices import SPECTRAL_INDICES
from tasks.core.errors import DiskFull, InvalidSettings, TilesFailed, TooFewClearPixels, TooManyFailedScenes, first_line
from tasks.core.month import Month
from tasks.core.scene import SkippedScene, scene_items_json
from tasks.gap_fill.sources import MonthFill, neighbour_months
from tasks.geometry.aoi import aoi_digest, aoi_name, load_aoi
from tasks.geometry.grid import check_grid_size, grid_for_aoi
from tasks.geometry.tiles import OutputTile, tile_layout, tiles_over_aoi
from tasks.masking.registry import masker_named
from tasks.products.metadata import ProductNames, ProductRun, TileFiles
from tasks.products.month import MonthTiles, merge_tiles, month_histograms, month_layers, write_month_products_task
from tasks.storage.disk_space import DiskNeeds, MonthWrites, month_disk_needs, named_disk_full
from tasks.storage.workspace import Workspace, content_digest, remove_abandoned_partials
from tasks.tiling.tile import MonthPlan, TileRecord, build_tile_task, committed_record, refill_tile_task, stale_fill

__all__ = [
    "SEARCH_FOLDER",
    "RunInputs",
    "check_failed_share",
    "checked_inputs",
    "monthly_mosaic",
    "run_inputs",
    "staging_root",
]

T = TypeVar("T")
DASK_WORKER_MALLOC_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
SEARCH_FOLDER = "search"


@dataclass(frozen=True)
class RunInputs:
    """What a run derives from its settings, the same in the parent flow and its subflow.

    `name` names the product folder and files (`aoi_name`, else `tasks.geometry.aoi.aoi_name`), `digest` is
    the AOI's identity, and `workspace` the folder of the run's scene and mask files.
    """

    aoi: Geometry
    grid: GeoBox
    name: str
    digest: str
    workspace: Workspace


def tile_task_runner(runner: RunnerSettings) -> TaskRunner:
    """The task runner for tiles: a bounded thread pool, or Dask (remote scheduler or local cluster)."""
    if runner.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=tile_concurrency(runner))
    import dask
    from prefect_dask import DaskTaskRunner

    if runner.dask_address:
        return DaskTaskRunner(address=runner.dask_address)
    # Dask starts workers with glibc's trim threshold fixed at 64 KiB, which also fixes the mmap
    # threshold: every tile array is then mapped and unmapped page by page (measured: +70 % CPU per
    # tile). Tiles hand their memory back themselves (`tasks.core.memory`), so let glibc tune itself.
    dask.config.set({DASK_WORKER_MALLOC_TRIM: None})
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": runner.dask_workers, "threads_per_worker": 1, "processes": True}
    )


def run_inputs(settings: MosaicSettings) -> RunInputs:
    """The AOI, its grid (refused above `max_grid_pixels`), names and workspace folder. Deterministic.

    The workspace folder is `<workspace>/<name>/<digest of AOI, grid, read and mask settings>`; a
    local workspace is made absolute so worker processes agree on it.
    """
    aoi = load_aoi(settings.aoi)
    grid = grid_for_aoi(aoi, settings.grid.target_crs, settings.grid.resolution_m)
    check_grid_size(grid, settings.max_grid_pixels)
    name = settings.aoi_name or aoi_name(settings.aoi, aoi)
    root = Workspace(settings.workspace)
    if not root.is_s3:
        root = Workspace(str(Path(settings.workspace).resolve()))
    folder = f"{name}/{scene_folder_digest(aoi, grid, settings.read, settings.mask)}"
    return RunInputs(aoi, grid, name, aoi_digest(aoi), Workspace(root.uri(folder)))


def checked_inputs(settings: MosaicSettings) -> RunInputs:
    """`run_inputs`, after the masker's own check that it can run (model weights on disk, say).

    Raises the one-line `InvalidAOI`, `InvalidSettings` or `MissingModelWeights` before any scene is read.
    """
    inputs = run_inputs(settings)
    masker_named(settings.mask.masker).check_ready(settings.mask)
    return inputs


def staging_root(settings: MosaicSettings) -> Path:
    """Where products are built: `staging_dir`, else `<workspace>/.staging` (local) or the system temp dir (S3)."""
    if settings.staging_dir:
        return Path(settings.staging_dir).resolve()
    if Workspace(settings.workspace).is_s3:
        return Path(tempfile.gettempdir()) / "basemap-staging"
    return Path(settings.workspace).resolve() / ".staging"


def remove_abandoned_files(inputs: RunInputs, staging: Path) -> None:
    """Delete the files in the making that killed runs left in this AOI's workspace, the staging root and the temp dir."""
    abandoned = remove_abandoned_partials(Path(tempfile.gettempdir()), recursive=False)
    if staging.is_dir():
        abandoned += remove_abandoned_partials(staging)
    if not inputs.workspace.is_s3:
        abandoned += remove_abandoned_partials(Path(inputs.workspace.root))
    if abandoned:
        get_run_logger().info("removed %d files a killed run left: %s", len(abandoned), ", ".join(map(str, abandoned)))


class StepProgress:
    """A progress artifact on the run's page, advanced one step at a time."""

    def __init__(self, total_steps: int, description: str) -> None:
        self._done, self._total = 0, max(total_steps, 1)
        self._artifact_id: UUID = create_progress_artifact(  # type: ignore[assignment]  # async_dispatch, sync here
            0.0, key="scene-progress", description=description
        )

    def advance(self) -> None:
        self._done += 1
        update_progress_artifact(self._artifact_id, 100.0 * self._done / self._total)


def finished(futures: Mapping[PrefectFuture, T]) -> Iterator[tuple[T, Any]]:
    """(what each future was for, its result or exception), in the order the futures finish.

    Judged by the result, not `future.state`: the API records task states asynchronously.
    """
    for future in as_completed(list(futures)):
        yield futures[future], future.result(raise_on_failure=False)


def products_destination(settings: MosaicSettings, aoi: str, month: Month) -> MonthDestination:
    """The month folder the products go to: in the `s3_block`'s bucket, else below `output_dir`."""
    bucket = load_bucket(settings.s3_block)
    return month_destination(bucket, aoi, month.label, None if bucket else Path(settings.output_dir).resolve())


def has_single_cogs(settings: MosaicSettings, grid: GeoBox, single_tile: bool) -> bool:
    """Whether the month gets single COGs: always for one tile, up to `single_cog_max_pixels` when tiled."""
    return single_tile or grid.shape.x * grid.shape.y <= settings.tiles.single_cog_max_pixels


def disk_needs(settings: MosaicSettings, inputs: RunInputs) -> DiskNeeds:
    """What the run needs at once of its local disks: staging_dir, and the workspace and output_dir when they
    are local (`tasks.storage.disk_space`)."""
    grid, tile_size_px = inputs.grid, settings.tiles.tile_size_px
    tiles = len(tiles_over_aoi(grid, inputs.aoi, tile_size_px))
    indices = tuple(SPECTRAL_INDICES[name] for name in settings.composite.indices)
    single_tile = tile_layout(grid, tile_size_px).shape.yx == (1, 1)
    writes = MonthWrites(
        grid_shape=grid.shape.yx,
        tile_pixels=min(tile_size_px, grid.shape.y) * min(tile_size_px, grid.shape.x),
        layer_bytes=tuple(layer.bytes_per_pixel for layer in month_layers(indices, settings.fill != "none")),
        tiles=tiles,
        tiles_in_flight=min(tiles, tiles_in_flight(settings.runner)),
        tiled=not single_tile,
        single_cogs=has_single_cogs(settings, grid, single_tile),
    )
    workspace = None if Workspace(settings.workspace).is_s3 else Path(settings.workspace).resolve()
    output = None if settings.s3_block else Path(settings.output_dir).resolve()  # as `products_destination` decides
    return month_disk_needs(writes, staging_root(settings), workspace, output)


def month_plan(
    settings: MosaicSettings, inputs: RunInputs, destination: MonthDestination, month: Month, items_name: str, items_digest: str
) -> MonthPlan:
    """What every tile of the month shares, from the settings, the run's inputs and the products' destination,
    with the published neighbouring months that can fill its gaps as they are now."""
    tile_size_px = settings.tiles.tile_size_px
    neighbours = neighbour_months(
        lambda other: products_destination(settings, inputs.name, other),
        inputs.name,
        month,
        inputs.grid,
        settings.fill,
        settings.fill_max_months,
    )
    return MonthPlan(
        aoi=inputs.aoi,
        grid=inputs.grid,
        workspace=inputs.workspace,
        items_name=items_name,
        tiles_digest=tiles_digest(settings, month.label, items_digest),
        aoi_name=inputs.name,
        month_label=month.label,
        names=ProductNames.for_run(inputs.name, month),
        tile_size_px=tile_size_px,
        single_tile=tile_layout(inputs.grid, tile_size_px).shape.yx == (1, 1),
        read=settings.read,
        mask=settings.mask,
        composite=settings.composite,
        max_concurrent_scenes=settings.runner.max_concurrent_scenes,
        scratch_dir=staging_root(settings) / inputs.name / month.label,
        destination=destination,
        fill=MonthFill(settings.fill, settings.fill_max_months, neighbours),
        disk=disk_needs(settings, inputs),
    )


@flow(name="build-tiles")
def build_tiles(month_label: str, items_name: str, items_digest: str, settings: MosaicSettings) -> list[TileRecord]:
    """Build every output tile over the AOI that is not committed yet, refill committed tiles whose fill
    is stale (`tasks.tiling.tile.stale_fill`: a tile with gaps whose neighbouring months changed since); returns
    all tiles' records.

    The found items are read from `items_name` in the run's workspace by each tile, never passed
    as parameters: Prefect records a subflow's parameters in its API, and a month of items can
    exceed its size limit and carry signed asset URLs. Tiles run row by row, so tiles that share
    COG blocks run close together in time (GDAL's cache then serves the shared blocks once).
    Raises `TilesFailed` naming each tile that failed after its retries; the others stay committed. A full
    disk raises the first tile's `DiskFull` alone, once.
    The plan names this run (`MonthPlan.build_run_id`), so a tile task that Dask runs again after the
    worker holding its result died returns the tile's commit instead of building it twice.
    """
    logger = get_run_logger()
    inputs, month = run_inputs(settings), Month.parse(month_label)
    destination = products_destination(settings, inputs.name, month)
    plan = replace(
        month_plan(settings, inputs, destination, month, items_name, items_digest), build_run_id=str(runtime.flow_run.id)
    )
    tiles = tiles_over_aoi(plan.grid, plan.aoi, plan.tile_size_px)
    records: list[TileRecord] = []
    pending: list[OutputTile] = []
    to_refill: list[TileRecord] = []
    for tile in tiles:
        record = committed_record(plan, tile)
        if record is None:
            pending.append(tile)
        elif stale_fill(plan, record):
            to_refill.append(record)
        else:
            records.append(record)
    logger.info(
        "%d tiles over the AOI: %d committed by an earlier attempt, %d to refill, %d to build",
        len(tiles), len(records), len(to_refill), len(pending),
    )
    progress = StepProgress(len(pending) + len(to_refill), "Tiles built")
    failed_tiles: list[tuple[str, str]] = []
    submitted = {build_tile_task.submit(plan, tile): tile for tile in pending}
    submitted |= {refill_tile_task.submit(plan, record.tile, record): record.tile for record in to_refill}
    disk_full: DiskFull | None = None
    for tile, record_or_error in finished(submitted):
        progress.advance()
        if isinstance(record_or_error, DiskFull):
            disk_full = disk_full or record_or_error
        elif isinstance(record_or_error, BaseException):
            failed_tiles.append((tile.label, first_line(record_or_error)))
        else:
            records.append(record_or_error)
    if disk_full is not None:  # every tile after it met the same disk: say so once
        raise disk_full
    if failed_tiles:
        listing = "; ".join(f"{label}: {reason}" for label, reason in sorted(failed_tiles))
        raise TilesFailed(
            f"{len(failed_tiles)} of {len(tiles)} tiles failed ({listing}); re-run the month: committed tiles are kept",
            sorted(failed_tiles),
        )
    return sorted(records, key=lambda record: record.tile)


def check_failed_share(month_tiles: MonthTiles, scenes_found: int, max_failed_fraction: float) -> None:
    """Raise `TooManyFailedScenes` when more than the allowed share failed, or no scene is usable."""
    failed = [(failure.item_id, failure.reason) for failure in month_tiles.failed]
    listing = "; ".join(f"{item_id}: {reason}" for item_id, reason in failed)
    share = len(failed) / scenes_found if scenes_found else 0.0
    if share > max_failed_fraction:
        raise TooManyFailedScenes(
            f"{len(failed)} of {scenes_found} scenes failed ({share:.0%} > allowed {max_failed_fraction:.0%}): "
            f"{listing}; retry the run, or raise max_failed_fraction",
            failed,
        )
    if not month_tiles.used and not month_tiles.unclear_scenes:
        outside = len(month_tiles.skipped)
        raise TooManyFailedScenes(
            f"none of {scenes_found} scenes is usable ({outside} cover no AOI pixel"
            f"{'; failed: ' + listing if listing else ''}); check the AOI and the month",
            failed,
        )


def run_summary_markdown(report: RunReport) -> str:
    """A markdown summary of a finished run for the Prefect UI."""
    rows = [
        ("AOI", report.aoi),
        ("Month", report.month),
        ("Scenes found", str(report.scenes_found)),
        ("Scenes used", str(report.scenes_used)),
        ("Scenes failed", str(len(report.failed_scenes))),
        ("Valid-pixel share", f"{report.valid_share:.1%}" if report.valid_share is not None else "n/a"),
        ("Filled share", f"{report.filled_share:.1%}" if report.filled_share is not None else "n/a (fill: none)"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    products = "\n".join(f"| {name} | `{url}` |" for name, url in report.product_urls.items())
    failures = "\n".join(f"- `{item_id}`: {reason}" for item_id, reason in report.failed_scenes) or "- none"
    return (
        f"# Basemap {report.aoi} {report.month}\n\n| | |\n|---|---|\n{table}\n\n"
        f"## Products\n\n| product | location |\n|---|---|\n{products}\n\n## Failed scenes\n\n{failures}\n"
    )


def load_bucket(block_name: str | None) -> S3Bucket | None:
    """The named prefect-aws `S3Bucket` block, or None for local output; `InvalidSettings` when the
    Prefect API holds no such block."""
    if not block_name:
        return None
    try:
        return S3Bucket.load(block_name)  # type: ignore[return-value]  # async_dispatch, sync here
    except ValueError as missing:  # Prefect: "Unable to find block document named ..."
        raise InvalidSettings(
            f"s3_block {block_name!r} is not saved in the Prefect API ({first_line(missing)}); "
            "save it with `python -m blocks.register`, or fix the name"
        ) from None


def check_valid_share(valid_share: float, min_valid_share: float, month: Month, more_scenes_hint: str = "") -> None:
    """Raise `TooFewClearPixels` when less than `min_valid_share` of the AOI has a clear observation.

    `more_scenes_hint` says how to get more scenes (`SearchResult.more_scenes_hint`), when there is a way.
    """
    if valid_share < min_valid_share:
        fixes = [more_scenes_hint, "lower min_valid_share"] if more_scenes_hint else ["lower min_valid_share"]
        raise TooFewClearPixels(
            f"only {valid_share:.1%} of the AOI has a clear observation in {month.label} (min_valid_share "
            f"{min_valid_share:.0%}); nothing is published: {', or '.join(fixes)}"
        )


def product_run(
    settings: MosaicSettings,
    inputs: RunInputs,
    month: Month,
    month_tiles: MonthTiles,
    plan: MonthPlan,
    records: list[TileRecord],
    left_out: Sequence[SkippedScene],
) -> ProductRun:
    """What the products stage needs to know about the month: scenes, and which files the tiles made.

    `left_out` are the items the search found but did not use (`SearchResult.left_out`): skipped too.
    """
    tiled = not plan.single_tile
    return ProductRun(
        aoi_name=inputs.name,
        aoi_source=settings.aoi,
        aoi=inputs.aoi,
        aoi_digest=inputs.digest,
        grid=inputs.grid,
        month=month,
        composite=settings.composite,
        mask=settings.mask,
        scenes_used=month_tiles.used,
        scenes_failed=month_tiles.failed,
        scenes_skipped=(*left_out, *month_tiles.skipped),
        tiles=tuple(TileFiles.of(r.tile.label, r.files) for r in records) if tiled else (),
        single_cogs=has_single_cogs(settings, inputs.grid, plan.single_tile),
        fill_method=plan.fill.method,
        fill_max_months=plan.fill.max_months,
        filled_pixels=month_tiles.filled_pixels,
        observed_pixels=month_tiles.valid_pixels,
        fill_sources=tuple(
            (neighbour.month, neighbour.item_url)
            for neighbour in sorted(plan.fill.neighbours, key=lambda neighbour: neighbour.month)
            if neighbour.month in month_tiles.fill_months
        ),
    )


@flow(name="monthly-mosaic", **slack_state_hooks())
def monthly_mosaic(settings: MosaicSettings) -> RunReport:
    """Build the cloud-free mosaic of one AOI and month and publish its products."""
    logger = get_run_logger()
    month = Month.for_run(settings.month, runtime.flow_run.scheduled_start_time)
    inputs = checked_inputs(settings)
    grid = inputs.grid
    logger.info("%s %s: grid %s, %d x %d px", inputs.name, month.label, grid.crs, grid.shape.x, grid.shape.y)
    destination = products_destination(settings, inputs.name, month)
    staging = staging_root(settings)
    disk = disk_needs(settings, inputs)

    with named_disk_full(disk, "month"), month_lock(inputs.name, month, staging):
        remove_abandoned_files(inputs, staging)
        check_month_folder_owner(destination, inputs.digest)
        disk.check()  # before any scene is read
        found = search_scenes_task(inputs.aoi, month.label, settings.search)  # raises NoScenesFound when empty
        items = found.scenes
        items_json = scene_items_json(items)
        items_digest = content_digest(items_json.decode())
        items_name = f"{SEARCH_FOLDER}/{month.label}-{items_digest}.json"
        inputs.workspace.write_bytes(items_name, items_json)
        plan = month_plan(settings, inputs, destination, month, items_name, items_digest)
        tile_runner = tile_task_runner(settings.runner)
        build = build_tiles.with_options(task_runner=tile_runner)  # type: ignore[arg-type]  # stub rejects all runners
        records = build(month.label, items_name, items_digest, settings)
        month_tiles = merge_tiles(records, items)
        try:
            check_failed_share(month_tiles, len(items), settings.max_failed_fraction)
            check_valid_share(
                month_tiles.valid_share, settings.min_valid_share, month, found.more_scenes_hint(settings.search.max_cloud_cover)
            )
        except (TooManyFailedScenes, TooFewClearPixels):
            destination.remove_below(plan.tiles_folder)  # no Item will list them
            raise
        run = product_run(settings, inputs, month, month_tiles, plan, records, found.left_out)
        urls = write_month_products_task(plan, run, records, month_histograms(plan, records))
        collection_url = publish_collection_task(destination, staging)
        shutil.rmtree(plan.scratch_dir, ignore_errors=True)

    report = RunReport(
        aoi=inputs.name,
        month=month.label,
        scenes_found=found.items_found,
        scenes_used=len(month_tiles.used),
        failed_scenes=list(month_tiles.failed),
        valid_share=month_tiles.valid_share,
        filled_share=month_tiles.filled_share if plan.fill.enabled else None,
        product_urls=urls,
        flow_run_name=runtime.flow_run.name,
        flow_run_url=runtime.flow_run.ui_url,
    )
    create_markdown_artifact(run_summary_markdown(report), key="basemap-summary", description="Run summary")
    logger.info("published %s %s: %s; collection %s", inputs.name, month.label, ", ".join(urls.values()), collection_url)
    return report

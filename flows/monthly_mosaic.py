"""The monthly mosaic flow: search, acquire and mask each scene, composite, write products, publish.

`monthly_mosaic(settings)` is what deployments run. One run at a time works on an AOI and month
(`flows.locking.month_lock`). Scene work (read, then mask) runs in the `acquire-scenes` subflow on
the selected task runner, threads or Dask; the composite, products and publishing run in the parent
flow. A scene that fails after its retries is recorded and skipped while the failed share stays
within `max_failed_fraction`; above it the run fails listing them. A month with less than
`min_valid_share` of the AOI clear fails and publishes nothing. Products are built in a staging
folder a retried run finds again (`tasks.staging`). Slack hooks report start, success (with the
returned `RunReport`) and failure.
"""

import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_aws import S3Bucket

from blocks.publish import check_month_folder_owner, publish_products_task
from blocks.slack import RunReport, slack_state_hooks
from flows.caching import MASK_CACHE, READ_CACHE, products_digest, result_storage, scene_folder_digest
from flows.locking import month_lock
from flows.parameters import MosaicSettings, RunnerSettings
from tasks.aoi import aoi_digest, aoi_name, load_aoi
from tasks.composite import CompositeResult, composite_task
from tasks.errors import SceneOutsideAOI, TooFewClearPixels, TooManyFailedScenes, first_line
from tasks.grid import check_grid_size, grid_for_aoi
from tasks.mask import MASKERS_USING_OCM, check_model_weights, mask_scene_task, model_dir_for, model_version_for
from tasks.metadata import ProductRun
from tasks.month import Month
from tasks.products import write_products_task
from tasks.read import read_scene_task
from tasks.scene import ClippedScene, FailedScene, SkippedScene, scene_items_from_json, scene_items_json
from tasks.search import search_scenes_task
from tasks.staging import FinishedProducts, StagedMonth
from tasks.workspace import Workspace, remove_abandoned_partials

T = TypeVar("T")
SEARCH_FOLDER = "search"
NO_CLEAR_PIXEL = "no clear pixel in the AOI (cloud, shadow or nodata everywhere it covers)"


@dataclass(frozen=True)
class RunInputs:
    """What a run derives from its settings, the same in the parent flow and its subflow.

    `name` names the product folder and files (`aoi_name`, else `tasks.aoi.aoi_name`), `digest` is
    the AOI's identity, and `workspace` the folder of the run's scene and mask files.
    """

    aoi: Geometry
    grid: GeoBox
    name: str
    digest: str
    workspace: Workspace


@dataclass(frozen=True)
class SceneOutcomes:
    """What the acquisition subflow made of the found scenes."""

    masked: tuple[ClippedScene, ...]
    failed: tuple[FailedScene, ...]
    outside_aoi: tuple[SkippedScene, ...]


def scene_task_runner(runner: RunnerSettings) -> TaskRunner:
    """The task runner for scene work: a bounded thread pool, or Dask (remote scheduler or local cluster)."""
    if runner.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=runner.max_concurrent_scenes)
    from prefect_dask import DaskTaskRunner

    if runner.dask_address:
        return DaskTaskRunner(address=runner.dask_address)
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
    """`run_inputs`, after checking the model weights the masker needs are on disk.

    Raises the one-line `InvalidAOI`, `InvalidSettings` or `MissingModelWeights` before any scene is read.
    """
    inputs = run_inputs(settings)
    if settings.mask.masker in MASKERS_USING_OCM:
        check_model_weights(model_dir_for(settings.mask), model_version_for(settings.mask))
    return inputs


def staging_root(settings: MosaicSettings) -> Path:
    """Where products are built: `staging_dir`, else `<workspace>/.staging` (local) or the system temp dir (S3)."""
    if settings.staging_dir:
        return Path(settings.staging_dir).resolve()
    if Workspace(settings.workspace).is_s3:
        return Path(tempfile.gettempdir()) / "basemap-staging"
    return Path(settings.workspace).resolve() / ".staging"


def remove_abandoned_files(inputs: RunInputs) -> None:
    """Delete the files in the making that killed runs left in this AOI's workspace and the temp dir."""
    abandoned = remove_abandoned_partials(Path(tempfile.gettempdir()), recursive=False)
    if not inputs.workspace.is_s3:
        abandoned += remove_abandoned_partials(Path(inputs.workspace.root))
    if abandoned:
        get_run_logger().info("removed %d files a killed run left: %s", len(abandoned), ", ".join(map(str, abandoned)))


class StepProgress:
    """A progress artifact on the run's page, advanced one step at a time."""

    def __init__(self, total_steps: int, description: str) -> None:
        self._done, self._total = 0, max(total_steps, 1)
        self._artifact_id = create_progress_artifact(0.0, key="scene-progress", description=description)

    def advance(self) -> None:
        self._done += 1
        update_progress_artifact(self._artifact_id, 100.0 * self._done / self._total)


def finished(futures: Mapping[PrefectFuture, T]) -> Iterator[tuple[T, Any]]:
    """(what each future was for, its result or exception), in the order the futures finish.

    Judged by the result, not `future.state`: the API records task states asynchronously.
    """
    for future in as_completed(list(futures)):
        yield futures[future], future.result(raise_on_failure=False)


def scene_reason(error: BaseException) -> str:
    """Why a scene was not used, in one line: '<asset>: <reason>' for our errors, else the error's first line."""
    return getattr(error, "scene_reason", None) or first_line(error)


@flow(name="acquire-scenes")
def acquire_scenes(items_name: str, settings: MosaicSettings) -> SceneOutcomes:
    """Read each scene's AOI window onto the grid, then mask it, as reads finish; cached per scene.

    The found items are read from `items_name` in the run's workspace, never passed as parameters:
    Prefect records a subflow's parameters in its API, and a month of items can exceed its size
    limit and carry signed asset URLs. The AOI and grid are rebuilt with `run_inputs`, as the
    parent flow does.
    """
    logger = get_run_logger()
    inputs = run_inputs(settings)
    workspace = inputs.workspace
    items = scene_items_from_json(workspace.read_bytes(items_name))
    storage = result_storage(workspace)
    read_task = read_scene_task.with_options(cache_policy=READ_CACHE, persist_result=True, result_storage=storage)
    mask_task = mask_scene_task.with_options(cache_policy=MASK_CACHE, persist_result=True, result_storage=storage)
    progress = StepProgress(2 * len(items), "Scene steps done: read, then mask")

    read_futures = {
        read_task.submit(item, inputs.grid, inputs.aoi, workspace, settings.read): item for item in items
    }
    mask_futures: dict[PrefectFuture, ClippedScene] = {}
    failed: list[FailedScene] = []
    outside_aoi: list[SkippedScene] = []
    for item, scene_or_error in finished(read_futures):
        progress.advance()
        if isinstance(scene_or_error, ClippedScene):
            mask_futures[mask_task.submit(scene_or_error, workspace, settings.mask)] = scene_or_error
            continue
        progress.advance()  # this scene has no mask step
        if isinstance(scene_or_error, SceneOutsideAOI):
            outside_aoi.append(SkippedScene(item.item_id, scene_or_error.scene_reason))
        else:
            failed.append(FailedScene(item.item_id, scene_reason(scene_or_error)))
    masked: list[ClippedScene] = []
    for scene, mask_or_error in finished(mask_futures):
        progress.advance()
        if isinstance(mask_or_error, BaseException):
            failed.append(FailedScene(scene.item_id, scene_reason(mask_or_error)))
        else:
            masked.append(scene)
    for scene_failure in failed:
        logger.warning("scene %s failed: %s", scene_failure.item_id, scene_failure.reason)
    order = {item.item_id: index for index, item in enumerate(items)}
    return SceneOutcomes(
        masked=tuple(sorted(masked, key=lambda scene: order[scene.item_id])),
        failed=tuple(sorted(failed, key=lambda failure: order[failure.item_id])),
        outside_aoi=tuple(sorted(outside_aoi, key=lambda skipped: order[skipped.item_id])),
    )


def check_failed_share(outcomes: SceneOutcomes, scenes_found: int, max_failed_fraction: float) -> None:
    """Raise `TooManyFailedScenes` when more than the allowed share failed, or no scene is usable."""
    failed = [(failure.item_id, failure.reason) for failure in outcomes.failed]
    listing = "; ".join(f"{item_id}: {reason}" for item_id, reason in failed)
    share = len(failed) / scenes_found if scenes_found else 0.0
    if share > max_failed_fraction:
        raise TooManyFailedScenes(
            f"{len(failed)} of {scenes_found} scenes failed ({share:.0%} > allowed {max_failed_fraction:.0%}): "
            f"{listing}; retry the run, or raise max_failed_fraction",
            failed,
        )
    if not outcomes.masked:
        raise TooManyFailedScenes(
            f"none of {scenes_found} scenes is usable ({len(outcomes.outside_aoi)} cover no AOI pixel"
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
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    products = "\n".join(f"| {name} | `{url}` |" for name, url in report.product_urls.items())
    failures = "\n".join(f"- `{item_id}`: {reason}" for item_id, reason in report.failed_scenes) or "- none"
    return (
        f"# Basemap {report.aoi} {report.month}\n\n| | |\n|---|---|\n{table}\n\n"
        f"## Products\n\n| product | location |\n|---|---|\n{products}\n\n## Failed scenes\n\n{failures}\n"
    )


def load_bucket(block_name: str | None) -> S3Bucket | None:
    """The named prefect-aws `S3Bucket` block, or None for local output."""
    return S3Bucket.load(block_name) if block_name else None


def check_valid_share(valid_share: float, min_valid_share: float, month: Month) -> None:
    """Raise `TooFewClearPixels` when less than `min_valid_share` of the AOI has a clear observation."""
    if valid_share < min_valid_share:
        raise TooFewClearPixels(
            f"only {valid_share:.1%} of the AOI has a clear observation in {month.label} (min_valid_share "
            f"{min_valid_share:.0%}); nothing is published: raise search.max_cloud_cover for more scenes, "
            "or lower min_valid_share"
        )


def build_products(
    settings: MosaicSettings,
    inputs: RunInputs,
    month: Month,
    outcomes: SceneOutcomes,
    staged: StagedMonth,
) -> FinishedProducts:
    """Composite the masked scenes into the staging folder, check the clear share, write the five products."""
    result: CompositeResult = composite_task(
        list(outcomes.masked),
        inputs.grid,
        inputs.aoi,
        inputs.workspace,
        settings.composite,
        staged.mosaic_path,
        staged.count_path,
    )
    check_valid_share(result.valid_share, settings.min_valid_share, month)
    product_run = ProductRun(
        aoi_name=inputs.name,
        aoi_source=settings.aoi,
        aoi=inputs.aoi,
        aoi_digest=inputs.digest,
        grid=inputs.grid,
        month=month,
        composite=settings.composite,
        mask=settings.mask,
        scenes_used=tuple(scene for scene in outcomes.masked if scene.item_id in result.contributing_scenes),
        scenes_failed=outcomes.failed,
        scenes_skipped=skipped_scenes(outcomes, result.contributing_scenes),
    )
    names = write_products_task(staged.products, product_run, result.mosaic_path, result.count_path)
    finished_products = FinishedProducts(names, result.valid_share, result.contributing_scenes)
    staged.record_finished(finished_products)
    return finished_products


def skipped_scenes(outcomes: SceneOutcomes, contributing: tuple[str, ...]) -> tuple[SkippedScene, ...]:
    """Scenes outside the AOI, then masked scenes that gave no clear pixel, each with its reason."""
    no_clear_pixel = tuple(
        SkippedScene(scene.item_id, NO_CLEAR_PIXEL) for scene in outcomes.masked if scene.item_id not in contributing
    )
    return outcomes.outside_aoi + no_clear_pixel


@flow(name="monthly-mosaic", **slack_state_hooks())
def monthly_mosaic(settings: MosaicSettings) -> RunReport:
    """Build the cloud-free mosaic of one AOI and month and publish its products."""
    logger = get_run_logger()
    month = Month.for_run(settings.month, runtime.flow_run.scheduled_start_time)
    inputs = checked_inputs(settings)
    grid = inputs.grid
    logger.info("%s %s: grid %s, %d x %d px", inputs.name, month.label, grid.crs, grid.shape.x, grid.shape.y)
    bucket = load_bucket(settings.s3_block)
    output_dir = None if bucket else Path(settings.output_dir).resolve()
    staging = staging_root(settings)

    with month_lock(inputs.name, month, staging):
        remove_abandoned_files(inputs)
        check_month_folder_owner(bucket, output_dir, inputs.name, month.label, inputs.digest)
        items = search_scenes_task(inputs.aoi, month.label, settings.search)  # raises NoScenesFound when empty
        items_name = f"{SEARCH_FOLDER}/{month.label}.json"
        inputs.workspace.write_bytes(items_name, scene_items_json(items))
        acquire = acquire_scenes.with_options(task_runner=scene_task_runner(settings.runner))
        outcomes = acquire(items_name, settings)
        check_failed_share(outcomes, len(items), settings.max_failed_fraction)

        staged = StagedMonth(
            staging,
            inputs.name,
            month.label,
            products_digest(settings, inputs.workspace, month.label, outcomes.masked, outcomes.failed),
        )
        finished_products = staged.prepare()
        if finished_products is None:
            finished_products = build_products(settings, inputs, month, outcomes, staged)
        else:
            logger.info("publishing the products an earlier attempt finished in %s", staged.folder)
        names = finished_products.names
        product_files = {
            "mosaic": Path(staged.products.uri(names.mosaic)),
            "count": Path(staged.products.uri(names.count)),
            "quicklook": Path(staged.products.uri(names.quicklook)),
            "metadata": Path(staged.products.uri(names.metadata)),
        }
        urls = publish_products_task(
            product_files, bucket, inputs.name, month.label, Path(staged.products.uri(names.item)), output_dir=output_dir
        )
        staged.remove()

    report = RunReport(
        aoi=inputs.name,
        month=month.label,
        scenes_found=len(items),
        scenes_used=len(finished_products.contributing_scenes),
        failed_scenes=list(outcomes.failed),
        valid_share=finished_products.valid_share,
        product_urls=urls,
        flow_run_name=runtime.flow_run.name,
        flow_run_url=runtime.flow_run.ui_url,
    )
    create_markdown_artifact(run_summary_markdown(report), key="basemap-summary", description="Run summary")
    logger.info("published %s %s: %s", inputs.name, month.label, ", ".join(urls.values()))
    return report

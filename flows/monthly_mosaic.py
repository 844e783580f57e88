"""The monthly mosaic flow: search, acquire and mask each scene, composite, write products, publish.

`monthly_mosaic(settings)` is what deployments run. Scene work (read, then mask) runs in the
`acquire-scenes` subflow on the selected task runner, threads or Dask; the composite, products and
publishing run in the parent flow. A scene that fails after its retries is recorded and skipped
while the failed share stays within `max_failed_fraction`; above it the run fails listing them.
Slack hooks report start, success (with the returned `RunReport`) and failure, crashes included.
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

from blocks.publish import publish_products_task
from blocks.slack import RunReport, slack_state_hooks
from flows.caching import MASK_CACHE, READ_CACHE, result_storage, scene_folder_digest
from flows.parameters import MosaicSettings, RunnerSettings
from tasks.aoi import aoi_name, load_aoi
from tasks.composite import CompositeResult, composite_task
from tasks.errors import SceneOutsideAOI, TooManyFailedScenes, first_line
from tasks.grid import grid_for_aoi
from tasks.mask import MASKERS_USING_OCM, check_model_weights, mask_scene_task, model_dir_for, model_version_for
from tasks.metadata import ProductRun
from tasks.month import Month
from tasks.products import write_products_task
from tasks.read import read_scene_task
from tasks.scene import ClippedScene, FailedScene, SceneItem
from tasks.search import search_scenes_task
from tasks.workspace import Workspace

T = TypeVar("T")


@dataclass(frozen=True)
class SceneOutcomes:
    """What the acquisition subflow made of the found scenes."""

    masked: tuple[ClippedScene, ...]
    failed: tuple[FailedScene, ...]
    outside_aoi: tuple[str, ...]


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


def aoi_and_grid(settings: MosaicSettings) -> tuple[Geometry, GeoBox]:
    """The AOI and its target grid. Deterministic: the parent flow and its subflow get the same grid."""
    aoi = load_aoi(settings.aoi)
    return aoi, grid_for_aoi(aoi, settings.grid.target_crs, settings.grid.resolution_m)


def checked_inputs(settings: MosaicSettings) -> tuple[Geometry, GeoBox]:
    """`aoi_and_grid`, after checking the model weights the masker needs are on disk.

    Raises the one-line `InvalidAOI`, `InvalidSettings` or `MissingModelWeights` before any scene is read.
    """
    aoi, grid = aoi_and_grid(settings)
    if settings.mask.masker in MASKERS_USING_OCM:
        check_model_weights(model_dir_for(settings.mask), model_version_for(settings.mask))
    return aoi, grid


def run_workspace(settings: MosaicSettings, aoi: Geometry, grid: GeoBox) -> Workspace:
    """The folder of this run's scenes and masks: `<workspace>/<aoi name>/<digest>`.

    The digest covers what shapes those files (`scene_folder_digest`). A local workspace is made
    absolute so worker processes agree on it.
    """
    root = Workspace(settings.workspace)
    if not root.is_s3:
        root = Workspace(str(Path(settings.workspace).resolve()))
    digest = scene_folder_digest(aoi, grid, settings.read, settings.mask)
    return Workspace(root.uri(f"{aoi_name(settings.aoi)}/{digest}"))


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


@flow(name="acquire-scenes")
def acquire_scenes(items: list[SceneItem], settings: MosaicSettings) -> SceneOutcomes:
    """Read each scene's AOI window onto the grid, then mask it, as reads finish; cached per scene.

    Takes only plain parameters (Prefect records a subflow's parameters as JSON) and rebuilds the
    AOI and grid with `aoi_and_grid`, as the parent flow does.
    """
    logger = get_run_logger()
    aoi, grid = aoi_and_grid(settings)
    workspace = run_workspace(settings, aoi, grid)
    storage = result_storage(workspace)
    read_task = read_scene_task.with_options(cache_policy=READ_CACHE, persist_result=True, result_storage=storage)
    mask_task = mask_scene_task.with_options(cache_policy=MASK_CACHE, persist_result=True, result_storage=storage)
    progress = StepProgress(2 * len(items), "Scene steps done: read, then mask")

    read_futures = {read_task.submit(item, grid, aoi, workspace, settings.read): item for item in items}
    mask_futures: dict[PrefectFuture, ClippedScene] = {}
    failed: list[FailedScene] = []
    outside_aoi: list[str] = []
    for item, scene_or_error in finished(read_futures):
        progress.advance()
        if isinstance(scene_or_error, ClippedScene):
            mask_futures[mask_task.submit(scene_or_error, workspace, settings.mask)] = scene_or_error
            continue
        progress.advance()  # this scene has no mask step
        if isinstance(scene_or_error, SceneOutsideAOI):
            outside_aoi.append(item.item_id)
        else:
            failed.append(FailedScene(item.item_id, first_line(scene_or_error)))
    masked: list[ClippedScene] = []
    for scene, mask_or_error in finished(mask_futures):
        progress.advance()
        if isinstance(mask_or_error, BaseException):
            failed.append(FailedScene(scene.item_id, first_line(mask_or_error)))
        else:
            masked.append(scene)
    for scene_failure in failed:
        logger.warning("scene %s skipped: %s", scene_failure.item_id, scene_failure.reason)
    order = {item.item_id: index for index, item in enumerate(items)}
    return SceneOutcomes(
        masked=tuple(sorted(masked, key=lambda scene: order[scene.item_id])),
        failed=tuple(sorted(failed, key=lambda failure: order[failure.item_id])),
        outside_aoi=tuple(outside_aoi),
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


@flow(name="monthly-mosaic", **slack_state_hooks())
def monthly_mosaic(settings: MosaicSettings) -> RunReport:
    """Build the cloud-free mosaic of one AOI and month and publish its products."""
    logger = get_run_logger()
    month = Month.for_run(settings.month, runtime.flow_run.scheduled_start_time)
    name = aoi_name(settings.aoi)
    aoi, grid = checked_inputs(settings)
    workspace = run_workspace(settings, aoi, grid)
    logger.info("%s %s: grid %s, %d x %d px", name, month.label, grid.crs, grid.shape.x, grid.shape.y)

    items = search_scenes_task(aoi, month.label, settings.search)  # raises NoScenesFound when empty
    acquire = acquire_scenes.with_options(task_runner=scene_task_runner(settings.runner))
    outcomes = acquire(items, settings)
    check_failed_share(outcomes, len(items), settings.max_failed_fraction)

    with tempfile.TemporaryDirectory(prefix="basemap-") as staging:
        staging_dir = Path(staging)
        result: CompositeResult = composite_task(
            list(outcomes.masked),
            grid,
            aoi,
            workspace,
            settings.composite,
            staging_dir / "mosaic.tif",
            staging_dir / "count.tif",
        )
        used = tuple(scene for scene in outcomes.masked if scene.item_id in result.contributing_scenes)
        product_run = ProductRun(
            aoi_name=name,
            aoi_source=settings.aoi,
            aoi=aoi,
            grid=grid,
            month=month,
            composite=settings.composite,
            mask=settings.mask,
            # A month with no clear pixel still documents the scenes it looked at.
            scenes_used=used or outcomes.masked,
            scenes_failed=outcomes.failed,
        )
        products_workspace = Workspace(str(staging_dir / "products"))
        names = write_products_task(products_workspace, product_run, result.mosaic_path, result.count_path)
        bucket = load_bucket(settings.s3_block)
        product_files = {
            "mosaic": Path(products_workspace.uri(names.mosaic)),
            "count": Path(products_workspace.uri(names.count)),
            "quicklook": Path(products_workspace.uri(names.quicklook)),
            "metadata": Path(products_workspace.uri(names.metadata)),
        }
        urls = publish_products_task(
            product_files,
            bucket,
            name,
            month.label,
            Path(products_workspace.uri(names.item)),
            output_dir=None if bucket else Path(settings.output_dir).resolve(),
        )

    report = RunReport(
        aoi=name,
        month=month.label,
        scenes_found=len(items),
        scenes_used=len(used),
        failed_scenes=list(outcomes.failed),
        valid_share=result.valid_share,
        product_urls=urls,
        flow_run_name=runtime.flow_run.name,
        flow_run_url=runtime.flow_run.ui_url,
    )
    create_markdown_artifact(run_summary_markdown(report), key="basemap-summary", description="Run summary")
    logger.info("published %s %s: %s", name, month.label, ", ".join(urls.values()))
    return report

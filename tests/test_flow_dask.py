"""The Dask task runner variant: the monthly flow completes a synthetic month with a local
multi-process Dask cluster, its tiles spread over worker processes that share an S3 workspace, and
the mosaic equals the threaded run's pixel for pixel. On a cluster as a user runs one (a `dask
scheduler` and two `dask worker` programs reached by `runner.dask_address`), a worker killed in the
middle of the tiles (`tasks.testing.worker_loss`) still leaves the month published complete, each
tile committed once.

The month is served like production (COGs in moto S3, items in a rustac STAC API). Dask worker
processes are spawned after the `s3_server` fixture set the AWS variables, so they reach moto too.
The cluster the runner starts is a `LocalCluster` whose scheduler (in this process) records the
worker each task ran on, and hands its tile tasks to the workers in turn: left to Dask, all four
could go to one worker (one that joined late, or placement heuristics), and the month would then be
built in one process, the case the threaded run already covers.
"""

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from blocks.publish import ITEM_PRODUCT
from flows.monthly_mosaic import monthly_mosaic, run_inputs
from tasks.products.metadata import FILL_LAYER, TILES_FOLDER
from tasks.testing.served_month import ServedMonth, assert_every_scene_accounted, flow_settings, serve_synthetic_month
from tasks.testing.servers import S3Server
from tasks.testing.worker_loss import TILE_SIZE_PX, run_month_losing_a_worker
from tasks.tiling.tile import RECORD_SUFFIX

distributed = pytest.importorskip("distributed")
pytest.importorskip("prefect_dask")

DASK_WORKERS = 2
WORKSPACE_PREFIX = "ws"
PRODUCTS = ("mosaic", "count", FILL_LAYER, "quicklook", "metadata", ITEM_PRODUCT)
TILE_TASK = "build_tile"
"""Part of the Dask key of each tile task (Dask names a key after the function it runs)."""


class WorkerOfTask(distributed.diagnostics.plugin.SchedulerPlugin):
    """Scheduler plugin: the address of the worker (one process each) that finished each task key."""

    def __init__(self) -> None:
        self.worker_of: dict[str, str] = {}
        self._lock = threading.Lock()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if start == "processing" and finish == "memory" and "worker" in kwargs:
            with self._lock:
                self.worker_of[str(key)] = kwargs["worker"]


class TilesTakeTurns(distributed.diagnostics.plugin.SchedulerPlugin):
    """Scheduler plugin: restricts each new tile task to the next of `worker_addresses` in turn. A
    worker that has not joined yet holds its tiles until it does (Dask's `no-worker` state)."""

    def __init__(self, worker_addresses: list[str]) -> None:
        self.worker_addresses = worker_addresses
        self.tiles_restricted = 0

    def update_graph(self, scheduler: Any, *, tasks: list[Any], **kwargs: Any) -> None:
        """Runs before the new tasks are given a worker."""
        for key in tasks:
            if TILE_TASK in str(key):
                worker = self.worker_addresses[self.tiles_restricted % len(self.worker_addresses)]
                scheduler.tasks[key].worker_restrictions = {worker}
                self.tiles_restricted += 1


@pytest.fixture
def task_workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerOfTask]:
    """Every `distributed.LocalCluster` started during the test reports to this plugin and hands
    its tile tasks to its workers in turn."""
    plugin = WorkerOfTask()

    class RecordingLocalCluster(distributed.LocalCluster):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)  # returns once every worker process has started
            self.scheduler.add_plugin(plugin, name="worker-of-task")
            addresses = [worker.worker_address for worker in self.workers.values()]
            self.scheduler.add_plugin(TilesTakeTurns(addresses), name="tiles-take-turns")

    monkeypatch.setattr(distributed, "LocalCluster", RecordingLocalCluster)
    yield plugin


@pytest.fixture
def served(s3_server: S3Server, stac_api_factory, tmp_path: Path) -> ServedMonth:
    return serve_synthetic_month(s3_server, stac_api_factory, tmp_path, seed=11)


def read_raster(path: str) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read()


@pytest.mark.slow
def test_dask_tiles_spread_over_both_workers_and_equal_the_threaded_month(
    prefect_harness: None, s3_server: S3Server, served: ServedMonth, task_workers: WorkerOfTask, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket(f"dask-ws-{uuid.uuid4().hex[:12]}")
    settings = flow_settings(
        served,
        f"s3://{bucket}/{WORKSPACE_PREFIX}",
        output_dir=str(tmp_path / "output"),
        tiles={"tile_size_px": TILE_SIZE_PX},
        runner={"task_runner": "dask", "dask_workers": DASK_WORKERS},
    )
    threaded = flow_settings(served, tmp_path / "threads-ws", output_dir=str(tmp_path / "threads-output"))

    state = monthly_mosaic(settings, return_state=True)
    threaded_report = monthly_mosaic(threaded)

    assert state.is_completed(), state.message
    report = state.result()
    assert report.failed_scenes == []
    assert report.scenes_used == served.acquisitions == len(served.item_ids) - 1  # one date is served twice
    assert set(report.product_urls) == set(PRODUCTS)
    for url in report.product_urls.values():
        assert Path(url).is_file() and Path(url).stat().st_size > 0, url
    metadata = json.loads(Path(report.product_urls["metadata"]).read_text())
    assert_every_scene_accounted(metadata, served)
    tile_count = len(metadata["files"]["tiles"])
    assert tile_count == 4

    records_prefix = run_inputs(settings).workspace.uri(TILES_FOLDER).removeprefix(f"s3://{bucket}/")
    records = [key for key in s3_server.keys(bucket, records_prefix) if key.endswith(RECORD_SUFFIX)]
    assert len(records) == tile_count, "every tile is committed in the S3 workspace"
    tile_tasks = {key: worker for key, worker in task_workers.worker_of.items() if TILE_TASK in key}
    assert len(tile_tasks) == tile_count, task_workers.worker_of
    assert len(set(tile_tasks.values())) == DASK_WORKERS, tile_tasks

    for product in ("mosaic", "count"):
        tiled = read_raster(report.product_urls[product])
        assert np.array_equal(tiled, read_raster(threaded_report.product_urls[product])), product
    assert json.loads(Path(threaded_report.product_urls["metadata"]).read_text())["scenes_used"] == metadata["scenes_used"]


@pytest.mark.slow
def test_a_month_survives_a_killed_worker_and_commits_each_tile_once(
    prefect_harness: None, s3_server: S3Server, served: ServedMonth, tmp_path: Path
) -> None:
    outcome = run_month_losing_a_worker(served, s3_server, tmp_path / "worker-loss")

    assert outcome.loss is not None, f"no worker held a finished tile while running another:\n{outcome.cluster_logs}"
    assert 0 < outcome.loss.records_committed < outcome.tiles == 4, outcome.loss
    assert outcome.survived, f"{outcome.failure}\n{outcome.cluster_logs}"
    report = outcome.state.result()
    assert set(report.product_urls) == set(PRODUCTS)
    for url in report.product_urls.values():
        assert Path(url).is_file() and Path(url).stat().st_size > 0, url
    month_folder = Path(report.product_urls["metadata"]).parent
    tiles = json.loads(Path(report.product_urls["metadata"]).read_text())["files"]["tiles"]
    tile_cogs = [month_folder / name for tile in tiles for layer, name in tile.items() if layer != "tile"]
    assert len(tile_cogs) == 3 * len(tiles) and all(cog.is_file() for cog in tile_cogs), "mosaic, count and fill of each tile"

    threaded = flow_settings(
        served, tmp_path / "threads-ws", output_dir=str(tmp_path / "threads-output"), tiles={"tile_size_px": TILE_SIZE_PX}
    )
    threaded_report = monthly_mosaic(threaded)
    for product in ("mosaic", "count"):
        assert np.array_equal(read_raster(report.product_urls[product]), read_raster(threaded_report.product_urls[product])), product

"""The Dask task runner variant: the monthly flow completes a synthetic month with a local
multi-process Dask cluster, its scene work spread over worker processes that share an S3 workspace.

The month is served like production (COGs in moto S3, items in a rustac STAC API). Dask worker
processes are spawned after the `s3_server` fixture set the AWS variables, so they reach moto too.
The cluster the runner starts is a `LocalCluster` whose scheduler (in this process) records the
worker each task ran on.
"""

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blocks.publish import ITEM_PRODUCT
from flows.monthly_mosaic import monthly_mosaic, run_inputs
from tasks.mask import mask_name_for
from tasks.read import scene_file_name
from tests.served_month import ServedMonth, assert_every_scene_accounted, flow_settings, serve_synthetic_month
from tests.servers import S3Server

distributed = pytest.importorskip("distributed")
pytest.importorskip("prefect_dask")

DASK_WORKERS = 2
WORKSPACE_PREFIX = "ws"
PRODUCTS = ("mosaic", "count", "quicklook", "metadata", ITEM_PRODUCT)


class WorkerOfTask(distributed.diagnostics.plugin.SchedulerPlugin):
    """Scheduler plugin: the address of the worker (one process each) that finished each task key."""

    def __init__(self) -> None:
        self.worker_of: dict[str, str] = {}
        self._lock = threading.Lock()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if start == "processing" and finish == "memory" and "worker" in kwargs:
            with self._lock:
                self.worker_of[str(key)] = kwargs["worker"]


@pytest.fixture
def task_workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerOfTask]:
    """Every `distributed.LocalCluster` started during the test reports to this plugin."""
    plugin = WorkerOfTask()

    class RecordingLocalCluster(distributed.LocalCluster):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.scheduler.add_plugin(plugin, name="worker-of-task")

    monkeypatch.setattr(distributed, "LocalCluster", RecordingLocalCluster)
    yield plugin


@pytest.fixture
def served(s3_server: S3Server, stac_api_factory, tmp_path: Path) -> ServedMonth:
    return serve_synthetic_month(s3_server, stac_api_factory, tmp_path, seed=11)


@pytest.mark.slow
def test_dask_local_cluster_completes_month_with_s3_workspace(
    prefect_harness: None, s3_server: S3Server, served: ServedMonth, task_workers: WorkerOfTask, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket(f"dask-ws-{uuid.uuid4().hex[:12]}")
    settings = flow_settings(
        served,
        f"s3://{bucket}/{WORKSPACE_PREFIX}",
        output_dir=str(tmp_path / "output"),
        runner={"task_runner": "dask", "dask_workers": DASK_WORKERS},
    )

    state = monthly_mosaic(settings, return_state=True)

    assert state.is_completed(), state.message
    report = state.result()
    assert report.failed_scenes == []
    assert report.scenes_used == report.scenes_found == len(served.item_ids) - 1  # one date is served twice
    assert set(report.product_urls) == set(PRODUCTS)
    for url in report.product_urls.values():
        assert Path(url).is_file() and Path(url).stat().st_size > 0, url
    assert_every_scene_accounted(json.loads(Path(report.product_urls["metadata"]).read_text()), served)

    scene_prefix = run_inputs(settings).workspace.uri("").removeprefix(f"s3://{bucket}/")
    workspace_keys = s3_server.keys(bucket, scene_prefix)
    stored = [item_id for item_id in served.item_ids if f"{scene_prefix}{scene_file_name(item_id)}" in workspace_keys]
    assert len(stored) == report.scenes_found
    for item_id in stored:
        assert f"{scene_prefix}{mask_name_for(scene_file_name(item_id))}" in workspace_keys

    assert len(task_workers.worker_of) == 2 * len(stored), task_workers.worker_of  # a read and a mask per scene
    assert len(set(task_workers.worker_of.values())) == DASK_WORKERS, task_workers.worker_of

"""A Dask worker lost in the middle of a month's tiles, on a cluster of separate programs.

Staged for the tests and `bench/faults.py`: `run_month_losing_a_worker` starts a `DaskCluster` of two
worker programs, runs the monthly flow over a served month on it (`runner.dask_address`) with its
workspace in a versioned moto bucket, while a watcher kills the first worker seen holding a finished
tile and running another (SIGKILL to its program, nanny and worker process: its machine is lost).
Dask then runs the tile in flight again on the surviving worker, and computes again each result the
dead worker held whose future the flow still has. Call it under a Prefect API (`prefect_test_harness`)
with the AWS variables pointing at the moto server; the workers get both.

Builds are counted by commits: a tile commits by writing its record to the workspace (`tasks.tiling.tile`),
and each write of a key in a versioned bucket keeps a version, so the versions of a tile's record are
its commits. A tile whose worker died mid-build is started again; no tile may be committed twice.
Prefect's task runs of the tiles are read back too: one per tile, COMPLETED.
"""

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterName,
)
from prefect.client.schemas.objects import TaskRun
from prefect.settings import PREFECT_API_URL

from flows.monthly_mosaic import monthly_mosaic, run_inputs
from flows.parameters import MosaicSettings
from tasks.products.metadata import TILES_FOLDER
from tasks.testing.dask_cluster import DaskCluster
from tasks.testing.fault_scenarios import metadata_of
from tasks.testing.served_month import ServedMonth, assert_every_scene_accounted, flow_settings
from tasks.testing.servers import S3Server
from tasks.tiling.tile import RECORD_SUFFIX

__all__ = ["DASK_WORKERS", "TILE_SIZE_PX", "WorkerLoss", "WorkerLossOutcome", "run_month_losing_a_worker", "tile_commits"]

DASK_WORKERS = 2
TILE_SIZE_PX = 128
"""Four tiles on the served 256 x 256 px grid (the smallest tile size): two on each worker."""
MAX_CONCURRENT_SCENES = 1
"""One scene read at a time in a tile: a tile lasts long enough to be caught in flight."""

TILE_TASK_KEY = "build_tile"
"""Part of the Dask key of every build-tile task (Dask names a task's key after its function)."""
TILE_TASK_RUN_PREFIX = "tile-"
"""The build-tile task runs' names: `tile-<label>`."""
WATCH_INTERVAL_S = 0.05
KILL_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 600.0
TASK_STATES_TIMEOUT_S = 30.0
"""Prefect records task states from events, asynchronously: how long to wait for every tile's to be final."""


@dataclass(frozen=True)
class WorkerLoss:
    """The worker killed, the build-tile task keys it held finished and was running then, and the
    tile records committed in the workspace at that moment."""

    worker: int
    held: frozenset[str]
    running: frozenset[str]
    records_committed: int


@dataclass(frozen=True)
class WorkerLossOutcome:
    """A run that lost a worker: its settings and final state, the loss (None: no moment came to stage it)
    and whether the killed worker's program is gone, the commits of each tile record key in the workspace,
    the tiles metadata.json lists, the states of each tile's Prefect task runs by task run name, why the
    found scenes are not all used and listed once (None: they are), and the cluster's logs."""

    settings: MosaicSettings
    state: Any
    loss: WorkerLoss | None
    worker_gone: bool
    commits: dict[str, int]
    tiles: int
    task_run_states: dict[str, tuple[str, ...]]
    scenes_unaccounted: str | None
    cluster_logs: str

    @property
    def failure(self) -> str | None:
        """Why the run did not survive the loss, in one line; None when it did."""
        if not self.state.is_completed():
            message = (self.state.message or "").strip().splitlines()
            return f"run {self.state.type.value}: {message[0] if message else 'no message'}"
        if self.loss is None:
            return "not staged: no worker held a finished tile while running another"
        if not self.worker_gone:
            return f"not staged: the killed worker {self.loss.worker} still runs"
        if self.scenes_unaccounted is not None:
            return self.scenes_unaccounted
        twice = sorted(key for key, commits in self.commits.items() if commits > 1)
        if twice:
            return f"{len(twice)} tiles committed more than once: {', '.join(twice)}"
        if len(self.commits) != self.tiles:
            return f"{len(self.commits)} tile records for the {self.tiles} tiles metadata.json lists"
        not_once = {name: states for name, states in self.task_run_states.items() if states != ("COMPLETED",)}
        if not_once or len(self.task_run_states) != self.tiles:
            return f"tile task runs not one COMPLETED each ({len(self.task_run_states)} tiles): {not_once}"
        return None

    @property
    def survived(self) -> bool:
        """The run COMPLETED after a worker died for good holding a finished tile and running another; every
        found scene was used and metadata.json lists each once; every tile it lists was committed exactly
        once; and each tile has one Prefect task run, COMPLETED."""
        return self.failure is None


def scenes_unaccounted(state: Any, served: ServedMonth) -> str | None:
    """Why a completed run's found scenes are not all used and listed once in metadata.json; None when they are."""
    report = state.result()
    if report.failed_scenes or report.scenes_used != served.acquisitions:
        return f"{report.scenes_used} of {report.scenes_found} scenes used, failed: {report.failed_scenes}"
    try:
        assert_every_scene_accounted(metadata_of(report), served)
    except AssertionError:
        return "metadata.json does not list every found scene exactly once"
    return None


def records_prefix(settings: MosaicSettings, bucket: str) -> str:
    """The key prefix of the run's tile records in its S3 workspace bucket."""
    return run_inputs(settings).workspace.uri(TILES_FOLDER).removeprefix(f"s3://{bucket}/")


def tile_commits(s3_server: S3Server, bucket: str, prefix: str) -> dict[str, int]:
    """{record key: times written} of every tile record under `prefix` in a versioned bucket."""
    versions = s3_server.version_counts(bucket, prefix)
    return {key: count for key, count in versions.items() if key.endswith(RECORD_SUFFIX)}


class WorkerKiller(threading.Thread):
    """Watches the cluster and kills the first worker that holds a finished tile and runs another."""

    def __init__(self, cluster: DaskCluster, committed: Callable[[], dict[str, int]]) -> None:
        super().__init__(name="worker-killer", daemon=True)
        self._cluster, self._committed = cluster, committed
        self._done = threading.Event()
        self.loss: WorkerLoss | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        deadline = time.monotonic() + KILL_TIMEOUT_S
        try:
            while not self._done.is_set() and time.monotonic() < deadline:
                for worker, (held, running) in self._cluster.worker_keys().items():
                    held_tiles = frozenset(key for key in held if TILE_TASK_KEY in key)
                    running_tiles = frozenset(key for key in running if TILE_TASK_KEY in key)
                    if held_tiles and running_tiles:
                        self._cluster.kill_worker(worker)
                        self.loss = WorkerLoss(worker, held_tiles, running_tiles, len(self._committed()))
                        return
                self._done.wait(WATCH_INTERVAL_S)
        except Exception as error:  # raised once the run is over; the run goes on
            self.error = error

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=KILL_TIMEOUT_S)


@contextmanager
def killing_a_worker(cluster: DaskCluster, s3_server: S3Server, bucket: str, prefix: str) -> Iterator[WorkerKiller]:
    """A `WorkerKiller` watching `cluster` for the block."""
    killer = WorkerKiller(cluster, lambda: tile_commits(s3_server, bucket, prefix))
    killer.start()
    try:
        yield killer
    finally:
        killer.stop()


def tile_task_run_states(flow_run_id: UUID) -> dict[str, tuple[str, ...]]:
    """{task run name: state types} of the build-tile task runs of the flow run's subflows, once each is
    final (or after `TASK_STATES_TIMEOUT_S`)."""
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        task_run_filter = TaskRunFilter(
            name=TaskRunFilterName(like_=TILE_TASK_RUN_PREFIX),
            flow_run_id=TaskRunFilterFlowRunId(any_=[subflow.id for subflow in subflows]),
        )
        deadline = time.monotonic() + TASK_STATES_TIMEOUT_S
        task_runs: list[TaskRun] = client.read_task_runs(task_run_filter=task_run_filter)
        while any(run.state is None or not run.state.is_final() for run in task_runs) and time.monotonic() < deadline:
            time.sleep(WATCH_INTERVAL_S * 10)
            task_runs = client.read_task_runs(task_run_filter=task_run_filter)
    states: dict[str, list[str]] = {}
    for run in sorted(task_runs, key=lambda run: run.name):
        states.setdefault(run.name, []).append(run.state.type.value if run.state else "NONE")
    return {name: tuple(types) for name, types in states.items()}


def run_month_losing_a_worker(
    served: ServedMonth, s3_server: S3Server, work_dir: Path, **overrides: Any
) -> WorkerLossOutcome:
    """Run the month `served` on a fresh two-worker cluster and kill a worker in the middle of its tiles.

    The workspace is `s3://<fresh versioned bucket>/ws`, products go below `work_dir`; `overrides` replace
    other settings (`flow_settings`). The cluster's programs are stopped before this returns.
    """
    bucket = s3_server.make_bucket(f"worker-loss-{uuid.uuid4().hex[:12]}", versioned=True)
    environment = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    with DaskCluster(work_dir / "dask", DASK_WORKERS, environment) as cluster:
        settings = flow_settings(
            served,
            f"s3://{bucket}/ws",
            output_dir=str(work_dir / "output"),
            tiles={"tile_size_px": TILE_SIZE_PX},
            runner={"task_runner": "dask", "dask_address": cluster.address, "max_concurrent_scenes": MAX_CONCURRENT_SCENES},
            **overrides,
        )
        prefix = records_prefix(settings, bucket)
        with killing_a_worker(cluster, s3_server, bucket, prefix) as killer:
            state = monthly_mosaic.with_options(timeout_seconds=RUN_TIMEOUT_S)(settings, return_state=True)
        if killer.error is not None:
            raise killer.error
        worker_gone = killer.loss is not None and not cluster.worker_running(killer.loss.worker)
        logs = cluster.logs()
    flow_run_id = state.state_details.flow_run_id
    if flow_run_id is None:
        raise RuntimeError("the run's final state names no flow run")
    completed = state.is_completed()
    return WorkerLossOutcome(
        settings=settings,
        state=state,
        loss=killer.loss,
        worker_gone=worker_gone,
        commits=tile_commits(s3_server, bucket, prefix),
        tiles=len(metadata_of(state.result())["files"]["tiles"]) if completed else 0,
        task_run_states=tile_task_run_states(flow_run_id),
        scenes_unaccounted=scenes_unaccounted(state, served) if completed else None,
        cluster_logs=logs,
    )

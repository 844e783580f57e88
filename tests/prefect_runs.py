"""A flow run's subflows and task runs, read back from the Prefect API the tests run against."""

import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.states import State

SETTLE_TIMEOUT_S = 120.0
"""How long task runs may take to reach the API (they are recorded from events, asynchronously)."""
SETTLE_POLL_S = 1.0
TILE_TASK, MONTH_PRODUCTS_TASK = "tile", "write-month-products"
"""Run-name prefixes: tile runs are named `tile-<label>` (`tasks.tiling.tile.build_tile_task`)."""


def flow_run_id(state: State) -> UUID:
    """The flow run a run's final state belongs to."""
    return state.state_details.flow_run_id


def subflow_runs(*parent_ids: UUID) -> list[FlowRun]:
    """The flow runs whose parent is one of the flow runs `parent_ids`."""
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=list(parent_ids)))
        )


def settled_task_runs(flow_run_ids: list[UUID]) -> list[TaskRun]:
    """The task runs of these flow runs once the API has recorded all of them in a final state.

    Task runs reach the API from events, after the flow returns; read until two reads a poll apart
    agree and every task run is final.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    previous: list[tuple[UUID, str, int]] | None = None
    while True:
        with get_client(sync_client=True) as client:
            task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)))
        snapshot = sorted((run.id, run.state_name or "", run.run_count) for run in task_runs)
        if snapshot == previous and all(run.state and run.state.is_final() for run in task_runs):
            return task_runs
        assert time.monotonic() < deadline, f"task runs did not settle in {SETTLE_TIMEOUT_S:.0f} s: {snapshot}"
        previous = snapshot
        time.sleep(SETTLE_POLL_S)


def named(task_runs: list[TaskRun], task_name: str) -> list[TaskRun]:
    """The runs of the task called `task_name` (run names are '<task name>-<suffix>')."""
    return [run for run in task_runs if run.name.rsplit("-", 1)[0] == task_name]


def failed_run_error(state: State) -> BaseException:
    """The error a run that must fail ended with."""
    assert state.is_failed(), f"the run should fail, it ended {state.name}: {state.message}"
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BaseException), error
    return error


def one_line(error: BaseException) -> str:
    """The error's message, asserted to be one line."""
    message = str(error)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message

"""Crash detection on a real `prefect server start`, all on 127.0.0.1: after `python -m
blocks.register`, a deployment's flow run whose process is SIGKILLed while RUNNING, with no worker
to see it die, is marked CRASHED by the heartbeat automation, and the crash-notice automation posts
it to the (loopback) Slack webhook. Also: the Slack payload template renders valid JSON whatever the
state message holds.

A run with a subflow that a process worker started and whose process is SIGKILLed is posted once:
the worker marks the run CRASHED at once, the automation marks its subflow (whose heartbeats
stopped with it) CRASHED a window later, and only the run of a deployment is posted.

Each end-to-end test takes 1 to 2 min, most of it the crash window: Prefect's shortest heartbeat
is 30 s and the window must exceed it (here 40 s).
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.server.events.jinja_filters import all_filters
from prefect.server.schemas import core, states
from prefect.server.utilities.user_templates import register_user_template_filters, render_user_template_sync
from prefect.settings import PREFECT_UI_URL, temporary_settings

from blocks.crash_detection import HEARTBEAT_EVENT, SLACK_CRASH_PAYLOAD
from blocks.register import CRASH_AFTER_VARIABLE
from tasks.testing.prefect_server import BackgroundProcess, PrefectServer
from tests import REPO_ROOT
from tests.slack_receiver import WEBHOOK_PATH, SlackReceiver
from tests.sleeping_flow import sleep_in_subflow, sleep_until_killed

HEARTBEAT_S = 30
"""Prefect's minimum PREFECT_FLOWS_HEARTBEAT_FREQUENCY."""
CRASH_AFTER_S = 40
ENTRYPOINT = "tests/sleeping_flow.py:sleep_until_killed"
PARENT_ENTRYPOINT = "tests/sleeping_flow.py:sleep_in_subflow"
DEPLOYMENT_NAME = "crash-probe"
WORK_POOL = "crash-probe-pool"
HEARTBEAT_TIMEOUT_S = 60.0
"""From starting the flow process to its first heartbeat stored by the server."""
CRASHED_TIMEOUT_S = CRASH_AFTER_S + 30.0
"""The window, the triggers' 5 s evaluation period and the event pipeline."""
NOTICE_TIMEOUT_S = 30.0
SECOND_NOTICE_WAIT_S = 20.0
"""After the subflow is CRASHED, how long a second post (of the subflow) is given to arrive: the
reactive automation acts within a few seconds of the event."""
SUBFLOW_TIMEOUT_S = 90.0
"""From creating the run to its subflow's first heartbeat: the worker's poll, the process start, the subflow."""
UI_URL = "http://127.0.0.1:4200"
"""The server's PREFECT_UI_URL, which the notice's link starts with."""


def test_payload_is_slack_json_with_run_deployment_message_and_link() -> None:
    register_user_template_filters(all_filters)
    flow = core.Flow(name="monthly-mosaic")
    message = 'Process exited with status code: -9; "SIGKILL"\n<maybe> out of memory & gone'
    flow_run = core.FlowRun(
        flow_id=flow.id, name="brave-heron", state=states.State(type=StateType.CRASHED, message=message)
    )
    deployment = core.Deployment(name="lake-constance", flow_id=flow.id)
    context = {"flow_run": flow_run, "flow": flow, "deployment": deployment}

    with temporary_settings(updates={PREFECT_UI_URL: UI_URL}):
        with_deployment = json.loads(render_user_template_sync(SLACK_CRASH_PAYLOAD, context))
        without_deployment = json.loads(render_user_template_sync(SLACK_CRASH_PAYLOAD, context | {"deployment": None}))

    text = with_deployment["text"]
    assert list(with_deployment) == ["text"]
    assert "Flow run brave-heron (deployment monthly-mosaic/lake-constance) crashed" in text
    assert 'status code: -9; "SIGKILL"\n&lt;maybe&gt; out of memory &amp; gone' in text
    assert text.endswith(f"<{UI_URL}/runs/flow-run/{flow_run.id}|open in Prefect>")
    assert "deployment" not in without_deployment["text"] and "brave-heron crashed" in without_deployment["text"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_killed_run_is_marked_crashed_and_posted_to_slack(slack_receiver: SlackReceiver, tmp_path: Path) -> None:
    heartbeat = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}
    with PrefectServer(tmp_path) as server, server.logs_on_failure():
        register_environment = {"SLACK_WEBHOOK_URL": slack_receiver.url, CRASH_AFTER_VARIABLE: str(CRASH_AFTER_S)}
        registered = server.run([sys.executable, "-m", "blocks.register"], register_environment | heartbeat)
        assert WEBHOOK_PATH not in registered
        flow_run = _deployment_run(server)

        engine_environment = server.environment(heartbeat | {"PREFECT__FLOW_RUN_ID": str(flow_run.id)})
        with _engine_process(engine_environment, tmp_path / "engine.log") as engine:
            server.wait_for(lambda: _heartbeat(server, flow_run), HEARTBEAT_TIMEOUT_S, "the flow run's heartbeat")
            with server.client() as client:
                assert client.read_flow_run(flow_run.id).state.type == StateType.RUNNING
            os.killpg(engine.pid, signal.SIGKILL)
            engine.wait()

        crashed = server.wait_for_final_state(flow_run.id, CRASHED_TIMEOUT_S)
        notice = server.wait_for(lambda: _notice_naming(slack_receiver, flow_run), NOTICE_TIMEOUT_S, "Slack notice")

    assert crashed.state.type == StateType.CRASHED
    assert f"No heartbeat for {CRASH_AFTER_S} s" in crashed.state.message
    assert f"(deployment {sleep_until_killed.name}/{DEPLOYMENT_NAME}) crashed: No heartbeat" in notice["text"]
    assert f"/runs/flow-run/{flow_run.id}|open in Prefect>" in notice["text"]
    assert len(slack_receiver.bodies) == 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_run_with_a_subflow_is_posted_once(slack_receiver: SlackReceiver, tmp_path: Path) -> None:
    heartbeat = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}
    with PrefectServer(tmp_path) as server, server.logs_on_failure():
        register_environment = {"SLACK_WEBHOOK_URL": slack_receiver.url, CRASH_AFTER_VARIABLE: str(CRASH_AFTER_S)}
        server.run([sys.executable, "-m", "blocks.register"], register_environment | heartbeat)
        server.cli("work-pool", "create", WORK_POOL, "--type", "process")
        worker = server.start_worker(WORK_POOL)
        flow_run = _deployment_run(server, sleep_in_subflow.name, PARENT_ENTRYPOINT, heartbeat)
        subflow = server.wait_for(lambda: _subflow_of(server, flow_run), SUBFLOW_TIMEOUT_S, "the subflow run")
        server.wait_for(lambda: _heartbeat(server, subflow), HEARTBEAT_TIMEOUT_S, "the subflow's heartbeat")
        _flow_run_process(worker, flow_run).kill()  # SIGKILL, as the OOM killer sends

        crashed = server.wait_for_final_state(flow_run.id, NOTICE_TIMEOUT_S)
        subflow_crashed = server.wait_for_final_state(subflow.id, CRASHED_TIMEOUT_S)
        server.wait_for(lambda: _notice_naming(slack_receiver, flow_run), NOTICE_TIMEOUT_S, "Slack notice")
        deadline = time.monotonic() + SECOND_NOTICE_WAIT_S
        while len(slack_receiver.bodies) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)

    assert crashed.state.type == StateType.CRASHED and "-9" in crashed.state.message  # the worker saw the kill
    assert subflow_crashed.state.type == StateType.CRASHED
    assert f"No heartbeat for {CRASH_AFTER_S} s" in subflow_crashed.state.message
    assert slack_receiver.texts() == [_notice_naming(slack_receiver, flow_run)["text"]], slack_receiver.texts()


def _deployment_run(
    server: PrefectServer,
    flow_name: str = sleep_until_killed.name,
    entrypoint: str = ENTRYPOINT,
    environment: dict[str, str] | None = None,
) -> FlowRun:
    """A scheduled run of a deployment of a sleeping flow; in `WORK_POOL` (from this checkout, with
    `environment`) when `environment` is given, else in no pool (nothing starts it)."""
    job_variables = {"working_dir": str(REPO_ROOT), "env": environment} if environment is not None else None
    with server.client() as client:
        flow_id = client.create_flow_from_name(flow_name)
        deployment_id = client.create_deployment(
            flow_id,
            DEPLOYMENT_NAME,
            entrypoint=entrypoint,
            work_pool_name=WORK_POOL if environment is not None else None,
            job_variables=job_variables,
        )
        return client.create_flow_run_from_deployment(deployment_id, name=f"killed-{uuid.uuid4().hex[:8]}")


def _subflow_of(server: PrefectServer, flow_run: FlowRun) -> FlowRun | None:
    children = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id]))
    with server.client() as client:
        runs = client.read_flow_runs(flow_run_filter=children)
    return runs[0] if runs else None


def _flow_run_process(worker: BackgroundProcess, flow_run: FlowRun) -> psutil.Process:
    """The process the worker started for `flow_run` (it carries the run's id in its environment)."""
    for process in psutil.Process(worker.pid).children(recursive=True):
        if process.environ().get("PREFECT__FLOW_RUN_ID") == str(flow_run.id):
            return process
    raise AssertionError(f"no process of flow run {flow_run.id} under the worker")


@contextmanager
def _engine_process(environment: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The flow run's process as a worker starts it (`python -m prefect.flow_engine ENTRYPOINT`), in a
    process group of its own; killed on the way out, its log printed when the block fails."""
    with log_path.open("wb") as log:
        engine = subprocess.Popen(
            [sys.executable, "-m", "prefect.flow_engine", ENTRYPOINT],
            env=environment,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield engine
    except BaseException:
        print(f"===== flow run process ({log_path}) =====\n{log_path.read_text(errors='replace')[-6000:]}")
        raise
    finally:
        if engine.poll() is None:
            os.killpg(engine.pid, signal.SIGKILL)
            engine.wait()


def _heartbeat(server: PrefectServer, flow_run: FlowRun) -> Any:
    """The first heartbeat event of `flow_run` the server has stored; None before there is one."""
    heartbeats = EventFilter(
        event=EventNameFilter(name=[HEARTBEAT_EVENT]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run.id}"]),
    )
    with server.client() as client:
        events = client.read_events(heartbeats, limit=1).events
    return events[0] if events else None


def _notice_naming(receiver: SlackReceiver, flow_run: FlowRun) -> dict[str, Any] | None:
    return next((body for body in receiver.bodies if flow_run.name in body.get("text", "")), None)

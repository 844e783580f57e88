"""Crash detection on a real `prefect server start`, all on 127.0.0.1: after `python -m
blocks.register`, a deployment's flow run whose process is SIGKILLed while RUNNING, with no worker
to see it die, is marked CRASHED by the heartbeat automation, and the crash-notice automation posts
it to the (loopback) Slack webhook. Also: the Slack payload template renders valid JSON whatever the
state message holds.

The end-to-end test takes about 1 min, most of it the crash window: Prefect's shortest heartbeat
is 30 s and the window must exceed it (here 40 s).
"""

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.server.events.jinja_filters import all_filters
from prefect.server.schemas import core, states
from prefect.server.utilities.user_templates import register_user_template_filters, render_user_template_sync
from prefect.settings import PREFECT_UI_URL, temporary_settings

from blocks.crash_detection import HEARTBEAT_EVENT, SLACK_CRASH_PAYLOAD
from blocks.register import CRASH_AFTER_VARIABLE
from tasks.testing.prefect_server import PrefectServer
from tests import REPO_ROOT
from tests.slack_receiver import WEBHOOK_PATH, SlackReceiver
from tests.sleeping_flow import sleep_until_killed

HEARTBEAT_S = 30
"""Prefect's minimum PREFECT_FLOWS_HEARTBEAT_FREQUENCY."""
CRASH_AFTER_S = 40
ENTRYPOINT = "tests/sleeping_flow.py:sleep_until_killed"
DEPLOYMENT_NAME = "crash-probe"
HEARTBEAT_TIMEOUT_S = 60.0
"""From starting the flow process to its first heartbeat stored by the server."""
CRASHED_TIMEOUT_S = CRASH_AFTER_S + 30.0
"""The window, the triggers' 5 s evaluation period and the event pipeline."""
NOTICE_TIMEOUT_S = 30.0
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


def _deployment_run(server: PrefectServer) -> FlowRun:
    """A scheduled run of a deployment of the sleeping flow (no work pool: nothing starts it)."""
    with server.client() as client:
        flow_id = client.create_flow_from_name(sleep_until_killed.name)
        deployment_id = client.create_deployment(flow_id, DEPLOYMENT_NAME, entrypoint=ENTRYPOINT)
        return client.create_flow_run_from_deployment(deployment_id, name=f"killed-{uuid.uuid4().hex[:8]}")


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

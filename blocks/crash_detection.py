"""Prefect automations that notice flow runs whose process died, for a self-hosted Prefect server.

While a flow run runs, its process sends a `prefect.flow-run.heartbeat` event every
PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds. A process that is killed (SIGKILL, the OOM killer, a lost
machine) sends nothing more, and with no worker alive to see it exit, the run would stay RUNNING and
its own on_crashed hooks could never run. The server runs these two automations instead:

- `crash_detector(heartbeat_s, crash_after_s)`: proactive, per flow run. A run that has sent a
  heartbeat and then, for `crash_after_s` seconds, neither another heartbeat nor a final state is
  set CRASHED. The server refuses CRASHED for a run already in a final state, so a late detection
  never overwrites a finished run.
- `crash_notice(webhook_block_id)`: reactive, on the `prefect.flow-run.Crashed` event (set by the
  detector, a worker or the engine itself) of a run of a deployment, posts `SLACK_CRASH_PAYLOAD`
  through a saved `prefect.blocks.webhook.Webhook` block. The server cannot load this project's
  block classes, so the notice goes through Prefect's own webhook block. A subflow (the monthly
  flow's `build-tiles`, a backfill's months) runs in its parent's process and dies with it, and the
  detector crashes it too once its heartbeats stop; it has no deployment (its Crashed event relates
  the parent's task run instead), so one killed process is posted once, as its top-level run.

`save_automation(automation)` creates an automation or updates the one of the same name in place.
"""

from typing import Literal
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events import CallWebhook, ChangeFlowRunState, EventTrigger, Posture, ResourceSpecification
from prefect.events.schemas.automations import AutomationCore

__all__ = [
    "CRASHED_EVENT",
    "CRASH_DETECTOR_NAME",
    "CRASH_NOTICE_NAME",
    "HEARTBEAT_EVENT",
    "SLACK_CRASH_PAYLOAD",
    "crash_detector",
    "crash_notice",
    "save_automation",
]

CRASH_DETECTOR_NAME = "basemap: mark flow runs without heartbeat crashed"
CRASH_NOTICE_NAME = "basemap: post crashed flow runs to Slack"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
CRASHED_EVENT = "prefect.flow-run.Crashed"
FINAL_STATE_EVENTS = frozenset(
    f"prefect.flow-run.{state_name}" for state_name in ("Completed", "Failed", "TimedOut", "Cancelled", "Crashed")
)
"""Events of the final states a flow run can reach; after one of them no heartbeat is due."""
EACH_FLOW_RUN = ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"})
OF_A_DEPLOYMENT = ResourceSpecification({"prefect.resource.role": "deployment"})
"""A flow run event's related resources name the run's deployment, if it has one; a subflow has none."""
PER_FLOW_RUN = {"prefect.resource.id"}
"""Triggers count events per flow run; the CRASHED action takes the run id from this label."""

SLACK_CRASH_PAYLOAD = """\
{%- set where = " (deployment " ~ flow.name ~ "/" ~ deployment.name ~ ")" if deployment else "" -%}
{%- set reason = flow_run.state.message or "no state message" -%}
{%- set said = "Flow run " ~ flow_run.name ~ where ~ " crashed: " ~ reason -%}
{%- set said = said | replace("&", "&amp;") | replace("<", "&lt;") | replace(">", "&gt;") -%}
{%- set link = flow_run | ui_url -%}
{"text": {{ (":boom: " ~ said ~ (" <" ~ link ~ "|open in Prefect>" if link else "")) | tojson }}}"""
"""Jinja template the server renders into the Slack message: flow run name, deployment (flow/name),
the Crashed state's message and a link to the run in the UI (the server's PREFECT_UI_URL, or its
PREFECT_API_URL without /api). Slack's control characters in the text are escaped; `tojson` quotes it."""


def crash_detector(heartbeat_s: int, crash_after_s: int) -> AutomationCore:
    """The automation that sets CRASHED on a run silent for `crash_after_s` seconds after a heartbeat.

    `heartbeat_s` is the flow processes' PREFECT_FLOWS_HEARTBEAT_FREQUENCY; `crash_after_s` must
    exceed it (about 3 heartbeats), or healthy runs would be crashed between two heartbeats.
    """
    if crash_after_s <= heartbeat_s:
        raise ValueError(f"crash_after_s ({crash_after_s}) must exceed the heartbeat frequency ({heartbeat_s} s)")
    return AutomationCore(
        name=CRASH_DETECTOR_NAME,
        description=(
            f"Flow runs send a heartbeat every {heartbeat_s} s; one silent for {crash_after_s} s "
            "without reaching a final state lost its process and is marked CRASHED."
        ),
        trigger=EventTrigger(
            posture=Posture.Proactive,
            match=EACH_FLOW_RUN,
            for_each=PER_FLOW_RUN,
            after={HEARTBEAT_EVENT},
            expect={HEARTBEAT_EVENT, *FINAL_STATE_EVENTS},
            threshold=1,
            within=crash_after_s,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"No heartbeat for {crash_after_s} s: the flow run's process stopped "
                    "(killed, out of memory or its machine lost) and nothing reported its end."
                ),
            )
        ],
    )


def crash_notice(webhook_block_id: UUID) -> AutomationCore:
    """The automation that posts every crashed run of a deployment to Slack through the Webhook block
    `webhook_block_id` (a Slack Incoming Webhook URL, with a JSON Content-Type header)."""
    return AutomationCore(
        name=CRASH_NOTICE_NAME,
        description=(
            "Posts each crashed run of a deployment (name, deployment, state message, link) to Slack; "
            "not its subflows, which crash with it."
        ),
        trigger=EventTrigger(
            posture=Posture.Reactive,
            match=EACH_FLOW_RUN,
            match_related=OF_A_DEPLOYMENT,
            for_each=PER_FLOW_RUN,
            expect={CRASHED_EVENT},
            threshold=1,
        ),
        actions=[CallWebhook(block_document_id=webhook_block_id, payload=SLACK_CRASH_PAYLOAD)],
    )


def save_automation(automation: AutomationCore) -> Literal["created", "updated"]:
    """Create `automation`, or update the automation of the same name in place (no duplicate)."""
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(automation.name)
        if existing:
            client.update_automation(existing[0].id, automation)
            return "updated"
        client.create_automation(automation)
        return "created"

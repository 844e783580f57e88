"""Slack notices: message builders, delivery through the real WebhookClient to a loopback
receiver, failures that are logged and not raised, the secret kept out of sight, and the flow
state hooks in a Prefect test-harness flow run."""

import json
import logging
import uuid
from dataclasses import replace
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.objects import StateType

from blocks.slack import (
    HEADER_MAX_CHARS,
    LISTED_MONTHS_MAX,
    LISTED_SCENES_MAX,
    BackfillReport,
    MonthOutcome,
    RunReport,
    SlackNotifier,
    backfill_message,
    failed_message,
    slack_state_hooks,
    started_message,
    succeeded_message,
)
from flows.parameters import MosaicSettings
from tasks.core.scene import FailedScene
from tasks.geometry.aoi import aoi_label, aoi_name, load_aoi
from tests.slack_receiver import WEBHOOK_PATH, SlackReceiver

AOI_PATH = "deployments/lake_constance.geojson"
MONTH = "2024-06"


@pytest.fixture
def report() -> RunReport:
    return RunReport(
        aoi="lake_constance",
        month=MONTH,
        scenes_found=14,
        scenes_used=11,
        failed_scenes=(FailedScene("S2B_32TNT_20240611_0_L2A", "HTTP 503 after 4 attempts"),),
        valid_share=0.9731,
        product_urls={
            "mosaic": "s3://basemaps/lake_constance/2024/06/mosaic.tif",
            "preview": "https://x.example/p.png",
        },
        flow_run_name="brave-heron",
        flow_run_url="http://127.0.0.1:4200/runs/flow-run/1234",
    )


def _payload_text(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False)


def _fields(body: dict[str, Any]) -> dict[str, str]:
    """The '*label*\\nvalue' fields of a message's sections, as {label: value}."""
    texts = [item["text"] for block in body["blocks"] for item in block.get("fields", [])]
    return {label.strip("*"): value for label, value in (text.split("\n", 1) for text in texts)}


def test_start_success_and_failure_reach_the_webhook(slack_receiver: SlackReceiver, report: RunReport) -> None:
    notifier = SlackNotifier(webhook_url=slack_receiver.url, channel="#basemaps", username="basemap-bot")

    assert notifier.notify_started(report)
    assert notifier.notify_succeeded(report)
    assert notifier.notify_failed("no scene left after masking", report.failed_scenes, report)

    started, succeeded, failed = slack_receiver.bodies
    assert all(body["channel"] == "#basemaps" and body["username"] == "basemap-bot" for body in slack_receiver.bodies)
    assert "started" in started["text"] and report.flow_run_name in started["text"]
    success_text = _payload_text(succeeded)
    assert _fields(succeeded) == {
        "Scenes found": str(report.scenes_found),
        "Scenes used": str(report.scenes_used),
        "Scenes failed": str(len(report.failed_scenes)),
        "Valid pixels": f"{report.valid_share:.1%}",
    }
    assert all(url in success_text for url in report.product_urls.values())
    assert report.failed_scenes[0].item_id in success_text
    failure_text = _payload_text(failed)
    assert "no scene left after masking" in failed["text"]
    assert report.failed_scenes[0].item_id in failure_text and report.failed_scenes[0].reason in failure_text
    assert report.flow_run_url in failure_text


def test_failure_message_lists_a_bounded_number_of_scenes_and_escapes_markup() -> None:
    failed_scenes = [(f"S2A_{number:03d}", "read <timeout> & retry") for number in range(LISTED_SCENES_MAX + 5)]
    long_aoi = "a" * 300
    message = failed_message("bad <AOI> & more", failed_scenes, RunReport(aoi=long_aoi, month=MONTH))

    text = _payload_text({"blocks": message.blocks})
    assert f"S2A_{LISTED_SCENES_MAX - 1:03d}" in text and f"S2A_{LISTED_SCENES_MAX:03d}" not in text
    assert "and 5 more" in text
    assert "<AOI>" not in text and "bad &lt;AOI&gt; &amp; more" in text
    header = message.blocks[0]["text"]["text"]
    assert len(header) <= HEADER_MAX_CHARS
    assert message.text.startswith(f"Basemap {long_aoi}")


def test_builders_show_unknown_counts_as_unknown() -> None:
    report = RunReport(aoi="x", month=MONTH)
    assert set(_fields({"blocks": succeeded_message(report).blocks}).values()) == {"?", "0"}
    assert started_message(report).text == f"Basemap x {MONTH}: started"


def test_a_filled_months_notice_gives_its_filled_share_and_a_month_without_fill_none(report: RunReport) -> None:
    filled = succeeded_message(replace(report, filled_share=0.1234))
    unfilled = succeeded_message(report)  # `fill: none`: the report has no filled share

    assert _fields({"blocks": filled.blocks})["Filled pixels"] == "12.3%"
    assert filled.text.startswith(f"Basemap lake_constance {MONTH}: done, 11 of 14 scenes used, 97.3% valid, 12.3% filled")
    assert "Filled pixels" not in _fields({"blocks": unfilled.blocks})
    assert "filled" not in unfilled.text.lower() and "filled" not in _payload_text({"blocks": unfilled.blocks}).lower()


def test_a_backfill_notice_gives_each_filled_months_filled_share() -> None:
    months = (
        MonthOutcome("2020-01", "built", 0.8, filled_share=0.05),
        MonthOutcome("2020-02", "refilled", 0.6, filled_share=0.375),
        MonthOutcome("2020-03", "built", 0.9),  # filled by nothing: `fill: none`
    )
    message = backfill_message(BackfillReport("lake", "2020-01", "2020-03", months))

    month_lines = message.blocks[1]["text"]["text"].split("\n")[1:]
    assert month_lines == [
        "• `2020-01` built, 80.0% valid, 5.0% filled",
        "• `2020-02` refilled, 60.0% valid, 37.5% filled",
        "• `2020-03` built, 90.0% valid",
    ]


def test_success_message_accepts_plain_failed_scene_pairs() -> None:
    pairs = [("S2A_32TNT_20240603_0_L2A", "truncated response")]
    message = succeeded_message(RunReport(aoi="x", month=MONTH, scenes_found=2, scenes_used=1, failed_scenes=pairs))
    assert _fields({"blocks": message.blocks})["Scenes failed"] == "1"
    assert all(part in _payload_text({"blocks": message.blocks}) for part in pairs[0])


@pytest.mark.parametrize("answer", ["error", "close"])
def test_webhook_errors_are_logged_not_raised(
    slack_receiver: SlackReceiver, answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    slack_receiver.answer = answer
    caplog.set_level(logging.DEBUG)

    assert not SlackNotifier(webhook_url=slack_receiver.url).notify_failed("disk full")

    assert slack_receiver.bodies, "the receiver saw no request"
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "disk full" in warnings[0].getMessage()
    assert WEBHOOK_PATH not in caplog.text


def test_refused_connection_is_logged_not_raised(caplog: pytest.LogCaptureFixture, refused_endpoint: str) -> None:
    caplog.set_level(logging.DEBUG)
    assert not SlackNotifier(webhook_url=f"{refused_endpoint}{WEBHOOK_PATH}", timeout_s=2).notify_started(RunReport("x", MONTH))
    assert "not sent" in caplog.text and "refused" in caplog.text.lower()
    assert WEBHOOK_PATH not in caplog.text


def test_secret_stays_out_of_repr_logs_and_messages(
    slack_receiver: SlackReceiver, report: RunReport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    notifier = SlackNotifier(webhook_url=slack_receiver.url)
    bad_scheme = SlackNotifier(webhook_url=slack_receiver.url.replace("http://", "ftp://"))

    assert notifier.notify_succeeded(report)
    slack_receiver.answer = "error"
    assert not notifier.notify_failed("boom", report.failed_scenes, report)
    assert not bad_scheme.notify_started(report)

    assert WEBHOOK_PATH not in repr(notifier) and WEBHOOK_PATH not in str(notifier)
    assert "[webhook URL]" in caplog.text, "the invalid-URL error should have been redacted, not dropped"
    assert WEBHOOK_PATH not in caplog.text
    assert all(WEBHOOK_PATH not in _payload_text(body) for body in slack_receiver.bodies)


# --- state hooks in Prefect flow runs -----------------------------------------------------------


class ScenesFailed(Exception):
    """Stands in for the flow's error carrying the failed scenes."""

    def __init__(self, message: str, failed_scenes: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.failed_scenes = failed_scenes


FAILED_SCENE = ("S2A_32TNT_20240603_0_L2A", "HTTP 500 on B04")


@flow(**slack_state_hooks())
def failing_mosaic(settings: MosaicSettings) -> RunReport:
    raise ScenesFailed("3 of 5 scenes failed, more than the allowed 10%", [FAILED_SCENE])


@flow(**slack_state_hooks())
def finishing_mosaic(settings: MosaicSettings) -> RunReport:
    return RunReport(aoi=aoi_label(settings.aoi), month=settings.month, scenes_found=5, scenes_used=4, valid_share=0.5)


@pytest.fixture
def slack_block(prefect_harness: None, slack_receiver: SlackReceiver) -> str:
    name = f"test-slack-{uuid.uuid4().hex[:8]}"
    SlackNotifier(webhook_url=slack_receiver.url).save(name)
    return name


def test_failing_flow_sends_start_then_failure_with_reason(slack_receiver: SlackReceiver, slack_block: str) -> None:
    state = failing_mosaic(MosaicSettings(aoi=AOI_PATH, month=MONTH, slack_block=slack_block), return_state=True)

    assert state.is_failed()
    started, failed = slack_receiver.bodies
    products_name = aoi_name(AOI_PATH, load_aoi(AOI_PATH))  # as the products' folder and files are named
    assert started["text"].startswith(f"Basemap {products_name} {MONTH}: started")
    assert failed["text"].startswith(f"Basemap {products_name} {MONTH}: failed")
    assert "3 of 5 scenes failed" in failed["text"]
    failure_text = _payload_text(failed)
    assert FAILED_SCENE[0] in failure_text and FAILED_SCENE[1] in failure_text


def test_completed_flow_sends_its_returned_report(slack_receiver: SlackReceiver, slack_block: str) -> None:
    returned = finishing_mosaic(MosaicSettings(aoi=AOI_PATH, month=MONTH, slack_block=slack_block))

    succeeded = slack_receiver.bodies[-1]
    assert len(slack_receiver.bodies) == 2
    assert f"{returned.scenes_used} of {returned.scenes_found} scenes used" in succeeded["text"]
    assert _fields(succeeded)["Valid pixels"] == f"{returned.valid_share:.1%}"


def test_no_block_named_sends_nothing(slack_receiver: SlackReceiver, slack_block: str) -> None:
    finishing_mosaic(MosaicSettings(aoi=AOI_PATH, month=MONTH))
    assert slack_receiver.bodies == []


class ProcessKilled(BaseException):
    """A BaseException out of the flow body: the engine records the run as CRASHED."""


@flow(**slack_state_hooks())
def crashing_mosaic(settings: MosaicSettings) -> RunReport:
    raise ProcessKilled("killed mid-run")


def test_crash_is_left_to_the_crash_notice_automation(slack_receiver: SlackReceiver, slack_block: str) -> None:
    """A crash is posted by the server's automation (tests/test_crash_detection.py), not by a hook."""
    run_name = f"crash-{uuid.uuid4().hex[:12]}"  # the session's one API may hold other runs of this flow
    with pytest.raises(ProcessKilled):
        crashing_mosaic.with_options(flow_run_name=run_name)(MosaicSettings(aoi=AOI_PATH, month=MONTH, slack_block=slack_block))

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[crashing_mosaic.name])),
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name])),
        )
    assert [flow_run.state.type for flow_run in runs] == [StateType.CRASHED]
    (started,) = slack_receiver.bodies
    assert "started" in started["text"]
    assert "on_crashed" not in slack_state_hooks()


def backfill_report(months: int, failed: set[int]) -> BackfillReport:
    outcomes = tuple(
        MonthOutcome(f"2020-{index + 1:02d}", "failed", reason="no scene <found>")
        if index in failed
        else MonthOutcome(f"2020-{index + 1:02d}", "built", 0.5 + index / 100, item_url=f"s3://b/a/{index}.json")
        for index in range(months)
    )
    return BackfillReport("lake", outcomes[0].month, outcomes[-1].month, outcomes, "brave-fox", "http://127.0.0.1/runs/1")


def test_a_backfill_notice_lists_every_month_with_its_state_valid_share_and_reason() -> None:
    message = backfill_message(backfill_report(3, failed={1}))

    listing = json.dumps(message.blocks)
    assert message.text.startswith("Basemap backfill lake 2020-01..2020-03: 1 of 3 months failed")
    assert "2 built, 0 refilled, 0 skipped, 1 failed" in message.text and "brave-fox" in message.text
    assert "`2020-01` built, 50.0% valid" in listing and "`2020-03` built, 52.0% valid" in listing
    assert "`2020-02` failed: no scene &lt;found&gt;" in listing


def test_a_long_backfill_notice_stays_within_slack_limits() -> None:
    message = backfill_message(backfill_report(12 * 20, failed=set()))

    assert ": done" in message.text
    assert f"and {12 * 20 - LISTED_MONTHS_MAX} more" in json.dumps(message.blocks)
    assert all(len(element["text"]) <= 3000 for block in message.blocks for element in [block.get("text", {"text": ""})])

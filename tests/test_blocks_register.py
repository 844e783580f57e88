"""Block and automation registration from environment variables, against a Prefect test-harness
API: the saved blocks work (a notice reaches the loopback webhook, products reach moto S3), re-runs
update blocks and automations in place, missing variables skip a block with one line, and no secret
is shown. tests/test_crash_detection.py shows the automations at work on a real server."""

import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from prefect.blocks.webhook import Webhook
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events import Posture
from prefect.events.schemas.automations import Automation
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings
from prefect_aws.s3 import S3Bucket

from blocks.crash_detection import CRASH_DETECTOR_NAME, CRASH_NOTICE_NAME, CRASHED_EVENT, HEARTBEAT_EVENT
from blocks.publish import month_destination
from blocks.register import BLOCK_CLASSES, CRASH_AFTER_VARIABLE, register_all
from blocks.slack import RunReport, SlackNotifier
from tasks.testing.servers import TEST_CREDENTIALS, S3Server
from tests import REPO_ROOT
from tests.slack_receiver import WEBHOOK_PATH, SlackReceiver

BUCKET = "basemaps-register"
SECRET_ACCESS_KEY = "register-test-secret-0123456789"
"""moto accepts any secret; a distinctive one can be searched for in the output."""
ROTATED_TOKEN = "-rotated-secret-token"


@pytest.fixture
def environ(prefect_harness: None, slack_receiver: SlackReceiver, s3_server: S3Server) -> dict[str, str]:
    """Variables for both blocks, under names no other test uses."""
    suffix = uuid.uuid4().hex[:8]
    return {
        "SLACK_WEBHOOK_URL": slack_receiver.url,
        "SLACK_CHANNEL": "#basemaps",
        "SLACK_BLOCK_NAME": f"slack-{suffix}",
        "BASEMAP_S3_BUCKET": s3_server.make_bucket(BUCKET),
        "BASEMAP_S3_PREFIX": "/monthly/",
        "S3_BLOCK_NAME": f"s3-{suffix}",
        "AWS_ACCESS_KEY_ID": TEST_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": TEST_CREDENTIALS["region_name"],
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
    }


@pytest.fixture
def no_automations(prefect_harness: None) -> None:
    """The harness API without this project's automations (other tests register them too)."""
    with get_client(sync_client=True) as client:
        for name in (CRASH_DETECTOR_NAME, CRASH_NOTICE_NAME):
            for automation in client.read_automations_by_name(name):
                client.delete_automation(automation.id)


def _assert_no_secret(text: str) -> None:
    assert WEBHOOK_PATH not in text and SECRET_ACCESS_KEY not in text


def _only_automation(name: str) -> Automation:
    with get_client(sync_client=True) as client:
        (automation,) = client.read_automations_by_name(name)
    return automation


def test_registered_blocks_send_and_publish(
    environ: dict[str, str], slack_receiver: SlackReceiver, tmp_path: Path
) -> None:
    lines = register_all(environ)

    _assert_no_secret("\n".join(lines))
    with get_client(sync_client=True) as client:
        for block_class in BLOCK_CLASSES:
            assert client.read_block_type_by_slug(block_class.get_block_type_slug())
    notifier = SlackNotifier.load(environ["SLACK_BLOCK_NAME"])
    assert notifier.notify_started(RunReport(aoi="lake_constance", month="2024-06"))
    assert [body["channel"] for body in slack_receiver.bodies] == [environ["SLACK_CHANNEL"]]

    bucket_block = S3Bucket.load(environ["S3_BLOCK_NAME"])
    mosaic, item = tmp_path / "mosaic.tif", tmp_path / "item.json"
    mosaic.write_bytes(b"pixels")
    item.write_text("{}")
    destination = month_destination(bucket_block, "lake_constance", "2024-06")
    destination.put({mosaic.name: mosaic, item.name: item})
    item_key = destination.url(item.name).removeprefix(f"s3://{BUCKET}/")
    assert item_key == "monthly/lake_constance/2024/06/item.json"
    assert bucket_block.credentials.get_s3_client().head_object(Bucket=BUCKET, Key=item_key)


def test_registering_again_updates_the_blocks(environ: dict[str, str]) -> None:
    register_all(environ)
    register_all(environ | {"SLACK_CHANNEL": "#alerts", "BASEMAP_S3_PREFIX": "v2"})

    assert SlackNotifier.load(environ["SLACK_BLOCK_NAME"]).channel == "#alerts"
    assert S3Bucket.load(environ["S3_BLOCK_NAME"]).bucket_folder == "v2"


def test_registering_twice_updates_the_automations_and_webhook_in_place(
    environ: dict[str, str], no_automations: None
) -> None:
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        first = register_all(environ)
    detector, notice = _only_automation(CRASH_DETECTOR_NAME), _only_automation(CRASH_NOTICE_NAME)
    rotated_url = environ["SLACK_WEBHOOK_URL"] + ROTATED_TOKEN
    second = register_all(environ | {CRASH_AFTER_VARIABLE: "600", "SLACK_WEBHOOK_URL": rotated_url})

    assert first[3].startswith(f"created automation {CRASH_DETECTOR_NAME!r}") and "90 s" in first[3]
    assert first[5].startswith(f"created automation {CRASH_NOTICE_NAME!r}")
    assert second[3].startswith(f"updated automation {CRASH_DETECTOR_NAME!r}") and "600 s" in second[3]
    assert second[5].startswith(f"updated automation {CRASH_NOTICE_NAME!r}")
    assert first[4] == second[4] == f"saved webhook/{environ['SLACK_BLOCK_NAME']}"
    output = "\n".join(first + second)
    _assert_no_secret(output)
    assert ROTATED_TOKEN not in output
    assert detector.trigger.within == timedelta(seconds=90), "default window: 3 heartbeats of 30 s"
    updated_detector, updated_notice = _only_automation(CRASH_DETECTOR_NAME), _only_automation(CRASH_NOTICE_NAME)
    assert (updated_detector.id, updated_notice.id) == (detector.id, notice.id)
    assert updated_detector.trigger.posture == Posture.Proactive
    assert updated_detector.trigger.within == timedelta(seconds=600)
    assert HEARTBEAT_EVENT in updated_detector.trigger.after and HEARTBEAT_EVENT in updated_detector.trigger.expect
    assert updated_detector.trigger.for_each == {"prefect.resource.id"}
    assert [action.state for action in updated_detector.actions] == [StateType.CRASHED]
    assert updated_notice.trigger.expect == {CRASHED_EVENT}
    with get_client(sync_client=True) as client:
        webhook_document = client.read_block_document_by_name(environ["SLACK_BLOCK_NAME"], "webhook")
    assert [action.block_document_id for action in updated_notice.actions] == [webhook_document.id]
    webhook = Webhook.load(environ["SLACK_BLOCK_NAME"])
    assert webhook.url.get_secret_value() == rotated_url
    assert webhook.headers.get_secret_value() == {"Content-Type": "application/json"}


@pytest.mark.parametrize("crash_after_s", ["180", "an hour"])
def test_crash_window_not_above_the_heartbeat_skips_the_detector(
    environ: dict[str, str], no_automations: None, crash_after_s: str
) -> None:
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 180}):
        line = register_all(environ | {CRASH_AFTER_VARIABLE: crash_after_s})[3]

    assert line.startswith("skipped") and CRASH_AFTER_VARIABLE in line and "180 s" in line and "\n" not in line
    with get_client(sync_client=True) as client:
        assert client.read_automations_by_name(CRASH_DETECTOR_NAME) == []


@pytest.mark.parametrize(
    ("removed", "replaced", "slack_hint", "s3_hint"),
    [
        (("SLACK_WEBHOOK_URL", "BASEMAP_S3_BUCKET"), {}, "SLACK_WEBHOOK_URL", "BASEMAP_S3_BUCKET"),
        (("AWS_SECRET_ACCESS_KEY",), {"SLACK_BLOCK_NAME": "Slack_Block"}, "SLACK_BLOCK_NAME", "AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_missing_or_bad_variables_skip_the_block_with_one_line(
    environ: dict[str, str],
    no_automations: None,
    removed: tuple[str, ...],
    replaced: dict[str, str],
    slack_hint: str,
    s3_hint: str,
) -> None:
    partial = {name: value for name, value in environ.items() if name not in removed} | replaced

    _, slack_line, s3_line, _, webhook_line, notice_line = register_all(partial)

    for line, hint in [(slack_line, slack_hint), (s3_line, s3_hint), (webhook_line, slack_hint)]:
        assert line.startswith("skipped") and hint in line and "\n" not in line
    assert notice_line.startswith(f"skipped automation {CRASH_NOTICE_NAME!r}")
    with pytest.raises(ValueError):
        SlackNotifier.load(partial["SLACK_BLOCK_NAME"])
    with pytest.raises(ValueError):
        Webhook.load(partial["SLACK_BLOCK_NAME"])
    with pytest.raises(ValueError):
        S3Bucket.load(partial["S3_BLOCK_NAME"])
    with get_client(sync_client=True) as client:
        assert client.read_automations_by_name(CRASH_NOTICE_NAME) == []


def test_command_line_registers_without_showing_secrets(environ: dict[str, str]) -> None:
    api_url = get_current_settings().api.url
    process_environ = os.environ | environ | {"PREFECT_API_URL": str(api_url)}

    finished = subprocess.run(
        [sys.executable, "-m", "blocks.register"],
        cwd=REPO_ROOT,
        env=process_environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr
    assert f"saved slack-notifier/{environ['SLACK_BLOCK_NAME']}" in finished.stdout
    assert f"saved s3-bucket/{environ['S3_BLOCK_NAME']}" in finished.stdout
    assert f"saved webhook/{environ['SLACK_BLOCK_NAME']}" in finished.stdout
    assert f"automation {CRASH_DETECTOR_NAME!r}" in finished.stdout
    assert f"automation {CRASH_NOTICE_NAME!r}" in finished.stdout
    assert len(finished.stdout.splitlines()) == 6, finished.stdout
    _assert_no_secret(finished.stdout + finished.stderr)
    loaded = S3Bucket.load(environ["S3_BLOCK_NAME"])
    assert loaded.credentials.aws_secret_access_key.get_secret_value() == SECRET_ACCESS_KEY

"""Block registration from environment variables, against a Prefect test-harness API: the saved
blocks work (a notice reaches the loopback webhook, products reach moto S3), re-runs update in
place, missing variables skip a block with one line, and no secret is shown."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import get_current_settings
from prefect_aws.s3 import S3Bucket

from blocks.publish import ITEM_PRODUCT, publish_products
from blocks.register import BLOCK_CLASSES, register_all
from blocks.slack import RunReport, SlackNotifier
from tests import REPO_ROOT
from tests.servers import TEST_CREDENTIALS, S3Server
from tests.slack_receiver import WEBHOOK_PATH, SlackReceiver

BUCKET = "basemaps-register"
SECRET_ACCESS_KEY = "register-test-secret-0123456789"
"""moto accepts any secret; a distinctive one can be searched for in the output."""


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


def _assert_no_secret(text: str) -> None:
    assert WEBHOOK_PATH not in text and SECRET_ACCESS_KEY not in text


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
    urls = publish_products([mosaic], bucket_block, "lake_constance", "2024-06", item)
    item_key = urls[ITEM_PRODUCT].removeprefix(f"s3://{BUCKET}/")
    assert item_key == "monthly/lake_constance/2024/06/item.json"
    assert bucket_block.credentials.get_s3_client().head_object(Bucket=BUCKET, Key=item_key)


def test_registering_again_updates_the_blocks(environ: dict[str, str]) -> None:
    register_all(environ)
    register_all(environ | {"SLACK_CHANNEL": "#alerts", "BASEMAP_S3_PREFIX": "v2"})

    assert SlackNotifier.load(environ["SLACK_BLOCK_NAME"]).channel == "#alerts"
    assert S3Bucket.load(environ["S3_BLOCK_NAME"]).bucket_folder == "v2"


@pytest.mark.parametrize(
    ("removed", "replaced", "slack_hint", "s3_hint"),
    [
        (("SLACK_WEBHOOK_URL", "BASEMAP_S3_BUCKET"), {}, "SLACK_WEBHOOK_URL", "BASEMAP_S3_BUCKET"),
        (("AWS_SECRET_ACCESS_KEY",), {"SLACK_BLOCK_NAME": "Slack_Block"}, "SLACK_BLOCK_NAME", "AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_missing_or_bad_variables_skip_the_block_with_one_line(
    environ: dict[str, str], removed: tuple[str, ...], replaced: dict[str, str], slack_hint: str, s3_hint: str
) -> None:
    partial = {name: value for name, value in environ.items() if name not in removed} | replaced

    _, slack_line, s3_line = register_all(partial)

    assert slack_line.startswith("skipped") and slack_hint in slack_line and "\n" not in slack_line
    assert s3_line.startswith("skipped") and s3_hint in s3_line and "\n" not in s3_line
    with pytest.raises(ValueError):
        SlackNotifier.load(partial["SLACK_BLOCK_NAME"])
    with pytest.raises(ValueError):
        S3Bucket.load(partial["S3_BLOCK_NAME"])


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
    _assert_no_secret(finished.stdout + finished.stderr)
    loaded = S3Bucket.load(environ["S3_BLOCK_NAME"])
    assert loaded.credentials.aws_secret_access_key.get_secret_value() == SECRET_ACCESS_KEY

"""`python -m blocks.register`: create or update this project's Prefect blocks from environment
variables, so no secret is ever written in a config file, a flow parameter or a log line.

- Slack: `SLACK_WEBHOOK_URL` (optional `SLACK_CHANNEL`, `SLACK_USERNAME`, `SLACK_ICON_EMOJI`) ->
  `SlackNotifier` block `$SLACK_BLOCK_NAME` (default "basemap-slack").
- S3: `BASEMAP_S3_BUCKET` (optional `BASEMAP_S3_PREFIX`), `AWS_ACCESS_KEY_ID` and
  `AWS_SECRET_ACCESS_KEY` (both, or neither to leave credentials to boto3's default chain on the
  worker), optional `AWS_DEFAULT_REGION` and `AWS_ENDPOINT_URL` (an S3-compatible store) ->
  `AwsCredentials` block `$S3_BLOCK_NAME-credentials` and `S3Bucket` block `$S3_BLOCK_NAME`
  (default "basemap-s3").
- Crash detection (`blocks.crash_detection`): the automation that marks a flow run CRASHED when its
  heartbeats stop for `BASEMAP_CRASH_AFTER_S` seconds (default 3 heartbeats). The heartbeat
  frequency is Prefect's own setting PREFECT_FLOWS_HEARTBEAT_FREQUENCY (default 180 s, minimum 30),
  read here as the flow processes read it: give both the same value.
- Crash notice: with `SLACK_WEBHOOK_URL`, a `Webhook` block `$SLACK_BLOCK_NAME` holding that URL
  and the automation that posts every crashed run of a deployment (not its subflows) to Slack through it.

The block types are registered first. A block whose variables are missing is skipped with one line
saying which to set; re-running updates the blocks and automations in place. Name the blocks in the flow's
settings (`slack_block`, `s3_block`).
"""

import os
import re
from collections.abc import Mapping
from uuid import UUID

from prefect.blocks.webhook import Webhook
from prefect.settings import get_current_settings
from prefect_aws import AwsCredentials
from prefect_aws.client_parameters import AwsClientParameters
from prefect_aws.s3 import S3Bucket

from blocks.crash_detection import (
    CRASH_DETECTOR_NAME,
    CRASH_NOTICE_NAME,
    crash_detector,
    crash_notice,
    save_automation,
)
from blocks.slack import SlackNotifier

__all__ = [
    "BLOCK_CLASSES",
    "CRASH_AFTER_VARIABLE",
    "DEFAULT_S3_BLOCK_NAME",
    "DEFAULT_SLACK_BLOCK_NAME",
    "main",
    "register_all",
]

DEFAULT_SLACK_BLOCK_NAME = "basemap-slack"
DEFAULT_S3_BLOCK_NAME = "basemap-s3"
CREDENTIALS_SUFFIX = "-credentials"
AWS_KEY_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
BLOCK_CLASSES = (SlackNotifier, AwsCredentials, S3Bucket)
BLOCK_NAME_PATTERN = re.compile(r"^[a-z0-9-]+$")
CRASH_AFTER_VARIABLE = "BASEMAP_CRASH_AFTER_S"
CRASH_AFTER_HEARTBEATS = 3
"""Default crash window, in heartbeats: two may be late or lost before a run is declared dead."""
JSON_HEADERS = {"Content-Type": "application/json"}


def register_block_types() -> str:
    """Register the block types and schemas, so the UI can create these blocks too."""
    for block_class in BLOCK_CLASSES:
        block_class.register_type_and_schema(_sync=True)  # type: ignore[call-arg]  # _sync: async_dispatch
    return "registered block types: " + ", ".join(block.get_block_type_slug() for block in BLOCK_CLASSES)


def register_slack(environ: Mapping[str, str]) -> str:
    """Save the Slack notifier block; returns the line to show."""
    name = _slack_block_name(environ)
    slug = f"{SlackNotifier.get_block_type_slug()}/{name}"
    problem = _slack_problem(environ, slug)
    if problem:
        return problem
    notifier = SlackNotifier(
        webhook_url=environ["SLACK_WEBHOOK_URL"],
        channel=environ.get("SLACK_CHANNEL") or None,
        username=environ.get("SLACK_USERNAME") or None,
        icon_emoji=environ.get("SLACK_ICON_EMOJI") or None,
    )
    notifier.save(name, overwrite=True, _sync=True)  # type: ignore[call-arg]  # _sync: async_dispatch
    return f"saved {slug}"


def register_s3(environ: Mapping[str, str]) -> str:
    """Save the AWS credentials and S3 bucket blocks; returns the line to show."""
    name = environ.get("S3_BLOCK_NAME") or DEFAULT_S3_BLOCK_NAME
    slug = f"{S3Bucket.get_block_type_slug()}/{name}"
    if not BLOCK_NAME_PATTERN.match(name):
        return _bad_name_line("S3_BLOCK_NAME", slug)
    missing = [variable for variable in AWS_KEY_VARIABLES if not environ.get(variable)]
    if not environ.get("BASEMAP_S3_BUCKET"):
        return f"skipped {slug}: set BASEMAP_S3_BUCKET (and optionally BASEMAP_S3_PREFIX)"
    if len(missing) == 1:
        return f"skipped {slug}: set {missing[0]} too, or unset both AWS keys to use the default chain"
    endpoint_url = environ.get("AWS_ENDPOINT_URL") or None
    credentials = AwsCredentials(
        aws_access_key_id=environ.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=environ.get("AWS_SECRET_ACCESS_KEY") or None,
        region_name=environ.get("AWS_DEFAULT_REGION") or None,
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint_url),
    )
    credentials_name = f"{name}{CREDENTIALS_SUFFIX}"
    credentials.save(credentials_name, overwrite=True, _sync=True)  # type: ignore[call-arg]  # _sync: async_dispatch
    bucket = S3Bucket(
        bucket_name=environ["BASEMAP_S3_BUCKET"],
        bucket_folder=environ.get("BASEMAP_S3_PREFIX", "").strip("/"),
        credentials=credentials,
    )
    bucket.save(name, overwrite=True, _sync=True)  # type: ignore[call-arg]  # _sync: async_dispatch
    keys = "default chain" if missing else "keys from the environment"
    where = f" at {endpoint_url}" if endpoint_url else ""
    return f"saved {slug} (bucket {bucket.bucket_name!r}{where}, credentials: {keys})"


def register_crash_detector(environ: Mapping[str, str]) -> str:
    """Create or update the automation that marks silent flow runs CRASHED; returns the line to show."""
    heartbeat_s = get_current_settings().flows.heartbeat_frequency
    if heartbeat_s is None:
        return (
            f"skipped automation {CRASH_DETECTOR_NAME!r}: flow-run heartbeats are off; "
            "set PREFECT_FLOWS_HEARTBEAT_FREQUENCY (seconds, at least 30) here and for the flow runs"
        )
    try:
        crash_after_s = int(environ.get(CRASH_AFTER_VARIABLE) or CRASH_AFTER_HEARTBEATS * heartbeat_s)
        automation = crash_detector(heartbeat_s, crash_after_s)
    except ValueError:
        return (
            f"skipped automation {CRASH_DETECTOR_NAME!r}: set {CRASH_AFTER_VARIABLE} to whole seconds above "
            f"the {heartbeat_s} s heartbeat frequency (e.g. {CRASH_AFTER_HEARTBEATS * heartbeat_s})"
        )
    saved = save_automation(automation)
    return (
        f"{saved} automation {CRASH_DETECTOR_NAME!r}: a flow run is CRASHED {crash_after_s} s after its last "
        f"heartbeat (flow runs must send one every {heartbeat_s} s: PREFECT_FLOWS_HEARTBEAT_FREQUENCY)"
    )


def register_crash_notice(environ: Mapping[str, str]) -> list[str]:
    """Save the Slack webhook block and the automation posting crashed runs through it; one line each."""
    name = _slack_block_name(environ)
    slug = f"{Webhook.get_block_type_slug()}/{name}"
    problem = _slack_problem(environ, slug)
    if problem:
        return [problem, f"skipped automation {CRASH_NOTICE_NAME!r}: it posts through {slug}"]
    webhook = Webhook(url=environ["SLACK_WEBHOOK_URL"], headers=JSON_HEADERS)
    webhook_block_id: UUID = webhook.save(  # type: ignore[call-arg, assignment]  # _sync: async_dispatch
        name, overwrite=True, _sync=True
    )
    saved = save_automation(crash_notice(webhook_block_id))
    return [f"saved {slug}", f"{saved} automation {CRASH_NOTICE_NAME!r}: every crashed run of a deployment is posted via {slug}"]


def _slack_block_name(environ: Mapping[str, str]) -> str:
    return environ.get("SLACK_BLOCK_NAME") or DEFAULT_SLACK_BLOCK_NAME


def _slack_problem(environ: Mapping[str, str], slug: str) -> str | None:
    """The skip line when the Slack variables cannot make block `slug`; None when they can."""
    if not BLOCK_NAME_PATTERN.match(_slack_block_name(environ)):
        return _bad_name_line("SLACK_BLOCK_NAME", slug)
    if not environ.get("SLACK_WEBHOOK_URL"):
        return f"skipped {slug}: set SLACK_WEBHOOK_URL to the Slack Incoming Webhook URL"
    return None


def _bad_name_line(variable: str, slug: str) -> str:
    return f"skipped {slug}: set {variable} to a block name of lowercase letters, digits and dashes"


def register_all(environ: Mapping[str, str]) -> list[str]:
    """Register the block types, then save each block and automation its variables allow; one line each."""
    return [
        register_block_types(),
        register_slack(environ),
        register_s3(environ),
        register_crash_detector(environ),
        *register_crash_notice(environ),
    ]


def main() -> None:
    for line in register_all(os.environ):
        print(line)


if __name__ == "__main__":
    main()

"""`python -m blocks.register`: create or update this project's Prefect blocks from environment
variables, so no secret is ever written in a config file, a flow parameter or a log line.

- Slack: `SLACK_WEBHOOK_URL` (optional `SLACK_CHANNEL`, `SLACK_USERNAME`, `SLACK_ICON_EMOJI`) ->
  `SlackNotifier` block `$SLACK_BLOCK_NAME` (default "basemap-slack").
- S3: `BASEMAP_S3_BUCKET` (optional `BASEMAP_S3_PREFIX`), `AWS_ACCESS_KEY_ID` and
  `AWS_SECRET_ACCESS_KEY` (both, or neither to leave credentials to boto3's default chain on the
  worker), optional `AWS_DEFAULT_REGION` and `AWS_ENDPOINT_URL` (an S3-compatible store) ->
  `AwsCredentials` block `$S3_BLOCK_NAME-credentials` and `S3Bucket` block `$S3_BLOCK_NAME`
  (default "basemap-s3").

The block types are registered first. A block whose variables are missing is skipped with one line
saying which to set; re-running updates the blocks in place. Name the blocks in the flow's
settings (`slack_block`, `s3_block`).
"""

import os
import re
from collections.abc import Mapping

from prefect_aws import AwsCredentials
from prefect_aws.client_parameters import AwsClientParameters
from prefect_aws.s3 import S3Bucket

from blocks.slack import SlackNotifier

DEFAULT_SLACK_BLOCK_NAME = "basemap-slack"
DEFAULT_S3_BLOCK_NAME = "basemap-s3"
CREDENTIALS_SUFFIX = "-credentials"
AWS_KEY_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
BLOCK_CLASSES = (SlackNotifier, AwsCredentials, S3Bucket)
BLOCK_NAME_PATTERN = re.compile(r"^[a-z0-9-]+$")


def register_block_types() -> str:
    """Register the block types and schemas, so the UI can create these blocks too."""
    for block_class in BLOCK_CLASSES:
        block_class.register_type_and_schema(_sync=True)
    return "registered block types: " + ", ".join(block.get_block_type_slug() for block in BLOCK_CLASSES)


def register_slack(environ: Mapping[str, str]) -> str:
    """Save the Slack notifier block; returns the line to show."""
    name = environ.get("SLACK_BLOCK_NAME") or DEFAULT_SLACK_BLOCK_NAME
    slug = f"{SlackNotifier.get_block_type_slug()}/{name}"
    if not BLOCK_NAME_PATTERN.match(name):
        return _bad_name_line("SLACK_BLOCK_NAME", name)
    if not environ.get("SLACK_WEBHOOK_URL"):
        return f"skipped {slug}: set SLACK_WEBHOOK_URL to the Slack Incoming Webhook URL"
    notifier = SlackNotifier(
        webhook_url=environ["SLACK_WEBHOOK_URL"],
        channel=environ.get("SLACK_CHANNEL") or None,
        username=environ.get("SLACK_USERNAME") or None,
        icon_emoji=environ.get("SLACK_ICON_EMOJI") or None,
    )
    notifier.save(name, overwrite=True, _sync=True)
    return f"saved {slug}"


def register_s3(environ: Mapping[str, str]) -> str:
    """Save the AWS credentials and S3 bucket blocks; returns the line to show."""
    name = environ.get("S3_BLOCK_NAME") or DEFAULT_S3_BLOCK_NAME
    slug = f"{S3Bucket.get_block_type_slug()}/{name}"
    if not BLOCK_NAME_PATTERN.match(name):
        return _bad_name_line("S3_BLOCK_NAME", name)
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
    credentials.save(f"{name}{CREDENTIALS_SUFFIX}", overwrite=True, _sync=True)
    bucket = S3Bucket(
        bucket_name=environ["BASEMAP_S3_BUCKET"],
        bucket_folder=environ.get("BASEMAP_S3_PREFIX", "").strip("/"),
        credentials=credentials,
    )
    bucket.save(name, overwrite=True, _sync=True)
    keys = "default chain" if missing else "keys from the environment"
    where = f" at {endpoint_url}" if endpoint_url else ""
    return f"saved {slug} (bucket {bucket.bucket_name!r}{where}, credentials: {keys})"


def _bad_name_line(variable: str, name: str) -> str:
    return f"skipped {name!r}: set {variable} to a block name of lowercase letters, digits and dashes"


def register_all(environ: Mapping[str, str]) -> list[str]:
    """Register the block types, then save each block its variables allow; one line each."""
    return [register_block_types(), register_slack(environ), register_s3(environ)]


def main() -> None:
    for line in register_all(os.environ):
        print(line)


if __name__ == "__main__":
    main()

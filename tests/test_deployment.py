"""End to end as in production, all on 127.0.0.1: a Prefect server, the process work pool and the
deployments of prefect.yaml (`prefect deploy --all`), a process worker, blocks registered by
`python -m blocks.register`, and a `prefect deployment run` over a synthetic month served from moto
S3 and a rustac STAC API. The run must complete, publish the five products to the S3 block's
bucket and post the success notice to the (loopback) Slack webhook. The deployments' cron
schedules must have created scheduled runs.
"""

import dataclasses
import json
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType

from blocks.register import DEFAULT_S3_BLOCK_NAME, DEFAULT_SLACK_BLOCK_NAME
from tasks.core.month import MONTH_PATTERN, Month
from tasks.products.metadata import FILL_LAYER, TILES_FOLDER, ProductNames
from tasks.testing.prefect_server import PrefectServer, flow_run_id_in
from tasks.testing.served_month import (
    ServedMonth,
    flow_settings,
    month_dates,
    serve_synthetic_month,
    serve_synthetic_series,
)
from tasks.testing.servers import S3Server
from tests import REPO_ROOT
from tests.slack_receiver import SlackReceiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PREFECT_YAML = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = PREFECT_YAML["deployments"]
SCHEDULED_DEPLOYMENTS = [deployment for deployment in DEPLOYMENTS if deployment.get("schedules")]
FLOW_NAME = "monthly-mosaic"
RUN_DEPLOYMENT = "lake-constance"
BACKFILL_DEPLOYMENT = "basemap-backfill/lake-constance-backfill"
BACKFILL_FIRST_DAYS = (date(2020, 3, 1), date(2020, 4, 1), date(2020, 5, 1))
BUCKET_FOLDER = "basemaps"
FLOW_RUN_TIMEOUT_S = 150.0
SCHEDULER_TIMEOUT_S = 30.0
SLACK_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def deployed(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A server holding the pool and deployments of prefect.yaml, with a worker polling the pool.

    Depends on `s3_server` so that every Prefect process inherits the moto AWS variables.
    """
    with PrefectServer(tmp_path_factory.mktemp("prefect_home")) as server:
        with server.logs_on_failure():
            for pool in sorted({deployment["work_pool"]["name"] for deployment in DEPLOYMENTS}):
                server.cli("work-pool", "create", pool, "--type", "process")
                server.start_worker(pool)
            server.cli("--no-prompt", "deploy", "--all")
        yield server


@pytest.fixture
def served(s3_server: S3Server, stac_api_factory, tmp_path: Path) -> ServedMonth:
    return serve_synthetic_month(s3_server, stac_api_factory, tmp_path, seed=5)


def monthly_starts_from(moment: datetime, count: int) -> list[datetime]:
    """What the deployments promise, worked out without the cron string: the 2nd of each month at
    03:00 UTC (the previous month is complete in the catalogue by then), from `moment` on."""
    year, month = moment.astimezone(UTC).year, moment.astimezone(UTC).month
    starts: list[datetime] = []
    while len(starts) < count:
        start = datetime(year, month, 2, 3, 0, tzinfo=UTC)
        if start >= moment:
            starts.append(start)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return starts


def scheduled_runs(server: PrefectServer, deployment_name: str) -> list[FlowRun]:
    """The SCHEDULED runs of a deployment of `FLOW_NAME`, once the scheduler has made some."""
    scheduled = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))
    with server.client() as client:
        deployment_id = client.read_deployment_by_name(f"{FLOW_NAME}/{deployment_name}").id
        of_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        return server.wait_for(
            lambda: client.read_flow_runs(flow_run_filter=scheduled, deployment_filter=of_deployment) or None,
            SCHEDULER_TIMEOUT_S,
            f"scheduled runs of {deployment_name}",
        )


@pytest.mark.parametrize(
    "deployment", SCHEDULED_DEPLOYMENTS, ids=[deployment["name"] for deployment in SCHEDULED_DEPLOYMENTS]
)
def test_cron_schedule_creates_scheduled_runs_in_pool(deployed: PrefectServer, deployment: dict[str, Any]) -> None:
    with deployed.logs_on_failure():
        runs = scheduled_runs(deployed, deployment["name"])
        with deployed.client() as client:
            record = client.read_deployment_by_name(f"{FLOW_NAME}/{deployment['name']}")
    assert record.work_pool_name == deployment["work_pool"]["name"]
    assert all(run.auto_scheduled and run.work_pool_name == record.work_pool_name for run in runs)
    starts = sorted(run.expected_start_time for run in runs)
    # The scheduler counts from its own clock, read after the deployment was created and before it
    # created the first run: a 2nd at 03:00 UTC passing in between moves the first start by a month.
    scheduler_clock_between = (record.created, min(run.created for run in runs))
    assert starts in [monthly_starts_from(moment, len(starts)) for moment in scheduler_clock_between], (
        starts, scheduler_clock_between
    )


def test_deployment_run_publishes_products_and_notifies_slack(
    deployed: PrefectServer, s3_server: S3Server, served: ServedMonth, slack_receiver: SlackReceiver, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket(f"basemaps-{uuid.uuid4().hex[:12]}")
    name = "served-aoi"  # deployments name their AOI
    settings = flow_settings(
        served, tmp_path / "workspace", aoi_name=name, s3_block=DEFAULT_S3_BLOCK_NAME, slack_block=DEFAULT_SLACK_BLOCK_NAME
    )
    parameters = json.dumps({"settings": settings.model_dump(mode="json")})
    month = Month.parse(served.label)
    month_prefix = f"{BUCKET_FOLDER}/{name}/{month.year:04d}/{month.month:02d}/"

    with deployed.logs_on_failure():
        registered = deployed.run(
            [sys.executable, "-m", "blocks.register"],
            {"SLACK_WEBHOOK_URL": slack_receiver.url, "BASEMAP_S3_BUCKET": bucket, "BASEMAP_S3_PREFIX": BUCKET_FOLDER},
        )
        assert f"saved slack-notifier/{DEFAULT_SLACK_BLOCK_NAME}" in registered
        assert f"saved s3-bucket/{DEFAULT_S3_BLOCK_NAME}" in registered
        started = deployed.cli("deployment", "run", f"{FLOW_NAME}/{RUN_DEPLOYMENT}", "--params", parameters)
        flow_run = deployed.wait_for_final_state(flow_run_id_in(started), FLOW_RUN_TIMEOUT_S)
        assert flow_run.state.is_completed(), f"{flow_run.state.name}: {flow_run.state.message}"

        names = ProductNames.for_run(name, month)
        products = {month_prefix + product for product in (*dataclasses.asdict(names).values(), names.single_cog(FILL_LAYER))}
        month_level = {key for key in s3_server.keys(bucket, month_prefix) if not key.startswith(f"{month_prefix}{TILES_FOLDER}/")}
        assert month_level == products

        done_title = f"Basemap {name} {month.label}: done"
        success = deployed.wait_for(
            lambda: next((body for body in slack_receiver.bodies if body.get("text", "").startswith(done_title)), None),
            SLACK_TIMEOUT_S,
            "the Slack success notice",
        )
        assert flow_run.name in success["text"]
        message = json.dumps(success["blocks"])
        assert all(f"s3://{bucket}/{key}" in message for key in products)
        assert slack_receiver.texts()[0].startswith(f"Basemap {name} {month.label}: started")


def test_backfill_deployment_builds_three_months_and_a_rerun_skips_them(
    deployed: PrefectServer, s3_server: S3Server, stac_api_factory, slack_receiver: SlackReceiver, tmp_path: Path
) -> None:
    series = serve_synthetic_series(s3_server, stac_api_factory, tmp_path, [month_dates(day) for day in BACKFILL_FIRST_DAYS])
    bucket = s3_server.make_bucket(f"backfill-{uuid.uuid4().hex[:12]}")
    name = "served-series"
    settings = flow_settings(
        series.served_month(series.labels[0]), tmp_path / "workspace", month=None, aoi_name=name,
        s3_block=DEFAULT_S3_BLOCK_NAME, slack_block=DEFAULT_SLACK_BLOCK_NAME,
    )
    parameters = json.dumps(
        {"start_month": series.labels[0], "end_month": series.labels[-1], "settings": settings.model_dump(mode="json")}
    )
    items = {
        f"{BUCKET_FOLDER}/{name}/{label[:4]}/{label[5:]}/{ProductNames.for_run(name, Month.parse(label)).item}"
        for label in series.labels
    }

    with deployed.logs_on_failure():
        deployed.run(
            [sys.executable, "-m", "blocks.register"],
            {"SLACK_WEBHOOK_URL": slack_receiver.url, "BASEMAP_S3_BUCKET": bucket, "BASEMAP_S3_PREFIX": BUCKET_FOLDER},
        )
        for expected_state in ("3 built", "3 skipped"):
            started = deployed.cli("deployment", "run", BACKFILL_DEPLOYMENT, "--params", parameters)
            flow_run = deployed.wait_for_final_state(flow_run_id_in(started), FLOW_RUN_TIMEOUT_S)
            assert flow_run.state.is_completed(), f"{flow_run.state.name}: {flow_run.state.message}"
            assert items <= s3_server.keys(bucket, f"{BUCKET_FOLDER}/{name}/")
            notice = deployed.wait_for(
                lambda run_name=flow_run.name: next(
                    (text for text in slack_receiver.texts() if run_name in text), None
                ),
                SLACK_TIMEOUT_S,
                "the backfill's Slack notice",
            )
            assert f"{name} {series.labels[0]}..{series.labels[-1]}: done" in notice and expected_state in notice, notice
        assert len(slack_receiver.texts()) == 2, "the months posted notices of their own"
        with deployed.client() as client:
            form = client.read_deployment_by_name(BACKFILL_DEPLOYMENT).parameter_openapi_schema
    assert {"start_month", "end_month"} <= set(form["required"]), form  # the UI form asks for the range
    assert form["properties"]["start_month"]["pattern"] == MONTH_PATTERN.pattern

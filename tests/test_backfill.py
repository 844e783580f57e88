"""The backfill flow over a synthetic series served from moto S3 and a rustac STAC API.

Three months hold scenes and one (the first) holds none: the backfill builds the three, records the
empty one as failed with its reason, posts one Slack notice and one summary artifact listing all four,
and fails naming the empty month. A re-run skips the three published months and builds nothing.
"""

import json
from collections import Counter
from datetime import date, datetime
from pathlib import Path

import pytest
import rasterio
from odc.geo.geobox import GeoBox
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

from blocks.slack import BUILT, FAILED, SKIPPED, SlackNotifier
from flows.backfill import backfill
from tasks.aoi import aoi_pixel_mask, load_aoi
from tasks.errors import MonthsFailed
from tasks.metadata import COUNT_LAYER, ProductNames
from tasks.month import Month
from tasks.testing.served_month import ServedMonth, ServedSeries, flow_settings, month_dates, serve_synthetic_series
from tasks.testing.servers import S3Server
from tests.slack_receiver import SlackReceiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SERIES_FIRST_DAYS = (date(2020, 3, 1), date(2020, 4, 1), date(2020, 5, 1))
EMPTY_MONTH = "2020-02"


@pytest.fixture
def series(s3_server: S3Server, stac_api_factory, tmp_path: Path) -> ServedSeries:
    return serve_synthetic_series(
        s3_server, stac_api_factory, tmp_path, [month_dates(day) for day in SERIES_FIRST_DAYS], seed=11
    )


def test_a_backfill_builds_each_month_once_reports_them_all_and_a_rerun_skips_the_published(
    series: ServedSeries, prefect_harness: None, slack_receiver: SlackReceiver, tmp_path: Path
) -> None:
    SlackNotifier(webhook_url=slack_receiver.url).save("backfill-slack", overwrite=True)
    served = series.served_month(series.labels[0])
    settings = flow_settings(served, tmp_path / "ws", month=None, aoi_name="series", slack_block="backfill-slack")
    output = Path(settings.output_dir)

    with pytest.raises(MonthsFailed) as first_run:
        backfill(EMPTY_MONTH, series.labels[-1], settings, max_concurrent_months=2)

    assert first_run.value.failed_months[0][0] == EMPTY_MONTH and len(first_run.value.failed_months) == 1
    assert "re-run the backfill" in str(first_run.value) and "\n" not in str(first_run.value)
    for label in series.labels:
        names = ProductNames.for_run("series", Month.parse(label))
        metadata = json.loads((output / "series" / label[:4] / label[5:] / names.metadata).read_text())
        assert metadata["period"]["month"] == label
        assert {scene["id"] for scene in metadata["scenes_used"]} <= set(series.served_month(label).item_ids)
    (notice,) = slack_receiver.bodies
    listing = json.dumps(notice["blocks"])
    assert f"`{EMPTY_MONTH}` {FAILED}" in listing and "no scene" in listing.lower(), listing
    assert all(f"`{label}` {BUILT}" in listing for label in series.labels), listing
    assert "1 of 4 months failed" in notice["text"], notice["text"]
    with get_client(sync_client=True) as client:
        summary = client.read_artifacts()
    backfill_summaries = [artifact for artifact in summary if artifact.key == "backfill-summary"]
    assert backfill_summaries and all(label in str(backfill_summaries[0].data) for label in series.labels)

    items_before = {path: path.stat().st_mtime_ns for path in output.rglob("*_item.json")}
    report = backfill(series.labels[0], series.labels[-1], settings)

    assert [outcome.state for outcome in report.months] == [SKIPPED] * len(series.labels)
    observed = {label: observed_share(output, label, served) for label in series.labels}
    assert min(observed.values()) < 0.999, "a month with unobserved AOI pixels shows a skipped month's own share"
    assert {outcome.month: outcome.valid_share for outcome in report.months} == pytest.approx(observed)
    assert {path: path.stat().st_mtime_ns for path in output.rglob("*_item.json")} == items_before
    assert f"{len(series.labels)} skipped" in slack_receiver.texts()[-1]


def observed_share(output: Path, label: str, served: ServedMonth) -> float:
    """Share of the AOI's pixels that the month's count COG says were seen clear at least once."""
    names = ProductNames.for_run("series", Month.parse(label))
    with rasterio.open(output / "series" / label[:4] / label[5:] / names.single_cog(COUNT_LAYER)) as dataset:
        count = dataset.read(1)
        grid = GeoBox(dataset.shape, dataset.transform, dataset.crs)
    inside = aoi_pixel_mask(load_aoi(str(served.aoi_path)), grid)
    return float((count[inside] > 0).mean())


def test_a_backfill_refuses_a_month_in_its_settings_and_a_reversed_range_in_one_line(
    series: ServedSeries, prefect_harness: None, tmp_path: Path
) -> None:
    served = series.served_month(series.labels[0])
    with pytest.raises(Exception, match="leave it empty"):
        backfill(series.labels[0], series.labels[-1], flow_settings(served, tmp_path / "ws"))
    with pytest.raises(Exception, match="before start month .* swap them"):
        backfill(series.labels[-1], series.labels[0], flow_settings(served, tmp_path / "ws", month=None))


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of (start, end) intervals that overlap at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def test_backfill_months_run_as_its_subflows_at_most_the_limit_at_once(
    series: ServedSeries, prefect_harness: None, tmp_path: Path
) -> None:
    served = series.served_month(series.labels[0])
    settings = flow_settings(served, tmp_path / "ws", month=None, aoi_name="subflows")
    state = backfill(series.labels[0], series.labels[-1], settings, max_concurrent_months=2, return_state=True)

    parent_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id]))
        )
    runs_per_month = Counter(run.parameters["settings"]["month"] for run in children)
    assert state.is_completed()
    assert runs_per_month == dict.fromkeys(series.labels, 2), "each month is built, then refilled once all are out"
    assert most_at_once([(run.start_time, run.end_time) for run in children]) == 2

"""The backfill flow over a synthetic series served from moto S3 and a rustac STAC API.

Three months hold scenes and one (the first) holds none. A backfill of the empty month and the next two
builds those two, each once, at most two months at once, then refills each once; it records the empty
month as failed with its reason, posts one Slack notice and one summary artifact listing all three, and
fails naming the empty month. Extended by a month, it builds that month and refills the two published
months from it: one is `refilled` from its published layers without reading a scene, the other, one of
whose published tiles is damaged, fails with that reason and stays published as it was. A re-run skips
the three published months and builds nothing; `overwrite` builds a published month again.
"""

import json
from collections import Counter
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
import rasterio
from odc.geo.geobox import GeoBox
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.states import State

from blocks.slack import BUILT, FAILED, REFILLED, SKIPPED, SlackNotifier
from flows.backfill import backfill
from tasks.core.errors import InvalidSettings, MonthsFailed
from tasks.core.month import Month
from tasks.geometry.aoi import aoi_pixel_mask, load_aoi
from tasks.products.metadata import COUNT_LAYER, FILL_LAYER, MOSAIC_LAYER, TILES_FOLDER, ProductNames
from tasks.testing.served_month import ServedMonth, ServedSeries, flow_settings, month_dates, serve_synthetic_series
from tasks.testing.servers import S3Server
from tests.prefect_runs import settled_task_runs, subflow_runs
from tests.slack_receiver import SlackReceiver

pytestmark = pytest.mark.slow

SERIES_FIRST_DAYS = (date(2020, 3, 1), date(2020, 4, 1), date(2020, 5, 1))
EMPTY_MONTH = "2020-02"


@pytest.fixture
def series(s3_server: S3Server, stac_api_factory, tmp_path: Path) -> ServedSeries:
    return serve_synthetic_series(
        s3_server, stac_api_factory, tmp_path, [month_dates(day) for day in SERIES_FIRST_DAYS], seed=11
    )


def test_a_backfill_builds_each_month_once_refills_the_published_reports_them_all_and_a_rerun_skips_them(
    series: ServedSeries, prefect_harness: None, slack_receiver: SlackReceiver, tmp_path: Path
) -> None:
    SlackNotifier(webhook_url=slack_receiver.url).save("backfill-slack", overwrite=True)
    march, april, may = series.labels
    served = series.served_month(march)
    settings = flow_settings(served, tmp_path / "ws", month=None, aoi_name="series", slack_block="backfill-slack")
    output = Path(settings.output_dir)

    first_run = backfill(EMPTY_MONTH, april, settings, max_concurrent_months=2, return_state=True)

    failure = first_run.result(raise_on_failure=False)
    assert isinstance(failure, MonthsFailed), failure
    ((failed_month, no_scenes),) = failure.failed_months
    assert failed_month == EMPTY_MONTH and "no scenes over AOI" in no_scenes, no_scenes
    assert "re-run the backfill" in str(failure) and "\n" not in str(failure)
    for label in (march, april):
        metadata = month_metadata(output, label)
        assert metadata["period"]["month"] == label
        assert {scene["id"] for scene in metadata["scenes_used"]} <= set(series.served_month(label).item_ids)
    (notice,) = slack_receiver.bodies
    listing = json.dumps(notice["blocks"])
    assert f"`{EMPTY_MONTH}` {FAILED}" in listing and "no scene" in listing.lower(), listing
    assert all(f"`{label}` {BUILT}" in listing for label in (march, april)), listing
    assert "1 of 3 months failed" in notice["text"], notice["text"]
    rows = summary_rows(first_run)
    assert rows[EMPTY_MONTH] == [FAILED, "n/a", "n/a", no_scenes], "the summary says why a month failed"
    assert [rows[label][0] for label in (march, april)] == [BUILT, BUILT], rows
    month_runs = subflow_runs(first_run.state_details.flow_run_id)
    assert Counter(month_of(run) for run in month_runs) == {EMPTY_MONTH: 1, march: 2, april: 2}, (
        "each month runs once, and each built month once more to refill once all are out"
    )
    month_tasks = [run for run in settled_task_runs([first_run.state_details.flow_run_id]) if run.name.startswith("month-")]
    # A month's task starts at once when a thread is free; its flow run only after some API calls, so
    # two short months' flow runs may not overlap on a fast machine. The limit holds for both.
    assert most_at_once([(run.start_time, run.end_time) for run in month_tasks]) == 2, "two months at a time"
    assert most_at_once([(run.start_time, run.end_time) for run in month_runs]) <= 2
    tile_runs = tile_runs_per_month(month_runs)
    assert {month for month, name in tile_runs if name.startswith("tile-")} == {march, april}, tile_runs
    assert set(tile_runs.values()) == {1}, f"a tile was built or refilled twice: {tile_runs}"

    # Extended to May: March and April are published. One of March's published tiles is damaged, so
    # March's refill cannot build its month's files from them.
    (march_tile,) = (output / "series" / march[:4] / march[5:] / TILES_FOLDER).rglob(f"*_{MOSAIC_LAYER}.tif")
    march_tile.write_bytes(b"damaged")
    items_before = item_times(output)
    extended = backfill(march, may, settings, max_concurrent_months=2, return_state=True)

    failure = extended.result(raise_on_failure=False)
    assert isinstance(failure, MonthsFailed), failure
    ((failed_month, damaged),) = failure.failed_months
    assert failed_month == march and march_tile.name in damaged and "\n" not in damaged, damaged
    rows = summary_rows(extended)
    assert rows[march] == [FAILED, "n/a", "n/a", damaged], "the summary says why a month's refill failed"
    assert rows[april][0] == REFILLED and rows[may][0] == BUILT, rows
    assert f"`{april}` {REFILLED}" in json.dumps(slack_receiver.bodies[-1]["blocks"])
    tile_runs = tile_runs_per_month(subflow_runs(extended.state_details.flow_run_id))
    april_tiles = [name for month, name in tile_runs if month == april]
    assert april_tiles and all(name.startswith("refill-") for name in april_tiles), f"April read scenes: {tile_runs}"
    assert may in [used["month"] for used in month_metadata(output, april)[FILL_LAYER]["months_used"]]
    refilled_items = item_times(output)
    assert refilled_items[april] != items_before[april], "April's Item is published again"
    assert refilled_items[march] == items_before[march], "March stays published as it was"

    report = backfill(march, may, settings)

    assert [outcome.state for outcome in report.months] == [SKIPPED] * len(series.labels)
    observed = {label: observed_share(output, label, served) for label in series.labels}
    assert min(observed.values()) < 0.999, "a month with unobserved AOI pixels shows a skipped month's own share"
    assert {outcome.month: outcome.valid_share for outcome in report.months} == pytest.approx(observed)
    assert item_times(output) == refilled_items
    assert f"{len(series.labels)} skipped" in slack_receiver.texts()[-1]

    overwritten = backfill(may, may, settings, overwrite=True)

    assert [outcome.state for outcome in overwritten.months] == [BUILT], "overwrite builds a published month again"
    rebuilt = item_times(output)
    assert rebuilt[may] != refilled_items[may] and {**rebuilt, may: 0} == {**refilled_items, may: 0}


def month_metadata(output: Path, label: str) -> dict[str, Any]:
    """The published metadata.json of month `label` ('YYYY-MM') of the series below a local output folder."""
    names = ProductNames.for_run("series", Month.parse(label))
    return json.loads((output / "series" / label[:4] / label[5:] / names.metadata).read_text())


def item_times(output: Path) -> dict[str, int]:
    """{month 'YYYY-MM': mtime in ns of its published STAC Item} below a local output folder."""
    items = output.rglob("*_item.json")
    return {f"{path.parent.parent.name}-{path.parent.name}": path.stat().st_mtime_ns for path in items}


def summary_rows(state: State) -> dict[str, list[str]]:
    """{month: [state, valid share, filled share, item or reason]} of the summary artifact of one backfill
    run (the session's API holds other backfills' summaries too)."""
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["backfill-summary"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    cells = [line.strip("|").split(" | ") for line in str(artifact.data).splitlines() if line.startswith("| 20")]
    return {row[0].strip(): [cell.strip() for cell in row[1:]] for row in cells}


def month_of(run: FlowRun) -> str:
    """The month ('YYYY-MM') of a run of the monthly flow."""
    return run.parameters["settings"]["month"]


def tile_runs_per_month(month_runs: list[FlowRun]) -> Counter[tuple[str, str]]:
    """(month, task run name) -> runs of the tile tasks (`tile-<tile>` builds it, `refill-<tile>` refills it)
    in the build-tiles subflows of the monthly flow runs `month_runs`."""
    month_of_build = {run.id: run.parameters["month_label"] for run in subflow_runs(*[run.id for run in month_runs])}
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(month_of_build))))
    return Counter(
        (month_of_build[task_run.flow_run_id], task_run.name)
        for task_run in task_runs
        if task_run.name.startswith(("tile-", "refill-"))
    )


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of (start, end) intervals that overlap at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


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
    with pytest.raises(InvalidSettings, match="leave it empty") as month_given:
        backfill(series.labels[0], series.labels[-1], flow_settings(served, tmp_path / "ws"))
    with pytest.raises(InvalidSettings, match="before start month .* swap them") as reversed_range:
        backfill(series.labels[-1], series.labels[0], flow_settings(served, tmp_path / "ws", month=None))
    assert "\n" not in str(month_given.value) and "\n" not in str(reversed_range.value)

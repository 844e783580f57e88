"""The monthly flow against a hostile network and bad assets, on threads and on a local Dask cluster.

Asset reads go through a fault proxy in front of moto (`tasks.testing.fault_scenarios`): an outage in the
middle of acquisition must not fail the month; a permanently broken asset must cost one attempt (at
most 2 requests) and name its fault in metadata.json and Slack; an asset whose georeferencing
disagrees with its item must be read from its real georeferencing or listed as failed, never dropped.
"""

import html
import json
import uuid
from pathlib import Path

import pytest
from rasterio.warp import Resampling

from blocks.slack import SlackNotifier
from flows.monthly_mosaic import monthly_mosaic
from flows.parameters import MosaicSettings
from tasks.core.scene import SCENE_BANDS, SCL_BAND
from tasks.testing.fault_proxy import FaultProxy
from tasks.testing.fault_scenarios import (
    OUTAGE_DATES,
    PERMANENT_FAULT_DATES,
    PERMANENT_FAULTS,
    RUNNERS,
    OutageTrigger,
    asset_file,
    asset_path,
    break_assets,
    failure_requests,
    metadata_of,
    reads_through,
    reprojected,
    upload_over,
    with_wrong_crs_label,
    without_georeferencing,
)
from tasks.testing.served_month import assert_every_scene_accounted, flow_settings, serve_synthetic_month
from tasks.testing.servers import S3Server
from tests.slack_receiver import SlackReceiver


@pytest.mark.slow
@pytest.mark.parametrize(("runner", "outage_s"), [("threads", 20), ("threads", 3), ("dask", 20), ("dask", 3)])
def test_a_network_outage_mid_acquisition_does_not_fail_the_month(
    runner: str, outage_s: float, prefect_harness: None, fault_proxy: FaultProxy, s3_server: S3Server,
    stac_api_factory, tmp_path: Path,
) -> None:  # fmt: skip
    served = serve_synthetic_month(s3_server, stac_api_factory, tmp_path, dates=OUTAGE_DATES, duplicated_dates=())
    settings = flow_settings(served, tmp_path / "ws", read={}, runner=RUNNERS[runner])  # the default retries

    with reads_through(fault_proxy):
        outage = OutageTrigger(fault_proxy, outage_s)
        try:
            state = monthly_mosaic(settings, return_state=True)
        finally:
            outage.stop()

    assert outage.started_at is not None and outage.requests_after > 0, "the outage should land mid-acquisition"
    assert state.is_completed(), state.message
    report = state.result()
    assert report.failed_scenes == [] and report.scenes_used == report.scenes_found == len(OUTAGE_DATES)
    assert_every_scene_accounted(metadata_of(report), served)


@pytest.mark.slow
@pytest.mark.parametrize("runner", list(RUNNERS))
def test_bodies_cut_or_reset_in_transit_and_busy_servers_are_retried(
    runner: str, prefect_harness: None, fault_proxy: FaultProxy, s3_server: S3Server, stac_api_factory, tmp_path: Path
) -> None:
    served = serve_synthetic_month(s3_server, stac_api_factory, tmp_path, duplicated_dates=())
    cut, reset, busy = (asset_path(served, item_id, "nir") for item_id in served.item_ids[1:4])
    fault_proxy.cut_body(cut, 1000, times=1)
    fault_proxy.reset_body(reset, 1000, times=1)
    fault_proxy.status(busy, 503, times=2)
    settings = flow_settings(served, tmp_path / "ws", runner=RUNNERS[runner])

    with reads_through(fault_proxy):
        report = monthly_mosaic(settings)

    assert report.failed_scenes == [] and report.scenes_used == report.scenes_found == len(served.item_ids)
    intact_requests = fault_proxy.requests(asset_path(served, served.item_ids[0], "nir"))
    assert all(fault_proxy.requests(path) > intact_requests for path in (cut, reset, busy)), "each fault was met and retried"
    assert_every_scene_accounted(metadata_of(report), served)


@pytest.fixture
def slack_block(prefect_harness: None, slack_receiver: SlackReceiver) -> str:
    name = f"faults-slack-{uuid.uuid4().hex[:8]}"
    SlackNotifier(webhook_url=slack_receiver.url).save(name)
    return name


@pytest.mark.slow
@pytest.mark.parametrize("runner", list(RUNNERS))
def test_permanent_faults_cost_one_attempt_and_name_themselves(
    runner: str, fault_proxy: FaultProxy, s3_server: S3Server, stac_api_factory, slack_block: str,
    slack_receiver: SlackReceiver, tmp_path: Path,
) -> None:  # fmt: skip
    served = serve_synthetic_month(
        s3_server, stac_api_factory, tmp_path, dates=PERMANENT_FAULT_DATES, duplicated_dates=()
    )
    broken = break_assets(fault_proxy, served, tmp_path)
    assert list(broken.values()) == list(PERMANENT_FAULTS)
    settings = flow_settings(
        served, tmp_path / "ws", max_failed_fraction=1.0, min_valid_share=0.0, slack_block=slack_block, runner=RUNNERS[runner]
    )

    with reads_through(fault_proxy):
        report = monthly_mosaic(settings)

    reasons = dict(report.failed_scenes)
    assert set(reasons) == set(broken)
    intact_item = served.item_ids[0]
    for item_id, fault in broken.items():
        assert reasons[item_id].startswith(fault.expected_reason), (fault.name, reasons[item_id])
        broken_requests = fault_proxy.requests(asset_path(served, item_id, fault.band))
        intact_requests = fault_proxy.requests(asset_path(served, intact_item, fault.band))
        assert failure_requests(fault, broken_requests, intact_requests) <= 2, (fault.name, broken_requests, intact_requests)
    metadata = metadata_of(report)
    assert {scene["id"]: scene["reason"] for scene in metadata["scenes_failed"]} == reasons
    assert_every_scene_accounted(metadata, served)
    notice = json.dumps(slack_receiver.bodies[-1])
    # Slack mrkdwn escapes &, < and >; garbage bytes in a reason may hold any of them.
    assert all(json.dumps(html.escape(reason, quote=False))[1:-1] in notice for reason in reasons.values()), notice


@pytest.mark.slow
@pytest.mark.parametrize("runner", list(RUNNERS))
def test_assets_whose_georeferencing_disagrees_are_read_as_they_are_or_failed_with_the_reason(
    runner: str, prefect_harness: None, s3_server: S3Server, stac_api_factory, tmp_path: Path
) -> None:
    served = serve_synthetic_month(s3_server, stac_api_factory, tmp_path, duplicated_dates=())
    wrong_label, no_georeferencing, other_crs = served.item_ids[1:4]
    rasters = tmp_path / "replaced"
    rasters.mkdir()
    nir = asset_file(served, tmp_path, wrong_label, "nir")
    upload_over(s3_server, served, wrong_label, "nir", with_wrong_crs_label(nir, rasters / "wrong_label.tif"))
    nir = asset_file(served, tmp_path, no_georeferencing, "nir")
    upload_over(s3_server, served, no_georeferencing, "nir", without_georeferencing(nir, rasters / "bare.tif"))
    for band in SCENE_BANDS:  # every band of one scene in Web Mercator, correctly georeferenced
        resampling = Resampling.nearest if band == SCL_BAND else Resampling.bilinear
        source = asset_file(served, tmp_path, other_crs, band)
        upload_over(s3_server, served, other_crs, band, reprojected(source, rasters / f"{band}_3857.tif", "EPSG:3857", resampling))
    settings: MosaicSettings = flow_settings(served, tmp_path / "ws", max_failed_fraction=0.5, runner=RUNNERS[runner])

    report = monthly_mosaic(settings)

    reasons = dict(report.failed_scenes)
    assert set(reasons) == {wrong_label, no_georeferencing}
    assert reasons[wrong_label].startswith("nir: its georeferencing (EPSG:32634") and "disagree" in reasons[wrong_label]
    assert reasons[no_georeferencing] == "nir: not georeferenced (no CRS or no geotransform)"
    metadata = metadata_of(report)
    used = {scene["id"]: scene for scene in metadata["scenes_used"]}
    assert other_crs in used and used[other_crs]["valid_fraction"] > 0.9
    assert_every_scene_accounted(metadata, served)

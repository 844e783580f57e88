"""The monthly flow in-process against real servers on 127.0.0.1: S3 (moto), STAC (rustac), Slack stand-in."""

import contextvars
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import rasterio
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime, LogFilter, LogFilterTimestamp
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL

from bench.mask import write_random_weights
from blocks.slack import SlackNotifier
from flows.lock_holders import LockHolder, holder_record_name
from flows.locking import month_lock, month_lock_name
from flows.monthly_mosaic import monthly_mosaic, run_inputs, staging_root
from flows.parameters import MosaicSettings
from flows.server_lock import WAIT_REPORT_VARIABLE
from tasks.core.errors import MissingModelWeights, TooManyFailedScenes
from tasks.core.month import Month
from tasks.geometry.tiles import tiles_over_aoi
from tasks.masking.ocm_inference import Patch, PatchBatcher
from tasks.products.metadata import TILES_FOLDER
from tasks.stac.item import COLLECTION_FILE
from tasks.storage.gdal_env import REMOTE_COG_OPTIONS, gdal_env
from tasks.testing.lock_faults import mark_crashed
from tasks.testing.served_month import (
    ServedMonth,
    assert_every_scene_accounted,
    flow_settings,
    save_products_block,
    serve_synthetic_month,
)
from tasks.testing.servers import S3Server
from tasks.testing.synthetic import stac_collection
from tasks.tiling.tile import RECORD_SUFFIX
from tests import REPO_ROOT
from tests.slack_receiver import SlackReceiver

PRODUCT_SUFFIXES = ("mosaic.tif", "count.tif", "fill.tif", "quicklook.png", "metadata.json", "item.json")
KILL_TEST_DATES = tuple(date(2020, 3, day) for day in range(2, 30, 2))
KILL_TEST_REPORT_S = 2.0
"""A waiting run's check on the lock's holder in the kill test (`BASEMAP_LOCK_REPORT_S`; production: 60 s)."""
KILLED_LOCK_FREED_WITHIN_S = 30.0
"""Bound on the killed run's lock freeing once its run is marked CRASHED: a few checks on 2 loaded cores."""
"""Fourteen dates: enough for a kill to land while scenes are still being read."""


@pytest.fixture
def served(s3_server: S3Server, stac_api_factory, tmp_path: Path) -> ServedMonth:
    return serve_synthetic_month(s3_server, stac_api_factory, tmp_path)


@pytest.fixture
def blocks(prefect_harness: None, s3_server: S3Server, slack_receiver: SlackReceiver) -> dict[str, str]:
    """An S3Bucket block on a fresh moto bucket and a Slack block on the receiver; their names and bucket."""
    bucket = s3_server.make_bucket(f"products-{uuid.uuid4().hex[:12]}")
    save_products_block("test-products", bucket, "basemaps", s3_server.endpoint_url)
    SlackNotifier(webhook_url=slack_receiver.url).save("test-slack", overwrite=True)
    return {"s3_block": "test-products", "slack_block": "test-slack", "bucket": bucket}


def asset_key_of(served: ServedMonth, item_index: int, band: str = "red") -> str:
    """The `/bucket/key` path part of one asset of one served item."""
    return served.month.items[item_index]["assets"][band]["href"].removeprefix("s3://")


def log_messages_since(start: datetime) -> list[str]:
    """Messages of every run log written since `start` (the harness is shared by the whole session)."""
    APILogWorker.drain_all(timeout=5)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(timestamp=LogFilterTimestamp(after_=start)), limit=200)
    return [log.message for log in logs]


def test_month_completes_with_products_in_s3_and_a_slack_success(
    served: ServedMonth, blocks: dict[str, str], s3_server: S3Server, slack_receiver: SlackReceiver, tmp_path: Path
) -> None:
    settings = flow_settings(served, tmp_path / "ws", s3_block=blocks["s3_block"], slack_block=blocks["slack_block"])
    report = monthly_mosaic(settings)

    name = run_inputs(settings).name
    assert name.startswith("served_aoi-")
    folder = f"basemaps/{name}/{served.label[:4]}/{served.label[5:]}"
    month_keys = {key for key in s3_server.keys(blocks["bucket"]) if f"/{TILES_FOLDER}/" not in key}
    assert month_keys == {f"{folder}/{name}_{served.label}_{suffix}" for suffix in PRODUCT_SUFFIXES} | {
        f"basemaps/{name}/{COLLECTION_FILE}"
    }
    assert report.scenes_found == len(served.item_ids)
    assert report.scenes_used == served.acquisitions == len(served.item_ids) - 1  # a date served twice is one scene
    assert not report.failed_scenes
    assert report.valid_share > 0.99
    assert report.product_urls["item"] == f"s3://{blocks['bucket']}/{folder}/{name}_{served.label}_item.json"
    metadata_key = f"{folder}/{name}_{served.label}_metadata.json"
    assert_every_scene_accounted(json.loads(s3_server.read(blocks["bucket"], metadata_key)), served)
    started, succeeded = slack_receiver.texts()
    assert "started" in started and "done" in succeeded


def test_transient_asset_failures_are_retried_and_logged(
    served: ServedMonth, blocks: dict[str, str], s3_server: S3Server, tmp_path: Path
) -> None:
    # GDAL does not retry a request itself (GDAL_HTTP_MAX_RETRY is 0 in REMOTE_COG_OPTIONS: the pipeline's
    # retries are the only ones), so failing the asset's next two requests fails the read's first two
    # attempts, and the third succeeds. The count still follows the option should it ever retry.
    gdal_requests_per_attempt = 1 + int(REMOTE_COG_OPTIONS["GDAL_HTTP_MAX_RETRY"])
    s3_server.fail_next(asset_key_of(served, 0), 2 * gdal_requests_per_attempt)
    started = datetime.now(UTC)

    report = monthly_mosaic(flow_settings(served, tmp_path / "ws"))

    assert not report.failed_scenes and report.scenes_used == served.acquisitions
    retries = [message for message in log_messages_since(started) if served.item_ids[0] in message and "retrying" in message]
    assert len(retries) == 2, "both failed attempts should show in the run's logs"


def test_a_permanently_broken_asset_is_recorded_and_reported(
    served: ServedMonth, blocks: dict[str, str], s3_server: S3Server, slack_receiver: SlackReceiver, tmp_path: Path
) -> None:
    broken_item = served.item_ids[2]
    s3_server.fail_always(asset_key_of(served, 2), status=404)
    settings = flow_settings(served, tmp_path / "ws", max_failed_fraction=0.5, slack_block=blocks["slack_block"])

    report = monthly_mosaic(settings)

    assert report.failed_scenes == [(broken_item, "red: not found (HTTP 404)")]
    metadata = json.loads(Path(report.product_urls["metadata"]).read_text())
    assert metadata["scenes_failed"] == [{"id": broken_item, "reason": "red: not found (HTTP 404)"}]
    assert_every_scene_accounted(metadata, served)
    assert broken_item not in [scene["id"] for scene in metadata["scenes_used"]]
    assert broken_item in slack_receiver.texts()[-1] or broken_item in json.dumps(slack_receiver.bodies[-1])


def test_every_item_the_api_returns_is_listed_once_those_the_search_leaves_out_as_skipped(
    served: ServedMonth, prefect_harness: None, stac_api_factory, tmp_path: Path
) -> None:
    items = copy.deepcopy(list(served.month.items))
    without_red, too_cloudy, older_twin = items[0], items[-1], items[1]
    del without_red["assets"]["red"]
    too_cloudy["properties"]["eo:cloud_cover"] = 99.5  # the served month's limit is 95 %
    served_so = replace(served, api_url=stac_api_factory(stac_collection(items), items))

    report = monthly_mosaic(flow_settings(served_so, tmp_path / "ws"))

    metadata = json.loads(Path(report.product_urls["metadata"]).read_text())
    skipped = {scene["id"]: scene["reason"] for scene in metadata["scenes_skipped"]}
    assert skipped[without_red["id"]] == "assets red missing (asset names of Earth Search v1 (sentinel-2-l2a, sentinel-2-c1-l2a))"
    assert skipped[too_cloudy["id"]] == "eo:cloud_cover 99.5% above search.max_cloud_cover 95%"
    assert skipped[older_twin["id"]] == f"an older processing of the same acquisition as {items[2]['id']}"
    assert_every_scene_accounted(metadata, served_so)
    assert report.scenes_found == metadata["scenes_found"] == len(items)
    assert report.scenes_used == len(metadata["scenes_used"]) <= len(items) - 3


def test_a_failure_of_the_project_is_logged_in_one_line_without_the_engine_traceback(
    served: ServedMonth, prefect_harness: None, tmp_path: Path
) -> None:
    started = datetime.now(UTC)
    empty_month = Month.parse(served.label).following_start.strftime("%Y-%m")

    state = monthly_mosaic(flow_settings(served, tmp_path / "ws", month=empty_month), return_state=True)

    messages = log_messages_since(started)
    assert state.is_failed() and "no scenes over AOI" in state.message
    assert any(message.startswith("Encountered exception during execution: NoScenesFound: no scenes") for message in messages)
    assert not [message for message in messages if "Traceback" in message or "\n" in message.strip()], messages


def test_too_many_failed_scenes_fail_the_run_and_slack_hears_why(
    served: ServedMonth, blocks: dict[str, str], s3_server: S3Server, slack_receiver: SlackReceiver, tmp_path: Path
) -> None:
    broken = (3, 4)  # item 1 is the older processing of a duplicated date, dropped by the search
    for index in broken:
        s3_server.fail_always(asset_key_of(served, index), status=404)
    settings = flow_settings(served, tmp_path / "ws", max_failed_fraction=0.1, slack_block=blocks["slack_block"])

    with pytest.raises(TooManyFailedScenes, match="2 of 6 scenes failed"):
        monthly_mosaic(settings)

    failure = json.dumps(slack_receiver.bodies[-1])
    assert "failed" in slack_receiver.texts()[-1]
    assert all(served.item_ids[index] in failure for index in broken)


def test_rerunning_the_same_parameters_reads_no_scene(
    served: ServedMonth, blocks: dict[str, str], s3_server: S3Server, tmp_path: Path
) -> None:
    settings = flow_settings(served, tmp_path / "ws")
    monthly_mosaic(settings)
    s3_server.reset_counters()

    report = monthly_mosaic(settings)

    assert report.scenes_used == served.acquisitions
    assert s3_server.requests_for(f"/{served.bucket}/") == 0


def committed_tiles(settings: MosaicSettings) -> dict[str, int]:
    """{tile record path: its modification time in ns} of every tile committed in the run's workspace."""
    records = Path(run_inputs(settings).workspace.uri(TILES_FOLDER))
    return {str(path): path.stat().st_mtime_ns for path in records.glob(f"**/*{RECORD_SUFFIX}")}


def test_a_killed_run_resumes_with_only_the_uncommitted_tiles(
    s3_server: S3Server, stac_api_factory, prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = serve_synthetic_month(s3_server, stac_api_factory, tmp_path, dates=KILL_TEST_DATES, duplicated_dates=())
    settings = flow_settings(
        served, tmp_path / "ws", tiles={"tile_size_px": 128}, runner={"max_concurrent_tiles": 1, "max_concurrent_scenes": 1}
    )
    tile_count = len(tiles_over_aoi(run_inputs(settings).grid, run_inputs(settings).aoi, 128))
    assert tile_count > 2
    script = (
        "import sys; from flows.parameters import MosaicSettings; from flows.monthly_mosaic import monthly_mosaic; "
        "monthly_mosaic(MosaicSettings.model_validate_json(sys.argv[1]))"
    )
    environment = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    process = subprocess.Popen(
        [sys.executable, "-c", script, settings.model_dump_json()],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    try:
        while not committed_tiles(settings) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, f"the run ended by itself (status {process.returncode}) before the kill"
    committed_before_kill = committed_tiles(settings)
    assert 0 < len(committed_before_kill) < tile_count, "the kill should land mid-month"
    name, month = run_inputs(settings).name, Month.parse(served.label)
    with get_client(sync_client=True) as client:  # the test started the killed run: it does what the run's worker would
        record = client.read_variable_by_name(holder_record_name(month_lock_name(name, month)))
        assert record is not None, "the killed run recorded itself as its lock's holder"
        killed_run_id = LockHolder.model_validate(record.value).flow_run_id
        assert killed_run_id is not None
        mark_crashed(client, killed_run_id)
    monkeypatch.setenv(WAIT_REPORT_VARIABLE, f"{KILL_TEST_REPORT_S:g}")
    assert_lock_freed_within(lambda: month_lock(name, month, staging_root(settings)), KILLED_LOCK_FREED_WITHIN_S)

    report = monthly_mosaic(settings)

    assert report.scenes_used == len(served.item_ids)
    committed_after = committed_tiles(settings)
    assert len(committed_after) == tile_count
    assert all(committed_after[path] == mtime for path, mtime in committed_before_kill.items()), "committed tiles are not rebuilt"
    staging = staging_root(settings)
    assert not list(staging.glob("**/.partial-*")), "the scratch the killed run left is removed"
    assert not list(Path(run_inputs(settings).workspace.root).glob("**/.partial-*"))


def assert_lock_freed_within(lock: Callable[[], AbstractContextManager[None]], seconds: float) -> None:
    """This process takes and gives back `lock()` within `seconds` (in a thread that sees the test's settings)."""
    taken = threading.Event()

    def take() -> None:
        with lock():
            taken.set()

    thread = threading.Thread(target=contextvars.copy_context().run, args=(take,), daemon=True)
    thread.start()
    assert taken.wait(seconds), f"the lock of the killed run, marked CRASHED, was not freed within {seconds:g} s"
    thread.join(seconds)
    assert not thread.is_alive(), "the lock was not given back"


def test_signed_asset_urls_stay_out_of_recorded_parameters(
    prefect_harness: None, s3_server: S3Server, stac_api_factory, tmp_path: Path
) -> None:
    served = serve_synthetic_month(s3_server, stac_api_factory, tmp_path)
    signed_items = copy.deepcopy(list(served.month.items))
    for item in signed_items:
        for asset in item["assets"].values():
            asset["href"] = s3_server.presigned_url(*asset["href"].removeprefix("s3://").split("/", 1))
    settings = flow_settings(served, tmp_path / "ws")
    search = settings.search.model_copy(update={"stac_api_url": stac_api_factory(served.month.collection, signed_items)})
    started = datetime.now(UTC)

    report = monthly_mosaic(settings.model_copy(update={"search": search}))

    assert report.scenes_used == served.acquisitions and not report.failed_scenes
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)))
    parameters = [run.parameters for run in runs]
    assert any("items_name" in recorded for recorded in parameters), "the build-tiles subflow should be among the runs"
    assert "X-Amz-Signature" not in json.dumps(parameters, default=str)


def test_missing_model_weights_stop_the_run_before_any_scene_is_read(
    served: ServedMonth, blocks: dict[str, str], s3_server: S3Server, tmp_path: Path
) -> None:
    settings = flow_settings(served, tmp_path / "ws", mask={"masker": "ocm+scl", "model_dir": str(tmp_path / "no_weights")})
    s3_server.reset_counters()

    with pytest.raises(MissingModelWeights, match="download-models"):
        monthly_mosaic(settings)

    assert s3_server.requests_for(f"/{served.bucket}/") == 0


def test_a_tiled_month_with_the_model_batches_patches_of_different_windows(
    served: ServedMonth, blocks: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`ocm+scl` on random weights (the real loader, offline), tiles two at a time: the process's one
    inference thread fills its batches with patches of different scene windows, whatever their tile."""
    model_dir = tmp_path / "weights"
    model_dir.mkdir()
    write_random_weights(model_dir, model_version=4.0)
    windows_per_batch: list[int] = []
    run_batch = PatchBatcher._run

    def spy(batcher: PatchBatcher, batch: list[Patch]) -> None:
        windows_per_batch.append(len({id(patch.window) for patch in batch}))
        run_batch(batcher, batch)

    monkeypatch.setattr(PatchBatcher, "_run", spy)
    mask = {"masker": "ocm+scl", "model_dir": str(model_dir), "device": "cpu", "patch_size": 64, "patch_overlap": 16, "batch_size": 8}
    settings = flow_settings(
        served, tmp_path / "ws", tiles={"tile_size_px": 128}, runner={"max_concurrent_tiles": 2}, mask=mask, min_valid_share=0.0
    )

    report = monthly_mosaic(settings)

    assert not report.failed_scenes
    assert len(tiles_over_aoi(run_inputs(settings).grid, run_inputs(settings).aoi, 128)) == 4
    assert windows_per_batch and max(windows_per_batch) > 1, windows_per_batch


def test_a_tiled_month_in_s3_opens_as_one_raster_and_its_single_cog_equals_the_index(
    served: ServedMonth, blocks: dict[str, str], s3_server: S3Server, tmp_path: Path
) -> None:
    settings = flow_settings(served, tmp_path / "ws", s3_block=blocks["s3_block"], tiles={"tile_size_px": 128})

    report = monthly_mosaic(settings)

    name = run_inputs(settings).name
    folder = f"basemaps/{name}/{served.label[:4]}/{served.label[5:]}"
    metadata = json.loads(s3_server.read(blocks["bucket"], f"{folder}/{name}_{served.label}_metadata.json"))
    tiles = metadata["files"]["tiles"]
    assert len(tiles) == 4
    keys = s3_server.keys(blocks["bucket"])
    assert {f"{folder}/{tile[kind]}" for tile in tiles for kind in ("mosaic", "count")} <= keys
    item = json.loads(s3_server.read(blocks["bucket"], f"{folder}/{name}_{served.label}_item.json"))
    assert {asset["href"].removeprefix("./") for asset in item["assets"].values()} <= {key.removeprefix(f"{folder}/") for key in keys}
    assert report.product_urls["mosaic"].endswith("_mosaic.tif")  # small enough for a single COG too
    with gdal_env():
        for kind in ("mosaic", "count"):
            with rasterio.open(f"/vsis3/{blocks['bucket']}/{folder}/{name}_{served.label}_{kind}.vrt") as index:
                with rasterio.open(f"/vsis3/{blocks['bucket']}/{folder}/{name}_{served.label}_{kind}.tif") as single:
                    assert index.shape == single.shape and (index.read() == single.read()).all(), kind

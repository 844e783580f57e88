"""Where a month's products go and what a run leaves behind, against real servers on 127.0.0.1 (moto S3,
rustac STAC API, the Prefect test API, the Slack stand-in): AOI files sharing a stem, a shared
aoi_name, two runs of one AOI and month at once, publishing faults, files a killed run left, and a
month too cloudy to publish."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import rasterio
from botocore.loaders import create_loader
from botocore.retries.standard import DEFAULT_MAX_ATTEMPTS as STANDARD_MODE_ATTEMPTS
from botocore.translate import build_retry_config
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter, EventResourceFilter
from prefect.events.schemas.events import ResourceSpecification
from prefect.settings import PREFECT_API_URL
from prefect_aws import S3Bucket

from blocks.publish import month_folder
from blocks.slack import SlackNotifier
from flows.locking import month_lock, month_lock_name
from flows.monthly_mosaic import monthly_mosaic, run_inputs, staging_root
from tasks.core.errors import OutputCollision, PublishError, TilesFailed, TooFewClearPixels
from tasks.core.month import Month
from tasks.geometry.aoi import aoi_digest, load_aoi
from tasks.products.metadata import FILL_LAYER, TILES_FOLDER, ProductNames
from tasks.stac.item import COLLECTION_FILE
from tasks.storage.workspace import partial_prefix, remove_abandoned_partials
from tasks.testing.fault_proxy import FaultProxy
from tasks.testing.served_month import (
    SERVED_GRID,
    ServedMonth,
    flow_settings,
    save_products_block,
    serve_synthetic_month,
)
from tasks.testing.servers import S3Server
from tasks.testing.synthetic import write_aoi
from tests import REPO_ROOT
from tests.prefect_runs import (
    MONTH_PRODUCTS_TASK,
    SETTLE_POLL_S,
    SETTLE_TIMEOUT_S,
    TILE_TASK,
    failed_run_error,
    flow_run_id,
    named,
    one_line,
    settled_task_runs,
    subflow_runs,
)
from tests.slack_receiver import SlackReceiver

BUCKET_FOLDER = "basemaps"
FARM_INSETS_PX = {"farmA": 20, "farmB": 60}
"""Two AOI files `<farm>/aoi.geojson`: quadrilaterals this many pixels inside the served grid."""
RUN_TIMEOUT_S = 900.0
"""How long a `python -m flows.run` subprocess may take on a loaded machine."""
LOCK_RELEASED_EVENT = "prefect.concurrency-limit.released"
EVENTS_PAGE_SIZE = 50
"""The most events the API answers at once (the client's default of 100 is refused)."""
OTHER_INPUTS_DIGEST = "0123456789ab"
"""The staging digest of an earlier run with other inputs (12 hex characters, as `products_digest` gives)."""


# --- Fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def served(s3_server: S3Server, stac_api_factory, tmp_path: Path) -> ServedMonth:
    return serve_synthetic_month(s3_server, stac_api_factory, tmp_path)


@pytest.fixture
def farms(tmp_path: Path) -> list[Path]:
    """`farmA/aoi.geojson` and `farmB/aoi.geojson`: the same stem, different polygons, in the grid's CRS."""
    paths = []
    for farm, inset_px in FARM_INSETS_PX.items():
        (tmp_path / farm).mkdir()
        paths.append(write_aoi(SERVED_GRID, tmp_path / farm / "aoi.geojson", inset_px=inset_px))
    return paths


@pytest.fixture
def products_bucket(prefect_harness: None, s3_server: S3Server) -> str:
    """A fresh moto bucket with an S3Bucket block `outputs-products` on it; returns the bucket name."""
    bucket = s3_server.make_bucket(f"products-{uuid.uuid4().hex[:12]}")
    save_products_block("outputs-products", bucket, BUCKET_FOLDER, s3_server.endpoint_url)
    return bucket


@pytest.fixture
def proxied_products_bucket(prefect_harness: None, s3_server: S3Server, fault_proxy: FaultProxy) -> str:
    """A fresh moto bucket with an S3Bucket block `proxied-products` reaching it through the fault proxy."""
    bucket = s3_server.make_bucket(f"products-{uuid.uuid4().hex[:12]}")
    save_products_block("proxied-products", bucket, BUCKET_FOLDER, fault_proxy.endpoint_url)
    return bucket


def product_keys(aoi_name: str, month_label: str) -> dict[str, str]:
    """{product: object key} of one AOI and month in the products bucket."""
    folder = f"{BUCKET_FOLDER}/{month_folder(aoi_name, month_label)}"
    names = ProductNames.for_run(aoi_name, Month.parse(month_label))
    return {product: f"{folder}/{name}" for product, name in {**asdict(names), FILL_LAYER: names.single_cog(FILL_LAYER)}.items()}


def collection_key(aoi_name: str) -> str:
    """The object key of the AOI's STAC Collection in the products bucket."""
    return f"{BUCKET_FOLDER}/{aoi_name}/{COLLECTION_FILE}"


def bucket_products(s3_server: S3Server, bucket: str, aoi_name: str, month_label: str) -> dict[str, bytes]:
    """{key: content} of every object in the AOI's month folder of the bucket (tiles included)."""
    prefix = f"{BUCKET_FOLDER}/{month_folder(aoi_name, month_label)}/"
    return {key: s3_server.read(bucket, key) for key in s3_server.keys(bucket, prefix)}


def month_level(keys: set[str]) -> set[str]:
    """The keys of `keys` that are not in a month's tiles folder."""
    return {key for key in keys if f"/{TILES_FOLDER}/" not in key}


def local_products(output_dir: Path, aoi_name: str, month_label: str) -> dict[str, bytes]:
    """{path in the month folder: content} of every file in the AOI's month folder under `output_dir` (tiles included)."""
    folder = output_dir / month_folder(aoi_name, month_label)
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def botocore_attempts_per_call(client: Any) -> int:
    """How many requests botocore makes for one call of `client` before it raises (its retry configuration)."""
    retries = dict(client.meta.config.retries or {})
    if "total_max_attempts" in retries:
        return retries["total_max_attempts"]
    if "max_attempts" in retries:
        return retries["max_attempts"] + 1  # botocore's client setting counts retries, not attempts
    if retries.get("mode") in ("standard", "adaptive"):
        return STANDARD_MODE_ATTEMPTS
    retry_model = create_loader().load_data("_retry")
    config = build_retry_config(
        client.meta.service_model.endpoint_prefix, retry_model["retry"], retry_model.get("definitions", {})
    )
    return config["__default__"]["max_attempts"]


# --- 1. AOI identity decides the product folder -----------------------------------------------


def test_aoi_files_sharing_a_stem_publish_into_their_own_folders(
    served: ServedMonth, farms: list[Path], products_bucket: str, s3_server: S3Server, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    local = [flow_settings(served, workspace, aoi=str(path)) for path in farms]
    to_bucket = [flow_settings(served, workspace, aoi=str(path), s3_block="outputs-products") for path in farms]
    names = [run_inputs(settings).name for settings in local]
    output_dir = Path(local[0].output_dir)
    assert names[0] != names[1] and all(name.startswith("aoi-") for name in names), names

    monthly_mosaic(local[0])
    monthly_mosaic(to_bucket[0])
    first_local = local_products(output_dir, names[0], served.label)
    first_bucket = bucket_products(s3_server, products_bucket, names[0], served.label)
    monthly_mosaic(local[1])
    monthly_mosaic(to_bucket[1])

    assert local_products(output_dir, names[0], served.label) == first_local, "farmA's local products changed"
    assert bucket_products(s3_server, products_bucket, names[0], served.label) == first_bucket, (
        "farmA's objects changed"
    )
    for path, name in zip(farms, names, strict=True):
        keys = product_keys(name, served.label)
        in_bucket = bucket_products(s3_server, products_bucket, name, served.label)
        in_output_dir = local_products(output_dir, name, served.label)
        assert month_level(set(in_bucket)) == set(keys.values())
        assert month_level({f"/{path}" for path in in_output_dir}) == {f"/{Path(key).name}" for key in keys.values()}
        digest = aoi_digest(load_aoi(str(path)))
        for metadata in (in_bucket[keys["metadata"]], in_output_dir[Path(keys["metadata"]).name]):
            assert json.loads(metadata)["aoi"]["digest"] == digest, f"{name} holds another AOI's products"
        with rasterio.open(output_dir / month_folder(name, served.label) / Path(keys["mosaic"]).name) as mosaic:
            assert mosaic.read().any()


@pytest.mark.parametrize("destination", ["output_dir", "s3_block"])
def test_a_shared_aoi_name_refuses_the_second_aoi_before_reading_a_scene(
    destination: str, served: ServedMonth, farms: list[Path], products_bucket: str, s3_server: S3Server, tmp_path: Path
) -> None:
    to_bucket = {"s3_block": "outputs-products"} if destination == "s3_block" else {}
    first, second = (
        flow_settings(served, tmp_path / "ws", aoi=str(path), aoi_name="farm", **to_bucket) for path in farms
    )
    keys = product_keys("farm", served.label)
    if to_bucket:
        location = f"s3://{products_bucket}/{keys['metadata'].rsplit('/', 1)[0]}"

        def published_metadata() -> bytes:
            return s3_server.read(products_bucket, keys["metadata"])
    else:
        folder = Path(first.output_dir).resolve() / month_folder("farm", served.label)
        location = str(folder)

        def published_metadata() -> bytes:
            return (folder / Path(keys["metadata"]).name).read_bytes()

    monthly_mosaic(first)
    metadata_before = published_metadata()
    s3_server.reset_counters()

    with pytest.raises(OutputCollision) as refused:
        monthly_mosaic(second)

    message = one_line(refused.value)
    assert location in message and "aoi_name" in message, message
    assert published_metadata() == metadata_before
    assert s3_server.requests_for(f"/{served.bucket}/") == 0, "the refused run read scenes"


# --- 2. One run at a time per AOI and month -----------------------------------------------------


def monthly_runs_of(workspace: Path) -> list[FlowRun]:
    """The monthly-mosaic flow runs whose settings name `workspace` (the harness serves the whole session)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["monthly-mosaic"])))
    return [run for run in runs if run.parameters["settings"]["workspace"] == str(workspace)]


def start_monthly_runs(settings_file: Path, count: int) -> list[subprocess.Popen]:
    """`count` `python -m flows.run --settings <file>` processes on the harness API, started together."""
    environment = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "flows.run", "--settings", str(settings_file)],
            cwd=REPO_ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for _ in range(count)
    ]


def wait_until_runs_take_lock(workspace: Path, lock_name: str, processes: list[subprocess.Popen]) -> None:
    """Return once each of `processes` has a run of `workspace` that logged it is taking `lock_name`."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        runs = monthly_runs_of(workspace)
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id for run in runs])))
        taking = {log.flow_run_id for log in logs if log.message.startswith(f"taking lock {lock_name}")}
        if len(runs) == len(processes) and taking == {run.id for run in runs}:
            return
        ended = [process.returncode for process in processes if process.poll() is not None]
        assert not ended and time.monotonic() < deadline, (
            f"runs ended (status {ended}) or never reached the lock: {[(run.name, run.state_name) for run in runs]}"
        )
        time.sleep(SETTLE_POLL_S)


def tile_task_runs_of(flow_run: FlowRun) -> list[TaskRun]:
    """The build-tile task runs of a monthly run (they run in its build-tiles subflow)."""
    return named(settled_task_runs([run.id for run in subflow_runs(flow_run.id)]), TILE_TASK)


def lock_released_by(flow_run_id: UUID, lock_name: str) -> datetime:
    """When the run `flow_run_id` released the lock `lock_name`, from the event it sent the API."""
    events_filter = EventFilter(
        event=EventNameFilter(name=[LOCK_RELEASED_EVENT]),
        resource=EventResourceFilter(labels=ResourceSpecification({"prefect.resource.name": lock_name})),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        with get_client(sync_client=True) as client:
            released = [event.occurred for event in client.read_events(events_filter, limit=EVENTS_PAGE_SIZE).events]
        if released:
            assert len(released) == 1, released
            return released[0]
        assert time.monotonic() < deadline, f"no {LOCK_RELEASED_EVENT} event of run {flow_run_id}"
        time.sleep(SETTLE_POLL_S)


@pytest.mark.slow
def test_two_runs_of_one_aoi_and_month_take_turns_and_the_second_finds_the_cache(
    served: ServedMonth, prefect_harness: None, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    settings = flow_settings(served, workspace)
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(settings.model_dump_json())
    inputs = run_inputs(settings)
    lock_name = month_lock_name(inputs.name, Month.parse(served.label))
    processes: list[subprocess.Popen] = []
    try:
        with month_lock(inputs.name, Month.parse(served.label), staging_root(settings)):  # both runs start while the month is taken
            processes = start_monthly_runs(settings_file, 2)
            wait_until_runs_take_lock(workspace, lock_name, processes)
            held_until = datetime.now(UTC)
        outputs = [process.communicate(timeout=RUN_TIMEOUT_S)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert [process.returncode for process in processes] == [0, 0], outputs

    runs = monthly_runs_of(workspace)
    assert [run.state_name for run in runs] == ["Completed", "Completed"], [(run.name, run.state_name) for run in runs]
    tiles = {run.id: tile_task_runs_of(run) for run in runs}
    computed = [run for run in runs if tiles[run.id]]
    reused = [run for run in runs if not tiles[run.id]]
    assert len(computed) == 1 and len(reused) == 1, {run.name: len(tiles[run.id]) for run in runs}
    first, second = computed[0], reused[0]
    tiles_began = min(task.expected_start_time for task in tiles[first.id])  # submitted
    assert tiles_began > held_until, "a run built tiles while the month was locked"
    first_released = lock_released_by(first.id, lock_name)
    (second_build,) = subflow_runs(second.id)
    assert second_build.start_time > first_released, (
        f"the waiting run looked for committed tiles from {second_build.start_time}, before the first released "
        f"the lock at {first_released}"
    )


# --- 3. Publishing keeps what was computed ------------------------------------------------------


def test_a_refused_upload_fails_at_once_and_a_rerun_publishes_what_was_committed(
    served: ServedMonth, proxied_products_bucket: str, fault_proxy: FaultProxy, s3_server: S3Server, tmp_path: Path
) -> None:
    settings = flow_settings(served, tmp_path / "ws", s3_block="proxied-products", aoi_name="refused")
    fault_proxy.status("_quicklook.png", 403)  # published by the month's products stage only

    failed = monthly_mosaic(settings, return_state=True)

    error = failed_run_error(failed)
    assert isinstance(error, PublishError), f"{type(error).__name__}: {error}"
    message = one_line(error)
    assert proxied_products_bucket in message and "AccessDenied" in message, message
    assert [run.run_count for run in named(settled_task_runs([flow_run_id(failed)]), MONTH_PRODUCTS_TASK)] == [1]
    assert not any(key.endswith("_item.json") for key in s3_server.keys(proxied_products_bucket)), (
        "an Item was published"
    )

    fault_proxy.clear()
    rerun = monthly_mosaic(settings, return_state=True)

    assert rerun.is_completed(), rerun.message
    rerun_tiles = named(settled_task_runs([run.id for run in subflow_runs(flow_run_id(rerun))]), TILE_TASK)
    assert not rerun_tiles, "the committed tile was built again"
    assert month_level(s3_server.keys(proxied_products_bucket)) == set(product_keys("refused", served.label).values()) | {
        collection_key("refused")
    }


def test_a_refused_tile_upload_fails_the_tile_at_once(
    served: ServedMonth, proxied_products_bucket: str, fault_proxy: FaultProxy, s3_server: S3Server, tmp_path: Path
) -> None:
    settings = flow_settings(served, tmp_path / "ws", s3_block="proxied-products", aoi_name="refused-tile")
    fault_proxy.status("_mosaic.tif", 403)

    failed = monthly_mosaic(settings, return_state=True)

    error = failed_run_error(failed)
    assert isinstance(error, TilesFailed), f"{type(error).__name__}: {error}"
    message = one_line(error)
    assert "1 of 1 tiles failed" in message and proxied_products_bucket in message and "AccessDenied" in message, message
    tile_runs = named(settled_task_runs([run.id for run in subflow_runs(flow_run_id(failed))]), TILE_TASK)
    assert [run.run_count for run in tile_runs] == [1]
    assert not any(key.endswith("_item.json") for key in s3_server.keys(proxied_products_bucket))


@pytest.mark.slow
def test_an_upload_failing_past_botocores_retries_is_saved_by_the_task_retry(
    served: ServedMonth, proxied_products_bucket: str, fault_proxy: FaultProxy, s3_server: S3Server, tmp_path: Path
) -> None:
    settings = flow_settings(served, tmp_path / "ws", s3_block="proxied-products", aoi_name="transient")
    attempts = botocore_attempts_per_call(S3Bucket.load("proxied-products").credentials.get_s3_client())
    fault_proxy.status("_count.tif", 503, times=attempts)  # one task attempt's upload exhausts botocore's retries

    state = monthly_mosaic(settings, return_state=True)

    assert state.is_completed(), state.message
    assert fault_proxy.requests("_count.tif") > attempts, "the fault was not used up"
    tile_runs = named(settled_task_runs([run.id for run in subflow_runs(flow_run_id(state))]), TILE_TASK)
    assert len(tile_runs) == 1 and tile_runs[0].run_count > 1, [run.run_count for run in tile_runs]
    assert month_level(s3_server.keys(proxied_products_bucket)) == set(product_keys("transient", served.label).values()) | {
        collection_key("transient")
    }


def test_a_missing_products_bucket_fails_before_any_scene_is_read(
    served: ServedMonth, prefect_harness: None, s3_server: S3Server, tmp_path: Path
) -> None:
    missing_bucket = f"missing-{uuid.uuid4().hex[:12]}"
    save_products_block("missing-products", missing_bucket, BUCKET_FOLDER, s3_server.endpoint_url)
    settings = flow_settings(served, tmp_path / "ws", s3_block="missing-products")
    s3_server.reset_counters()

    with pytest.raises(PublishError) as refused:
        monthly_mosaic(settings)

    message = one_line(refused.value)
    assert missing_bucket in message and "NoSuchBucket" in message, message
    assert s3_server.requests_for(f"/{served.bucket}/") == 0, "scenes were read"


@pytest.fixture(scope="module")
def keyed_products() -> Iterator[tuple[S3Server, str, dict[str, str]]]:
    """A products store of its own that checks credentials as S3 does: (the server, its bucket, the keys
    of the one IAM user it knows)."""
    server = S3Server()
    try:
        bucket = server.make_bucket("keyed-products")
        keys = server.user_credentials("publisher")
        server.require_credentials()
        yield server, bucket, keys
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("wrong", "code"), [("aws_access_key_id", "InvalidAccessKeyId"), ("aws_secret_access_key", "SignatureDoesNotMatch")]
)
def test_bad_products_credentials_end_the_run_at_once_in_one_line_before_any_scene_is_read(
    served: ServedMonth,
    prefect_harness: None,
    s3_server: S3Server,
    keyed_products: tuple[S3Server, str, dict[str, str]],
    wrong: str,
    code: str,
    tmp_path: Path,
) -> None:
    products, bucket, keys = keyed_products
    bad_keys = {**keys, wrong: f"WRONG{uuid.uuid4().hex[:12].upper()}"}
    save_products_block("keyed-products", bucket, BUCKET_FOLDER, products.endpoint_url, bad_keys)
    settings = flow_settings(served, tmp_path / "ws", s3_block="keyed-products")
    s3_server.reset_counters()
    products.reset_counters()

    with pytest.raises(PublishError) as refused:
        monthly_mosaic(settings)

    message = one_line(refused.value)
    assert bucket in message and code in message and "fix the s3_block's credentials" in message, message
    assert bad_keys["aws_secret_access_key"] not in message
    assert products.requests_for(f"/{bucket}/") == 1, "the refusal was retried"
    assert s3_server.requests_for(f"/{served.bucket}/") == 0, "scenes were read"
    save_products_block("keyed-products", bucket, BUCKET_FOLDER, products.endpoint_url, keys)
    assert S3Bucket.load("keyed-products").list_objects() == [], "the right keys are refused too"


# --- 4. Files of killed runs ---------------------------------------------------------------------


def ended_process_pid() -> int:
    """The pid of a process that has run and exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def partial_files() -> Iterator[Callable[..., Path]]:
    """Make `.partial-` files as a writer with a given pid (on this host, or on `host`) would name them;
    every one is deleted afterwards."""
    made: list[Path] = []
    token = uuid.uuid4().hex

    def make(folder: Path, writer_pid: int, host: str | None = None) -> Path:
        path = folder / f"{partial_prefix(host, writer_pid)}{token}.tif"
        folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a scene")
        made.append(path)
        return path

    yield make
    for path in made:
        path.unlink(missing_ok=True)


def test_only_this_hosts_files_of_ended_writers_are_removed(partial_files: Callable[..., Path], tmp_path: Path) -> None:
    dead_pid = ended_process_pid()
    this_host = socket.gethostname()
    scratch = tmp_path / f"{partial_prefix(pid=dead_pid)}tile-0001-0002-abc123"  # a tile's scratch folder
    scratch.mkdir()
    (scratch / "mosaic.tif").write_bytes(b"half a tile")
    abandoned = [partial_files(tmp_path, dead_pid), partial_files(tmp_path / "tiles", dead_pid), scratch]
    kept = [
        partial_files(tmp_path, os.getpid()),  # a running writer's
        partial_files(tmp_path, dead_pid, host="elsewhere"),
        partial_files(tmp_path, dead_pid, host=f"{this_host}-{dead_pid}"),  # a host named like this one, then more
        partial_files(tmp_path, dead_pid, host=f"{this_host}-2"),
    ]

    removed = remove_abandoned_partials(tmp_path)

    assert sorted(removed) == sorted(abandoned) and not any(path.exists() for path in abandoned)
    assert all(path.exists() for path in kept), [path.name for path in kept if not path.exists()]


@pytest.mark.slow
def test_files_of_killed_writers_are_removed_and_those_of_running_ones_kept(
    served: ServedMonth, prefect_harness: None, partial_files: Callable[..., Path], tmp_path: Path
) -> None:
    settings = flow_settings(served, tmp_path / "ws")
    inputs = run_inputs(settings)
    scenes_folder = Path(inputs.workspace.uri(TILES_FOLDER))
    temp_folder = Path(tempfile.gettempdir())
    dead_pid = ended_process_pid()
    abandoned = [partial_files(scenes_folder, dead_pid), partial_files(temp_folder, dead_pid)]
    in_progress = [partial_files(scenes_folder, os.getpid()), partial_files(temp_folder, os.getpid())]
    another_hosts = [
        partial_files(scenes_folder, dead_pid, f"{socket.gethostname()}-{dead_pid}"),  # named like this host, then more
        partial_files(temp_folder, dead_pid, "elsewhere"),
    ]
    month_staging = staging_root(settings) / inputs.name / served.label
    earlier_staging = month_staging / OTHER_INPUTS_DIGEST
    earlier_staging.mkdir(parents=True)
    (earlier_staging / "mosaic.tif").write_bytes(b"an earlier run's composite")

    monthly_mosaic(settings)

    assert [path for path in abandoned if path.exists()] == []
    assert all(path.exists() for path in in_progress), "a running writer's file was removed"
    assert all(path.exists() for path in another_hosts), "another host's file was removed"
    assert not earlier_staging.exists()
    assert not month_staging.exists() or list(month_staging.rglob("*")) == []


# --- 5. A month too cloudy to publish ------------------------------------------------------------


def test_a_month_without_clear_pixels_publishes_nothing_and_slack_hears_why(
    s3_server: S3Server,
    stac_api_factory,
    products_bucket: str,
    slack_receiver: SlackReceiver,
    tmp_path: Path,
) -> None:
    overcast = serve_synthetic_month(s3_server, stac_api_factory, tmp_path, cloud_cover=(1.0,), thin_cover=0.0)
    SlackNotifier(webhook_url=slack_receiver.url).save("outputs-slack", overwrite=True)
    every_scene = {**flow_settings(overcast, tmp_path / "ws").search.model_dump(), "max_cloud_cover": 100.0}
    settings = flow_settings(
        overcast, tmp_path / "ws", search=every_scene, s3_block="outputs-products", slack_block="outputs-slack"
    )

    with pytest.raises(TooFewClearPixels) as refused:
        monthly_mosaic(settings)

    message = one_line(refused.value)
    share = re.match(r"only (\d+(?:\.\d+)?)% of the AOI has a clear observation", message)
    assert share and float(share[1]) < 100 * settings.min_valid_share, message
    assert f"min_valid_share {settings.min_valid_share:.0%}" in message, message
    assert "max_cloud_cover" not in message, "every scene is in already at 100 %: a higher limit adds none"
    assert s3_server.keys(products_bucket) == set(), "something was published"
    assert "failed" in slack_receiver.texts()[-1], slack_receiver.texts()
    assert "min_valid_share" in json.dumps(slack_receiver.bodies[-1]), slack_receiver.bodies[-1]

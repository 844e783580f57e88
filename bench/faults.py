"""Benchmark of the monthly flow under network and asset faults on loopback, on threads and on a local Dask cluster.

Each fault gets one run of the real `monthly_mosaic` flow (in this process, against a throw-away
Prefect API from `prefect_test_harness`) per runner: threads (2 concurrent scenes) and a local Dask
cluster of 2 worker processes. Every run reads a freshly served synthetic month (COGs in moto S3,
items in rustac, `tasks.testing.served_month`) through a `FaultProxy` (`tasks.testing.fault_scenarios.reads_through`),
so neither GDAL's cache nor the flow's result cache carries anything from one run to the next.
Reads use the production `ReadSettings` (8 attempts, 1 s first delay doubling to 16 s).

Transient faults (survived: the run COMPLETED with every found scene used, none failed, and
metadata.json listing each exactly once):
- outage 20 s and 3 s: the proxy refuses every connection once 12 asset requests went through
  (`OutageTrigger`), on the ten-date month of the outage tests;
- 503 x3: the first 3 requests of one asset answer S3's 503 SlowDown;
- body cut once / reset once: the first GET of one asset sends 1000 body bytes, then FIN / RST.
A transient fault that never met a request (the outage landed after acquisition, or the asset took
no more requests than the same band of an intact item) is reported as FAILED: not staged.

Permanent faults (`PERMANENT_FAULTS`: truncated, garbage, HTTP 404, HTTP 403, a short 206 past the
first block, a 40 % object claiming its full size), each on an asset of its own item, all in one run
per runner on an eight-date month as `tests/test_faults.py` stages them (so their rows share the run's
seconds). Survived: the run COMPLETED, exactly those scenes failed, each with a reason starting with
the expected one, and every other scene was used. `requests` is `failure_requests`: the requests the
broken asset cost from its failing one on, against the same band of an intact item. `seconds` is the
wall time `tasks.acquisition.read.read_scene_window` takes to give up on the broken item, timed here after the
run, in this process, under the same GDAL settings and fault: the item's five assets are uploaded
again under a fresh prefix first, so the read starts with a cold GDAL cache as the run's read did. It
includes the item's intact assets read before the broken one (milliseconds on loopback).

Scenarios (`SCENARIOS`), faults beyond one asset's read, each run once and survived as its function
says: an item without a `red` asset (listed skipped with the reason), an asset host DNS does not know
(failed at once, named), the products store refusing connections once the tile is built (one line
naming the store; the re-run builds no tile), a disk too small and a disk filled after the first tile
(one line, once, no month-level file), a corrupt tile record and histograms file (only that tile is
built again, the month equals the clean run's), a Prefect server restarted under a held lock (the
waiting run names the holder and gets the lock within 2 minutes of its end), and a `dask worker` of a
separate cluster killed mid-tiles (the month complete, each tile committed once).

Run: `.venv/bin/python bench/faults.py` (about 20 minutes on 2 cores; `--runners threads` for half the
read faults, `--scenarios none` or a comma-separated list of names for fewer scenarios).
The last line is `faults_survived=<k>/<n> permanent_fault_requests_max=<int> permanent_fault_seconds_max=<float>`.
"""

import argparse
import copy
import json
import os
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/faults.py` (as `make bench` does): make `tasks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Before Prefect and Dask are imported: telemetry would lock the harness's SQLite database, and the INFO logs
# of Prefect and of each Dask cluster (workers inherit the variable) would bury the table.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

from prefect.testing.utilities import prefect_test_harness

from blocks.publish import month_folder
from flows.embedded_api import STARTUP_TIMEOUT_S
from flows.monthly_mosaic import monthly_mosaic, run_inputs
from flows.parameters import MosaicSettings
from tasks.acquisition.read import read_scene_window
from tasks.acquisition.search import scene_from_item
from tasks.core.errors import SceneReadError, first_line
from tasks.core.scene import SCENE_BANDS
from tasks.testing.disk_faults import MountRefused, corrupt_tile_record, fill_disk_when, small_disk
from tasks.testing.fault_proxy import FaultProxy
from tasks.testing.fault_scenarios import (
    OUTAGE_DATES,
    PERMANENT_FAULT_DATES,
    PERMANENT_FAULTS,
    RUNNERS,
    OutageTrigger,
    PermanentFault,
    asset_file,
    asset_path,
    break_assets,
    failure_requests,
    metadata_of,
    reads_through,
    unresolvable_host,
)
from tasks.testing.lock_faults import LockFaultOutcome, lock_after_api_restart, lock_after_holder_kill
from tasks.testing.prefect_server import PrefectServer
from tasks.testing.served_month import (
    ServedMonth,
    assert_every_scene_accounted,
    flow_settings,
    save_products_block,
    serve_synthetic_month,
)
from tasks.testing.servers import TEST_CREDENTIALS, S3Server, StacApi
from tasks.testing.synthetic import DEFAULT_DATES, stac_collection
from tasks.testing.worker_loss import run_month_losing_a_worker
from tasks.tiling.tile import HISTOGRAMS_SUFFIX, RECORD_SUFFIX

CUT_AFTER_BYTES = 1000
"""Body bytes a cut or reset answer sends before the connection ends."""
BURST_STATUS, BURST_REQUESTS = 503, 3
FAULTY_ITEM_INDEX = 1
"""Transient asset faults hit an asset of this item; item 0 stays intact as the reference."""
FAULTY_BAND = "nir"
PRODUCTION_READ: dict[str, Any] = {}
"""`ReadSettings` overrides of every run: none, the production retries and delays."""
PERMANENT_RUN_LIMITS: dict[str, Any] = {"max_failed_fraction": 1.0, "min_valid_share": 0.0}
"""Six of eight scenes fail in the permanent-fault run: let it complete and list them."""
FOUR_TILES_PX, FOUR_TILES = 128, 4
"""Cuts the served month's AOI into 2 x 2 tiles."""
CORRUPTED_TILE = "r000c001"
SMALL_DISK, ROOMY_SMALL_DISK = "160k", "3m"
"""A disk too small for a tile's scratch; one that holds the tiles until it is filled."""
FIRST_TILE_RECORD = "**/r000c000.json"
FILL_TIMEOUT_S = 300.0
REFUSED_FOR_S = 3600.0
"""Refusing "for good": until the scenario stops it."""
WATCHER_JOIN_S = 10.0
HEADER = (
    "fault",
    "runner",
    "kind",
    "outcome",
    "scenes used/found",
    "failed reason",
    "requests",
    "seconds",
    "run seconds",
)
SURVIVED = "survived"


@dataclass(frozen=True)
class TransientFault:
    """A fault another attempt gets past: an outage of the whole store, or one asset answered wrongly for a while."""

    name: str
    dates: tuple[date, ...] = DEFAULT_DATES
    outage_s: float | None = None
    break_asset: Callable[[FaultProxy, str], None] | None = None
    """Stages the fault on the proxy for the asset at the given `/bucket/key` path."""


TRANSIENT_FAULTS = (
    TransientFault("outage 20 s", OUTAGE_DATES, outage_s=20),
    TransientFault("outage 3 s", OUTAGE_DATES, outage_s=3),
    TransientFault(
        f"{BURST_STATUS} x{BURST_REQUESTS}",
        break_asset=lambda proxy, path: proxy.status(path, BURST_STATUS, times=BURST_REQUESTS),
    ),
    TransientFault("body cut once", break_asset=lambda proxy, path: proxy.cut_body(path, CUT_AFTER_BYTES, times=1)),
    TransientFault("reset once", break_asset=lambda proxy, path: proxy.reset_body(path, CUT_AFTER_BYTES, times=1)),
)


@dataclass(frozen=True)
class FaultRow:
    """One fault on one runner, as the table shows it; `requests` and `seconds` only for permanent faults."""

    fault: str
    runner: str
    kind: str
    outcome: str
    scenes: str
    run_seconds: float
    failed_reason: str = ""
    requests: int | None = None
    seconds: float | None = None

    @property
    def survived(self) -> bool:
        return self.outcome == SURVIVED

    def cells(self) -> tuple[str, ...]:
        return (
            self.fault, self.runner, self.kind, self.outcome, self.scenes, self.failed_reason,
            "" if self.requests is None else str(self.requests),
            "" if self.seconds is None else f"{self.seconds:.2f}",
            f"{self.run_seconds:.1f}",
        )  # fmt: skip


@dataclass(frozen=True)
class Bench:
    """The servers every run shares (moto S3 and the fault proxy in front of it) and the scratch folder."""

    s3_server: S3Server
    proxy: FaultProxy
    work_dir: Path

    @contextmanager
    def served_month(self, dates: tuple[date, ...]) -> Iterator[tuple[ServedMonth, Path]]:
        """A fresh month (new bucket, new STAC API, stopped after the block) in a fresh folder, and that folder."""
        run_dir = self.work_dir / uuid.uuid4().hex[:12]
        apis: list[StacApi] = []

        def start_api(collection: dict[str, Any], items: list[dict[str, Any]]) -> str:
            apis.append(StacApi(collection, items, run_dir / "stac_api"))
            return apis[-1].url

        try:
            yield serve_synthetic_month(self.s3_server, start_api, run_dir, dates=dates, duplicated_dates=()), run_dir
        finally:
            for api in apis:
                api.stop()

    @contextmanager
    def served_as(self, served: ServedMonth, items: list[dict[str, Any]], run_dir: Path) -> Iterator[ServedMonth]:
        """`served` with its items replaced by `items` (changed copies), served by a STAC API of their own."""
        api = StacApi(stac_collection(items), items, run_dir / f"stac_api-{uuid.uuid4().hex[:8]}")
        try:
            yield replace(served, api_url=api.url)
        finally:
            api.stop()


def run_settings(
    served: ServedMonth, run_dir: Path, runner_name: str, workspace: Path | None = None, **overrides: Any
) -> MosaicSettings:
    """Settings of one run over `served` on `RUNNERS[runner_name]` (updated by a `runner` override): production reads, a workspace in `run_dir` (or at
    `workspace`), products in `run_dir`, and an AOI name of its own, so each run creates its own month lock
    (`flows.locking`): creating an existing one again is handled, but the harness's Prefect server logs it
    with a traceback that would bury the table."""
    return flow_settings(
        served,
        workspace or run_dir / "ws",
        output_dir=str(run_dir / "ws" / "output"),
        aoi_name=f"faults-{run_dir.name}",
        read=PRODUCTION_READ,
        runner={**RUNNERS[runner_name], **overrides.pop("runner", {})},
        **overrides,
    )


def run_flow(settings: MosaicSettings) -> tuple[Any, float]:
    """The final state of one flow run and its wall time in seconds."""
    started = time.perf_counter()
    state = monthly_mosaic(settings, return_state=True)
    return state, time.perf_counter() - started


@contextmanager
def outage_during(proxy: FaultProxy, seconds: float | None) -> Iterator[OutageTrigger | None]:
    """An outage of `seconds` triggered mid-acquisition for the block, or nothing when `seconds` is None."""
    if seconds is None:
        yield None
        return
    outage = OutageTrigger(proxy, seconds)
    try:
        yield outage
    finally:
        outage.stop()


def run_failure(state: Any) -> str | None:
    """Why a flow run did not complete, in one line; None when it did."""
    if state.is_completed():
        return None
    message = (state.message or "").strip().splitlines()
    return f"FAILED: run {state.type.value}: {message[0] if message else 'no message'}"


def unaccounted(report: Any, served: ServedMonth) -> str | None:
    """Why metadata.json does not list every found scene exactly once; None when it does."""
    try:
        assert_every_scene_accounted(metadata_of(report), served)
    except AssertionError:
        return "FAILED: metadata.json does not list every found scene exactly once"
    return None


def transient_row(bench: Bench, fault: TransientFault, runner: str) -> FaultRow:
    """Run a fresh month once with `fault` staged; survived when every scene is used and none failed."""
    with bench.served_month(fault.dates) as (served, run_dir):
        faulty_path = asset_path(served, served.item_ids[FAULTY_ITEM_INDEX], FAULTY_BAND)
        intact_path = asset_path(served, served.item_ids[0], FAULTY_BAND)
        bench.proxy.reset_counters()
        if fault.break_asset is not None:
            fault.break_asset(bench.proxy, faulty_path)
        with reads_through(bench.proxy), outage_during(bench.proxy, fault.outage_s) as outage:
            state, run_seconds = run_flow(run_settings(served, run_dir, runner))
        staged = bench.proxy.requests(faulty_path) > bench.proxy.requests(intact_path)
        if outage is not None:
            staged = outage.started_at is not None and outage.requests_after > 0
        bench.proxy.clear()
    failure = run_failure(state)
    if failure is not None:
        return FaultRow(fault.name, runner, "transient", failure, "", run_seconds)
    report = state.result()
    scenes = f"{report.scenes_used}/{report.scenes_found}"
    if report.failed_scenes:
        item_id, reason = report.failed_scenes[0]
        outcome = f"FAILED: {len(report.failed_scenes)} scene(s) failed, {item_id}: {reason}"
    elif report.scenes_used != report.scenes_found:
        outcome = "FAILED: not every found scene was used"
    elif not staged:
        outcome = "FAILED: not staged (the fault met no request of the acquisition)"
    else:
        outcome = unaccounted(report, served) or SURVIVED
    return FaultRow(fault.name, runner, "transient", outcome, scenes, run_seconds)


def fresh_copy(bench: Bench, served: ServedMonth, run_dir: Path, item_id: str) -> dict[str, Any]:
    """The STAC item `item_id` with its assets uploaded again under a fresh key prefix (cold for GDAL)."""
    prefix = f"timed-{uuid.uuid4().hex[:12]}"
    item = copy.deepcopy(served.month.item(item_id))
    for band in SCENE_BANDS:
        key = asset_path(served, item_id, band).split("/", 2)[2]
        item["assets"][band]["href"] = bench.s3_server.upload(
            asset_file(served, run_dir, item_id, band), served.bucket, f"{prefix}/{key}"
        )
    return item


def timed_broken_read(
    bench: Bench, served: ServedMonth, run_dir: Path, settings: MosaicSettings, item_id: str, fault: PermanentFault
) -> tuple[float, str]:
    """Seconds `read_scene_window` takes on a fresh copy of `item_id` with `fault` staged, and the reason it gave."""
    item = fresh_copy(bench, served, run_dir, item_id)
    broken_path = "/" + item["assets"][fault.band]["href"].removeprefix("s3://")
    fault.apply(bench.proxy, broken_path, asset_file(served, run_dir, item_id, fault.band).stat().st_size)
    inputs = run_inputs(settings)
    scene = scene_from_item(item)
    with reads_through(bench.proxy):
        started = time.perf_counter()
        try:
            read_scene_window(scene, inputs.grid, inputs.aoi, settings.read)
        except SceneReadError as error:
            return time.perf_counter() - started, error.scene_reason
    return time.perf_counter() - started, "read succeeded"


def permanent_outcome(fault: PermanentFault, reason: str | None, timed_reason: str, others_used: bool) -> str:
    """`survived`, or why not: the run's reason for the broken scene, the timed read's, every other scene used."""
    if reason is None:
        return "FAILED: its scene was not listed failed"
    if not reason.startswith(fault.expected_reason):
        return f"FAILED: reason {reason!r}, expected {fault.expected_reason!r}..."
    if not timed_reason.startswith(fault.expected_reason):
        return f"FAILED: the timed read gave {timed_reason!r}"
    return SURVIVED if others_used else "FAILED: not every other scene was used"


def permanent_rows(bench: Bench, runner: str) -> list[FaultRow]:
    """One run of a fresh month with each permanent fault on an asset of its own item; a row per fault."""
    with bench.served_month(PERMANENT_FAULT_DATES) as (served, run_dir):
        try:
            return permanent_run_rows(bench, served, run_dir, runner)
        finally:
            bench.proxy.clear()


def permanent_run_rows(bench: Bench, served: ServedMonth, run_dir: Path, runner: str) -> list[FaultRow]:
    """Stage `PERMANENT_FAULTS` on items 1.. of `served`, run the flow, count and time each broken read."""
    bench.proxy.reset_counters()
    broken = break_assets(bench.proxy, served, run_dir)
    settings = run_settings(served, run_dir, runner, **PERMANENT_RUN_LIMITS)
    with reads_through(bench.proxy):
        state, run_seconds = run_flow(settings)
    failure = run_failure(state)
    if failure is not None:
        return [FaultRow(fault.name, runner, "permanent", failure, "", run_seconds) for fault in broken.values()]
    report = state.result()
    reasons = dict(report.failed_scenes)
    others_used = set(reasons) == set(broken) and report.scenes_used == report.scenes_found - len(broken)
    accounted = unaccounted(report, served)
    intact_item = served.item_ids[0]
    spent = {
        item_id: failure_requests(
            fault,
            bench.proxy.requests(asset_path(served, item_id, fault.band)),
            bench.proxy.requests(asset_path(served, intact_item, fault.band)),
        )
        for item_id, fault in broken.items()
    }
    rows = []
    for item_id, fault in broken.items():
        seconds, timed_reason = timed_broken_read(bench, served, run_dir, settings, item_id, fault)
        rows.append(
            FaultRow(
                fault.name,
                runner,
                "permanent",
                outcome=accounted or permanent_outcome(fault, reasons.get(item_id), timed_reason, others_used),
                scenes=f"{report.scenes_used}/{report.scenes_found}",
                run_seconds=run_seconds,
                failed_reason=reasons.get(item_id, ""),
                requests=spent[item_id],
                seconds=seconds,
            )
        )
    return rows


@dataclass(frozen=True)
class ScenarioResult:
    """How a scenario ended: `SURVIVED` or 'FAILED: why', scenes used/found, and the line the user saw."""

    outcome: str
    scenes: str = ""
    line: str = ""


@dataclass(frozen=True)
class Scenario:
    """A fault that is more than one asset's read (a store, the disk, the workspace, the API, a cluster),
    staged once on `runner` by `run`."""

    name: str
    runner: str
    run: Callable[[Bench], ScenarioResult]


def scenario_row(bench: Bench, scenario: Scenario) -> FaultRow:
    """The scenario's row; one that raises is failed with the error, and the bench goes on."""
    started = time.perf_counter()
    try:
        result = scenario.run(bench)
    except Exception as error:
        result = ScenarioResult(f"FAILED: {type(error).__name__}: {first_line(error)}")
    seconds = time.perf_counter() - started
    return FaultRow(scenario.name, scenario.runner, "scenario", result.outcome, result.scenes, seconds, result.line)


def one_line_failure(state: Any, expected_start: str) -> str | None:
    """Why a run that had to fail in one line starting with `expected_start` did not; None when it did."""
    message = (state.message or "").removeprefix("Flow run encountered an exception: ")
    if not state.is_failed():
        return f"FAILED: the run ended {state.type.value}"
    if "\n" in message.strip() or expected_start not in message:
        return f"FAILED: its message is {message[:200]!r}"
    return None


def missing_asset(bench: Bench) -> ScenarioResult:
    """An item without a `red` asset: listed once in metadata.json as skipped, 'assets red missing'."""
    with bench.served_month(DEFAULT_DATES) as (served, run_dir):
        items = copy.deepcopy(list(served.month.items))
        without_red = items[FAULTY_ITEM_INDEX]
        del without_red["assets"]["red"]
        with bench.served_as(served, items, run_dir) as served_so:
            state, _ = run_flow(run_settings(served_so, run_dir, "threads"))
            failure = run_failure(state)
            if failure is not None:
                return ScenarioResult(failure)
            report = state.result()
            skipped = {scene["id"]: scene["reason"] for scene in metadata_of(report)["scenes_skipped"]}
            reason = skipped.get(without_red["id"], "")
            if not reason.startswith("assets red missing"):
                outcome = f"FAILED: its scene is listed as {reason!r}"
            else:
                outcome = unaccounted(report, served_so) or SURVIVED
            return ScenarioResult(outcome, f"{report.scenes_used}/{report.scenes_found}", reason)


def unresolvable_asset_host(bench: Bench) -> ScenarioResult:
    """An item whose `red` asset lies on a host DNS does not know: failed at once, the host named."""
    host = unresolvable_host()
    if host is None:
        return ScenarioResult("FAILED: not staged (this machine's resolver does not answer for .invalid names)")
    with bench.served_month(DEFAULT_DATES) as (served, run_dir):
        items = copy.deepcopy(list(served.month.items))
        elsewhere = items[FAULTY_ITEM_INDEX]
        elsewhere["assets"]["red"]["href"] = f"https://{host}/{asset_path(served, elsewhere['id'], 'red')}"
        with bench.served_as(served, items, run_dir) as served_so:
            state, _ = run_flow(run_settings(served_so, run_dir, "threads", **PERMANENT_RUN_LIMITS))
            failure = run_failure(state)
            if failure is not None:
                return ScenarioResult(failure)
            report = state.result()
            reason = dict(report.failed_scenes).get(elsewhere["id"], "")
            expected = f"red: host {host} does not resolve (DNS)"
            outcome = SURVIVED if reason == expected else f"FAILED: reason {reason!r}, expected {expected!r}"
            return ScenarioResult(outcome, f"{report.scenes_used}/{report.scenes_found}", reason)


def committed_records(workspace: Path) -> list[Path]:
    """The tile records committed in a local workspace (its histograms beside each); scratch folders
    that vanish while it looks are passed over."""
    try:
        return [record for record in workspace.rglob(f"*{RECORD_SUFFIX}") if record.with_suffix(HISTOGRAMS_SUFFIX).exists()]
    except FileNotFoundError:
        return []


class RefuseOnceCommitted:
    """Refuses every connection to `proxy` from the moment a tile record is committed in `workspace`
    (its histograms beside it) until `stop`: the month's products then meet a store that is down."""

    def __init__(self, proxy: FaultProxy, workspace: Path) -> None:
        self._proxy, self._workspace = proxy, workspace
        self._done = threading.Event()
        self.refused = False
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.02):
            if committed_records(self._workspace):
                self._proxy.refuse_for(REFUSED_FOR_S)
                self.refused = True
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join(WATCHER_JOIN_S)
        self._proxy.refuse_for(0)


def endpoint_refused_at_publish(bench: Bench) -> ScenarioResult:
    """The products store refuses connections once the tile is built: the run fails in one line naming the
    store (after the task retries), and a re-run with the store back publishes without building a tile."""
    products_proxy = FaultProxy(bench.s3_server.endpoint_url)
    try:
        with bench.served_month(DEFAULT_DATES) as (served, run_dir):
            bucket = bench.s3_server.make_bucket(f"products-{uuid.uuid4().hex[:12]}")
            block = save_products_block(f"refusing-{run_dir.name}", bucket, "basemaps", products_proxy.endpoint_url)
            settings = run_settings(served, run_dir, "threads", s3_block=block)
            refusing = RefuseOnceCommitted(products_proxy, run_dir / "ws")
            try:
                state, _ = run_flow(settings)
            finally:
                refusing.stop()
            failure = one_line_failure(state, "the products store did not answer") if refusing.refused else (
                "FAILED: not staged (no tile was committed)"
            )
            if failure is not None:
                return ScenarioResult(failure)
            records = {path: path.stat().st_mtime_ns for path in committed_records(run_dir / "ws")}
            rerun, _ = run_flow(settings)
            rebuilt = {path for path, mtime in records.items() if path.stat().st_mtime_ns != mtime}
            line = (state.message or "").removeprefix("Flow run encountered an exception: ")
            if not rerun.is_completed():
                return ScenarioResult(f"FAILED: the re-run ended {rerun.type.value}: {rerun.message}", line=line)
            report = rerun.result()
            outcome = f"FAILED: the re-run built {len(rebuilt)} tiles again" if rebuilt else SURVIVED
            return ScenarioResult(outcome, f"{report.scenes_used}/{report.scenes_found}", line)
    finally:
        products_proxy.stop()


def worker_killed_on_a_dask_cluster(bench: Bench) -> ScenarioResult:
    """A `dask worker` program of a separate cluster killed mid-tiles: the month completes, each tile committed once."""
    with bench.served_month(DEFAULT_DATES) as (served, run_dir):
        lost = run_month_losing_a_worker(served, bench.s3_server, run_dir, aoi_name=f"faults-{run_dir.name}", read=PRODUCTION_READ)
        if lost.failure is not None:
            return ScenarioResult(f"FAILED: {lost.failure}")
        report = lost.state.result()
        held = f"worker {lost.loss.worker} killed holding {len(lost.loss.held)} tiles" if lost.loss else ""
        return ScenarioResult(SURVIVED, f"{report.scenes_used}/{report.scenes_found}", held)


def month_level_files(settings: MosaicSettings) -> dict[str, bytes]:
    """{name: content} of the month's own files in its local output folder (its tiles aside)."""
    folder = Path(settings.output_dir) / month_folder(run_inputs(settings).name, str(settings.month))
    return {path.name: path.read_bytes() for path in folder.glob("*") if path.is_file()} if folder.is_dir() else {}


def disk_full(bench: Bench, filled_when: str | None) -> ScenarioResult:
    """Workspace and staging on a small disk, too small from the start (`filled_when` None) or filled once
    a file matching `filled_when` appears: one `no space left` line, once, no month-level file published,
    and for a disk too small from the start no scene read at all."""
    with bench.served_month(DEFAULT_DATES) as (served, run_dir):
        small = run_dir / "small"
        size = SMALL_DISK if filled_when is None else ROOMY_SMALL_DISK
        tiles, one_at_a_time = {"tile_size_px": FOUR_TILES_PX}, {"max_concurrent_tiles": 1}
        try:
            with small_disk(small, size):
                settings = run_settings(
                    served, run_dir, "threads", workspace=small / "ws", tiles=tiles, runner=one_at_a_time
                )
                bench.proxy.reset_counters()
                with reads_through(bench.proxy), ExitStack() as filling:
                    filled = (
                        filling.enter_context(fill_disk_when(filled_when, small, small, FILL_TIMEOUT_S))
                        if filled_when is not None
                        else None
                    )
                    state, _ = run_flow(settings)
                published = month_level_files(settings)
                committed = len(committed_records(small / "ws"))
        except MountRefused as refused:
            return ScenarioResult(f"FAILED: not staged ({refused})")
    if filled is not None and not (filled.is_set() and 0 < committed < FOUR_TILES):
        return ScenarioResult(f"FAILED: not staged (disk filled: {filled.is_set()}, {committed} tiles committed)")
    line = (state.message or "").removeprefix("Flow run encountered an exception: ")
    failure = one_line_failure(state, "no space left on device in")
    if failure is None and line.count("no space left") != 1:
        failure = f"FAILED: the disk is named {line.count('no space left')} times"
    if failure is None and published:
        failure = f"FAILED: month-level files published: {', '.join(sorted(published))}"
    if failure is None and filled_when is None and bench.proxy.requests("/"):
        failure = f"FAILED: {bench.proxy.requests('/')} scene requests before the disk was found too small"
    return ScenarioResult(failure or SURVIVED, line=line)


def corrupt_tile_record_of(suffix: str) -> Callable[[Bench], ScenarioResult]:
    """A committed tile's record (`.json`) or histograms (`.npz`) cut to half: the re-run completes, builds
    that tile again (and no other), and publishes the clean run's mosaic and statistics."""

    def scenario(bench: Bench) -> ScenarioResult:
        with bench.served_month(DEFAULT_DATES) as (served, run_dir):
            settings = run_settings(served, run_dir, "threads", tiles={"tile_size_px": FOUR_TILES_PX})
            clean, _ = run_flow(settings)
            if (failure := run_failure(clean)) is not None:
                return ScenarioResult(f"{failure} (the clean run)")
            clean_month = month_level_files(settings)
            corrupted = corrupt_tile_record(run_inputs(settings).workspace, served.label, CORRUPTED_TILE, suffix)
            records = {path: path.stat().st_mtime_ns for path in committed_records(run_dir / "ws")}
            rerun, _ = run_flow(settings)
            if (failure := run_failure(rerun)) is not None:
                return ScenarioResult(failure)
            rebuilt = sorted(path.stem for path, mtime in records.items() if path.stat().st_mtime_ns != mtime)
            rerun_month = month_level_files(settings)
            report = rerun.result()
        same_rasters = all(rerun_month.get(name) == content for name, content in clean_month.items() if name.endswith(".tif"))
        metadata = [name for name in clean_month if name.endswith("_metadata.json")]
        same_statistics = [statistics_of(clean_month[name]) == statistics_of(rerun_month[name]) for name in metadata]
        if rebuilt != [CORRUPTED_TILE]:
            outcome = f"FAILED: the re-run built tiles {rebuilt} again"
        elif not same_rasters or not all(same_statistics):
            outcome = "FAILED: the re-run's month differs from the clean run's"
        else:
            outcome = SURVIVED
        return ScenarioResult(outcome, f"{report.scenes_used}/{report.scenes_found}", f"{Path(corrupted).name} rebuilt")

    return scenario


def statistics_of(metadata: bytes) -> list[Any]:
    """Every `statistics` entry of a metadata.json, in document order."""
    found: list[Any] = []

    def walk(node: Any) -> None:
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in children:
            if key == "statistics":
                found.append(value)
            else:
                walk(value)

    walk(json.loads(metadata))
    return found


def lock_fault(stage: Callable[[PrefectServer], LockFaultOutcome]) -> Callable[[Bench], ScenarioResult]:
    """A fault of an AOI-and-month lock on a fresh Prefect server (`tasks.testing.lock_faults`): survived
    when the waiting run, having named the holder, got the lock within 2 minutes of the holder's end (2.75
    for a holder nobody saw die: its lease, then the repossessor), and after a restart the holder completed."""

    def scenario(bench: Bench) -> ScenarioResult:
        home = bench.work_dir / f"prefect-{uuid.uuid4().hex[:8]}"
        home.mkdir()
        with PrefectServer(home) as server:
            return lock_result(stage(server))

    return scenario


def lock_result(outcome: LockFaultOutcome) -> ScenarioResult:
    """A lock fault's row: survived, with the waiting run's first line about the holder and when it got in."""
    said = outcome.waiting_lines[0] if outcome.waiting_lines else ""
    line = said[said.find(f"lock {outcome.lock_name}") :] if f"lock {outcome.lock_name}" in said else said
    if outcome.survived:
        return ScenarioResult(SURVIVED, line=f"{line} (freed {outcome.freed_after_holder_end_s:.0f} s after its end)")
    return ScenarioResult(
        f"FAILED: holder {outcome.holder_state}, second ran {outcome.second_ran}, freed after {outcome.freed_after_holder_end_s} s",
        line=line,
    )


SCENARIOS = (
    Scenario("missing asset", "threads", missing_asset),
    Scenario("asset host does not resolve", "threads", unresolvable_asset_host),
    Scenario("endpoint refused at publish", "threads", endpoint_refused_at_publish),
    Scenario("disk too small", "threads", lambda bench: disk_full(bench, None)),
    Scenario("disk full after the first tile", "threads", lambda bench: disk_full(bench, FIRST_TILE_RECORD)),
    Scenario("corrupt tile record", "threads", corrupt_tile_record_of(RECORD_SUFFIX)),
    Scenario("corrupt tile histograms", "threads", corrupt_tile_record_of(HISTOGRAMS_SUFFIX)),
    Scenario("lock after a Prefect server restart", "threads", lock_fault(lock_after_api_restart)),
    Scenario(
        "lock of a killed run left RUNNING",
        "threads",
        lock_fault(lambda server: lock_after_holder_kill(server, marked_crashed=False)),
    ),
    Scenario("worker killed on a separate Dask cluster", "dask cluster", worker_killed_on_a_dask_cluster),
)


def markdown_table(rows: list[FaultRow]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def summary_line(rows: list[FaultRow]) -> str:
    permanent = [row for row in rows if row.kind == "permanent"]
    requests_max = max((row.requests for row in permanent if row.requests is not None), default=0)
    seconds_max = max((row.seconds for row in permanent if row.seconds is not None), default=0.0)
    return (
        f"faults_survived={sum(row.survived for row in rows)}/{len(rows)} "
        f"permanent_fault_requests_max={requests_max} permanent_fault_seconds_max={seconds_max:.2f}"
    )


def use_s3_server(server: S3Server) -> None:
    """Point boto3 and GDAL at `server` with the test credentials, as the tests' `s3_server` fixture does."""
    os.environ.update(
        AWS_ENDPOINT_URL=server.endpoint_url,
        AWS_ACCESS_KEY_ID=TEST_CREDENTIALS["aws_access_key_id"],
        AWS_SECRET_ACCESS_KEY=TEST_CREDENTIALS["aws_secret_access_key"],
        AWS_DEFAULT_REGION=TEST_CREDENTIALS["region_name"],
    )
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated, of {', '.join(RUNNERS)}; none: no read faults")
    parser.add_argument("--scenarios", default="all", help="comma-separated names of SCENARIOS, all, or none")
    arguments = parser.parse_args()
    runners = [] if arguments.runners == "none" else arguments.runners.split(",")
    unknown = set(runners) - set(RUNNERS)
    if unknown:
        parser.error(f"unknown runner(s) {', '.join(sorted(unknown))}; choose from {', '.join(RUNNERS)}")
    by_name = {scenario.name: scenario for scenario in SCENARIOS}
    names = {"all": list(by_name), "none": []}.get(arguments.scenarios, arguments.scenarios.split(","))
    if unknown_names := set(names) - set(by_name):
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown_names))}; choose from {', '.join(by_name)}")
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    print(
        f"faults: the monthly flow on loopback through a fault proxy, runners {', '.join(runners)}, {os.cpu_count()} CPUs"
    )
    rows: list[FaultRow] = []
    with tempfile.TemporaryDirectory() as work_dir, ExitStack() as stack:
        s3_server = S3Server()
        stack.callback(s3_server.stop)
        use_s3_server(s3_server)
        proxy = FaultProxy(s3_server.endpoint_url)
        stack.callback(proxy.stop)
        stack.enter_context(prefect_test_harness(server_startup_timeout=STARTUP_TIMEOUT_S))
        bench = Bench(s3_server, proxy, Path(work_dir))
        for runner in runners:
            for fault in TRANSIENT_FAULTS:
                rows.append(transient_row(bench, fault, runner))
                print(f"{fault.name} on {runner}: {rows[-1].outcome} ({rows[-1].run_seconds:.1f} s)", flush=True)
            rows += permanent_rows(bench, runner)
            print(
                f"permanent faults on {runner}: {', '.join(row.outcome for row in rows[-len(PERMANENT_FAULTS) :])}",
                flush=True,
            )
        for name in names:
            rows.append(scenario_row(bench, by_name[name]))
            print(f"{name}: {rows[-1].outcome} ({rows[-1].run_seconds:.1f} s)", flush=True)
    print(markdown_table(rows))
    print(summary_line(rows))


if __name__ == "__main__":
    main()

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

Permanent faults (`PERMANENT_FAULTS`: truncated, garbage, HTTP 404, HTTP 403), each on an asset of
its own item, all in one run per runner as `tests/test_faults.py` stages them (so their rows share
the run's seconds). Survived: the run COMPLETED, exactly those scenes failed, each with a reason
starting with the expected one, and every other scene was used. `requests` is `failure_requests`:
the requests the broken asset cost from its failing one on, against the same band of an intact item.
`seconds` is the wall time `tasks.read.read_scene_window` takes to give up on the broken item, timed here
after the run, in this process, under the same GDAL settings and fault: the item's five assets are
uploaded again under a fresh prefix first, so the read starts with a cold GDAL cache as the run's
read did. It includes the item's intact assets read before the broken one (milliseconds on loopback).

Run: `.venv/bin/python bench/faults.py` (several minutes on 2 cores; `--runners threads` for half).
The last line is `faults_survived=<k>/<n> permanent_fault_requests_max=<int> permanent_fault_seconds_max=<float>`.
"""

import argparse
import copy
import os
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
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

from flows.embedded_api import STARTUP_TIMEOUT_S
from flows.monthly_mosaic import monthly_mosaic, run_inputs
from flows.parameters import MosaicSettings
from tasks.errors import SceneReadError
from tasks.read import read_scene_window
from tasks.scene import SCENE_BANDS
from tasks.search import scene_from_item
from tasks.testing.fault_proxy import FaultProxy
from tasks.testing.fault_scenarios import (
    OUTAGE_DATES,
    PERMANENT_FAULTS,
    RUNNERS,
    OutageTrigger,
    PermanentFault,
    asset_file,
    asset_path,
    failure_requests,
    metadata_of,
    reads_through,
)
from tasks.testing.served_month import ServedMonth, assert_every_scene_accounted, flow_settings, serve_synthetic_month
from tasks.testing.servers import TEST_CREDENTIALS, S3Server, StacApi
from tasks.testing.synthetic import DEFAULT_DATES

CUT_AFTER_BYTES = 1000
"""Body bytes a cut or reset answer sends before the connection ends."""
BURST_STATUS, BURST_REQUESTS = 503, 3
FAULTY_ITEM_INDEX = 1
"""Transient asset faults hit an asset of this item; item 0 stays intact as the reference."""
FAULTY_BAND = "nir"
PRODUCTION_READ: dict[str, Any] = {}
"""`ReadSettings` overrides of every run: none, the production retries and delays."""
PERMANENT_RUN_LIMITS = {"max_failed_fraction": 1.0, "min_valid_share": 0.0}
"""Four of six scenes fail in the permanent-fault run: let it complete and list them."""
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


def run_settings(served: ServedMonth, run_dir: Path, runner: str, **overrides: Any) -> MosaicSettings:
    """Settings of one run over `served` on `runner`: production reads, a workspace in `run_dir`, and an AOI
    name of its own, so each run creates its own month lock (`flows.locking`): creating an existing one again
    is handled, but the harness's Prefect server logs it with a traceback that would bury the table."""
    return flow_settings(
        served,
        run_dir / "ws",
        aoi_name=f"faults-{run_dir.name}",
        read=PRODUCTION_READ,
        runner=RUNNERS[runner],
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
    with bench.served_month(DEFAULT_DATES) as (served, run_dir):
        try:
            return permanent_run_rows(bench, served, run_dir, runner)
        finally:
            bench.proxy.clear()


def permanent_run_rows(bench: Bench, served: ServedMonth, run_dir: Path, runner: str) -> list[FaultRow]:
    """Stage `PERMANENT_FAULTS` on items 1.. of `served`, run the flow, count and time each broken read."""
    broken = dict(zip(served.item_ids[1:], PERMANENT_FAULTS, strict=False))
    bench.proxy.reset_counters()
    for item_id, fault in broken.items():
        size = asset_file(served, run_dir, item_id, fault.band).stat().st_size
        fault.apply(bench.proxy, asset_path(served, item_id, fault.band), size)
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
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated, of {', '.join(RUNNERS)}")
    runners = parser.parse_args().runners.split(",")
    unknown = set(runners) - set(RUNNERS)
    if unknown:
        parser.error(f"unknown runner(s) {', '.join(sorted(unknown))}; choose from {', '.join(RUNNERS)}")
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
    print(markdown_table(rows))
    print(summary_line(rows))


if __name__ == "__main__":
    main()

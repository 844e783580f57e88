"""Benchmark of the monthly flow as the AOI grows 16x (issue 9): CPU, scratch disk, memory, bytes fetched, 2 workers.

For each AOI size (default 2048^2 and 8192^2 px of 10 m, 16x the area) and each local Dask cluster (default 1
and 2 worker processes), the real `monthly_mosaic` flow runs once through the production CLI
(`python -m flows.run --settings run.json`, a process of its own) on a synthetic month: 6 dates of Earth Search
style COGs (`tasks/testing/synthetic.py`, DEFLATE, 1024 px internal tiles, SCL at 20 m) served by moto S3, items by a
rustac STAC API, runs recorded by a `prefect server` (all on 127.0.0.1, started by this script). The AOI is the
scenes' own grid extent, so the flow's grid equals the source grid pixel for pixel (checked). Products go to a
second moto server through a prefect-aws S3Bucket block, so they take no local disk and their uploads are not
counted as reads. When the flow has tile settings (`MosaicSettings.tiles`), output tiles are `--tile-size` px.

Figures of each run:
- CPU s: user + system seconds of the flow process and every descendant (Dask workers): the larger of the
  kernel's account of the reaped process tree (`RUSAGE_CHILDREN` around the wait) and the sum over processes
  of their last sampled CPU time (both are lower bounds: a process never reaped, a process's last 0.2 s);
  over the month's million pixel-observations (AOI px x dates / 1e6).
- peak RSS: the largest sum of resident memory over the flow process and its descendants, sampled every 0.2 s
  (the servers are this script's children, not the flow's, so they are not in it).
- peak scratch: the largest allocated size (as `du`) of the run's workspace, staging folder and TMPDIR (where
  Dask workers spill), sampled every 0.2 s; final products are in S3, not in it.
- fetched / COG: body bytes the scene store served during the run (its own counter), over the compressed bytes
  of the COG internal tiles (full resolution, read from each file's tile index) that intersect the AOI.
- flow run s: the flow run's start to end as the Prefect API recorded it (interpreter start-up excluded).

Summary figures ("16x" and "1x" are the largest and smallest `--sizes`; each is the worst over the worker
counts run): `cpu_s_per_mpx_obs` of the largest AOI, `disk_peak_16x_over_1x` and `rss_16x_over_1x` (same worker
count, among the counts the smallest AOI's tiles keep busy: equal tiles in flight), `fetched_over_cog_bytes` of the largest AOI, and `parallel_efficiency_2w` = wall(1 worker) /
(2 x wall(2 workers)) of the largest AOI; it only means something on a machine with cores to spare for the
second worker (on 2 cores the servers and one worker's read threads already fill them). They and an Arkansas projection replace this script's section of
`bench/RESULTS.md` (other sections are kept).

Months are generated once into `--cache-dir` (default /tmp/scale-bench-cache) and reused. Generating the
8192^2 month takes about 13 GB of memory (the procedural surface is computed in float64) and a few minutes.

Run: `.venv/bin/python bench/scale.py` (the full benchmark: about 8 min on 2 cores with the months cached);
`--sizes 512 1024 --dates 3` for a quick check. `--masker ocm+scl` needs OmniCloudMask weights in
OMNICLOUDMASK_MODEL_DIR, or `--random-weights` (randomly initialised weights: real speed, meaningless masks).
The last line is `cpu_s_per_mpx_obs=<f> disk_peak_16x_over_1x=<f> rss_16x_over_1x=<f>
fetched_over_cog_bytes=<f> parallel_efficiency_2w=<f>`.
"""

import argparse
import itertools
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/scale.py` (as `make bench` does): make `tasks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import boto3
import psutil
import rasterio
from odc.geo.geobox import GeoBox, GeoboxTiles
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.monthly_mosaic import monthly_mosaic
from flows.parameters import MosaicSettings
from tasks.core.settings import MaskSettings
from tasks.geometry.aoi import load_aoi
from tasks.geometry.grid import grid_for_aoi
from tasks.masking.ocm_weights import model_version_for
from tasks.masking.registry import masker_names
from tasks.testing import PROJECT_ROOT
from tasks.testing.prefect_server import PrefectServer
from tasks.testing.served_month import save_products_block
from tasks.testing.servers import TEST_CREDENTIALS, S3Server, StacApi
from tasks.testing.synthetic import (
    COLLECTION_ID,
    DEFAULT_DATES,
    make_synthetic_month,
    stac_collection,
    synthetic_grid,
    write_aoi,
)

PIXEL_M = 10.0
DEFAULT_SIZES_PX = (2048, 8192)
DEFAULT_WORKERS = (1, 2)
DEFAULT_TILE_PX = 2048
COG_BLOCK_PX = 1024
"""Internal tile edge of the synthetic COGs, as Earth Search's."""
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "scale-bench-cache"
DEFAULT_RESULTS = PROJECT_ROOT / "bench" / "RESULTS.md"
SECTION_MARKER = "(`bench/scale.py`)"
"""Text of this script's heading in RESULTS.md; its section runs from that heading to the next '## ' one."""
SAMPLE_INTERVAL_S = 0.2
MONTH_READY = "month.json"
"""Written last into a cached month's folder: the month is complete."""
ITEMS_FILE, AOI_FILE, DATA_FOLDER = "items.json", "aoi.geojson", "data"
PRODUCTS_BLOCK, PRODUCTS_FOLDER = "scale-bench-products", "basemaps"
MAX_CLOUD_COVER = 100.0
"""Every synthetic date is kept by the search."""
LOG_TAIL_LINES = 30
RESULTS_LINE_CHARS = 110
"""Prose in RESULTS.md is wrapped at this width, as the other sections are."""
MB = 1e6
MPX = 1e6

ARKANSAS_AREA_KM2 = 137_700
ARKANSAS_OBSERVATIONS_PER_PIXEL = 10
ARKANSAS_COG_BYTES = 84e9
"""Compressed bytes of the Earth Search COGs a month of Arkansas reads (about)."""
ARKANSAS_PIXELS = ARKANSAS_AREA_KM2 * 1e6 / PIXEL_M**2
ARKANSAS_PIXEL_OBSERVATIONS = ARKANSAS_PIXELS * ARKANSAS_OBSERVATIONS_PER_PIXEL
PROJECTION_CORES = 16


@dataclass(frozen=True)
class CachedMonth:
    """A synthetic month on local disk: COGs under `data/`, items whose hrefs are paths relative to it, the AOI."""

    folder: Path
    size_px: int
    dates: int

    @property
    def data_dir(self) -> Path:
        return self.folder / DATA_FOLDER

    @property
    def aoi_path(self) -> Path:
        return self.folder / AOI_FILE

    @property
    def grid(self) -> GeoBox:
        """The scenes' 10 m grid, which is also the AOI's."""
        return synthetic_grid(shape=(self.size_px, self.size_px), resolution=PIXEL_M)

    @property
    def label(self) -> str:
        """The month as 'YYYY-MM'."""
        return f"{DEFAULT_DATES[0]:%Y-%m}"

    def items(self) -> list[dict[str, Any]]:
        return json.loads((self.folder / ITEMS_FILE).read_text())

    def asset_files(self) -> list[Path]:
        return [self.data_dir / asset["href"] for item in self.items() for asset in item["assets"].values()]


@dataclass(frozen=True)
class RunFigures:
    """What one flow run cost; bytes and seconds."""

    size_px: int
    workers: int
    dates: int
    flow_run_s: float
    cpu_s: float
    peak_rss_bytes: int
    peak_scratch_bytes: int
    fetched_bytes: int
    cog_bytes: int
    scenes: str
    product_bytes: int

    @property
    def pixel_observations(self) -> int:
        return self.size_px**2 * self.dates

    @property
    def cpu_s_per_mpx_obs(self) -> float:
        return self.cpu_s / (self.pixel_observations / MPX)

    @property
    def fetched_over_cog(self) -> float:
        return self.fetched_bytes / self.cog_bytes

    def cells(self) -> tuple[str, ...]:
        return (
            f"{self.size_px}^2", str(self.workers), f"{self.pixel_observations / MPX:.1f}", f"{self.flow_run_s:.1f}",
            f"{self.cpu_s:.1f}", f"{self.cpu_s_per_mpx_obs:.3f}", f"{self.peak_rss_bytes / MB:.0f}",
            f"{self.peak_scratch_bytes / MB:.0f}", f"{self.fetched_bytes / MB:.1f}", f"{self.cog_bytes / MB:.1f}",
            f"{self.fetched_over_cog:.3f}", self.scenes, f"{self.product_bytes / MB:.1f}",
        )  # fmt: skip


TABLE_HEADER = (
    "AOI px", "workers", "Mpx-obs", "flow run s", "CPU s", "CPU s / Mpx-obs", "peak RSS MB", "peak scratch MB",
    "fetched MB", "COG MB under AOI", "fetched / COG", "scenes used/found", "products MB (S3)",
)  # fmt: skip


# --- Months --------------------------------------------------------------------------------------


def cached_month(cache_dir: Path, size_px: int, dates: int) -> CachedMonth:
    """The month of `size_px`^2 px and `dates` dates from `cache_dir`, generated there first when missing."""
    month = CachedMonth(cache_dir / f"{size_px}px-{dates}dates-{COG_BLOCK_PX}block", size_px, dates)
    if (month.folder / MONTH_READY).exists():
        return month
    shutil.rmtree(month.folder, ignore_errors=True)
    month.data_dir.mkdir(parents=True)
    print(f"generating the {size_px}^2 px month of {dates} dates in {month.folder} ...", flush=True)
    started = time.perf_counter()
    synthetic = make_synthetic_month(
        month.data_dir,
        DEFAULT_DATES[:dates],
        grid=month.grid,
        block_size=COG_BLOCK_PX,
        href_for=lambda path: path.relative_to(month.data_dir).as_posix(),
    )
    (month.folder / ITEMS_FILE).write_text(json.dumps(synthetic.items))
    write_aoi(month.grid, month.aoi_path, inset_px=0)
    seconds = time.perf_counter() - started
    (month.folder / MONTH_READY).write_text(json.dumps({"size_px": size_px, "dates": dates, "seconds": seconds}))
    print(f"generated in {seconds:.0f} s", flush=True)
    return month


def check_aoi_grid(month: CachedMonth) -> None:
    """The flow's grid for the month's AOI must be the scenes' grid, or COG bytes under the AOI mean nothing."""
    flow_grid = grid_for_aoi(load_aoi(str(month.aoi_path)), None, PIXEL_M)
    if flow_grid != month.grid:
        raise RuntimeError(f"the flow's grid {flow_grid} is not the scenes' grid {month.grid}")


def cog_bytes_under(path: Path, aoi_grid: GeoBox) -> int:
    """Compressed bytes of the full-resolution internal tiles of the COG at `path` that intersect `aoi_grid`.

    Tile sizes come from the TIFF tile index (GDAL's `BLOCK_SIZE_<x>_<y>` items, which it does not list).
    """
    with rasterio.open(path) as dataset:
        asset_grid = GeoBox(dataset.shape, dataset.transform, dataset.crs)
        block_rows, block_cols = dataset.block_shapes[0]
        rows, cols = GeoboxTiles(asset_grid, (block_rows, block_cols)).range_from_bbox(aoi_grid.boundingbox)
        return sum(
            int(dataset.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))
            for row, col in itertools.product(rows, cols)
        )


@contextmanager
def served_month(month: CachedMonth, scene_store: S3Server, api_dir: Path) -> Iterator[str]:
    """The month's COGs uploaded to a fresh bucket of `scene_store` and its items served; yields the API URL."""
    bucket = scene_store.make_bucket(f"scenes-{uuid.uuid4().hex[:12]}")
    items = month.items()
    for item in items:
        for asset in item["assets"].values():
            asset["href"] = scene_store.upload(month.data_dir / asset["href"], bucket, asset["href"])
    api = StacApi(stac_collection(items), items, api_dir)
    try:
        yield api.url
    finally:
        api.stop()


# --- Measuring a run -----------------------------------------------------------------------------


def allocated_bytes(root: Path) -> int:
    """Disk space allocated to the files under `root` (as `du` counts it); files vanishing meanwhile are skipped."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


class RunSampler:
    """Samples a process tree and scratch folders every `SAMPLE_INTERVAL_S` in a thread, until `stop()`.

    Keeps the peak of the tree's summed RSS, each process's largest CPU time (user + system, by pid) and the
    peak allocated size of the folders.
    """

    def __init__(self, root_pid: int, scratch_dirs: Sequence[Path]) -> None:
        self._root = psutil.Process(root_pid)
        self._processes: dict[int, psutil.Process] = {}
        self._scratch_dirs = scratch_dirs
        self._stopped = threading.Event()
        self.peak_rss_bytes = 0
        self.peak_scratch_bytes = 0
        self.cpu_s_by_pid: dict[int, float] = {}
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)
        self._thread.start()

    def _sample_until_stopped(self) -> None:
        while True:
            self._sample()
            if self._stopped.wait(SAMPLE_INTERVAL_S):
                return

    def _tree(self) -> list[psutil.Process]:
        """The root and its descendants, as the same `Process` objects from one sample to the next."""
        try:
            found = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        return [self._processes.setdefault(process.pid, process) for process in found]

    def _sample(self) -> None:
        rss = 0
        for process in self._tree():
            try:
                with process.oneshot():
                    rss += process.memory_info().rss
                    times = process.cpu_times()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            self.cpu_s_by_pid[process.pid] = max(self.cpu_s_by_pid.get(process.pid, 0.0), times.user + times.system)
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
        scratch = sum(allocated_bytes(folder) for folder in self._scratch_dirs)
        self.peak_scratch_bytes = max(self.peak_scratch_bytes, scratch)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def children_cpu_s() -> float:
    """User + system seconds of this process's reaped children and their reaped descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Bench:
    """What every run shares: the servers, the products block, the options."""

    scene_store: S3Server
    product_store: S3Server
    products_bucket: str
    prefect: PrefectServer
    work_dir: Path
    tile_px: int
    mask: dict[str, Any]


def run_fields(bench: Bench, month: CachedMonth, api_url: str, run_dir: Path, aoi_name: str, workers: int) -> dict:
    """The `MosaicSettings` fields of one run: local workspace and staging in `run_dir`, products to S3."""
    fields: dict[str, Any] = {
        "aoi": str(month.aoi_path),
        "aoi_name": aoi_name,
        "month": month.label,
        "grid": {"resolution_m": PIXEL_M},
        "search": {"stac_api_url": api_url, "collection": COLLECTION_ID, "max_cloud_cover": MAX_CLOUD_COVER},
        "mask": bench.mask,
        "runner": {"task_runner": "dask", "dask_workers": workers},
        "workspace": str(run_dir / "workspace"),
        "staging_dir": str(run_dir / "staging"),
        "s3_block": PRODUCTS_BLOCK,
    }
    if "tiles" in MosaicSettings.model_fields:
        fields["tiles"] = {"tile_size_px": bench.tile_px}
    return MosaicSettings.model_validate(fields).model_dump(mode="json", exclude_unset=True)


def flow_environment(bench: Bench, temp_dir: Path) -> dict[str, str]:
    """The flow process's environment: Prefect pointed at the bench's server, S3 reads at the scene store with the
    test credentials (GDAL and boto3 read these variables), temporary files in `temp_dir`."""
    environment = bench.prefect.environment(
        {
            "AWS_ENDPOINT_URL": bench.scene_store.endpoint_url,
            "AWS_ACCESS_KEY_ID": TEST_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": TEST_CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": TEST_CREDENTIALS["region_name"],
            "TMPDIR": str(temp_dir),
            "DASK_LOGGING__DISTRIBUTED": "warning",
        }
    )
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        environment.pop(name, None)
    return environment


def flow_run_seconds(prefect: PrefectServer, aoi_name: str) -> float:
    """Start to end of the newest monthly-mosaic flow run of `aoi_name`, as the Prefect API recorded it."""
    with prefect.client() as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[monthly_mosaic.name])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=10,
        )
    run = next(run for run in runs if run.parameters["settings"].get("aoi_name") == aoi_name)
    return (run.end_time - run.start_time).total_seconds()


def published(bench: Bench, aoi_name: str) -> tuple[str, int]:
    """'used/found' scenes from the run's published metadata.json, and the bytes of its products in S3.

    Sizes come from the listing: moto stores a wrong checksum on a server-side copy of a multipart object (a
    one-tile AOI's single COGs are such copies), so reading those back through boto3 fails its checksum check.
    """
    client = boto3.client("s3", endpoint_url=bench.product_store.endpoint_url, **TEST_CREDENTIALS)
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bench.products_bucket, Prefix=f"{PRODUCTS_FOLDER}/{aoi_name}/"
    )
    sizes = {entry["Key"]: entry["Size"] for page in pages for entry in page.get("Contents", [])}
    metadata_keys = [key for key in sizes if key.endswith("metadata.json")]
    if not metadata_keys:
        return "no metadata.json", sum(sizes.values())
    metadata = json.loads(bench.product_store.read(bench.products_bucket, metadata_keys[0]))
    return f"{len(metadata['scenes_used'])}/{metadata['scenes_found']}", sum(sizes.values())


def run_once(bench: Bench, month: CachedMonth, api_url: str, workers: int, cog_bytes: int) -> RunFigures:
    """One run of the flow's CLI over `month` on `workers` Dask workers, measured; raises when it fails."""
    aoi_name = f"scale-{month.size_px}px-{workers}w-{uuid.uuid4().hex[:8]}"
    run_dir = bench.work_dir / aoi_name
    scratch_dirs = [run_dir / "workspace", run_dir / "staging", run_dir / "tmp"]
    for folder in scratch_dirs:
        folder.mkdir(parents=True)
    settings_path = run_dir / "run.json"
    settings_path.write_text(json.dumps(run_fields(bench, month, api_url, run_dir, aoi_name, workers)))
    log_path = run_dir / "flow.log"
    environment = flow_environment(bench, run_dir / "tmp")
    bench.scene_store.reset_counters()
    cpu_before = children_cpu_s()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.run", "--settings", str(settings_path)],
            cwd=PROJECT_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        sampler = RunSampler(process.pid, scratch_dirs)
        status = process.wait()
        sampler.stop()
    cpu_s = max(children_cpu_s() - cpu_before, sum(sampler.cpu_s_by_pid.values()))
    fetched = bench.scene_store.bytes_served()
    if status != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        raise RuntimeError(f"the flow run of {aoi_name} exited {status}; end of {log_path}:\n{tail}")
    scenes, product_bytes = published(bench, aoi_name)
    figures = RunFigures(
        size_px=month.size_px,
        workers=workers,
        dates=month.dates,
        flow_run_s=flow_run_seconds(bench.prefect, aoi_name),
        cpu_s=cpu_s,
        peak_rss_bytes=sampler.peak_rss_bytes,
        peak_scratch_bytes=sampler.peak_scratch_bytes,
        fetched_bytes=fetched,
        cog_bytes=cog_bytes,
        scenes=scenes,
        product_bytes=product_bytes,
    )
    shutil.rmtree(run_dir)
    return figures


# --- Figures -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """The five goal figures; NaN where the runs needed for one were not made."""

    cpu_s_per_mpx_obs: float
    disk_peak_16x_over_1x: float
    rss_16x_over_1x: float
    fetched_over_cog_bytes: float
    parallel_efficiency_2w: float

    def line(self) -> str:
        return (
            f"cpu_s_per_mpx_obs={self.cpu_s_per_mpx_obs:.3f} disk_peak_16x_over_1x={self.disk_peak_16x_over_1x:.3f} "
            f"rss_16x_over_1x={self.rss_16x_over_1x:.3f} fetched_over_cog_bytes={self.fetched_over_cog_bytes:.3f} "
            f"parallel_efficiency_2w={self.parallel_efficiency_2w:.3f}"
        )


def by_run(rows: Sequence[RunFigures]) -> dict[tuple[int, int], RunFigures]:
    return {(row.size_px, row.workers): row for row in rows}


def growth(large: int, small: int) -> float:
    """`large` over `small`; 1 when both are 0 (a small run can leave no scratch file for the sampler to see)."""
    if small == 0:
        return math.inf if large else 1.0
    return large / small


def summarise(rows: Sequence[RunFigures], tile_px: int) -> Summary:
    """The goal figures: largest against smallest size, each the worst over the worker counts run.

    Disk and memory are compared at equal tiles in flight (the issue: they depend on tile size x tiles
    in flight, never on the AOI): only worker counts the smallest AOI has tiles enough to keep busy.
    With one 2048^2 tile, a second worker has nothing to do in the small run and a tile in flight in
    the large one; that run's figures are in the table.
    """
    runs = by_run(rows)
    small, large = min(row.size_px for row in rows), max(row.size_px for row in rows)
    workers = sorted({row.workers for row in rows})
    busy = [count for count in workers if count <= output_tiles(small, tile_px)] or workers[:1]
    at_large = [runs[large, count] for count in workers]
    single, double = runs.get((large, 1)), runs.get((large, 2))
    return Summary(
        cpu_s_per_mpx_obs=max(row.cpu_s_per_mpx_obs for row in at_large),
        disk_peak_16x_over_1x=max(
            growth(runs[large, count].peak_scratch_bytes, runs[small, count].peak_scratch_bytes) for count in busy
        ),
        rss_16x_over_1x=max(
            growth(runs[large, count].peak_rss_bytes, runs[small, count].peak_rss_bytes) for count in busy
        ),
        fetched_over_cog_bytes=max(row.fetched_over_cog for row in at_large),
        parallel_efficiency_2w=single.flow_run_s / (2 * double.flow_run_s) if single and double else math.nan,
    )


def markdown_table(rows: Sequence[RunFigures]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "|".join("---:" for _ in TABLE_HEADER) + "|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def output_tiles(size_px: int, tile_px: int) -> int:
    """Output tiles of `tile_px` covering a square AOI of `size_px`."""
    return math.ceil(size_px / tile_px) ** 2


def projected_memory(rows: Sequence[RunFigures], attribute: str, name: str, tile_px: int) -> str:
    """A markdown line projecting `attribute` (bytes: peak scratch or RSS) to Arkansas on `PROJECTION_CORES` workers.

    1 worker: linear in output tiles through the smallest and largest 1-worker runs (the slope is what each
    further tile adds: about 0 when tiles stream). Each further worker adds what the second one added at the
    largest size (at least 0). Per-tile figures are at the runs' dates, not Arkansas's ~10 observations.
    """
    runs = by_run(rows)
    small, large = min(row.size_px for row in rows), max(row.size_px for row in rows)
    if (small, 1) not in runs or (large, 1) not in runs:
        return f"- {name}: not projected (needs 1-worker runs at the smallest and largest size)."
    low, high = runs[small, 1], runs[large, 1]
    low_tiles, high_tiles = output_tiles(small, tile_px), output_tiles(large, tile_px)
    if high_tiles == low_tiles:
        return f"- {name}: not projected (both sizes are {low_tiles} tile(s) of {tile_px}^2 px)."
    low_bytes, high_bytes = getattr(low, attribute), getattr(high, attribute)
    per_tile = (high_bytes - low_bytes) / (high_tiles - low_tiles)
    one_worker = low_bytes + per_tile * (ARKANSAS_PIXELS / tile_px**2 - low_tiles)
    line = (
        f"- {name}: {low_bytes / MB:.0f} MB at {low_tiles} tile(s), {high_bytes / MB:.0f} MB at {high_tiles} tiles "
        f"of {tile_px}^2 px on 1 worker ({low.dates} dates), {per_tile / MB:+.0f} MB per further tile: "
        f"{one_worker / 1e9:.1f} GB for Arkansas on 1 worker"
    )
    if (large, 2) not in runs:
        return line + "."
    per_worker = max(0.0, getattr(runs[large, 2], attribute) - high_bytes)
    workers_total = one_worker + (PROJECTION_CORES - 1) * per_worker
    return (
        f"{line}; a second worker added {per_worker / MB:.0f} MB at {large}^2 px: "
        f"{workers_total / 1e9:.1f} GB on {PROJECTION_CORES} workers."
    )


def arkansas_projection(rows: Sequence[RunFigures], summary: Summary, tile_px: int) -> list[str]:
    """Markdown lines projecting a month of Arkansas (10 m, ~10 observations per pixel) from the measured runs:
    time from the CPU rate over `PROJECTION_CORES` cores, bytes fetched from the fetched/COG ratio, scratch disk
    and RSS with `projected_memory`."""
    cpu_hours = summary.cpu_s_per_mpx_obs * ARKANSAS_PIXEL_OBSERVATIONS / MPX / 3600
    ideal_hours = cpu_hours / PROJECTION_CORES
    efficiency = summary.parallel_efficiency_2w
    at_efficiency = f", {ideal_hours / efficiency:.2f} h at the measured 2-worker efficiency ({efficiency:.2f})"
    fetched_gb = ARKANSAS_COG_BYTES * summary.fetched_over_cog_bytes / 1e9
    return [
        f"Arkansas: {ARKANSAS_AREA_KM2:,} km2 = {ARKANSAS_PIXELS:.3g} px at {PIXEL_M:.0f} m "
        f"({ARKANSAS_PIXELS / tile_px**2:.0f} tiles of {tile_px}^2 px), {ARKANSAS_OBSERVATIONS_PER_PIXEL} "
        f"observations per pixel = {ARKANSAS_PIXEL_OBSERVATIONS:.3g} px-obs, ~{ARKANSAS_COG_BYTES / 1e9:.0f} GB of COGs.",
        "",
        f"- Time: {summary.cpu_s_per_mpx_obs:.3f} CPU s/Mpx-obs = {cpu_hours:.1f} CPU-hours; on {PROJECTION_CORES} "
        f"cores {ideal_hours:.2f} h if they scale perfectly{at_efficiency if math.isfinite(efficiency) else ''}.",
        f"- Fetched: {summary.fetched_over_cog_bytes:.3f} x the COG bytes = {fetched_gb:.0f} GB from S3.",
        projected_memory(rows, "peak_scratch_bytes", "Scratch disk", tile_px),
        projected_memory(rows, "peak_rss_bytes", "RSS", tile_px),
    ]


# --- Report --------------------------------------------------------------------------------------


def machine_description() -> str:
    """CPU model, cores, memory and load average of this machine."""
    cpu_model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu_model = models[0] if models else cpu_model
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    memory_gb = psutil.virtual_memory().total / 1e9
    return f"{cpu_model}, {os.cpu_count()} cores, {memory_gb:.0f} GB memory, load average {load}"


def results_section(
    command: str, machine: str, rows: Sequence[RunFigures], summary: Summary, tile_px: int, tiled: bool, masker: str
) -> str:
    """This script's section of RESULTS.md: what is run and measured, the table, the summary, the projection."""
    workers = " and ".join(str(count) for count in sorted({row.workers for row in rows}))
    tiles = f"output tiles of {tile_px}^2 px" if tiled else "the flow has no tile settings (one grid)"
    what = (
        "What is run: the real monthly flow through its CLI (`python -m flows.run`), one process per run, on a "
        f"local Dask cluster of {workers} worker processes, masker `{masker}`, over synthetic 10 m months "
        f"({rows[0].dates} dates, Earth Search style COGs with {COG_BLOCK_PX} px internal tiles in moto S3, items "
        f"in rustac, all on 127.0.0.1) whose AOI is the scenes' grid extent; {tiles}; products to S3. CPU = user + "
        "system of the flow process and its descendants; RSS = peak of their sum (0.2 s samples; the servers are "
        "not in it); scratch = peak allocated size of workspace + staging + the run's TMPDIR; fetched = body bytes "
        "the scene store served, over the compressed COG tiles under the AOI; flow run s from the Prefect API. "
        "Summary figures: largest size ('16x') against smallest ('1x'), each the worst over the worker counts; "
        "disk and RSS at equal tiles in flight (worker counts the smallest AOI's tiles keep busy)."
    )
    return "\n".join(
        [
            f"## Scale (issue 9) {SECTION_MARKER}",
            "",
            textwrap.fill(what, RESULTS_LINE_CHARS),
            "",
            textwrap.fill(f"`{command}`, {machine}, {date.today().isoformat()}:", RESULTS_LINE_CHARS),
            "",
            markdown_table(rows),
            "",
            f"Last line: `{summary.line()}`.",
            "",
            "Projection (assumes the measured rates hold at Arkansas size):",
            "",
            *arkansas_projection(rows, summary, tile_px),
            "",
        ]
    )


def replace_section(results_path: Path, section: str) -> None:
    """Put `section` in place of this script's section of `results_path` (appended when absent)."""
    lines = results_path.read_text().splitlines() if results_path.exists() else []
    start = next((index for index, line in enumerate(lines) if line.startswith("## ") and SECTION_MARKER in line), None)
    if start is None:
        kept_before, kept_after = lines, []
    else:
        end = next((index for index in range(start + 1, len(lines)) if lines[index].startswith("## ")), len(lines))
        kept_before, kept_after = lines[:start], lines[end:]
    before = [""] if kept_before and kept_before[-1] else []
    after = [""] if kept_after else []
    text = [*kept_before, *before, *section.rstrip("\n").splitlines(), *after, *kept_after]
    results_path.write_text("\n".join(text) + "\n")


# --- Main ----------------------------------------------------------------------------------------


def mask_fields(masker: str, random_weights: bool, cache_dir: Path) -> dict[str, Any]:
    """The runs' mask settings; with `random_weights`, a model folder of randomly initialised weights."""
    if not random_weights:
        return {"masker": masker}
    model_version = model_version_for(MaskSettings(masker=masker))
    model_dir = cache_dir / f"ocm-random-weights-v{model_version}"
    if not model_dir.exists():
        from bench.mask import write_random_weights  # torch and the model library: only for this option

        partial = Path(tempfile.mkdtemp(dir=cache_dir))
        write_random_weights(partial, model_version)
        partial.rename(model_dir)
    return {"masker": masker, "model_dir": str(model_dir)}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES_PX), help="AOI edges in px")
    parser.add_argument("--workers", type=int, nargs="+", default=list(DEFAULT_WORKERS), help="Dask worker counts")
    parser.add_argument("--dates", type=int, default=len(DEFAULT_DATES), choices=range(1, len(DEFAULT_DATES) + 1))
    parser.add_argument("--tile-size", type=int, default=DEFAULT_TILE_PX, help="output tile edge in px (tiled flow)")
    parser.add_argument("--masker", default="scl", choices=masker_names())
    parser.add_argument("--random-weights", action="store_true", help="randomly initialised OmniCloudMask weights")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where generated months are kept")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="markdown file of the results section")
    arguments = parser.parse_args()
    if len(set(arguments.sizes)) < 2:
        parser.error("--sizes needs at least two different sizes (the ratios compare the largest to the smallest)")
    return arguments


def main() -> None:
    arguments = parse_arguments()
    sizes, worker_counts = sorted(set(arguments.sizes)), sorted(set(arguments.workers))
    command = " ".join(["python bench/scale.py", *sys.argv[1:]])
    tiled = "tiles" in MosaicSettings.model_fields
    print(f"scale: sizes {sizes} px, {arguments.dates} dates, workers {worker_counts}, tiled flow: {tiled}")
    print(machine_description(), flush=True)
    arguments.cache_dir.mkdir(parents=True, exist_ok=True)
    rows: list[RunFigures] = []
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as work_dir, ExitStack() as stack:
        scene_store = S3Server()
        stack.callback(scene_store.stop)
        product_store = S3Server()
        stack.callback(product_store.stop)
        products_bucket = product_store.make_bucket("scale-bench-products")
        prefect_home = Path(work_dir) / "prefect"
        prefect_home.mkdir()
        prefect = stack.enter_context(PrefectServer(prefect_home))
        with temporary_settings({PREFECT_API_URL: prefect.api_url}):
            save_products_block(PRODUCTS_BLOCK, products_bucket, PRODUCTS_FOLDER, product_store.endpoint_url)
        bench = Bench(
            scene_store=scene_store,
            product_store=product_store,
            products_bucket=products_bucket,
            prefect=prefect,
            work_dir=Path(work_dir),
            tile_px=arguments.tile_size,
            mask=mask_fields(arguments.masker, arguments.random_weights, arguments.cache_dir),
        )
        for size_px in sizes:
            month = cached_month(arguments.cache_dir, size_px, arguments.dates)
            check_aoi_grid(month)
            cog_bytes = sum(cog_bytes_under(path, month.grid) for path in month.asset_files())
            with served_month(month, scene_store, Path(work_dir) / f"stac-{size_px}") as api_url:
                for workers in worker_counts:
                    rows.append(run_once(bench, month, api_url, workers, cog_bytes))
                    cells = zip(TABLE_HEADER, rows[-1].cells(), strict=True)
                    print(" | ".join(f"{name}: {cell}" for name, cell in cells), flush=True)
    summary = summarise(rows, arguments.tile_size)
    print(markdown_table(rows))
    section = results_section(
        command, machine_description(), rows, summary, arguments.tile_size, tiled, arguments.masker
    )
    replace_section(arguments.results, section)
    print("\n".join(arkansas_projection(rows, summary, arguments.tile_size)))
    print(summary.line())


if __name__ == "__main__":
    main()

"""Reading a scene's window of an output tile onto the grid: S3 and HTTP sources, harmonisation, any CRS, retries."""

import json
import re
import time
import uuid
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, box
from prefect.client.orchestration import get_client
from prefect.states import Failed
from rasterio.enums import Resampling

from blocks.publish import month_destination
from tasks.acquisition import read as read_module
from tasks.acquisition.read import Lattice, harmonised_reflectance, read_scene_window, source_lattice
from tasks.acquisition.search import scene_from_item
from tasks.core.errors import SceneOutsideAOI, SceneReadError
from tasks.core.month import Month
from tasks.core.retry import retry_io_failure
from tasks.core.scene import (
    NODATA,
    REFLECTANCE_BANDS,
    SCENE_BANDS,
    SceneAsset,
    SceneItem,
    SceneWindow,
    scene_items_json,
)
from tasks.core.settings import CompositeSettings, MaskSettings, ReadSettings
from tasks.geometry.aoi import aoi_pixel_mask
from tasks.geometry.grid import grid_for_aoi
from tasks.geometry.tiles import OutputTile, read_grid, tile_grid
from tasks.products.metadata import ProductNames
from tasks.storage.workspace import Workspace
from tasks.testing.fault_proxy import FaultProxy
from tasks.testing.fault_scenarios import (
    CLAIMS_FULL_SIZE,
    SHORT_RANGES,
    PermanentFault,
    failure_requests,
    reads_through,
)
from tasks.testing.servers import S3Server
from tasks.testing.synthetic import (
    SCL_FILE,
    TILE_GRID,
    SyntheticMonth,
    full_resolution,
    make_synthetic_month,
    synthetic_grid,
)
from tasks.tiling.tile import MonthPlan, TileRecord, build_tile_task

BUCKET = "read-test"
REAL_TILE = "l2a_29RKH_20200219"
REAL_FILES = {"red": "B04", "green": "B03", "blue": "B02", "nir": "B08", "scl": SCL_FILE}
FAST_RETRIES = ReadSettings(read_attempts=3, retry_base_delay_s=0.0)
DUPLICATED = date(2020, 3, 5)
SYNTHETIC_GRID = synthetic_grid(shape=(640, 640), resolution=100.0, crs="EPSG:32629", origin=(199_980.0, 2_800_020.0))
REAL_TILE_SIZE_PX, REAL_HALO_PX = 256, 40
PERMANENT_FAILURE_MAX_S = 10.0
"""A permanent failure ends with its first attempt; with the default `ReadSettings` a transient one
waits at least half the nominal delays between 8 attempts, 0.5 x (1+2+4+8+16+16+16) = 31.5 s."""


def scene_item(stac_item: dict[str, Any]) -> SceneItem:
    """The SceneItem the search stage makes of an item dict."""
    scene = scene_from_item(stac_item)
    assert scene is not None, f"search rejected {stac_item['id']}"
    return scene


def real_scene_item(shared_s2: Path, href_for: dict[str, str]) -> SceneItem:
    """The real tile's item (baseline 02.14: scale 0.0001, offset 0) with the given asset hrefs."""
    stac_item = json.loads((shared_s2 / REAL_TILE / "S2A_29RKH_20200219_0_L2A.json").read_text())
    return SceneItem(
        item_id=stac_item["id"],
        acquired=datetime.fromisoformat(stac_item["properties"]["datetime"]),
        tile_id="29RKH",
        processing_baseline=stac_item["properties"]["s2:processing_baseline"],
        cloud_cover=stac_item["properties"]["eo:cloud_cover"],
        assets={band: SceneAsset(href=href, scale=0.0001, offset=0.0) for band, href in href_for.items()},
        footprint=stac_item["geometry"],
    )


def pixel_box(grid: GeoBox, rows: tuple[int, int], cols: tuple[int, int]) -> Geometry:
    """The polygon of a block of grid pixels, in the grid's CRS."""
    return grid[rows[0] : rows[1], cols[0] : cols[1]].extent


def on_grid(window: SceneWindow, grid: GeoBox) -> np.ndarray:
    """The window's bands placed on `grid` (which holds the window's grid), 0 elsewhere."""
    placed = np.zeros((len(SCENE_BANDS), *grid.shape.yx), np.uint16)
    placed[(slice(None), *grid.overlap_roi(window.grid))] = window.bands
    return placed


def upload_real_tile(s3_server: S3Server, shared_s2: Path) -> dict[str, str]:
    """The real tile's five files under a fresh prefix (GDAL caches by URL): band -> s3:// URI."""
    bucket, prefix = s3_server.make_bucket(BUCKET), f"real/{uuid.uuid4().hex}"
    return {
        band: s3_server.upload(shared_s2 / REAL_TILE / f"{file_name}.tif", bucket, f"{prefix}/{file_name}.tif")
        for band, file_name in REAL_FILES.items()
    }


def upload_month(s3_server: S3Server, out_dir: Path, **options: Any) -> SyntheticMonth:
    """A synthetic month whose assets are uploaded to moto under a fresh prefix, hrefs s3://."""
    bucket, prefix = s3_server.make_bucket(BUCKET), f"synthetic/{uuid.uuid4().hex}"

    def upload(path: Path) -> str:
        return s3_server.upload(path, bucket, f"{prefix}/{path.relative_to(out_dir).as_posix()}")

    return make_synthetic_month(out_dir, grid=SYNTHETIC_GRID, href_for=upload, **options)


@pytest.fixture(scope="module")
def local_month(tmp_path_factory: pytest.TempPathFactory) -> SyntheticMonth:
    """Two dates on a 640 x 640 100 m grid, local files; 2020-03-05 published as _0_ and _1_."""
    return make_synthetic_month(
        tmp_path_factory.mktemp("month"), dates=(DUPLICATED, date(2020, 3, 10)), grid=SYNTHETIC_GRID, duplicated_dates={DUPLICATED}
    )


@pytest.mark.parametrize("scheme", ["s3", "http"])
def test_remote_read_of_a_tile_and_its_halo_equals_the_real_tile(scheme: str, s3_server: S3Server, shared_s2: Path) -> None:
    uris = upload_real_tile(s3_server, shared_s2)
    hrefs = uris if scheme == "s3" else {
        band: s3_server.http_url(*uri.removeprefix("s3://").split("/", 1)) for band, uri in uris.items()
    }  # fmt: skip
    aoi = pixel_box(TILE_GRID, (300, 700), (250, 610))
    halo_box = read_grid(tile_grid(TILE_GRID, REAL_TILE_SIZE_PX, OutputTile(1, 1)), REAL_HALO_PX)
    window = read_scene_window(real_scene_item(shared_s2, hrefs), halo_box, aoi, ReadSettings())

    rows, cols = TILE_GRID.overlap_roi(window.grid)
    # The tile (rows and columns 256..512) and its 40 px halo, cut by the AOI (rows 300.., columns 250..).
    assert (rows, cols) == (slice(300, 552), slice(250, 552)) and window.grid == TILE_GRID[rows, cols]
    assert window.bands.dtype == np.uint16 and window.bands.shape == (len(SCENE_BANDS), 252, 302)
    inside = aoi_pixel_mask(aoi, window.grid)
    for band_index, (band, file_name) in enumerate(REAL_FILES.items()):
        with rasterio.open(shared_s2 / REAL_TILE / f"{file_name}.tif") as tile_file:
            tile = tile_file.read(1)
        if band == "scl":
            tile = full_resolution(tile, TILE_GRID.shape.yx)
        np.testing.assert_array_equal(window.bands[band_index], np.where(inside, tile[rows, cols], NODATA))
    assert (window.bands[: len(REFLECTANCE_BANDS), inside] != NODATA).all()


def test_window_is_the_scene_bands_on_a_slice_of_the_read_grid(local_month: SyntheticMonth) -> None:
    item = scene_item(local_month.items[0])
    aoi = pixel_box(local_month.grid, (100, 400), (200, 500))
    halo_box = read_grid(tile_grid(local_month.grid, 128, OutputTile(0, 1)), 16)  # rows -16..144, columns 112..272
    window = read_scene_window(item, halo_box, aoi, ReadSettings())
    assert window.item_id == item.item_id
    assert window.grid == halo_box[halo_box.overlap_roi(window.grid)]
    assert local_month.grid.overlap_roi(window.grid) == (slice(100, 144), slice(200, 272))
    assert window.bands.shape == (len(SCENE_BANDS), 44, 72) and window.bands.dtype == np.uint16
    assert np.isin(window.bands[SCENE_BANDS.index("scl")], np.arange(12)).all()


def test_a_tiles_pixels_do_not_depend_on_its_halo(local_month: SyntheticMonth) -> None:
    item = scene_item(local_month.items[2])
    aoi = box(205_000, 2_745_000, 240_000, 2_775_000, "EPSG:32629")
    grid = grid_for_aoi(aoi, "EPSG:32629", 60.0)  # not the scenes' 100 m pixels: every value is resampled
    tile_box = tile_grid(grid, 256, OutputTile(0, 0))
    alone = read_scene_window(item, tile_box, aoi, ReadSettings())
    with_halo = read_scene_window(item, read_grid(tile_box, 64), aoi, ReadSettings())
    assert with_halo.grid.shape.x > alone.grid.shape.x
    cropped = with_halo.bands[(slice(None), *with_halo.grid.overlap_roi(alone.grid))]
    np.testing.assert_array_equal(cropped, alone.bands)
    assert (alone.bands[0] != NODATA).mean() > 0.95


def test_both_publications_harmonise_to_the_same_surface(local_month: SyntheticMonth) -> None:
    old, new = (scene_item(item) for item in local_month.items[:2])
    assert (old.assets["red"].offset, new.assets["red"].offset) == (0.0, -0.1)
    aoi = box(205_000, 2_745_000, 240_000, 2_775_000, "EPSG:32629")
    shifted_grid = grid_for_aoi(aoi, "EPSG:32629", 60.0)  # other pixel size and alignment: bilinear mixes DNs
    old_pixels, new_pixels = (read_scene_window(item, shifted_grid, aoi, ReadSettings()).bands for item in (old, new))
    difference = np.abs(old_pixels.astype(int) - new_pixels.astype(int))
    assert difference[:4].max() <= 1 and np.array_equal(old_pixels[4], new_pixels[4])
    assert (old_pixels[:4] > 0).mean() > 0.95

    on_tile_grid = read_scene_window(new, local_month.grid, aoi, ReadSettings())
    rows, cols = local_month.grid.overlap_roi(on_tile_grid.grid)
    clear = local_month.clear_mask[new.item_id][rows, cols] & aoi_pixel_mask(aoi, on_tile_grid.grid)
    expected = local_month.clear_value(new.item_id)[:, rows, cols]
    np.testing.assert_array_equal(on_tile_grid.bands[:4, clear], expected[:, clear])


@pytest.mark.parametrize("crs", ["EPSG:32629", "EPSG:5070", "EPSG:3857", "EPSG:4326"])
def test_footprint_matches_the_aoi_in_any_crs(crs: str, local_month: SyntheticMonth) -> None:
    centre = local_month.grid.extent.centroid.to_crs("EPSG:4326").coords[0]
    aoi = Geometry(shapely.Point(centre).buffer(0.15).simplify(0.01), crs="EPSG:4326")  # ~30 km across, inside
    grid = grid_for_aoi(aoi, crs, 200.0)
    window = read_scene_window(scene_item(local_month.items[2]), grid, aoi, ReadSettings())
    assert grid[grid.overlap_roi(window.grid)] == window.grid
    valid = on_grid(window, grid)[0] != NODATA
    expected = aoi_pixel_mask(aoi, grid)
    assert (valid & expected).sum() / (valid | expected).sum() >= 0.98
    assert (valid & expected).sum() / expected.sum() == pytest.approx(1.0, abs=0.01)


def test_small_aoi_fetches_a_small_part_of_the_files(s3_server: S3Server, shared_s2: Path) -> None:
    uris = upload_real_tile(s3_server, shared_s2)
    full_bytes = sum((shared_s2 / REAL_TILE / f"{name}.tif").stat().st_size for name in REAL_FILES.values())
    aoi = pixel_box(TILE_GRID, (100, 447), (100, 447))  # 347 x 347 px: 10 % of the tile
    s3_server.reset_counters()
    read_scene_window(real_scene_item(shared_s2, uris), TILE_GRID, aoi, ReadSettings())
    fetched = s3_server.bytes_served()
    assert 0 < fetched < 0.5 * full_bytes


def test_transient_faults_are_retried(s3_server: S3Server, tmp_path: Path) -> None:
    clean_month = upload_month(s3_server, tmp_path / "clean_month", dates=(DUPLICATED,))
    clean_item = scene_item(clean_month.items[0])
    aoi = pixel_box(clean_month.grid, (100, 300), (100, 300))
    s3_server.reset_counters()
    read_scene_window(clean_item, clean_month.grid, aoi, FAST_RETRIES)
    clean_requests = s3_server.requests_for(clean_item.assets["red"].href.split("/", 3)[3])
    month = upload_month(s3_server, tmp_path / "month", dates=(DUPLICATED,))  # the same files, not yet in GDAL's cache
    item = scene_item(month.items[0])
    red_key = item.assets["red"].href.split("/", 3)[3]
    s3_server.fail_next(red_key, 2)
    s3_server.reset_counters()
    window = read_scene_window(item, month.grid, aoi, FAST_RETRIES)
    assert s3_server.requests_for(red_key) == clean_requests + 2  # each failed attempt cost one request
    rows, cols = month.grid.overlap_roi(window.grid)
    clear = month.clear_mask[item.item_id][rows, cols]
    np.testing.assert_array_equal(window.bands[:4, clear], month.clear_value(item.item_id)[:, rows, cols][:, clear])


def one_tile_plan(month: SyntheticMonth, aoi: Geometry, root: Path) -> MonthPlan:
    """A month plan of scl-masked 256 px tiles over `month`'s grid, its items in a local workspace, products local."""
    workspace = Workspace(str(root / "workspace"))
    items_name = f"items/{uuid.uuid4().hex}.json"
    workspace.write_bytes(items_name, scene_items_json([scene_item(item) for item in month.items]))
    return MonthPlan(
        aoi=aoi,
        grid=month.grid,
        workspace=workspace,
        items_name=items_name,
        tiles_digest=uuid.uuid4().hex,
        aoi_name="read-test",
        month_label="2020-03",
        names=ProductNames.for_run("read-test", Month(2020, 3)),
        tile_size_px=256,
        single_tile=False,
        read=FAST_RETRIES,
        mask=MaskSettings(masker="scl"),
        composite=CompositeSettings(device="cpu"),
        max_concurrent_scenes=2,
        scratch_dir=root / "scratch",
        destination=month_destination(None, "read-test", "2020-03", root / "products"),
    )


@pytest.mark.parametrize(
    ("status", "reason", "fewest_requests", "most_requests"),
    [
        (
            503,
            rf"nir: .+ \(transient; gave up after {FAST_RETRIES.read_attempts} attempts over 0 s\)",
            FAST_RETRIES.read_attempts,
            2 * FAST_RETRIES.read_attempts,
        ),
        (404, r"nir: not found \(HTTP 404\)", 1, 1),
    ],
    ids=["503", "404"],
)
def test_requests_per_failing_asset_are_bounded_across_every_retry_layer(
    status: int,
    reason: str,
    fewest_requests: int,
    most_requests: int,
    prefect_harness: None,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    """The reader is the only layer that retries a read: GDAL does not, and the tile task does not.

    `reason` is a pattern of the recorded reason (a 503's words are GDAL's or S3's, by attempt).
    A transient failure is tried `read_attempts` times, each attempt reaching the server (at least
    one request: a retry reopens past GDAL's cache of the failure); an attempt that fails at open
    costs GDAL at most 2 requests (the reopen states the file, then reads it). A permanent failure
    ends with its first attempt. The tile records the scene as failed and completes at its first run."""
    from prefect import flow

    month = upload_month(s3_server, tmp_path / "month", dates=(DUPLICATED,))
    item = scene_item(month.items[0])
    nir_key = item.assets["nir"].href.split("/", 3)[3]
    plan = one_tile_plan(month, pixel_box(month.grid, (0, 200), (0, 200)), tmp_path)
    s3_server.fail_always(nir_key, status=status)
    s3_server.reset_counters()

    @flow
    def build_one_tile() -> tuple[bool, Any, TileRecord]:
        state = build_tile_task(plan, OutputTile(0, 0), return_state=True)
        return state.is_completed(), state.state_details.task_run_id, state.result()

    completed, task_run_id, record = build_one_tile()

    assert completed and list(record.failed) == [item.item_id] and re.fullmatch(reason, record.failed[item.item_id])
    assert record.contributing_scenes == () and record.valid_pixels == 0
    assert fewest_requests <= s3_server.requests_for(nir_key) <= most_requests
    with get_client(sync_client=True) as client:
        assert client.read_task_run(task_run_id).run_count == 1


@pytest.mark.parametrize("fault", ["always 503", "missing object"])
def test_failing_asset_raises_with_a_one_line_reason(fault: str, s3_server: S3Server, tmp_path: Path) -> None:
    month = upload_month(s3_server, tmp_path / "month", dates=(DUPLICATED,))
    item = scene_item(month.items[0])
    nir_href = item.assets["nir"].href
    if fault == "always 503":
        s3_server.fail_always(nir_href.split("/", 3)[3])
    else:
        missing = SceneAsset(href=nir_href.replace("B08.tif", "B08_missing.tif"), scale=0.0001, offset=0.0)
        item = replace(item, assets={**item.assets, "nir": missing})
    with pytest.raises(SceneReadError) as raised:
        read_scene_window(item, month.grid, pixel_box(month.grid, (0, 200), (0, 200)), FAST_RETRIES)
    assert raised.value.item_id == item.item_id and raised.value.asset_key == "nir"
    assert item.item_id in str(raised.value) and "\n" not in str(raised.value)
    assert raised.value.transient == (fault == "always 503")
    if fault == "always 503":
        assert raised.value.scene_reason.endswith("(transient; gave up after 3 attempts over 0 s)")
    else:
        assert raised.value.scene_reason == "nir: not found (HTTP 404)"


def through_proxy(item: SceneItem, proxy: FaultProxy, scheme: str) -> SceneItem:
    """`item` read through `proxy`: its s3:// hrefs as they are (the proxy is the S3 endpoint), or as http URLs."""
    if scheme == "s3":
        return item
    assets = {
        band: replace(asset, href=proxy.http_url(*asset.href.removeprefix("s3://").split("/", 1)))
        for band, asset in item.assets.items()
    }
    return replace(item, assets=assets)


@pytest.mark.parametrize("scheme", ["s3", "http"])
@pytest.mark.parametrize("fault", [SHORT_RANGES, CLAIMS_FULL_SIZE], ids=lambda fault: fault.name)
def test_a_server_answering_short_fails_the_asset_at_once_as_truncated(
    fault: PermanentFault, scheme: str, fault_proxy: FaultProxy, s3_server: S3Server, tmp_path: Path
) -> None:
    """A server that sends half of each range past the header (a short 206), or a store that holds 40 %
    of the object while claiming all of it, fails the asset at its first attempt: the failing request,
    then one probe of the bytes the read missed, which come short again."""
    intact = upload_month(s3_server, tmp_path / "intact", dates=(DUPLICATED,))
    broken = upload_month(s3_server, tmp_path / "broken", dates=(DUPLICATED,))  # the same files under other keys
    intact_item, broken_item = (scene_item(month.items[0]) for month in (intact, broken))
    intact_path, broken_path = ("/" + item.assets[fault.band].href.removeprefix("s3://") for item in (intact_item, broken_item))
    aoi = pixel_box(broken.grid, (0, 640), (0, 640))
    fault.apply(fault_proxy, broken_path, len(s3_server.read(*broken_path.split("/", 2)[1:])))
    intact_item, broken_item = (through_proxy(item, fault_proxy, scheme) for item in (intact_item, broken_item))

    with reads_through(fault_proxy):
        read_scene_window(intact_item, intact.grid, aoi, ReadSettings())
        started = time.monotonic()
        with pytest.raises(SceneReadError) as raised:
            read_scene_window(broken_item, broken.grid, aoi, ReadSettings())
        seconds = time.monotonic() - started

    reason = raised.value.scene_reason
    assert reason.startswith(fault.expected_reason) and "arrived, twice" in reason and not raised.value.transient, reason
    spent = failure_requests(fault, fault_proxy.requests(broken_path), fault_proxy.requests(intact_path))
    assert 1 <= spent <= 2, (fault_proxy.requests(broken_path), fault_proxy.requests(intact_path))
    assert seconds < PERMANENT_FAILURE_MAX_S


@pytest.mark.parametrize("scheme", ["http", "s3"])
def test_an_asset_host_that_does_not_resolve_fails_at_once(
    scheme: str, unresolvable_host: str, local_month: SyntheticMonth, monkeypatch: pytest.MonkeyPatch
) -> None:
    if scheme == "http":
        href = f"http://{unresolvable_host}/scenes/B04.tif"
    else:
        href = "s3://scenes/B04.tif"
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{unresolvable_host}:9000")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # credentials from the environment: nothing else is asked
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    item = scene_item(local_month.items[0])
    item = replace(item, assets={**item.assets, "red": replace(item.assets["red"], href=href)})

    started = time.monotonic()
    with pytest.raises(SceneReadError) as raised:
        read_scene_window(item, local_month.grid, pixel_box(local_month.grid, (0, 200), (0, 200)), ReadSettings())

    assert raised.value.scene_reason == f"red: host {unresolvable_host} does not resolve (DNS)"
    assert not raised.value.transient and time.monotonic() - started < PERMANENT_FAILURE_MAX_S


@pytest.mark.parametrize("crs", ["EPSG:32629", "EPSG:3857"])
def test_blocks_do_not_change_the_result(crs: str, local_month: SyntheticMonth) -> None:
    item = scene_item(local_month.items[2])
    aoi = Geometry(shapely.Polygon([(210_000, 2_790_000), (262_000, 2_776_000), (250_000, 2_740_000), (215_000, 2_750_000)]), crs="EPSG:32629")
    grid = grid_for_aoi(aoi, crs, 60.0)  # not the tiles' 100 m pixels: every value is resampled
    whole = read_scene_window(item, grid, aoi, ReadSettings(block_size=2048))
    blocks = read_scene_window(item, grid, aoi, ReadSettings(block_size=256))
    assert whole.grid == blocks.grid and max(whole.grid.shape.yx) > 2 * 256
    whole_pixels, block_pixels = whole.bands.astype(int), blocks.bands.astype(int)
    assert np.array_equal(whole_pixels != NODATA, block_pixels != NODATA)
    if crs == "EPSG:32629":
        np.testing.assert_array_equal(whole_pixels, block_pixels)
    else:  # GDAL's warper picks its source window per request: close, not bit-identical (see AssetReader)
        difference = np.abs(whole_pixels[:4] - block_pixels[:4])
        assert difference.mean() < 0.01 * whole_pixels[:4].mean() and np.percentile(difference, 99) <= 50


def test_partial_scene_holds_data_only_in_its_swath(tmp_path: Path) -> None:
    month = make_synthetic_month(tmp_path / "month", dates=(DUPLICATED,), grid=SYNTHETIC_GRID, partial_dates={DUPLICATED})
    item = scene_item(month.items[0])
    aoi = month.grid.extent.to_crs("EPSG:4326").buffer(-0.05)
    window = read_scene_window(item, month.grid, aoi, ReadSettings())
    rows, cols = month.grid.overlap_roi(window.grid)
    inside = aoi_pixel_mask(aoi, window.grid)
    data = month.data_mask[item.item_id][rows, cols] & inside
    valid = (window.bands[: len(REFLECTANCE_BANDS)] != NODATA).all(axis=0)
    assert not (valid & ~inside).any()
    assert (valid ^ data).sum() <= 0.01 * data.sum()
    assert 0.3 < valid.sum() / inside.sum() < 0.9


def test_scene_outside_the_aoi(local_month: SyntheticMonth) -> None:
    far_away = box(10.0, 45.0, 10.1, 45.1, "EPSG:4326")
    with pytest.raises(SceneOutsideAOI, match=local_month.items[0]["id"]):
        read_scene_window(scene_item(local_month.items[0]), grid_for_aoi(far_away, None, 100.0), far_away, ReadSettings())


def test_scene_outside_the_tile_and_its_halo(local_month: SyntheticMonth) -> None:
    western_half = pixel_box(local_month.grid, (0, 640), (0, 320))
    eastern_tile = read_grid(tile_grid(local_month.grid, 256, OutputTile(0, 2)), 32)  # columns 480..640
    with pytest.raises(SceneOutsideAOI):
        read_scene_window(scene_item(local_month.items[0]), eastern_tile, western_half, ReadSettings())


def test_harmonised_reflectance() -> None:
    digital_numbers = np.array([0, 1, 900, 1000, 1001, 4321, 65535], dtype=np.float32)
    old = harmonised_reflectance(digital_numbers, SceneAsset(href="x", scale=0.0001, offset=0.0))
    new = harmonised_reflectance(digital_numbers, SceneAsset(href="x", scale=0.0001, offset=-0.1))
    np.testing.assert_array_equal(old, [0, 1, 900, 1000, 1001, 4321, 65535])
    np.testing.assert_array_equal(new, [0, 1, 1, 1, 1, 3321, 64535])
    assert old.dtype == new.dtype == np.uint16


def test_the_tile_task_leaves_read_retries_to_the_reader() -> None:
    exhausted = SceneReadError("S2B_X", "red", "HTTP 503 (transient; gave up after 8 attempts over 60 s)", transient=True)
    assert not retry_io_failure(None, None, Failed(data=exhausted))
    assert retry_io_failure(None, None, Failed(data=OSError("workspace disk full")))


def test_a_grid_on_the_source_lattice_is_read_without_resampling(local_month: SyntheticMonth, monkeypatch: pytest.MonkeyPatch) -> None:
    red = local_month.items[0]["assets"]["red"]["href"]
    with rasterio.open(red) as source:
        grid = GeoBox(source.shape, source.transform, source.crs)
        bilinear, nearest = Resampling.bilinear, Resampling.nearest
        assert source_lattice(source, grid[10:50, 20:60], bilinear) == Lattice(10, 20, 1)
        assert source_lattice(source, grid.pad(3)[0:8, 0:8], bilinear) == Lattice(-3, -3, 1)
        half_pixel = GeoBox(grid.shape, grid.affine * Affine.translation(0.5, 0), grid.crs)
        assert source_lattice(source, half_pixel, nearest) is None
        assert source_lattice(source, GeoBox(grid.shape, grid.affine * Affine.scale(2), grid.crs), nearest) is None
        finer = GeoBox(grid.shape, grid.affine * Affine.translation(3, 1) * Affine.scale(0.5), grid.crs)
        assert source_lattice(source, finer, nearest) == Lattice(2, 6, 2)
        assert source_lattice(source, finer, bilinear) is None, "upsampling by bilinear interpolates"
        assert source_lattice(source, grid.to_crs("EPSG:3857"), nearest) is None

    item = scene_from_item(local_month.items[0])
    on_lattice = read_scene_window(item, grid.pad(5), grid.extent, ReadSettings())
    monkeypatch.setattr(read_module, "source_lattice", lambda source, subgrid, resampling: None)
    warped = read_scene_window(item, grid.pad(5), grid.extent, ReadSettings())
    assert on_lattice.grid == warped.grid and on_lattice.bands.any()
    assert np.array_equal(on_lattice.bands, warped.bands)


@pytest.mark.parametrize(("scale", "offset"), [(0.0001, -0.1), (0.0001, 0.0), (0.0002, 0.05)])
def test_integer_dns_harmonise_through_the_table_as_through_the_formula(scale: float, offset: float) -> None:
    every_dn = np.arange(1 << 16, dtype=np.uint16)
    asset = SceneAsset(href="", scale=scale, offset=offset)
    assert np.array_equal(harmonised_reflectance(every_dn, asset), harmonised_reflectance(every_dn.astype(np.float32), asset))

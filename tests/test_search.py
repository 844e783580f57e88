"""Scene search against real catalogue responses: Earth Search v1 served by rustac, a Planetary Computer file."""

import copy
import json
import logging
import random
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from odc.geo.geom import box

import tasks.acquisition.search
import tasks.core.retry
from tasks.acquisition.search import (
    API_RETRY,
    BOA_OFFSET,
    DN_SCALE,
    query_stac_api,
    scene_from_item,
    search_scenes,
    search_scenes_task,
    tile_id,
)
from tasks.core.errors import InvalidSettings, NoScenesFound, StacApiError
from tasks.core.month import Month
from tasks.core.retry import RetryPolicy
from tasks.core.scene import REFLECTANCE_BANDS, SCENE_BANDS, SCL_BAND
from tasks.core.settings import SearchSettings
from tasks.geometry.aoi import WGS84, aoi_in_crs, load_aoi
from tasks.testing.fault_proxy import FaultProxy
from tasks.testing.synthetic import (
    COLLECTION_ID,
    DEFAULT_DATES,
    NEW_BASELINE,
    footprint_4326,
    stac_collection,
    stac_item,
    synthetic_grid,
)

EARTH_SEARCH_COLLECTION = "sentinel-2-l2a"
EARTH_SEARCH_PAGES = "stac_earthsearch_v1/earthsearch_v1_s2l2a_bbox9-47-10-48_20200301-05_page{}.json"
PLANETARY_COMPUTER_FILE = "stac_planetary_computer/site2-2020_jun_jul-35MNM.geojson"
EARTH_SEARCH_AOI = box(9, 47, 10, 48, "EPSG:4326")
PLANETARY_COMPUTER_AOI = box(27.2, -8.0, 27.5, -7.5, "EPSG:4326")


@pytest.fixture(scope="module")
def earth_search_items(shared_s2: Path) -> list[dict]:
    """The 16 items of the real Earth Search v1 search (bbox 9,47,10,48, 2020-03-01..05), all pages."""
    items: list[dict] = []
    for page in (1, 2, 3):
        items += json.loads((shared_s2 / EARTH_SEARCH_PAGES.format(page)).read_text())["features"]
    return items


@pytest.fixture
def earth_search_api(stac_api_factory, earth_search_items: list[dict]) -> str:
    return stac_api_factory(stac_collection(earth_search_items, EARTH_SEARCH_COLLECTION), earth_search_items)


@pytest.fixture(scope="module")
def planetary_computer_items(shared_s2: Path) -> list[dict]:
    return json.loads((shared_s2 / PLANETARY_COMPUTER_FILE).read_text())["features"]


def _write_items(path: Path, items: list[dict]) -> str:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return str(path)


def _in_month(items: list[dict], month: str) -> list[dict]:
    period = Month.parse(month)
    return [
        item for item in items
        if period.start <= datetime.fromisoformat(item["properties"]["datetime"]) < period.following_start
    ]


def test_earth_search_twins_deduplicate_to_the_offset_baseline(
    earth_search_api: str, earth_search_items: list[dict]
) -> None:
    settings = SearchSettings(
        stac_api_url=earth_search_api, collection=EARTH_SEARCH_COLLECTION, max_cloud_cover=100, page_size=3
    )
    found = search_scenes(EARTH_SEARCH_AOI, "2020-03", settings)
    scenes = found.scenes

    # 3 items per page: finding all 16 needs every page of the search.
    newer_twins = {item["id"] for item in earth_search_items if "_1_L2A" in item["id"]}
    assert len(earth_search_items) == 16 and len(newer_twins) == 8
    assert {scene.item_id for scene in scenes} == newer_twins
    assert found.items_found == 16
    assert {skipped.item_id: skipped.reason for skipped in found.left_out} == {
        twin.replace("_1_L2A", "_0_L2A"): f"an older processing of the same acquisition as {twin}" for twin in newer_twins
    }
    assert len({(scene.tile_id, scene.acquired.date()) for scene in scenes}) == len(scenes)
    assert [scene.acquired for scene in scenes] == sorted(scene.acquired for scene in scenes)
    for scene in scenes:
        assert set(scene.assets) == set(SCENE_BANDS)
        assert scene.processing_baseline >= "04.00"
        for band in REFLECTANCE_BANDS:
            assert scene.assets[band].offset == pytest.approx(BOA_OFFSET)
            assert scene.assets[band].scale == pytest.approx(DN_SCALE)
        assert scene.assets[SCL_BAND].offset == 0
        assert scene.assets["red"].href.endswith(f"/{scene.item_id}/B04.tif")


def test_aoi_in_a_projected_crs_finds_the_same_scenes(earth_search_api: str) -> None:
    settings = SearchSettings(stac_api_url=earth_search_api, collection=EARTH_SEARCH_COLLECTION, max_cloud_cover=100)
    in_wgs84 = search_scenes(EARTH_SEARCH_AOI, "2020-03", settings).scenes
    in_utm = search_scenes(EARTH_SEARCH_AOI.to_crs("EPSG:32632"), "2020-03", settings).scenes
    assert [scene.item_id for scene in in_utm] == [scene.item_id for scene in in_wgs84]


def test_stale_twin_does_not_pass_the_cloud_limit_in_place_of_its_newer_twin(
    earth_search_api: str, earth_search_items: list[dict]
) -> None:
    by_id = {item["id"]: item for item in earth_search_items}
    cloud = {item_id: item["properties"]["eo:cloud_cover"] for item_id, item in by_id.items()}
    # An acquisition whose old processing is clearer than its reprocessing, per the catalogue.
    old_id = next(
        item_id for item_id in cloud if "_0_L2A" in item_id and cloud[item_id] < cloud[item_id.replace("_0_", "_1_")]
    )
    limit = (cloud[old_id] + cloud[old_id.replace("_0_", "_1_")]) / 2
    settings = SearchSettings(stac_api_url=earth_search_api, collection=EARTH_SEARCH_COLLECTION, max_cloud_cover=limit)

    found = search_scenes(EARTH_SEARCH_AOI, "2020-03", settings)
    scenes = found.scenes

    assert all("_1_L2A" in scene.item_id for scene in scenes)
    assert all(scene.cloud_cover <= limit for scene in scenes)
    assert len(scenes) == sum(1 for item_id in cloud if "_1_L2A" in item_id and cloud[item_id] <= limit)
    too_cloudy = {item_id for item_id in cloud if "_1_L2A" in item_id and cloud[item_id] > limit}
    reasons = {skipped.item_id: skipped.reason for skipped in found.left_out}
    assert len(reasons) == len(cloud) - len(scenes) and found.above_cloud_limit == len(too_cloudy) > 0
    for item_id in too_cloudy:
        assert reasons[item_id] == f"eo:cloud_cover {cloud[item_id]:g}% above search.max_cloud_cover {limit:g}%"
    assert f"raise search.max_cloud_cover (now {limit:g}%: {len(too_cloudy)} more scenes" in found.more_scenes_hint(limit)


def test_nothing_under_the_cloud_limit_names_the_search(earth_search_api: str, earth_search_items: list[dict]) -> None:
    least_cloudy = min(item["properties"]["eo:cloud_cover"] for item in earth_search_items)
    limit = least_cloudy - 1
    settings = SearchSettings(stac_api_url=earth_search_api, collection=EARTH_SEARCH_COLLECTION, max_cloud_cover=limit)
    with pytest.raises(NoScenesFound) as error:
        search_scenes(EARTH_SEARCH_AOI, "2020-03", settings)
    message = str(error.value)
    assert "\n" not in message
    for expected in (
        "2020-03", earth_search_api, EARTH_SEARCH_COLLECTION, f"{limit:g}%", "9.0000, 47.0000",
        "raise search.max_cloud_cover (now",
    ):  # fmt: skip
        assert expected in message


@pytest.mark.parametrize("max_cloud_cover", [100, 80])
def test_month_without_acquisitions_finds_nothing_and_suggests_no_cloud_limit(
    earth_search_api: str, max_cloud_cover: float
) -> None:
    settings = SearchSettings(
        stac_api_url=earth_search_api, collection=EARTH_SEARCH_COLLECTION, max_cloud_cover=max_cloud_cover
    )
    with pytest.raises(NoScenesFound, match="2020-04") as error:
        search_scenes(EARTH_SEARCH_AOI, "2020-04", settings)
    assert "max_cloud_cover (now" not in str(error.value) and "check month, AOI, collection" in str(error.value)


def test_planetary_computer_file_maps_safe_band_names(shared_s2: Path, planetary_computer_items: list[dict]) -> None:
    settings = SearchSettings(item_collection_path=str(shared_s2 / PLANETARY_COMPUTER_FILE), max_cloud_cover=100)
    scenes = search_scenes(PLANETARY_COMPUTER_AOI, "2020-06", settings).scenes

    june = _in_month(planetary_computer_items, "2020-06")
    assert 0 < len(june) < len(planetary_computer_items)
    assert {scene.item_id for scene in scenes} == {item["id"] for item in june}
    assert [scene.acquired for scene in scenes] == sorted(scene.acquired for scene in scenes)
    for scene in scenes:
        assert scene.tile_id == "35MNM"
        assert scene.assets["red"].href.endswith("_B04_10m.tif")
        assert scene.assets["green"].href.endswith("_B03_10m.tif")
        assert scene.assets["blue"].href.endswith("_B02_10m.tif")
        assert scene.assets["nir"].href.endswith("_B08_10m.tif")
        assert scene.assets[SCL_BAND].href.endswith("_SCL_20m.tif")
        # Baseline 02.12 and no raster:bands: scale 1/10000, no offset.
        assert scene.processing_baseline < "04.00"
        assert (scene.assets["red"].scale, scene.assets["red"].offset) == (pytest.approx(DN_SCALE), 0)


def test_cloud_cover_limit_keeps_scenes_at_or_under_it(shared_s2: Path, planetary_computer_items: list[dict]) -> None:
    july = _in_month(planetary_computer_items, "2020-07")
    covers = sorted(item["properties"]["eo:cloud_cover"] for item in july)
    limit = covers[len(covers) // 2]
    settings = SearchSettings(item_collection_path=str(shared_s2 / PLANETARY_COMPUTER_FILE), max_cloud_cover=limit)

    scenes = search_scenes(PLANETARY_COMPUTER_AOI, "2020-07", settings).scenes

    expected = {item["id"] for item in july if item["properties"]["eo:cloud_cover"] <= limit}
    assert 0 < len(expected) < len(july)
    assert {scene.item_id for scene in scenes} == expected


def test_local_file_is_filtered_by_aoi(shared_s2: Path) -> None:
    settings = SearchSettings(item_collection_path=str(shared_s2 / PLANETARY_COMPUTER_FILE), max_cloud_cover=100)
    with pytest.raises(NoScenesFound, match="item file .*site2-2020_jun_jul-35MNM.geojson"):
        search_scenes(EARTH_SEARCH_AOI, "2020-06", settings)


def test_every_item_left_out_is_listed_with_its_reason(tmp_path: Path, planetary_computer_items: list[dict]) -> None:
    june = _in_month(planetary_computer_items, "2020-06")
    july = _in_month(planetary_computer_items, "2020-07")
    items = copy.deepcopy(june) + july[:1]
    del items[0]["assets"]["SCL"]
    del items[1]["properties"]["datetime"]
    settings = SearchSettings(item_collection_path=_write_items(tmp_path / "items.json", items), max_cloud_cover=100)

    found = search_scenes(PLANETARY_COMPUTER_AOI, "2020-06", settings)

    assert {scene.item_id for scene in found.scenes} == {item["id"] for item in items[2:-1]}
    reasons = {skipped.item_id: skipped.reason for skipped in found.left_out}
    assert reasons == {
        items[0]["id"]: "assets SCL missing (asset names of Planetary Computer, Earth Search v0)",
        items[1]["id"]: "it has no datetime",
        items[-1]["id"]: f"acquired {items[-1]['properties']['datetime'][:19]}Z, outside 2020-06",
    }
    assert found.items_found == len(items) and found.above_cloud_limit == 0


@pytest.mark.parametrize(
    ("baseline", "acquired", "expected_offset"),
    [("04.00", "2020-06-01T08:00:00Z", BOA_OFFSET), ("05.09", "2019-01-01T08:00:00Z", BOA_OFFSET),
     ("03.01", "2023-06-01T08:00:00Z", 0.0), (None, "2023-06-01T08:00:00Z", BOA_OFFSET),
     (None, "2021-06-01T08:00:00Z", 0.0)],
)  # fmt: skip
def test_offset_follows_the_processing_baseline_when_undeclared(
    planetary_computer_items: list[dict], baseline: str | None, acquired: str, expected_offset: float
) -> None:
    item = copy.deepcopy(planetary_computer_items[0])
    item["properties"]["s2:processing_baseline"] = baseline
    item["properties"]["datetime"] = acquired
    scene = scene_from_item(item)
    assert scene.assets["nir"].offset == pytest.approx(expected_offset)
    assert scene.assets[SCL_BAND].offset == 0


def test_declared_raster_bands_win_over_the_baseline(earth_search_items: list[dict]) -> None:
    old_twin = next(item for item in earth_search_items if "_0_L2A" in item["id"])
    declared = old_twin["assets"]["red"]["raster:bands"][0]
    scene = scene_from_item(old_twin)
    assert (scene.assets["red"].scale, scene.assets["red"].offset) == (declared["scale"], declared["offset"])


@pytest.mark.parametrize(
    ("item_id", "properties", "expected"),
    [("S2A_32TMT_20200305_1_L2A", {"mgrs:utm_zone": 32, "mgrs:latitude_band": "T", "mgrs:grid_square": "MT"}, "32TMT"),
     ("x", {"mgrs:utm_zone": 9, "mgrs:latitude_band": "U", "mgrs:grid_square": "XA"}, "09UXA"),
     ("x", {"sentinel:utm_zone": 29, "sentinel:latitude_band": "R", "sentinel:grid_square": "KH"}, "29RKH"),
     ("x", {"s2:mgrs_tile": "35MNM"}, "35MNM"),
     ("x", {"grid:code": "MGRS-20EPT"}, "20EPT"),
     ("S2B_T20EPT_20250731T131905_L2A", {}, "20EPT"),
     ("S2A_MSIL2A_20200731T080611_R078_T35MNM_20200818T062751", {}, "35MNM"),
     ("S2A_9UXA_20200305_0_L2A", {}, "09UXA"),
     ("no-tile-here", {}, "no-tile-here")],
)  # fmt: skip
def test_tile_id_from_properties_or_id(item_id: str, properties: dict, expected: str) -> None:
    assert tile_id({"id": item_id, "properties": properties}) == expected


@pytest.fixture
def quick_api_retries(monkeypatch: pytest.MonkeyPatch) -> RetryPolicy:
    """Three attempts without waiting, instead of a minute of them."""
    policy = RetryPolicy(attempts=3, first_delay_s=0.0, max_delay_s=0.0)
    monkeypatch.setattr(tasks.acquisition.search, "API_RETRY", policy)
    return policy


def test_unreachable_api_ends_saying_the_retries_are_exhausted(
    quick_api_retries: RetryPolicy, refused_endpoint: str
) -> None:
    url = refused_endpoint
    settings = SearchSettings(stac_api_url=url, collection=EARTH_SEARCH_COLLECTION)
    with pytest.raises(StacApiError, match=url) as error:
        search_scenes(EARTH_SEARCH_AOI, "2020-03", settings)
    assert "gave up after 3 attempts" in str(error.value) and "Connection refused" in str(error.value)
    assert "\n" not in str(error.value) and "is retried" not in str(error.value)


def test_a_stac_api_host_that_does_not_resolve_ends_at_once(unresolvable_host: str, caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://{unresolvable_host}/v1"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tasks.core.retry"), pytest.raises(StacApiError) as error:
        search_scenes(EARTH_SEARCH_AOI, "2020-03", SearchSettings(stac_api_url=url, collection=EARTH_SEARCH_COLLECTION))
    assert str(error.value) == (
        f"STAC API {url} did not answer: host {unresolvable_host} does not resolve (DNS); "
        "check the URL and the network, then re-run"
    )
    assert not [record.message for record in caplog.records if "retrying" in record.message], "one attempt"
    assert time.monotonic() - started < 10, "the retries of an unreachable API wait at least 30 s"


@pytest.fixture
def hanging_up_api() -> Iterator[tuple[str, list[socket.socket]]]:
    """A loopback server that accepts each connection and closes it unanswered: its URL and the
    connections it accepted."""
    accepted: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.2)
        done = threading.Event()

        def hang_up() -> None:
            while not done.is_set():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                accepted.append(connection)
                connection.close()

        server = threading.Thread(target=hang_up, daemon=True)
        server.start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
        finally:
            done.set()
            server.join(timeout=5)


def test_each_search_attempt_opens_one_connection(
    quick_api_retries: RetryPolicy, hanging_up_api: tuple[str, list[socket.socket]]
) -> None:
    """The search is the one layer that retries: pystac-client's own retries (5 more connections
    per request by default) are off."""
    url, accepted = hanging_up_api
    with pytest.raises(StacApiError, match="gave up after 3 attempts"):
        search_scenes(EARTH_SEARCH_AOI, "2020-03", SearchSettings(stac_api_url=url, collection=EARTH_SEARCH_COLLECTION))
    assert len(accepted) == quick_api_retries.attempts


class RecordingClock:
    """`tasks.core.retry`'s clock and random source: each wait is recorded and added to the time instead of
    slept, each random draw recorded."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.draws: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def monotonic(self) -> float:
        return time.monotonic() + sum(self.waits)

    def random(self) -> float:
        self.draws.append(random.random())
        return self.draws[-1]


def test_an_api_that_does_not_answer_is_tried_6_times_over_about_a_minute(
    hanging_up_api: tuple[str, list[socket.socket]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The production `API_RETRY`, its waits recorded rather than slept: 2 s doubling up to 30 s, each
    times a random factor in [0.5, 1.5)."""
    url, accepted = hanging_up_api
    clock = RecordingClock()
    monkeypatch.setattr(tasks.core.retry, "time", clock)
    monkeypatch.setattr(tasks.core.retry, "random", clock)
    started = time.monotonic()

    with caplog.at_level(logging.WARNING, logger="tasks.core.retry"), pytest.raises(StacApiError) as error:
        search_scenes(EARTH_SEARCH_AOI, "2020-03", SearchSettings(stac_api_url=url, collection=EARTH_SEARCH_COLLECTION))

    attempts_s = time.monotonic() - started
    nominal_waits = [2.0, 4.0, 8.0, 16.0, 30.0]
    assert sum(nominal_waits) == 60.0, "about a minute"
    assert len(accepted) == 6, "6 attempts, each one connection"
    assert len(clock.draws) == len(nominal_waits) and all(0 <= draw < 1 for draw in clock.draws)
    jittered = [nominal * (0.5 + draw) for nominal, draw in zip(nominal_waits, clock.draws, strict=True)]
    assert clock.waits == pytest.approx(jittered)
    retries = [record.getMessage() for record in caplog.records if "retrying" in record.getMessage()]
    assert [line.split("retrying in ")[1] for line in retries] == [f"{wait:.1f} s" for wait in clock.waits]
    message = str(error.value)
    gave_up = re.search(r"\(transient; gave up after 6 attempts over (\d+) s\); check the URL", message)
    assert gave_up and sum(clock.waits) - 0.5 <= int(gave_up[1]) <= sum(clock.waits) + attempts_s + 0.5, message
    assert message.startswith(f"STAC API {url} did not answer: ") and "\n" not in message


def test_an_api_answering_503_is_retried_then_named(earth_search_api: str, quick_api_retries: RetryPolicy) -> None:
    proxy = FaultProxy(earth_search_api)  # rustac's links name its own address: only the landing page passes the proxy
    try:
        proxy.status("/", 503)
        settings = SearchSettings(stac_api_url=proxy.endpoint_url, collection=EARTH_SEARCH_COLLECTION, max_cloud_cover=100)
        with pytest.raises(StacApiError, match="HTTP 503.*gave up after 3 attempts"):
            search_scenes(EARTH_SEARCH_AOI, "2020-03", settings)
        assert proxy.requests("/") == 3
        proxy.clear()
        proxy.status("/", 503, times=2)
        through_faults = search_scenes(EARTH_SEARCH_AOI, "2020-03", settings)  # two failures, then the search
        direct = search_scenes(EARTH_SEARCH_AOI, "2020-03", settings.model_copy(update={"stac_api_url": earth_search_api}))
        assert through_faults == direct and len(direct.scenes) == 8
    finally:
        proxy.stop()


def test_a_missing_collection_is_named_not_reported_as_no_scenes(earth_search_api: str) -> None:
    settings = SearchSettings(stac_api_url=earth_search_api, collection="sentinel-2-c9-l2a")
    with pytest.raises(InvalidSettings, match="collection 'sentinel-2-c9-l2a' not found at STAC API"):
        search_scenes(EARTH_SEARCH_AOI, "2020-03", settings)


@pytest.mark.parametrize("path", ["/no-such-path", f"/collections/{EARTH_SEARCH_COLLECTION}"])
def test_api_refusal_or_non_api_url_is_a_settings_error_naming_the_url(earth_search_api: str, path: str) -> None:
    url = earth_search_api + path
    settings = SearchSettings(stac_api_url=url, collection=EARTH_SEARCH_COLLECTION)
    with pytest.raises((InvalidSettings, StacApiError), match=url) as error:
        search_scenes(EARTH_SEARCH_AOI, "2020-03", settings)
    assert "\n" not in str(error.value)


def test_unreadable_item_file_is_a_settings_error(tmp_path: Path) -> None:
    not_items = tmp_path / "not_items.json"
    not_items.write_text('{"type": "Feature"}')
    for path in (tmp_path / "missing.json", not_items):
        with pytest.raises(InvalidSettings, match=path.name):
            search_scenes(EARTH_SEARCH_AOI, "2020-03", SearchSettings(item_collection_path=str(path)))


def test_the_search_task_does_not_retry_what_the_search_retried() -> None:
    assert search_scenes_task.retries == 0 and API_RETRY.attempts > 1


TAVEUNI_SPLIT_AOI = (
    "MULTIPOLYGON(((179.97 -16.82, 180 -16.82, 180 -16.78, 179.97 -16.78, 179.97 -16.82)), "
    "((-180 -16.82, -179.99 -16.82, -179.99 -16.78, -180 -16.78, -180 -16.82)))"
)
"""An AOI across the antimeridian as RFC 7946 has it: two parts, at lon 180 and lon -180."""
TAVEUNI_UTM_AOI = "SRID=32760;POLYGON((817000 8138000, 821000 8138000, 821000 8142000, 817000 8142000, 817000 8138000))"


def _item_on(grid, tile: str) -> dict:
    """An Earth Search style item of one date whose footprint is `grid` (split at lon 180 when it crosses it)."""
    day = DEFAULT_DATES[0]
    hrefs = {band: f"s3://nowhere/{tile}/{band}.tif" for band in ("red", "green", "blue", "nir", "scl")}
    return stac_item(f"S2A_{tile}_{day:%Y%m%d}_0_L2A", day, NEW_BASELINE, hrefs, grid,
                     footprint_4326(grid, np.ones((2, 2), bool)), tile, {"eo:cloud_cover": 10.0})  # fmt: skip


@pytest.mark.parametrize("aoi_text", [TAVEUNI_SPLIT_AOI, TAVEUNI_UTM_AOI], ids=["split_wgs84", "utm60s"])
def test_search_across_the_antimeridian_asks_for_its_side_of_the_globe_only(stac_api_factory, aoi_text: str) -> None:
    taveuni = _item_on(synthetic_grid((96, 96), 60.0, "EPSG:32760", (816_000.0, 8_142_560.0)), "60KZF")
    same_latitude_at_lon_3 = _item_on(synthetic_grid((96, 96), 60.0, "EPSG:32731", (500_000.0, 8_142_560.0)), "31KEA")
    assert taveuni["geometry"]["type"] == "MultiPolygon"
    items = [taveuni, same_latitude_at_lon_3]
    settings = SearchSettings(stac_api_url=stac_api_factory(stac_collection(items), items), collection=COLLECTION_ID)
    aoi = load_aoi(aoi_text)
    month = Month.parse(f"{DEFAULT_DATES[0]:%Y-%m}")

    aoi_wgs84 = aoi_in_crs(aoi, WGS84)
    found = query_stac_api(aoi_wgs84, month.start, month.following_start, settings)
    scenes = search_scenes(aoi, month.label, settings).scenes

    assert aoi_wgs84.geom.geom_type == "MultiPolygon"
    assert [item["id"] for item in found] == [taveuni["id"]]
    assert [scene.item_id for scene in scenes] == [taveuni["id"]]


def test_a_scene_keeps_its_api_url_and_a_local_file_item_has_none(stac_api_factory, tmp_path: Path) -> None:
    grid = synthetic_grid((96, 96), 60.0, "EPSG:32633", (499_980.0, 5_100_000.0))
    item = _item_on(grid, "33TWL")
    api_url = stac_api_factory(stac_collection([item]), [item])
    aoi = grid.extent
    month = f"{DEFAULT_DATES[0]:%Y-%m}"
    local_file = tmp_path / "items.json"

    (from_api,) = search_scenes(aoi, month, SearchSettings(stac_api_url=api_url, collection=COLLECTION_ID)).scenes
    with_file_link = {**item, "links": [{"rel": "self", "href": str(tmp_path / "item.json")}]}
    for local_item in (item, with_file_link):
        local_file.write_text(json.dumps({"type": "FeatureCollection", "features": [local_item]}))
        (from_file,) = search_scenes(aoi, month, SearchSettings(item_collection_path=str(local_file))).scenes
        assert from_file.href is None, local_item["links"]

    assert from_api.href == f"{api_url}/collections/{COLLECTION_ID}/items/{item['id']}"
    with urllib.request.urlopen(from_api.href, timeout=10) as response:
        assert json.loads(response.read())["id"] == item["id"]

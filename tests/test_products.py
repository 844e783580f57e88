"""The month stage: scene outcomes merged over tiles, and the month's files published beside its tiles, Item last."""

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from odc.geo.geom import Geometry
from prefect_aws import AwsCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters

from blocks.publish import ITEM_PRODUCT, month_destination
from flows.monthly_mosaic import check_failed_share
from tasks.core.errors import PublishError, SceneOutsideAOI, TooManyFailedScenes
from tasks.core.scene import NODATA, SceneItem
from tasks.geometry.aoi import aoi_pixel_mask
from tasks.geometry.tiles import tiles_over_aoi
from tasks.products.cog import MOSAIC_BANDS, validate_cog
from tasks.products.metadata import ProductRun
from tasks.products.month import NO_CLEAR_PIXEL, merge_tiles, month_histograms, write_month_products
from tasks.stac.item import validate_item
from tasks.storage.gdal_env import gdal_env
from tasks.storage.workspace import PARTIAL_PREFIX
from tasks.testing.servers import TEST_CREDENTIALS, S3Server
from tasks.testing.synthetic import DEFAULT_DATES
from tasks.tiling.tile import MonthPlan, TileRecord, build_tile
from tests.local_month import (
    AOI_NAME,
    FOUR_TILES_PX,
    MONTH_PLANS,
    ONE_TILE_PX,
    SCENE_GRID,
    LocalMonth,
    assert_statistics_of,
    make_local_month,
    month_plan,
    product_run,
)

# --- merge_tiles over hand-made records -------------------------------------------------------


def scene_item(item_id: str) -> SceneItem:
    return SceneItem(item_id, datetime(2024, 6, 3, 10, tzinfo=UTC), "33TWL", "05.10", 12.0, {}, {})


def tile_record(
    row: int,
    aoi_pixels: int,
    valid_pixels: int,
    contributing: tuple[str, ...] = (),
    scene_pixels: dict[str, tuple[int, int]] | None = None,
    failed: dict[str, str] | None = None,
) -> TileRecord:
    files = {"mosaic": f"tiles/r{row:03d}_mosaic.tif", "count": f"tiles/r{row:03d}_count.tif"}
    return TileRecord(row, 0, files, aoi_pixels, valid_pixels, 3, contributing, scene_pixels or {}, failed or {})


ITEMS = tuple(scene_item(item_id) for item_id in ("clear", "cloudy", "outside", "failed_once", "failed_twice"))
RECORDS = (
    tile_record(
        0, 100, 90, ("clear", "failed_once"),
        {"clear": (30, 100), "cloudy": (100, 100), "failed_once": (100, 100)},
        {"failed_twice": "red: not found (HTTP 404)"},
    ),
    tile_record(
        1, 300, 120, ("clear",),
        {"clear": (50, 300), "cloudy": (10, 300)},
        {"failed_once": "nir: truncated", "failed_twice": "scl: forbidden (HTTP 403)"},
    ),
)  # fmt: skip


def test_every_scene_is_in_exactly_one_of_used_failed_skipped_in_item_order() -> None:
    month = merge_tiles(RECORDS, ITEMS)

    listed = [scene.item_id for scene in (*month.used, *month.failed, *month.skipped)]
    assert sorted(listed) == sorted(item.item_id for item in ITEMS) and len(listed) == len(set(listed))
    assert [scene.item_id for scene in month.used] == ["clear"]
    assert [scene.item_id for scene in month.failed] == ["failed_once", "failed_twice"]
    assert [scene.item_id for scene in month.skipped] == ["cloudy", "outside"]


def test_a_scene_failed_in_any_tile_is_failed_with_the_first_reason() -> None:
    month = merge_tiles(RECORDS, ITEMS)

    assert dict(month.failed) == {"failed_once": "nir: truncated", "failed_twice": "red: not found (HTTP 404)"}
    assert dict(merge_tiles(RECORDS[::-1], ITEMS).failed)["failed_twice"] == "scl: forbidden (HTTP 403)"


def test_valid_fraction_sums_pixels_over_tiles() -> None:
    (used,) = merge_tiles(RECORDS, ITEMS).used

    assert used.valid_fraction == pytest.approx((30 + 50) / (100 + 300))
    assert used.acquired == ITEMS[0].acquired and used.processing_baseline == "05.10"


def test_skipped_scenes_say_whether_they_were_outside_or_without_a_clear_pixel() -> None:
    month = merge_tiles(RECORDS, ITEMS)
    reasons = dict(month.skipped)

    assert reasons["cloudy"] == NO_CLEAR_PIXEL
    assert reasons["outside"] == SceneOutsideAOI("outside").scene_reason
    assert reasons["cloudy"] != reasons["outside"]
    assert month.unclear_scenes == 1


def test_pixels_sum_over_tiles() -> None:
    month = merge_tiles(RECORDS, ITEMS)

    assert (month.aoi_pixels, month.valid_pixels) == (400, 210)
    assert month.valid_share == pytest.approx(210 / 400)
    assert merge_tiles((tile_record(0, 0, 0),), ITEMS).valid_share == 0.0


# --- write_month_products on tiles built from a local synthetic month --------------------------


@pytest.fixture
def month(tmp_path: Path) -> LocalMonth:
    return make_local_month(tmp_path, partial_dates=DEFAULT_DATES[1:2])


def built_month(
    month: LocalMonth, tile_size_px: int, single_cogs: bool = True
) -> tuple[MonthPlan, ProductRun, list[TileRecord]]:
    """Build every tile of `month` cut into `tile_size_px` tiles, and the run the flow would hand over."""
    plan = month_plan(month, tile_size_px, tiles_digest=f"tiles-of-{tile_size_px}px")
    records = [build_tile(plan, tile) for tile in tiles_over_aoi(plan.grid, plan.aoi, plan.tile_size_px)]
    return plan, product_run(month, plan, merge_tiles(records, month.items), records, single_cogs), records


def published(month: LocalMonth) -> set[str]:
    """The files in the month folder, relative to it."""
    return {path.relative_to(month.month_folder).as_posix() for path in month.month_folder.rglob("*") if path.is_file()}


def listed_files(files: dict) -> Iterator[str]:
    """Every file name metadata.json's "files" lists."""
    for key, value in files.items():
        if key == "tiles":
            for tile in value:
                yield tile["mosaic"]
                yield tile["count"]
        else:
            yield value


@pytest.mark.parametrize(("tile_size_px", "single_cogs"), MONTH_PLANS)
def test_the_month_publishes_every_file_it_lists(month: LocalMonth, tile_size_px: int, single_cogs: bool) -> None:
    plan, run, records = built_month(month, tile_size_px, single_cogs)
    names = month.names

    urls = write_month_products(plan, run, records, month_histograms(plan, records))

    tiles = {name for record in records for name in record.files.values()}
    assert all(name.startswith(f"{plan.tiles_folder}/") for name in tiles)
    listed = {names.quicklook, names.metadata, names.item}
    if single_cogs:
        listed |= {names.mosaic, names.count}
    if tile_size_px == FOUR_TILES_PX:
        assert len(records) == 4 and len(tiles) == 8
        listed |= {names.mosaic_index, names.count_index} | tiles
    else:
        assert len(records) == 1 and len(tiles) == 2
    assert published(month) == listed | tiles, "a single tile's COGs stay, unlisted, for a re-run to reuse"
    assert urls == {
        "mosaic": str(month.month_folder / run.mosaic_file),
        "count": str(month.month_folder / run.count_file),
        "quicklook": str(month.month_folder / names.quicklook),
        "metadata": str(month.month_folder / names.metadata),
        ITEM_PRODUCT: str(month.month_folder / names.item),
    }
    metadata = json.loads((month.month_folder / names.metadata).read_text())
    assert set(listed_files(metadata["files"])) == listed - {names.metadata}
    item = json.loads((month.month_folder / names.item).read_text())
    validate_item(item)
    assert {asset["href"].removeprefix("./") for asset in item["assets"].values()} == listed - {names.item}
    for name in listed | tiles:
        if name.endswith(".tif"):
            validate_cog(month.month_folder / name)
    leftovers = [path for path in month.work_dir.rglob(f"{PARTIAL_PREFIX}*")] + list(plan.scratch_dir.iterdir())
    assert leftovers == [], "no file in the making is left"


@pytest.mark.parametrize(("tile_size_px", "single_cogs"), MONTH_PLANS)
def test_statistics_from_merged_histograms_equal_numpy_on_the_mosaic(
    month: LocalMonth, tile_size_px: int, single_cogs: bool
) -> None:
    plan, run, records = built_month(month, tile_size_px, single_cogs)

    write_month_products(plan, run, records, month_histograms(plan, records))

    with rasterio.open(month.month_folder / run.mosaic_file) as mosaic_file:
        mosaic = mosaic_file.read()
    with rasterio.open(month.month_folder / run.count_file) as count_file:
        count = count_file.read(1)
    inside_aoi = month.inside_aoi
    valid = inside_aoi & (mosaic != NODATA).all(axis=0)
    assert 0.9 < valid.sum() / inside_aoi.sum() < 1.0, "a few AOI pixels have no clear observation"
    metadata = json.loads((month.month_folder / month.names.metadata).read_text())
    for band, values, statistics in zip(MOSAIC_BANDS, mosaic, metadata["mosaic"]["bands"], strict=True):
        assert statistics["name"] == band.common_name
        assert_statistics_of(values[valid], statistics["statistics"], inside_aoi.sum())
    assert_statistics_of(count[inside_aoi], metadata["count"]["statistics"], inside_aoi.sum())
    assert metadata["count"]["statistics"]["min"] == 0 and (count[~inside_aoi] == 0).all()


def test_the_single_cogs_of_a_tiled_month_equal_its_indexes(month: LocalMonth) -> None:
    plan, run, records = built_month(month, FOUR_TILES_PX)

    write_month_products(plan, run, records, month_histograms(plan, records))

    names = month.names
    for single, index in ((names.mosaic, names.mosaic_index), (names.count, names.count_index)):
        with rasterio.open(month.month_folder / single) as cog, rasterio.open(month.month_folder / index) as vrt:
            assert cog.profile["driver"] == "GTiff" and vrt.driver == "VRT"
            assert (cog.shape, cog.transform, cog.nodata, cog.descriptions) == (
                vrt.shape,
                vrt.transform,
                vrt.nodata,
                vrt.descriptions,
            )
            assert cog.scales == vrt.scales
            assert np.array_equal(cog.read(), vrt.read())


def test_a_failure_before_the_item_leaves_no_item_even_an_earlier_one_and_a_rerun_completes(month: LocalMonth) -> None:
    plan, run, records = built_month(month, FOUR_TILES_PX)
    histograms = month_histograms(plan, records)
    names = month.names
    write_month_products(plan, run, records, histograms)
    (month.month_folder / names.metadata).unlink()
    blocked = month.month_folder / names.metadata
    blocked.mkdir()

    with pytest.raises(PublishError, match="Is a directory"):
        write_month_products(plan, run, records, histograms)

    assert names.item not in published(month), "the earlier Item is withdrawn before anything beside it changes"
    assert {names.mosaic_index, names.mosaic, names.quicklook} <= published(month), "what comes before is published"
    blocked.rmdir()
    write_month_products(plan, run, records, histograms)
    validate_item(json.loads((month.month_folder / names.item).read_text()))


def test_a_rerun_on_other_inputs_keeps_the_published_tiles_until_its_item_replaces_them(month: LocalMonth) -> None:
    earlier_plan, earlier_run, earlier_records = built_month(month, FOUR_TILES_PX)
    write_month_products(earlier_plan, earlier_run, earlier_records, month_histograms(earlier_plan, earlier_records))
    earlier_tiles = {name for record in earlier_records for name in record.files.values()}
    plan = month_plan(month, FOUR_TILES_PX, tiles_digest="other-inputs")
    records = [build_tile(plan, tile) for tile in tiles_over_aoi(plan.grid, plan.aoi, plan.tile_size_px)]
    run = product_run(month, plan, merge_tiles(records, month.items), records)
    tiles = {name for record in records for name in record.files.values()}
    assert not tiles & earlier_tiles
    blocked = month.month_folder / month.names.metadata
    blocked.unlink()
    blocked.mkdir()

    with pytest.raises(PublishError, match="Is a directory"):
        write_month_products(plan, run, records, month_histograms(plan, records))

    assert earlier_tiles | tiles <= published(month), "no tile goes while no Item lists the new ones"
    blocked.rmdir()
    write_month_products(plan, run, records, month_histograms(plan, records))
    item = json.loads((month.month_folder / month.names.item).read_text())
    assert tiles <= {asset["href"].removeprefix("./") for asset in item["assets"].values()}
    assert not earlier_tiles & published(month) and tiles <= published(month)
    with rasterio.open(month.month_folder / month.names.mosaic_index) as index:
        assert (index.read(1)[month.inside_aoi] != NODATA).mean() > 0.9


def month_level_files(month: LocalMonth) -> dict[str, bytes]:
    """{name: content} of the month's own files (its tiles aside)."""
    return {path.name: path.read_bytes() for path in month.month_folder.glob("*") if path.is_file()}


def test_a_tile_gone_from_the_month_folder_fails_the_month_before_any_month_file_changes(month: LocalMonth) -> None:
    earlier_plan, earlier_run, earlier_records = built_month(month, ONE_TILE_PX)
    write_month_products(earlier_plan, earlier_run, earlier_records, month_histograms(earlier_plan, earlier_records))
    earlier = month_level_files(month)
    plan, run, records = built_month(month, FOUR_TILES_PX)
    gone = month.month_folder / records[-1].files["mosaic"]
    gone.unlink()

    with pytest.raises(PublishError, match="1 published tile files are gone") as raised:
        write_month_products(plan, run, records, month_histograms(plan, records))

    assert records[-1].files["mosaic"] in str(raised.value) and "re-run the month" in str(raised.value)

    assert month_level_files(month) == earlier, "the earlier month, its Item included, is as it was"
    assert not list(month.month_folder.rglob(f"{PARTIAL_PREFIX}*")) and not list(plan.scratch_dir.iterdir())
    assert list(plan.scratch_dir.iterdir()) == [], "the month's scratch folder is removed whatever happens"


def test_the_mosaic_and_the_scenes_used_do_not_depend_on_the_tiling(month: LocalMonth) -> None:
    _, one_tile_run, (one_tile,) = built_month(month, ONE_TILE_PX)
    with rasterio.open(month.month_folder / one_tile.files["mosaic"]) as one_tile_file:
        one_tile_mosaic = one_tile_file.read()
    plan, four_tiles_run, records = built_month(month, FOUR_TILES_PX)
    write_month_products(plan, four_tiles_run, records, month_histograms(plan, records))

    used = [scene.item_id for scene in four_tiles_run.scenes_used]
    assert used == [scene.item_id for scene in one_tile_run.scenes_used] == [item.item_id for item in month.items]
    with rasterio.open(month.month_folder / month.names.mosaic_index) as four_tiles:
        assert np.array_equal(four_tiles.read(), one_tile_mosaic)


def test_valid_fraction_is_the_share_of_the_aoi_under_the_footprint_holding_data_in_any_tiling(
    month: LocalMonth,
) -> None:
    partial = next(item for item in month.items if f"{DEFAULT_DATES[1]:%Y%m%d}" in item.item_id)
    footprint = aoi_pixel_mask(Geometry(month.synthetic.item(partial.item_id)["geometry"], "EPSG:4326"), month.grid)
    under_footprint = month.inside_aoi & footprint
    data = month.synthetic.data_mask[partial.item_id][SCENE_GRID.overlap_roi(month.grid)]
    expected = (data & under_footprint).sum() / under_footprint.sum()
    assert 0.99 < expected < 1.0 and data[month.inside_aoi].mean() < 0.8, "the scene covers part of the AOI"

    for tile_size_px in (ONE_TILE_PX, FOUR_TILES_PX):
        _, run, _ = built_month(month, tile_size_px)
        fractions = {scene.item_id: scene.valid_fraction for scene in run.scenes_used}
        assert fractions.pop(partial.item_id) == pytest.approx(expected, abs=0.005), tile_size_px
        assert set(fractions.values()) == {1.0}


def test_a_tiled_month_lands_in_a_bucket_and_its_index_opens_there(month: LocalMonth, s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket("basemaps-tiled")
    credentials = AwsCredentials(
        aws_access_key_id=TEST_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=TEST_CREDENTIALS["aws_secret_access_key"],
        region_name=TEST_CREDENTIALS["region_name"],
        aws_client_parameters=AwsClientParameters(endpoint_url=s3_server.endpoint_url),
    )
    block = S3Bucket(bucket_name=bucket, bucket_folder="monthly", credentials=credentials)
    plan = replace(month_plan(month, FOUR_TILES_PX), destination=month_destination(block, AOI_NAME, month.month.label))
    records = [build_tile(plan, tile) for tile in tiles_over_aoi(plan.grid, plan.aoi, plan.tile_size_px)]
    run = product_run(month, plan, merge_tiles(records, month.items), records)
    names = month.names
    folder = f"monthly/{AOI_NAME}/2020/03"

    urls = write_month_products(plan, run, records, month_histograms(plan, records))

    assert urls[ITEM_PRODUCT] == f"s3://{bucket}/{folder}/{names.item}"
    item = json.loads(s3_server.read(bucket, f"{folder}/{names.item}"))
    validate_item(item)
    listed = {asset["href"].removeprefix("./") for asset in item["assets"].values()}
    assert {key.removeprefix(f"{folder}/") for key in s3_server.keys(bucket, folder)} == listed | {names.item}
    assert {name for record in records for name in record.files.values()} <= listed
    index_path, options = plan.destination.gdal_location(names.mosaic_index)
    cog_path, _ = plan.destination.gdal_location(names.mosaic)
    with gdal_env(**options):
        validate_cog(cog_path)
        with rasterio.open(index_path) as index, rasterio.open(cog_path) as cog:
            assert np.array_equal(index.read(), cog.read())
            assert (index.read(1)[month.inside_aoi] != NODATA).mean() > 0.9


def test_a_month_whose_scenes_all_miss_the_aoi_is_refused_but_a_cloudy_one_is_not() -> None:
    outside_only = merge_tiles((tile_record(0, 100, 0),), (scene_item("outside"),))
    with pytest.raises(TooManyFailedScenes, match=r"none of 1 scenes is usable \(1 cover no AOI pixel\)"):
        check_failed_share(outside_only, 1, max_failed_fraction=0.5)
    cloudy_only = merge_tiles((tile_record(0, 100, 0, (), {"cloudy": (0, 100)}),), (scene_item("cloudy"),))
    assert cloudy_only.unclear_scenes == 1
    check_failed_share(cloudy_only, 1, max_failed_fraction=0.5)  # read, only cloudy: published with its count

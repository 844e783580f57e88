"""The month stage: scene outcomes merged over tiles, and the month's files published beside its tiles, Item last."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio

from blocks.publish import ITEM_PRODUCT
from tasks.cog import MOSAIC_BANDS, validate_cog
from tasks.errors import SceneOutsideAOI
from tasks.metadata import ProductRun
from tasks.products import NO_CLEAR_PIXEL, merge_tiles, month_histograms, write_month_products
from tasks.scene import NODATA, SceneItem
from tasks.stac_item import validate_item
from tasks.tile import MonthPlan, TileRecord, build_tile
from tasks.tiles import tiles_over_aoi
from tasks.workspace import PARTIAL_PREFIX
from tests.local_month import FOUR_TILES_PX, ONE_TILE_PX, LocalMonth, make_local_month, month_plan, product_run
from tests.synthetic import DEFAULT_DATES

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
    reasons = dict(merge_tiles(RECORDS, ITEMS).skipped)

    assert reasons["cloudy"] == NO_CLEAR_PIXEL
    assert reasons["outside"] == SceneOutsideAOI("outside").scene_reason
    assert reasons["cloudy"] != reasons["outside"]


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
    plan = month_plan(month, tile_size_px)
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


MONTH_PLANS = [
    pytest.param(ONE_TILE_PX, True, id="one tile"),
    pytest.param(FOUR_TILES_PX, True, id="four tiles with single COGs"),
    pytest.param(FOUR_TILES_PX, False, id="four tiles index only"),
]


@pytest.mark.parametrize(("tile_size_px", "single_cogs"), MONTH_PLANS)
def test_the_month_publishes_every_file_it_lists(month: LocalMonth, tile_size_px: int, single_cogs: bool) -> None:
    plan, run, records = built_month(month, tile_size_px, single_cogs)
    names = month.names

    urls = write_month_products(plan, run, records, month_histograms(plan, records))

    tiles = {name for record in records for name in record.files.values()} - {names.mosaic, names.count}
    expected = {names.quicklook, names.metadata, names.item} | tiles
    if single_cogs:
        expected |= {names.mosaic, names.count}
    if tile_size_px == FOUR_TILES_PX:
        assert len(records) == 4 and len(tiles) == 8
        expected |= {names.mosaic_index, names.count_index}
    else:
        assert len(records) == 1 and not tiles
    assert published(month) == expected
    assert urls == {
        "mosaic": str(month.month_folder / run.mosaic_file),
        "count": str(month.month_folder / run.count_file),
        "quicklook": str(month.month_folder / names.quicklook),
        "metadata": str(month.month_folder / names.metadata),
        ITEM_PRODUCT: str(month.month_folder / names.item),
    }
    metadata = json.loads((month.month_folder / names.metadata).read_text())
    assert set(listed_files(metadata["files"])) == expected - {names.metadata}
    item = json.loads((month.month_folder / names.item).read_text())
    validate_item(item)
    assert {asset["href"].removeprefix("./") for asset in item["assets"].values()} == expected - {names.item}
    for name in expected:
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


def assert_statistics_of(values: np.ndarray, statistics: dict, aoi_pixels: int) -> None:
    """metadata.json's statistics of a band are numpy's over `values`, its valid AOI pixels."""
    assert statistics["valid_pixels"] == values.size
    assert (statistics["min"], statistics["max"]) == (values.min(), values.max())
    assert statistics["mean"] == pytest.approx(values.mean()) and statistics["stddev"] == pytest.approx(values.std())
    assert statistics["p2"] == np.percentile(values, 2, method="inverted_cdf")
    assert statistics["p98"] == np.percentile(values, 98, method="inverted_cdf")
    assert statistics["valid_share_of_aoi"] == pytest.approx(values.size / aoi_pixels)


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


def test_a_failure_before_the_item_publishes_no_item_and_a_rerun_completes(month: LocalMonth) -> None:
    plan, run, records = built_month(month, FOUR_TILES_PX)
    histograms = month_histograms(plan, records)
    names = month.names
    blocked = month.month_folder / names.metadata
    blocked.mkdir()

    with pytest.raises(IsADirectoryError):
        write_month_products(plan, run, records, histograms)

    assert names.item not in published(month)
    assert {names.mosaic_index, names.mosaic, names.quicklook} <= published(month), "what comes before is published"
    blocked.rmdir()
    write_month_products(plan, run, records, histograms)
    validate_item(json.loads((month.month_folder / names.item).read_text()))


def test_a_tile_gone_from_the_month_folder_fails_the_month_before_its_single_cogs_and_item(month: LocalMonth) -> None:
    plan, run, records = built_month(month, FOUR_TILES_PX)
    gone = month.month_folder / records[-1].files["mosaic"]
    gone.unlink()

    with pytest.raises(Exception, match=f"{gone.name}: No such file or directory"):
        write_month_products(plan, run, records, month_histograms(plan, records))

    assert not {month.names.mosaic, month.names.item} & published(month)
    assert list(plan.scratch_dir.iterdir()) == [], "the month's scratch folder is removed whatever happens"


def test_valid_fractions_and_the_mosaic_do_not_depend_on_the_tiling(month: LocalMonth) -> None:
    _, one_tile_run, _ = built_month(month, ONE_TILE_PX)
    with rasterio.open(month.month_folder / month.names.mosaic) as one_tile:
        one_tile_mosaic = one_tile.read()
    plan, four_tiles_run, records = built_month(month, FOUR_TILES_PX)
    write_month_products(plan, four_tiles_run, records, month_histograms(plan, records))

    assert four_tiles_run.scenes_used == one_tile_run.scenes_used
    fractions = {scene.item_id: scene.valid_fraction for scene in four_tiles_run.scenes_used}
    partial = next(item_id for item_id in fractions if f"{DEFAULT_DATES[1]:%Y%m%d}" in item_id)
    assert 0.5 < fractions.pop(partial) < 1.0 and set(fractions.values()) == {1.0}
    with rasterio.open(month.month_folder / month.names.mosaic_index) as four_tiles:
        assert np.array_equal(four_tiles.read(), one_tile_mosaic)

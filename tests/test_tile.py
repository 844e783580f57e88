"""One output tile end to end: its COGs, its record (the commit) and histograms, what counts as committed,
and the refill of a committed tile (which tiles, and from what)."""

import logging
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio

from blocks.publish import month_destination
from tasks.core.errors import PublishError
from tasks.core.scene import NODATA
from tasks.gap_fill.fill import NO_VALUE, OBSERVED
from tasks.gap_fill.sources import MonthFill, NeighbourMonth
from tasks.gap_fill.tile_fill import TileLayers
from tasks.geometry.tiles import OutputTile, tile_grid, tiles_over_aoi
from tasks.products.metadata import COUNT_LAYER, FILL_LAYER, MOSAIC_LAYER
from tasks.testing.synthetic import DEFAULT_DATES
from tasks.tiling.tile import (
    COUNT_VALUES,
    REFLECTANCE_VALUES,
    MonthPlan,
    TileHistograms,
    TileRecord,
    build_tile,
    committed_record,
    refill_tile,
    stale_fill,
)
from tests.local_month import (
    AOI_NAME,
    FOUR_TILES_PX,
    ONE_TILE_PX,
    LocalMonth,
    make_local_month,
    month_plan,
    publish_layers,
    with_missing_asset,
)

BANDS = np.arange(4).reshape(4, 1, 1)
"""Band b of a hand-made mosaic value v is v + b."""
FOUR_TILES = [OutputTile(0, 0), OutputTile(0, 1), OutputTile(1, 0), OutputTile(1, 1)]
"""The tiles of `FOUR_TILES_PX` over the month's AOI, in row-major order."""


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> LocalMonth:
    return make_local_month(tmp_path_factory.mktemp("tile"), partial_dates=DEFAULT_DATES[1:2])


@pytest.fixture(scope="module")
def one_tile(month: LocalMonth) -> tuple[np.ndarray, np.ndarray]:
    """The mosaic and count of the whole AOI built as one tile."""
    plan = month_plan(month, ONE_TILE_PX, tiles_digest="one")
    (tile,) = tiles_over_aoi(plan.grid, plan.aoi, ONE_TILE_PX)
    build_tile(plan, tile)
    return read_tile(month, plan, tile)


@pytest.fixture(scope="module")
def four_tiles(month: LocalMonth) -> tuple[MonthPlan, list[TileRecord]]:
    """The AOI built as four tiles, checked to be the four: the tests that loop over the records see each."""
    plan = month_plan(month, FOUR_TILES_PX, tiles_digest="four")
    records = [build_tile(plan, tile) for tile in tiles_over_aoi(plan.grid, plan.aoi, FOUR_TILES_PX)]
    assert [record.tile for record in records] == FOUR_TILES
    return plan, records


def read_tile(month: LocalMonth, plan: MonthPlan, tile: OutputTile) -> tuple[np.ndarray, np.ndarray]:
    """The published (mosaic, count) of a tile, checked to lie on the tile's slice of the grid."""
    files = plan.tile_files(tile)
    tile_box = tile_grid(plan.grid, plan.tile_size_px, tile)
    with (
        rasterio.open(month.month_folder / files["mosaic"]) as mosaic,
        rasterio.open(month.month_folder / files["count"]) as count,
    ):
        for dataset in (mosaic, count):
            assert dataset.transform.almost_equals(tile_box.affine) and dataset.shape == tile_box.shape.yx
        return mosaic.read(), count.read(1)


def test_tile_files_lie_in_the_folder_of_their_inputs(month: LocalMonth) -> None:
    plan = month_plan(month, ONE_TILE_PX, tiles_digest="abc")
    stem = month.names.stem

    assert plan.single_tile
    assert plan.tile_files(OutputTile(0, 0)) == {
        "mosaic": f"tiles/abc/{stem}_r000c000_mosaic.tif",
        "count": f"tiles/abc/{stem}_r000c000_count.tif",
    }
    assert plan.tiles_folder == "tiles/abc" and plan.record_name(OutputTile(0, 0)).endswith("/abc/r000c000.json")
    assert (
        month_plan(month, ONE_TILE_PX, tiles_digest="def")
        .tile_files(OutputTile(0, 0))["mosaic"]
        .startswith("tiles/def/")
    )


def test_tiles_do_not_change_the_result(month: LocalMonth, one_tile: tuple, four_tiles: tuple) -> None:
    whole_mosaic, whole_count = one_tile
    plan, records = four_tiles
    assert not plan.single_tile

    for record in records:
        rows, cols = plan.grid.overlap_roi(tile_grid(plan.grid, FOUR_TILES_PX, record.tile))
        mosaic, count = read_tile(month, plan, record.tile)
        assert np.array_equal(mosaic, whole_mosaic[:, rows, cols]), record.tile.label
        assert np.array_equal(count, whole_count[rows, cols]), record.tile.label


def test_outside_the_aoi_is_nodata_and_no_observation(month: LocalMonth, one_tile: tuple) -> None:
    mosaic, count = one_tile
    inside_aoi = month.inside_aoi

    assert (~inside_aoi).sum() > 1000
    assert (mosaic[:, ~inside_aoi] == NODATA).all() and (count[~inside_aoi] == 0).all()
    assert (mosaic[:, inside_aoi] != NODATA).all(axis=0).mean() > 0.9 and count[inside_aoi].max() > 1


def test_a_record_holds_the_tiles_figures(month: LocalMonth, four_tiles: tuple) -> None:
    plan, records = four_tiles
    item_ids = {item.item_id for item in month.items}

    for record in records:
        tile_box = tile_grid(plan.grid, FOUR_TILES_PX, record.tile)
        inside_aoi = month.inside_aoi[plan.grid.overlap_roi(tile_box)]
        mosaic, count = read_tile(month, plan, record.tile)
        assert record.files == plan.tile_files(record.tile)
        assert record.aoi_pixels == inside_aoi.sum()
        assert record.valid_pixels == (inside_aoi & (mosaic != NODATA).all(axis=0)).sum() == (count > 0).sum()
        assert record.max_count == count.max()
        assert set(record.contributing_scenes) <= set(record.scene_pixels) == item_ids
        assert all(0 <= valid <= aoi <= record.aoi_pixels for valid, aoi in record.scene_pixels.values())
        assert record.failed == {}


def test_the_histograms_beside_a_record_are_those_of_its_published_tile(month: LocalMonth, four_tiles: tuple) -> None:
    plan, records = four_tiles

    for record in records:
        histograms = TileHistograms.from_bytes(plan.workspace.read_bytes(plan.histograms_name(record.tile)))
        mosaic, count = read_tile(month, plan, record.tile)
        inside_aoi = month.inside_aoi[plan.grid.overlap_roi(tile_grid(plan.grid, FOUR_TILES_PX, record.tile))]
        valid = inside_aoi & (mosaic != NODATA).all(axis=0)
        assert histograms.mosaic.shape == (4, REFLECTANCE_VALUES) and histograms.count.shape == (COUNT_VALUES,)
        for band, histogram in zip(mosaic, histograms.mosaic, strict=True):
            assert np.array_equal(histogram, np.bincount(band[valid], minlength=REFLECTANCE_VALUES))
        assert np.array_equal(histograms.count, np.bincount(count[inside_aoi], minlength=COUNT_VALUES))
        assert histograms.count.sum() == record.aoi_pixels and histograms.mosaic[0].sum() == record.valid_pixels


def test_records_and_histograms_round_trip(four_tiles: tuple) -> None:
    plan, records = four_tiles
    failed = TileRecord(1, 2, {"mosaic": "m.tif", "count": "c.tif"}, 9, 4, 2, ("a",), {"a": (4, 9)}, {"b": "nir: gone"})

    for record in (*records, failed):
        assert TileRecord.from_json(record.to_json()) == record
    assert TileRecord.from_json(plan.workspace.read_bytes(plan.record_name(records[0].tile))) == records[0]
    histograms = TileHistograms(np.arange(8).reshape(4, 2), np.array([5, 0, 7]))
    copy = TileHistograms.from_bytes(histograms.to_bytes())
    assert np.array_equal(copy.mosaic, histograms.mosaic) and np.array_equal(copy.count, histograms.count)


def test_a_built_tile_is_committed_and_a_new_one_is_not(month: LocalMonth, four_tiles: tuple) -> None:
    plan, records = four_tiles

    assert [committed_record(plan, record.tile) for record in records] == records
    assert committed_record(month_plan(month, FOUR_TILES_PX, tiles_digest="never"), records[0].tile) is None


def test_a_tile_with_a_failed_scene_records_it_and_is_not_committed(tmp_path: Path) -> None:
    healthy = make_local_month(tmp_path / "healthy")
    broken = with_missing_asset(healthy.items[2], "red", tmp_path)
    month = make_local_month(tmp_path / "broken", items=(*healthy.items[:2], broken, *healthy.items[3:]))
    plan = month_plan(month, FOUR_TILES_PX)
    tile = OutputTile(0, 1)

    record = build_tile(plan, tile)

    assert list(record.failed) == [broken.item_id]
    assert record.failed[broken.item_id].startswith("red: not found")
    assert broken.item_id not in record.scene_pixels and broken.item_id not in record.contributing_scenes
    assert len(record.scene_pixels) == len(month.items) - 1
    assert plan.workspace.exists(plan.record_name(tile)) and committed_record(plan, tile) is None


def test_a_tile_that_cannot_be_published_writes_no_record(month: LocalMonth, tmp_path: Path) -> None:
    plan = month_plan(month, FOUR_TILES_PX, tiles_digest="unpublished")
    tile = OutputTile(1, 1)
    unpublishable = replace(
        plan, destination=month_destination(None, plan.aoi_name, plan.month_label, tmp_path / "not-a-folder"), scratch_dir=tmp_path / "scratch"
    )
    (tmp_path / "not-a-folder").write_text("a file where the output folder should be")

    with pytest.raises(PublishError, match=f"cannot publish to .*: Not a directory: {re.escape(str(tmp_path / 'not-a-folder'))}/"):
        build_tile(unpublishable, tile)

    assert not plan.workspace.exists(plan.record_name(tile)) and not plan.workspace.exists(plan.histograms_name(tile))
    assert committed_record(plan, tile) is None
    assert list((tmp_path / "scratch").iterdir()) == [], "the tile's scratch folder is removed whatever happens"


def test_a_tile_task_run_again_in_its_build_run_returns_its_commit(tmp_path: Path) -> None:
    """Dask runs a tile task again when the worker holding its result died: the tile, even one with a failed
    scene (which a later run builds again), is not committed twice in the same build run."""
    healthy = make_local_month(tmp_path / "healthy")
    broken = with_missing_asset(healthy.items[1], "nir", tmp_path)
    month = make_local_month(tmp_path / "broken", items=(healthy.items[0], broken, *healthy.items[2:]))
    plan = replace(month_plan(month, FOUR_TILES_PX), build_run_id="run-1")
    tile = OutputTile(1, 0)
    record_path = Path(plan.workspace.uri(plan.record_name(tile)))

    first = build_tile(plan, tile)
    committed = record_path.stat()
    again = build_tile(plan, tile)

    assert again == first and first.failed and first.build_run_id == "run-1"
    assert record_path.stat().st_mtime_ns == committed.st_mtime_ns and record_path.stat().st_ino == committed.st_ino
    rebuilt = build_tile(replace(plan, build_run_id="run-2"), tile)
    assert rebuilt.build_run_id == "run-2" and record_path.stat().st_ino != committed.st_ino, "a later run builds it again"


@pytest.mark.parametrize(
    ("file_of", "cut"),
    [
        pytest.param(MonthPlan.record_name, lambda payload: payload[: len(payload) // 2], id="truncated record"),
        pytest.param(MonthPlan.record_name, lambda payload: b'{"row": 0}', id="record missing fields"),
        pytest.param(MonthPlan.histograms_name, lambda payload: payload[: len(payload) // 2], id="truncated histograms"),
        pytest.param(MonthPlan.histograms_name, lambda payload: b"", id="empty histograms"),
    ],
)
def test_an_unreadable_record_leaves_its_tile_uncommitted_with_a_warning_naming_it(
    month: LocalMonth, caplog: pytest.LogCaptureFixture, file_of: Callable[[MonthPlan, OutputTile], str], cut: Callable[[bytes], bytes]
) -> None:
    plan = month_plan(month, FOUR_TILES_PX, tiles_digest="to-corrupt")
    tile = OutputTile(0, 1)
    build_tile(plan, tile)
    name = file_of(plan, tile)
    plan.workspace.write_bytes(name, cut(plan.workspace.read_bytes(name)))

    with caplog.at_level(logging.WARNING, logger="tasks.tiling.tile"):
        assert committed_record(plan, tile) is None

    (warning,) = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert plan.workspace.uri(name) in warning and tile.label in warning, warning
    assert build_tile(plan, tile) == committed_record(plan, tile), "the rebuilt tile is committed again"


def neighbour_month(month: LocalMonth, version: str, output_dir: Path, layers: dict[str, np.ndarray] | None = None) -> NeighbourMonth:
    """The month before `month` on its grid, of `version`; with `layers` ({layer: array on the grid}) published
    below `output_dir`, else never read."""
    label = month.month.shifted(-1).label
    destination = month_destination(None, AOI_NAME, label, output_dir)
    files = {name: f"{label}_{name}.tif" for name in (tuple(layers) if layers else (MOSAIC_LAYER, COUNT_LAYER))}
    if layers is not None:
        publish_layers(destination, files, month.grid, layers, output_dir / "scratch")
    return NeighbourMonth(-1, label, destination, files, destination.url("item.json"), version)


def read_published(plan: MonthPlan, files: dict[str, str]) -> dict[str, np.ndarray]:
    """{layer: (band, y, x) array} of a tile's published COGs."""
    layers = {}
    for name, file_name in files.items():
        with rasterio.open(plan.destination.gdal_location(file_name)[0]) as dataset:
            layers[name] = dataset.read()
    return layers


def test_a_refill_fills_a_committed_tiles_gaps_again_from_its_published_layers_and_its_neighbour(
    month: LocalMonth, tmp_path: Path
) -> None:
    """The tile is published by hand: observed 2000 + b (count 3) but over a block of gaps that an earlier fill
    left at 1234. The month before observed the block's left half (500 + b) and filled its right half
    (9000 + b, count 0): the refill takes the left half from it, leaves the right half empty, and never
    reads a scene (the plan's found items do not exist)."""
    tile = OutputTile(0, 0)
    tile_box = tile_grid(month.grid, FOUR_TILES_PX, tile)
    inside = month.inside_aoi[month.grid.overlap_roi(tile_box)]
    gaps, taken = np.zeros(inside.shape, bool), np.zeros(inside.shape, bool)
    gaps[40:60, 40:80], taken[40:60, 40:60] = True, True
    assert (inside[gaps]).all(), "the block of gaps lies inside the AOI"
    neighbour_count = np.ones(month.grid.shape.yx, np.uint8)
    neighbour_count[40:60, 60:80] = 0  # the tile is the grid's top-left corner: the same pixels
    neighbour_mosaic = np.where(neighbour_count > 0, 500, 9000) + BANDS
    neighbour = neighbour_month(
        month, "v1", tmp_path / "neighbours",
        {MOSAIC_LAYER: neighbour_mosaic.astype(np.uint16), COUNT_LAYER: neighbour_count, FILL_LAYER: np.where(neighbour_count > 0, 0, 1).astype(np.uint8)},
    )
    plan = replace(
        month_plan(month, FOUR_TILES_PX, tiles_digest="refill"),
        fill=MonthFill("previous", 1, (neighbour,)),
        items_name="search/no-such-items.json",
        scratch_dir=tmp_path / "scratch",
        build_run_id="refill-run",
    )
    count = np.where(inside & ~gaps, 3, 0).astype(np.uint8)
    mosaic = np.where(gaps, 1234, np.where(inside, 2000 + BANDS, NODATA)).astype(np.uint16)
    stale_distance = np.where(gaps, 2, np.where(inside, OBSERVED, NO_VALUE)).astype(np.uint8)
    files = plan.tile_files(tile)
    publish_layers(plan.destination, files, tile_box, {MOSAIC_LAYER: mosaic, COUNT_LAYER: count, FILL_LAYER: stale_distance}, tmp_path / "tile")
    record = TileRecord(
        0, 0, files, int(inside.sum()), int((count > 0).sum()), 3, ("scene",), {"scene": (int((count > 0).sum()), int(inside.sum()))},
        filled_pixels=int(gaps.sum()), fill_months=("2000-01",), fill_digest="an earlier fill",
    )
    assert not plan.workspace.exists(plan.items_name)

    refilled = refill_tile(plan, tile, record)

    published = read_published(plan, files)
    expected = np.where(taken, 500 + BANDS, np.where(gaps, NODATA, np.where(inside, 2000 + BANDS, NODATA)))
    assert np.array_equal(published[MOSAIC_LAYER], expected)
    assert np.array_equal(published[COUNT_LAYER][0], count), "the count stays the observed count"
    assert np.array_equal(published[FILL_LAYER][0], np.where(taken, 1, np.where(gaps, NO_VALUE, stale_distance)))
    assert refilled == replace(
        record, filled_pixels=int(taken.sum()), fill_months=(neighbour.month,), fill_digest=plan.fill.digest, build_run_id="refill-run"
    )
    assert TileRecord.from_json(plan.workspace.read_bytes(plan.record_name(tile))) == refilled
    histograms = TileHistograms.from_bytes(plan.workspace.read_bytes(plan.histograms_name(tile)))
    layers = TileLayers(published[MOSAIC_LAYER], published[COUNT_LAYER][0])
    expected_histograms = TileHistograms.of(layers, inside, published[FILL_LAYER][0])
    assert histograms.fill is not None and expected_histograms.fill is not None
    assert np.array_equal(histograms.mosaic, expected_histograms.mosaic) and np.array_equal(histograms.fill, expected_histograms.fill)
    assert refill_tile(plan, tile, record) == refilled, "refilled once per build run"

    unfilled = refill_tile(replace(plan, fill=MonthFill("none", 1), build_run_id="another-run"), tile, refilled)

    assert FILL_LAYER not in unfilled.files and not plan.destination.exists(files[FILL_LAYER]), "the fill layer is withdrawn"
    assert np.array_equal(read_published(plan, unfilled.files)[MOSAIC_LAYER], np.where(gaps, NODATA, expected))
    assert unfilled.filled_pixels == 0 and unfilled.fill_months == ()


def test_only_a_committed_tile_with_gaps_is_refilled_when_its_neighbours_change(month: LocalMonth, tmp_path: Path) -> None:
    tile = OutputTile(0, 1)
    plan = replace(month_plan(month, FOUR_TILES_PX), fill=MonthFill("interpolate", 3, (neighbour_month(month, "v1", tmp_path),)))
    republished = replace(plan, fill=MonthFill("interpolate", 3, (neighbour_month(month, "v2", tmp_path),)))
    with_gaps = TileRecord(0, 1, plan.tile_files(tile), 100, 90, 2, ("scene",), fill_digest=plan.fill.digest)
    without_gaps = replace(with_gaps, valid_pixels=100)

    assert not stale_fill(plan, with_gaps) and not stale_fill(plan, without_gaps), "nothing changed"
    assert stale_fill(republished, with_gaps), "the neighbour was published again"
    assert not stale_fill(republished, without_gaps), "a tile without gaps takes nothing from its neighbours"
    assert stale_fill(replace(plan, fill=MonthFill("previous", 3)), with_gaps), "another method"
    unfilled = replace(plan, fill=MonthFill("none", 3))
    assert stale_fill(unfilled, without_gaps), "its fill layer is withdrawn"
    assert stale_fill(plan, replace(without_gaps, files=unfilled.tile_files(tile))), "it gets a fill layer"

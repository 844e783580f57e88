"""Gap fill of a tile (tasks.gap_fill.tile_fill): by hand on small published months, and through the real flows.

`fill_tile` is checked against hand-computed values on a tile of a small grid whose neighbour months
are published as local COGs; one neighbour's own gaps were filled (its fill layer says so), and none
of those filled values may reach the tile.

Through the flows: a synthetic 3-month series (moto S3 scenes, rustac STAC API). The surface brightens
linearly (gain 1.00, 1.05, 1.10 on one surface, each date showing it exactly where clear) and the
middle month is under thick cloud all month over the western part of the AOI. A backfill of the three
months (`interpolate`) fills that gap from March and May once all are built; re-running the middle
month with `previous` or `none` refills its committed tiles without reading a scene, and only the
tiles with gaps when only the neighbours changed.
"""

import json
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from odc.geo.geobox import GeoBox

from blocks.publish import month_destination
from flows.backfill import backfill
from flows.monthly_mosaic import monthly_mosaic, run_inputs
from flows.parameters import MosaicSettings
from tasks.compositing.indices import INDEX_NODATA
from tasks.core.month import Month
from tasks.core.scene import NODATA
from tasks.gap_fill.fill import NO_VALUE, OBSERVED
from tasks.gap_fill.sources import MonthFill, NeighbourMonth
from tasks.gap_fill.tile_fill import TileLayers, fill_tile
from tasks.geometry.aoi import aoi_pixel_mask, load_aoi
from tasks.geometry.grid import roi_slices
from tasks.products.cog import FILL_NODATA
from tasks.products.metadata import COUNT_LAYER, FILL_LAYER, MOSAIC_LAYER, TILES_FOLDER
from tasks.stac.item import COLLECTION_FILE, FILL_SOURCE_REL, FILLED_SHARE_PROPERTY
from tasks.testing.served_month import SERVED_GRID, ServedSeries, flow_settings, month_dates, serve_synthetic_series
from tasks.testing.servers import S3Server
from tasks.testing.synthetic import synthetic_grid
from tasks.tiling.tile import TileRecord
from tests.local_month import publish_layers

# --- fill_tile by hand ----------------------------------------------------------------------------

MONTH = Month(2024, 6)
NEIGHBOURS_GRID = synthetic_grid(shape=(8, 12), resolution=20.0)
TILE_ROWS, TILE_COLS = slice(2, 6), slice(5, 11)
TILE_BOX = NEIGHBOURS_GRID[TILE_ROWS, TILE_COLS]
"""A 4 x 6 tile inside the neighbours' grid, so their rasters are read over a window."""
A, B, C, D = (0, 0), (1, 1), (2, 2), (3, 3)
"""The tile's gaps: A observed by months -1 and +1; B by -2 and +1 (month -1 filled it); C by +1 only
(-1 filled it); D by none (-1 filled it)."""
BANDS = np.arange(4).reshape(4, 1)
"""Band b of a mosaic value v is v + b, so a band mixed up with another shows."""
OBSERVED_HERE, STALE = 2000, 1234
"""The month's observed mosaic value, and a filled value left in its gaps by an earlier fill."""


def tile_inside_aoi() -> np.ndarray:
    """The tile's AOI: all but its last column."""
    inside = np.ones(TILE_BOX.shape.yx, bool)
    inside[:, -1] = False
    return inside


def tile_layers(gaps: list[tuple[int, int]], stale: bool = True) -> TileLayers:
    """The month's tile: observed (count 2, mosaic `OBSERVED_HERE` + b, NDVI 3000) but at `gaps` (count 0;
    with `stale`, the values of an earlier fill, as a refill reads them back) and outside the AOI."""
    inside = tile_inside_aoi()
    count = np.where(inside, 2, 0).astype(np.uint8)
    mosaic = np.where(inside, OBSERVED_HERE + BANDS[:, :, np.newaxis], NODATA).astype(np.uint16)
    ndvi = np.where(inside, 3000, INDEX_NODATA).astype(np.int16)
    for pixel in gaps:
        count[pixel] = 0
        mosaic[(slice(None), *pixel)] = STALE if stale else NODATA
        ndvi[pixel] = 777 if stale else INDEX_NODATA
    return TileLayers(mosaic, count, {"ndvi": ndvi})


def publish_neighbour(
    output_dir: Path, offset: int, value: int, ndvi: int | None, observed_gaps: list[tuple[int, int]], filled_gaps: list[tuple[int, int]]
) -> NeighbourMonth:
    """Month `offset` on `NEIGHBOURS_GRID`: mosaic `value` + b and NDVI `ndvi` (None: no NDVI layer) where it
    observed; over the tile's gaps, only at `observed_gaps`. At `filled_gaps` its own count is 0 and its
    layers hold a filled value (9000 + b, NDVI 5000, fill layer 1), as a filled month publishes them; at
    the other gaps it has nothing (nodata). Outside the tile its values are 50 + b: a misplaced window shows."""
    shape = NEIGHBOURS_GRID.shape.yx
    count = np.ones(shape, np.uint8)
    base = np.full(shape, 50)
    base[TILE_ROWS, TILE_COLS] = value
    mosaic = (base + BANDS[:, :, np.newaxis]).astype(np.uint16)
    ndvi_values = np.full(shape, ndvi if ndvi is not None else 0, np.int16)
    fill = np.full(shape, OBSERVED, np.uint8)
    for row, col in (A, B, C, D):
        pixel = (TILE_ROWS.start + row, TILE_COLS.start + col)
        if (row, col) in observed_gaps:
            continue
        count[pixel] = 0
        filled = (row, col) in filled_gaps
        mosaic[(slice(None), *pixel)] = 9000 + BANDS[:, 0] if filled else NODATA
        ndvi_values[pixel] = 5000 if filled else INDEX_NODATA
        fill[pixel] = 1 if filled else NO_VALUE
    month = MONTH.shifted(offset)
    destination = month_destination(None, "fields", month.label, output_dir)
    layers = {MOSAIC_LAYER: mosaic, COUNT_LAYER: count, FILL_LAYER: fill, **({"ndvi": ndvi_values} if ndvi is not None else {})}
    files = {name: f"{month.label}_{name}.tif" for name in layers}
    publish_layers(destination, files, NEIGHBOURS_GRID, layers, output_dir / "scratch" / month.label)
    return NeighbourMonth(offset, month.label, destination, files, destination.url("item.json"), f"version-{offset}")


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory: pytest.TempPathFactory) -> tuple[NeighbourMonth, ...]:
    """Months -1, +1 and -2 (nearest first, as `neighbour_months` lists them); month -1's own gaps at B, C and D
    were filled, and month +1 publishes no NDVI."""
    output_dir = tmp_path_factory.mktemp("neighbours")
    return (
        publish_neighbour(output_dir, -1, 400, 200, observed_gaps=[A], filled_gaps=[B, C, D]),
        publish_neighbour(output_dir, 1, 1000, None, observed_gaps=[A, B, C], filled_gaps=[]),
        publish_neighbour(output_dir, -2, 300, 100, observed_gaps=[A, B], filled_gaps=[]),
    )


def test_a_tile_takes_its_gaps_from_its_neighbours_observed_pixels_never_their_filled_ones(
    neighbours: tuple[NeighbourMonth, ...],
) -> None:
    layers = tile_layers([A, B, C, D])
    filled = fill_tile(MonthFill("interpolate", 3, neighbours), TILE_BOX, tile_inside_aoi(), layers)

    bands = BANDS[:, 0]
    mosaic, ndvi = filled.layers.mosaic, filled.layers.indices["ndvi"]
    assert np.array_equal(mosaic[(slice(None), *A)], 700 + bands), "half way between -1 (400) and +1 (1000)"
    assert np.array_equal(mosaic[(slice(None), *B)], 767 + bands), "-2 (300) and +1 (1000), 2/3 of the way: -1 filled B"
    assert np.array_equal(mosaic[(slice(None), *C)], 1000 + bands), "only +1 observed C: -1 filled it"
    assert np.array_equal(mosaic[(slice(None), *D)], [NODATA] * 4), "nobody observed D: -1 filled it"
    assert [ndvi[A], ndvi[B], ndvi[C], ndvi[D]] == [200, 100, INDEX_NODATA, INDEX_NODATA], "+1 offers no NDVI"
    assert [filled.distance[pixel] for pixel in (A, B, C, D)] == [1, 1, 1, NO_VALUE]
    observed = tile_inside_aoi() & (layers.count > 0)
    assert (filled.distance[observed] == OBSERVED).all() and (filled.distance[:, -1] == NO_VALUE).all()
    assert np.array_equal(mosaic[:, observed], layers.mosaic[:, observed]), "an observed pixel changed"
    assert (mosaic[:, :, -1] == NODATA).all() and (ndvi[:, -1] == INDEX_NODATA).all(), "outside the AOI"
    assert filled.layers.count is layers.count
    assert filled.filled_pixels == 3 and filled.months_used == ("2024-05", "2024-07", "2024-04")

    previous = fill_tile(MonthFill("previous", 3, neighbours), TILE_BOX, tile_inside_aoi(), layers)
    assert [previous.layers.mosaic[0][pixel] for pixel in (A, B, C, D)] == [400, 300, NODATA, NODATA]
    assert [previous.distance[pixel] for pixel in (A, B, C, D)] == [1, 2, NO_VALUE, NO_VALUE]
    assert previous.filled_pixels == 2 and previous.months_used == ("2024-05", "2024-04")
    within_one = fill_tile(MonthFill("previous", 1, neighbours), TILE_BOX, tile_inside_aoi(), layers)
    assert [within_one.layers.mosaic[0][pixel] for pixel in (A, B)] == [400, NODATA], "month -2 is out of reach"


def test_a_tile_without_neighbours_or_fill_keeps_its_gaps_empty_even_if_filled_before(
    neighbours: tuple[NeighbourMonth, ...],
) -> None:
    layers = tile_layers([B, C])
    for fill in (MonthFill("none", 3, neighbours), MonthFill("interpolate", 3, ())):
        filled = fill_tile(fill, TILE_BOX, tile_inside_aoi(), layers)

        assert np.array_equal(filled.layers.mosaic, tile_layers([B, C], stale=False).mosaic), fill.method
        assert np.array_equal(filled.layers.indices["ndvi"], tile_layers([B, C], stale=False).indices["ndvi"])
        assert filled.distance[B] == filled.distance[C] == NO_VALUE and filled.filled_pixels == 0 and filled.months_used == ()


def test_a_tile_without_gaps_is_returned_as_it_is_without_reading_a_neighbour(tmp_path: Path) -> None:
    layers = tile_layers([])
    gone = NeighbourMonth(-1, "2024-05", month_destination(None, "fields", "2024-05", tmp_path), {MOSAIC_LAYER: "gone.tif", COUNT_LAYER: "gone.tif"}, "", "v")

    filled = fill_tile(MonthFill("interpolate", 3, (gone,)), TILE_BOX, tile_inside_aoi(), layers)

    assert filled.layers is layers and filled.filled_pixels == 0 and filled.months_used == ()
    assert np.array_equal(filled.distance, np.where(tile_inside_aoi(), OBSERVED, NO_VALUE))


# --- through the flows ----------------------------------------------------------------------------

FIRST_DAYS = (date(2020, 3, 1), date(2020, 4, 1), date(2020, 5, 1))
GAINS = (1.0, 1.05, 1.10)
OVERCAST_SHARE = 0.35
TILE_PX = 128
"""Cuts the AOI (216 x 216 pixels) into 2 x 2 tiles: the western ones under April's overcast, the eastern ones clear."""


@pytest.fixture
def series(s3_server: S3Server, stac_api_factory, tmp_path: Path) -> ServedSeries:
    return serve_synthetic_series(
        s3_server,
        stac_api_factory,
        tmp_path,
        [month_dates(day) for day in FIRST_DAYS],
        [{"surface_gain": gain, "overcast_share": OVERCAST_SHARE if index == 1 else 0.0} for index, gain in enumerate(GAINS)],
        surface_seed=7,
        radiometric_jitter=False,  # the composites of the clear months are then the surface itself
        cloud_cover=(0.1,),
        thin_cover=0.0,
        seed=3,
    )


def read_layer(path: str) -> tuple[np.ndarray, GeoBox]:
    with rasterio.open(path) as dataset:
        return dataset.read(), GeoBox(dataset.shape, dataset.transform, dataset.crs)


def month_layers(output: Path, label: str) -> dict[str, Any]:
    """A published month's mosaic, count and fill arrays, its grid, metadata and Item."""
    folder = output / "fill-series" / label[:4] / label[5:]
    stem = f"fill-series_{label}"
    mosaic, grid = read_layer(str(folder / f"{stem}_mosaic.tif"))
    layers: dict[str, Any] = {"mosaic": mosaic, "grid": grid, "count": read_layer(str(folder / f"{stem}_count.tif"))[0][0]}
    layers["ndvi"] = read_layer(str(folder / f"{stem}_ndvi.tif"))[0][0]
    fill_file = folder / f"{stem}_fill.tif"
    layers["fill"] = read_layer(str(fill_file))[0][0] if fill_file.exists() else None
    layers["metadata"] = json.loads((folder / f"{stem}_metadata.json").read_text())
    layers["item"] = json.loads((folder / f"{stem}_item.json").read_text())
    return layers


def tile_records(settings: MosaicSettings, label: str) -> dict[str, tuple[TileRecord, int]]:
    """{tile label: (its committed record, the record file's mtime in ns)} of a month's tiles."""
    folder = Path(run_inputs(settings).workspace.uri(f"{TILES_FOLDER}/{label}"))
    return {
        path.stem: (TileRecord.from_json(path.read_bytes()), path.stat().st_mtime_ns) for path in sorted(folder.glob("*/r*.json"))
    }


@pytest.mark.slow
def test_a_backfilled_month_interpolates_its_cloudy_part_and_refills_with_previous_or_none(
    series: ServedSeries, s3_server: S3Server, prefect_harness: None, tmp_path: Path
) -> None:
    """Two months at a time: May starts once March or April is out, so April is built before May is
    published, and the backfill refills it once May is out: only its tiles with gaps (the west), as the
    others take nothing from their neighbours."""
    settings = flow_settings(
        series.served_month(series.labels[0]),
        tmp_path / "ws",
        month=None,
        aoi_name="fill-series",
        composite={"indices": ["ndvi"]},
        tiles={"tile_size_px": TILE_PX},
    )
    output = Path(settings.output_dir)
    report = backfill(series.labels[0], series.labels[-1], settings, max_concurrent_months=2)

    march, april, may = (month_layers(output, label) for label in series.labels)
    inside = aoi_pixel_mask(load_aoi(settings.aoi), april["grid"])
    gaps = inside & (april["count"] == 0)
    rows, cols = roi_slices(SERVED_GRID.overlap_roi(april["grid"]))
    truth = series.months[1].truth[:, rows, cols].astype(np.float64)

    assert gaps.mean() > 0.2, "the overcast part of April is a gap"
    assert (april["fill"][gaps] == 1).all() and (april["fill"][inside & ~gaps] == 0).all()
    assert (april["fill"][~inside] == FILL_NODATA).all()
    expected = np.rint((march["mosaic"][:, gaps].astype(np.float64) + may["mosaic"][:, gaps]) / 2)
    assert np.array_equal(april["mosaic"][:, gaps], expected), "half way between March and May"
    expected_ndvi = np.rint((march["ndvi"][gaps].astype(np.float64) + may["ndvi"][gaps]) / 2)
    assert np.array_equal(april["ndvi"][gaps], expected_ndvi), "NDVI is filled like the reflectance"
    relative_error = np.abs(april["mosaic"][:, gaps] - truth[:, gaps]) / truth[:, gaps]
    assert relative_error.max() <= 0.01, f"an interpolated pixel is {relative_error.max():.2%} off the truth"
    fill = april["metadata"]["fill"]
    assert fill["method"] == "interpolate" and fill["filled_share_of_aoi"] == pytest.approx(gaps.sum() / inside.sum())
    assert [used["month"] for used in fill["months_used"]] == [series.labels[0], series.labels[2]]
    assert april["item"]["properties"][FILLED_SHARE_PROPERTY] == pytest.approx(fill["filled_share_of_aoi"])
    related = [link["href"] for link in april["item"]["links"] if link["rel"] == FILL_SOURCE_REL]
    assert related == [used["item"] for used in fill["months_used"]] and all(Path(href).exists() for href in related)
    assert "fill" in april["item"]["assets"]
    april_outcome = next(outcome for outcome in report.months if outcome.month == series.labels[1])
    assert april_outcome.filled_share == pytest.approx(fill["filled_share_of_aoi"])
    assert march["metadata"]["fill"]["filled_pixels"] == 0, "March is clear"
    collection = json.loads((output / "fill-series" / COLLECTION_FILE).read_text())
    assert "fill" in collection["item_assets"]
    assert sum(link["rel"] == "item" for link in collection["links"]) == len(series.labels)
    built = tile_records(settings, series.labels[1])
    gapped = {label for label, (record, _) in built.items() if record.valid_pixels < record.aoi_pixels}
    assert len(built) == 4 and gapped and gapped != set(built), f"some of April's tiles have gaps, some not: {built}"
    refill_run = {built[label][0].build_run_id for label in gapped}
    assert len(refill_run) == 1 and refill_run.isdisjoint(built[label][0].build_run_id for label in set(built) - gapped), (
        "only the tiles with gaps were refilled once May was out"
    )

    # The same month refilled: its tiles are committed, so no scene is read again.
    april_label, interpolated = series.labels[1], april
    s3_server.reset_counters()
    monthly_mosaic(settings.model_copy(update={"month": april_label, "fill": "previous"}))
    previous = month_layers(output, april_label)
    refilled = tile_records(settings, april_label)
    monthly_mosaic(settings.model_copy(update={"month": april_label, "fill": "none"}))
    unfilled = month_layers(output, april_label)
    withdrawn = tile_records(settings, april_label)

    assert {label for label in built if refilled[label][1] != built[label][1]} == gapped, "refilled: the tiles with gaps"
    assert {label for label in built if withdrawn[label][1] != refilled[label][1]} == set(built), "the fill layer is withdrawn"

    assert np.array_equal(previous["mosaic"][:, gaps], march["mosaic"][:, gaps]), "previous copies March exactly"
    assert [used["month"] for used in previous["metadata"]["fill"]["months_used"]] == [series.labels[0]]
    assert (unfilled["mosaic"][:, gaps] == 0).all() and unfilled["fill"] is None and "fill" not in unfilled["metadata"]
    assert (unfilled["ndvi"][gaps] == INDEX_NODATA).all() and np.array_equal(previous["ndvi"][gaps], march["ndvi"][gaps])
    for layers in (previous, unfilled):
        assert np.array_equal(layers["count"], interpolated["count"]), "the count stays the observed count"
        assert np.array_equal(layers["mosaic"][:, ~gaps], interpolated["mosaic"][:, ~gaps]), "an observed pixel changed"
    assert s3_server.requests_for(f"/{series.bucket}/") == 0, "a refill read a scene"

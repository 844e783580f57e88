"""Spectral indices: NDVI per observation composited with the exact percentile kernel, against numpy; and
the month's NDVI products (tile COGs, mosaic index, single COG, metadata.json, Item) from a local synthetic month."""

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import rasterio
import torch
from odc.geo.geobox import GeoBox

from flows.caching import tiles_digest
from flows.monthly_mosaic import monthly_mosaic
from flows.parameters import MosaicSettings
from tasks.compositing.composite import composite_tile
from tasks.compositing.indices import (
    INDEX_NODATA,
    INDEX_SCALE,
    INDEX_SCALE_FACTOR,
    NDVI,
    SPECTRAL_INDICES,
    index_composite,
    index_observations,
)
from tasks.compositing.percentile import percentile_value
from tasks.core.scene import REFLECTANCE_BANDS, MaskClass
from tasks.core.settings import CompositeSettings, IndexName
from tasks.geometry.aoi import aoi_pixel_mask, load_aoi
from tasks.geometry.grid import roi_slices
from tasks.geometry.tiles import tiles_over_aoi
from tasks.products.cog import validate_cog
from tasks.products.month import merge_tiles, month_histograms, write_month_products
from tasks.stac.item import COLLECTION_FILE, validate_item
from tasks.testing.served_month import SERVED_GRID, flow_settings, serve_synthetic_month
from tasks.testing.servers import S3Server
from tasks.testing.synthetic import DEFAULT_DATES, synthetic_grid
from tasks.tiling.tile import build_tile
from tests.composite_inputs import masked_window
from tests.local_month import (
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

STACK_SHAPE = (11, len(REFLECTANCE_BANDS), 150, 140)
BLOCK_SIZE = 64
"""Smaller than the stack, so a tile of it is composited in 3 x 3 blocks."""
RED, NIR = REFLECTANCE_BANDS.index("red"), REFLECTANCE_BANDS.index("nir")
PERCENTILES = (0, 10, 25, 33.3, "median", 71.7, 100)


@pytest.fixture(scope="module")
def random_stack() -> tuple[np.ndarray, np.ndarray]:
    """A random (obs, band, y, x) uint16 reflectance stack and (obs, y, x) usable mask: about a third of the
    observations unusable, some usable ones with red + nir == 0, a pixel with no usable observation, and
    red/nir pairs whose NDVI x 10000 ends in exactly .5."""
    rng = np.random.default_rng(11)
    stack = rng.integers(0, 12_000, STACK_SHAPE, dtype=np.uint16)
    usable = rng.random((STACK_SHAPE[0], *STACK_SHAPE[2:])) < 0.65
    zero_sum = rng.random(usable.shape) < 0.05
    stack[:, RED][zero_sum] = 0
    stack[:, NIR][zero_sum] = 0
    stack[:, RED, 0, :6], stack[:, NIR, 0, :6] = 19_999, 20_001  # 10000 * 2 / 40000 = 0.5: rounds to 0
    stack[:, RED, 1, :6], stack[:, NIR, 1, :6] = 19_997, 20_003  # 10000 * 6 / 40000 = 1.5: rounds to 2
    usable[:, 5, 5] = False
    return stack, usable


def numpy_ndvi(stack: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-observation NDVI x 10000 in float64 (NaN where unusable or red + nir == 0), and it rounded half to even."""
    red, nir = stack[:, RED].astype(np.float64), stack[:, NIR].astype(np.float64)
    valid = usable & (red + nir > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(valid, (nir - red) * INDEX_SCALE / (red + nir), np.nan)
    return scaled, np.round(scaled)


def nanpercentile(values: np.ndarray, percentile: float | str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(values, percentile_value(percentile), axis=0, method="linear")  # type: ignore[arg-type]


def test_every_setting_name_is_a_defined_index():
    assert set(get_args(IndexName)) == set(SPECTRAL_INDICES)
    assert CompositeSettings(indices=("ndvi", "ndvi")).indices == ("ndvi",)
    schema = CompositeSettings.model_json_schema()["properties"]["indices"]
    assert schema["items"]["enum"] == list(SPECTRAL_INDICES), "the Prefect UI form offers them as a choice"


def test_per_observation_ndvi_is_numpys_rounded_ndvi(random_stack):
    stack, usable = random_stack
    values, valid = index_observations(torch.from_numpy(stack), torch.from_numpy(usable), NDVI)
    _, rounded = numpy_ndvi(stack, usable)
    assert values.dtype == torch.int16 and values.shape == (STACK_SHAPE[0], 1, *STACK_SHAPE[2:])
    assert np.array_equal(valid.numpy(), ~np.isnan(rounded))
    assert (usable & ~valid.numpy()).any(), "the stack has usable observations with red + nir == 0"
    assert np.array_equal(values.numpy()[:, 0][valid.numpy()], rounded[~np.isnan(rounded)])


@pytest.mark.parametrize("percentile", PERCENTILES)
def test_ndvi_composite_equals_numpy_nanpercentile(random_stack, percentile):
    """The must-show: the composite equals np.round(np.nanpercentile(NDVI x 10000 rounded)) exactly, and is
    within one stored unit of np.nanpercentile of the unrounded NDVI x 10000; nodata where no value."""
    stack, usable = random_stack
    composite = index_composite(torch.from_numpy(stack), torch.from_numpy(usable), NDVI, percentile).numpy()
    scaled, rounded = numpy_ndvi(stack, usable)
    expected = nanpercentile(rounded, percentile)
    none = np.isnan(expected)
    assert none[5, 5] and composite.dtype == np.int16
    assert np.array_equal(composite[none], np.full(int(none.sum()), INDEX_NODATA))
    assert np.array_equal(composite[~none], np.round(expected[~none]).astype(np.int16))
    assert np.abs(composite[~none] - nanpercentile(scaled, percentile)[~none]).max() <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_ndvi_composite_is_the_same_on_cuda(random_stack):
    stack, usable = random_stack
    on_cpu = index_composite(torch.from_numpy(stack), torch.from_numpy(usable), NDVI, 25)
    on_cuda = index_composite(torch.from_numpy(stack).cuda(), torch.from_numpy(usable).cuda(), NDVI, 25)
    assert torch.equal(on_cpu, on_cuda.cpu())


def test_tile_composite_ndvi_is_blockwise_the_same_as_whole(random_stack):
    """composite_tile's NDVI over small blocks and an AOI equals the index composite of the whole stack in the
    AOI, nodata outside it; without `indices` the tile has none."""
    stack, usable = random_stack
    grid = synthetic_grid(shape=STACK_SHAPE[2:], resolution=10.0)
    mask = np.where(usable, MaskClass.CLEAR, MaskClass.THICK_CLOUD)
    observations = [masked_window(f"scene-{i}", grid, np.maximum(stack[i], 1), mask[i]) for i in range(STACK_SHAPE[0])]
    inside = np.zeros(STACK_SHAPE[2:], dtype=bool)
    inside[3:140, 5:130] = True
    settings = CompositeSettings(indices=("ndvi",), index_percentile=40, block_size=BLOCK_SIZE)
    small_blocks = composite_tile(observations, grid, inside, settings)
    clamped = np.maximum(stack, 1)  # masked_window makes 0 a nodata DN; the tile sees no band at 0
    whole = index_composite(torch.from_numpy(clamped), torch.from_numpy(usable & inside), NDVI, 40).numpy()
    assert np.array_equal(small_blocks.indices["ndvi"], whole)
    assert (small_blocks.indices["ndvi"][~inside] == INDEX_NODATA).all()
    assert composite_tile(observations, grid, inside, CompositeSettings()).indices == {}


# --- The month's NDVI products from a local synthetic month (SCL masker: the generator's clear masks) ----

MONTH_INDEX_PERCENTILE = 30.0


@pytest.fixture(scope="module")
def local_month(tmp_path_factory: pytest.TempPathFactory) -> LocalMonth:
    return make_local_month(tmp_path_factory.mktemp("ndvi"), partial_dates=DEFAULT_DATES[1:2])


def expected_month_ndvi(month: LocalMonth, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """The NDVI composite (int16, nodata outside the AOI and where no clear observation) and the clear count
    of the month, from the generator's truth: each item's clear values where its sky is clear."""
    rows, cols = roi_slices(SCENE_GRID.overlap_roi(month.grid))
    synthetic = month.synthetic
    stack = np.stack([synthetic.clear_value(item.item_id)[:, rows, cols] for item in month.items])
    usable = np.stack([synthetic.clear_mask[item.item_id][rows, cols] for item in month.items]) & month.inside_aoi
    assert stack.shape[2:] == month.grid.shape.yx
    expected = nanpercentile(numpy_ndvi(stack, usable)[1], percentile)
    return np.where(np.isnan(expected), INDEX_NODATA, np.round(np.nan_to_num(expected))).astype(np.int16), usable.sum(0)


@pytest.mark.parametrize(("tile_size_px", "single_cogs"), MONTH_PLANS)
def test_the_month_publishes_its_ndvi_as_the_composite_of_the_clear_observations(
    local_month: LocalMonth, tile_size_px: int, single_cogs: bool
) -> None:
    month = local_month
    composite = CompositeSettings(indices=("ndvi",), index_percentile=MONTH_INDEX_PERCENTILE)
    plan = replace(month_plan(month, tile_size_px, tiles_digest=f"ndvi-{tile_size_px}-{single_cogs}"), composite=composite)
    records = [build_tile(plan, tile) for tile in tiles_over_aoi(plan.grid, plan.aoi, plan.tile_size_px)]
    run = replace(product_run(month, plan, merge_tiles(records, month.items), records, single_cogs), composite=composite)

    urls = write_month_products(plan, run, records, month_histograms(plan, records))

    expected, clear_count = expected_month_ndvi(month, MONTH_INDEX_PERCENTILE)
    ndvi_file = run.layer_file("ndvi")
    assert urls["ndvi"] == str(month.month_folder / ndvi_file)
    assert ndvi_file == (month.names.single_cog("ndvi") if single_cogs or tile_size_px == ONE_TILE_PX else month.names.layer_index("ndvi"))
    with rasterio.open(month.month_folder / ndvi_file) as dataset:
        assert dataset.dtypes == ("int16",) and dataset.nodata == INDEX_NODATA and dataset.scales == (INDEX_SCALE_FACTOR,)
        ndvi = dataset.read(1)
    with rasterio.open(month.month_folder / run.count_file) as dataset:
        assert np.array_equal(dataset.read(1), clear_count), "the observations are the generator's clear ones"
    assert np.array_equal(ndvi, expected)
    assert (ndvi[~month.inside_aoi] == INDEX_NODATA).all() and 0.9 < (ndvi[month.inside_aoi] != INDEX_NODATA).mean() < 1
    tile_cogs = [record.files["ndvi"] for record in records]
    assert len(tile_cogs) == (4 if tile_size_px == FOUR_TILES_PX else 1)
    for name in [*tile_cogs, *([ndvi_file] if ndvi_file.endswith(".tif") else [])]:
        validate_cog(month.month_folder / name)

    metadata = json.loads((month.month_folder / month.names.metadata).read_text())
    section = metadata["ndvi"]
    assert metadata["files"]["ndvi"] == section["file"] == ndvi_file
    assert (section["dtype"], section["nodata"], section["scale"], section["percentile"]) == (
        "int16", INDEX_NODATA, INDEX_SCALE_FACTOR, MONTH_INDEX_PERCENTILE,
    )  # fmt: skip
    assert_statistics_of(ndvi[ndvi != INDEX_NODATA], section["statistics"], month.inside_aoi.sum())
    item = json.loads((month.month_folder / month.names.item).read_text())
    validate_item(item)
    (band,) = item["assets"]["ndvi"]["raster:bands"]
    assert item["assets"]["ndvi"]["href"] == f"./{ndvi_file}"
    assert (band["data_type"], band["nodata"], band["scale"]) == ("int16", INDEX_NODATA, INDEX_SCALE_FACTOR)
    assert band["statistics"]["minimum"] == section["statistics"]["min"] == ndvi[ndvi != INDEX_NODATA].min()
    tiled = tile_size_px == FOUR_TILES_PX
    assert {f"tile-{record.tile.label}-ndvi" for record in records} <= set(item["assets"]) or not tiled
    assert ("ndvi-index" in item["assets"]) == tiled == ("ndvi_index" in metadata["files"])
    if tiled:
        assert [tile["ndvi"] for tile in metadata["files"]["tiles"]] == tile_cogs
    for asset in item["assets"].values():
        assert (month.month_folder / asset["href"].removeprefix("./")).is_file(), asset["href"]


# --- The flow with `composite.indices: [ndvi]` on a served synthetic month (moto S3, rustac STAC API) ------


def test_ndvi_changes_the_tiles_digest():
    """Committed tiles without an index are never reused by a run that asks for one (nor for another percentile)."""
    base = {"aoi": "9.1,47.5,9.2,47.6", "month": "2024-06"}
    digests = {
        tiles_digest(MosaicSettings.model_validate({**base, "composite": composite}), "2024-06", "items")
        for composite in ({}, {"indices": ["ndvi"]}, {"indices": ["ndvi"], "index_percentile": 40})
    }
    assert len(digests) == 3


def test_the_flow_publishes_ndvi_tiled_and_listed(
    s3_server: S3Server, stac_api_factory, prefect_harness: None, tmp_path: Path
) -> None:
    served = serve_synthetic_month(s3_server, stac_api_factory, tmp_path)
    settings = flow_settings(served, tmp_path / "ws", composite={"indices": ["ndvi"]}, tiles={"tile_size_px": 128})

    report = monthly_mosaic(settings)

    with rasterio.open(report.product_urls["ndvi"]) as dataset:
        assert dataset.dtypes == ("int16",) and dataset.nodata == INDEX_NODATA
        ndvi, grid = dataset.read(1), GeoBox(dataset.shape, dataset.transform, dataset.crs)
    with rasterio.open(report.product_urls["count"]) as dataset:
        count = dataset.read(1)
    metadata = json.loads(Path(report.product_urls["metadata"]).read_text())
    used = [scene["id"] for scene in metadata["scenes_used"]]
    rows, cols = roi_slices(SERVED_GRID.overlap_roi(grid))
    month = served.month
    stack = np.stack([month.clear_value(item_id)[:, rows, cols] for item_id in used])
    inside_aoi = aoi_pixel_mask(load_aoi(str(served.aoi_path)), grid)
    usable = np.stack([month.clear_mask[item_id][rows, cols] for item_id in used]) & inside_aoi
    assert np.array_equal(count, usable.sum(axis=0)), "the flow's observations are the generator's clear ones"
    expected = nanpercentile(numpy_ndvi(stack, usable)[1], "median")
    observed = count > 0
    assert np.array_equal(ndvi[observed], np.round(expected[observed]).astype(np.int16))
    assert (ndvi[~observed] == INDEX_NODATA).all() and observed[inside_aoi].mean() > 0.9
    assert len(metadata["files"]["tiles"]) == 4 and all("ndvi" in tile for tile in metadata["files"]["tiles"])
    item = json.loads(Path(report.product_urls["item"]).read_text())
    validate_item(item)
    assert {"ndvi", "ndvi-index"} <= set(item["assets"]) and metadata["ndvi"]["percentile"] == "median"
    collection = json.loads((Path(report.product_urls["item"]).parents[2] / COLLECTION_FILE).read_text())
    assert "ndvi" in collection["item_assets"], "the collection lists the index"

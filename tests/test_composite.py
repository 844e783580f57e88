"""The tile composite on real clouds (Slovenia 2015) and on a synthetic month with known truth."""

import json
import warnings
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
import rasterio
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, polygon

from tasks.compositing.composite import MaskedWindow, TileComposite, block_observations, composite_tile
from tasks.core.scene import REFLECTANCE_BANDS, REFLECTANCE_SCALE, MaskClass, SceneWindow
from tasks.core.settings import CompositeSettings
from tasks.geometry.aoi import aoi_pixel_mask, load_aoi
from tasks.geometry.tiles import OutputTile, tile_grid, tile_layout
from tasks.testing.synthetic import DEFAULT_DATES, make_synthetic_month, synthetic_grid
from tests.composite_inputs import masked_window

SLOVENIA = "l1c_stack_slovenia_2015"
SLOVENIA_SHAPE = (101, 100)
SLOVENIA_BANDS = (3, 2, 1, 7)
"""Indexes of B04, B03, B02, B08 in REFERENCE_SCENES.npy's 13 bands: red, green, blue, nir."""
SLOVENIA_TIMESTAMP_OF_SCENE = (2, 1, 4, 3, 0)
"""Index into CLM.npy / timestamps.json of each scene of REFERENCE_SCENES.npy (see the data README)."""
SYNTHETIC_SHAPE = (192, 224)
CLEAR_TOLERANCE_SHARE = 0.01
CLEAR_TOLERANCE_DN = 6
"""A clear observation is within 1 % + 5.5 DN of the truth (tasks/testing/synthetic.py), so is any percentile of them."""
TILE_SIZE_PX = 128


def run_composite(observations: list[MaskedWindow], grid: GeoBox, aoi: Geometry, **settings: object) -> TileComposite:
    result = composite_tile(observations, grid, aoi_pixel_mask(aoi, grid), CompositeSettings(**settings))
    assert result.mosaic.dtype == np.uint16 and result.mosaic.shape == (len(REFLECTANCE_BANDS), *grid.shape.yx)
    assert result.count.dtype == np.uint8 and result.count.shape == grid.shape.yx
    return result


def numpy_composite(stack: np.ndarray, usable: np.ndarray, percentile: float) -> np.ndarray:
    """np.nanpercentile of the usable observations of (obs, band, ...), rounded; 0 where none is usable."""
    with_nan = np.where(usable[:, None], stack.astype(np.float64), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nan_to_num(np.round(np.nanpercentile(with_nan, percentile, axis=0)), nan=0).astype(np.uint16)


def western_part(grid: GeoBox, share: float) -> Geometry:
    """The western `share` of the grid's extent, as a polygon in its CRS."""
    left, bottom, right, top = grid.extent.boundingbox
    edge = left + share * (right - left)
    return polygon([(left, bottom), (edge, bottom), (edge, top), (left, top), (left, bottom)], grid.crs)


# --- Real clouds: five dates over Slovenia, two of them fully cloudy -----------------------------


@pytest.fixture(scope="module")
def slovenia(shared_s2):
    """The 5 real dates as masked windows with the shipped s2cloudless mask."""
    folder = shared_s2 / SLOVENIA
    aoi = load_aoi(str(folder / "bbox.geojson"))
    grid = GeoBox.from_bbox(aoi.boundingbox, aoi.crs, shape=SLOVENIA_SHAPE, tight=True)
    scenes_toa = np.load(folder / "REFERENCE_SCENES.npy")
    cloud_masks = np.load(folder / "CLM.npy")[..., 0]
    timestamps = json.loads((folder / "timestamps.json").read_text())
    observations, reflectances, cloudy = [], [], []
    for scene_index, timestamp_index in enumerate(SLOVENIA_TIMESTAMP_OF_SCENE):
        acquired = datetime.fromisoformat(timestamps[timestamp_index]).replace(tzinfo=UTC)
        reflectance = np.clip(np.round(scenes_toa[scene_index][..., SLOVENIA_BANDS] * REFLECTANCE_SCALE), 1, None)
        reflectance = reflectance.transpose(2, 0, 1).astype(np.uint16)
        cloud = cloud_masks[timestamp_index].astype(bool)
        mask = np.where(cloud, MaskClass.THICK_CLOUD, MaskClass.CLEAR)
        observations.append(masked_window(f"S2A_33TVM_{acquired:%Y%m%d}_0_L1C", grid, reflectance, mask))
        reflectances.append(reflectance)
        cloudy.append(bool(cloud.mean() > 0.5))
    return aoi, grid, observations, np.stack(reflectances), np.array(cloudy)


def test_real_cloudy_dates_do_not_enter_the_composite(slovenia):
    aoi, grid, observations, reflectance, cloudy = slovenia
    assert cloudy.sum() == 2, "the data README promises 2 fully cloudy dates of 5"
    result = run_composite(observations, grid, aoi)
    clear_observations = [observation for observation, is_cloudy in zip(observations, cloudy, strict=True) if not is_cloudy]
    clear = run_composite(clear_observations, grid, aoi)
    np.testing.assert_array_equal(result.mosaic, clear.mosaic)
    np.testing.assert_array_equal(result.count, clear.count)
    assert (result.count == 3).all()
    assert result.contributing_scenes == tuple(observation.window.item_id for observation in clear_observations)
    expected = numpy_composite(reflectance[~cloudy], np.ones((3, *SLOVENIA_SHAPE), bool), 25)
    np.testing.assert_array_equal(result.mosaic, expected)
    # Without the mask the clouds would show: the cloudy dates are brighter in the blue band.
    unmasked = numpy_composite(reflectance, np.ones((5, *SLOVENIA_SHAPE), bool), 25)
    assert (unmasked[2] > result.mosaic[2]).mean() > 0.5


def test_result_summarises_the_mosaic(slovenia):
    aoi, grid, observations, reflectance, cloudy = slovenia
    result = run_composite(observations, grid, aoi, percentile="median")
    np.testing.assert_array_equal(result.mosaic, numpy_composite(reflectance[~cloudy], np.ones((3, *SLOVENIA_SHAPE), bool), 50))
    assert result.aoi_pixels == result.valid_pixels == result.mosaic.shape[1] * result.mosaic.shape[2]
    assert result.count.max() == 3


def test_outside_aoi_is_nodata_and_block_size_does_not_matter(slovenia):
    _, grid, observations, _, _ = slovenia
    left, bottom, right, top = grid.extent.boundingbox
    triangle = polygon([(left, bottom), (right, bottom), (left + 0.3 * (right - left), top), (left, bottom)], grid.crs)
    inside = aoi_pixel_mask(triangle, grid)
    assert 0.2 < inside.mean() < 0.8
    whole = run_composite(observations, grid, triangle, block_size=1024)
    blocks = run_composite(observations, grid, triangle, block_size=64)
    np.testing.assert_array_equal(blocks.mosaic, whole.mosaic)
    np.testing.assert_array_equal(blocks.count, whole.count)
    assert not blocks.mosaic[:, ~inside].any() and not blocks.count[~inside].any()
    assert (blocks.mosaic[:, inside] > 0).all() and (blocks.count[inside] == 3).all()
    assert blocks.aoi_pixels == inside.sum()


def test_window_off_the_pixel_lattice_is_refused_not_shifted(slovenia):
    aoi, grid, observations, _, _ = slovenia
    shifted_grid = GeoBox(grid.shape, grid.affine @ grid.affine.translation(0.5, 0), grid.crs)
    shifted = replace(observations[0], window=replace(observations[0].window, grid=shifted_grid))
    with pytest.raises(ValueError, match="Incompatible grids"):
        run_composite([shifted], grid, aoi)


# --- Synthetic month: known truth, partial scenes, scene sub-grids -------------------------------


def read_band(path: str) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read(1)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A synthetic month as masked windows with the generator's own masks; one date is a partial swath
    and is cut to the eastern part of the grid, as the read step cuts a window to the scene's data."""
    grid = synthetic_grid(SYNTHETIC_SHAPE)
    month = make_synthetic_month(tmp_path_factory.mktemp("synthetic_cogs"), grid=grid, partial_dates=(DEFAULT_DATES[1],))
    observations, reflectances, clear_masks = [], [], []
    for item in month.items:
        item_id = item["id"]
        reflectance = np.stack([read_band(item["assets"][band]["href"]) for band in REFLECTANCE_BANDS])
        data, clear = month.data_mask[item_id], month.clear_mask[item_id]
        assert not reflectance[:, ~data].any()
        mask = np.select(
            [~data, month.cloud_mask[item_id], month.thin_mask[item_id], month.shadow_mask[item_id]],
            [MaskClass.NODATA, MaskClass.THICK_CLOUD, MaskClass.THIN_CLOUD, MaskClass.CLOUD_SHADOW],
            MaskClass.CLEAR,
        )
        columns = np.flatnonzero(data.any(axis=0))
        roi = np.s_[:, columns[0] : columns[-1] + 1]
        observations.append(masked_window(item_id, grid[roi], reflectance[(slice(None), *roi)], mask[roi]))
        reflectances.append(reflectance)
        clear_masks.append(clear)
    assert observations[1].window.grid.shape.x < grid.shape.x, "the partial date is cut to a sub-grid"
    return month, observations, np.stack(reflectances), np.stack(clear_masks)


def test_synthetic_composite_is_near_the_truth_and_counts_clear_observations(synthetic):
    month, observations, _, clear_masks = synthetic
    result = run_composite(observations, month.grid, month.grid.extent, block_size=64)
    np.testing.assert_array_equal(result.count, clear_masks.sum(axis=0))
    observed = result.count > 0
    assert observed.mean() > 0.9
    truth = month.truth.astype(np.int64)
    close = np.abs(result.mosaic.astype(np.int64) - truth) <= CLEAR_TOLERANCE_SHARE * truth + CLEAR_TOLERANCE_DN
    assert close.all(axis=0)[observed].mean() >= 0.99
    assert not result.mosaic[:, ~observed].any()
    assert result.valid_pixels == observed.sum()


def test_synthetic_composite_equals_numpy_on_the_generator_masks(synthetic):
    month, observations, reflectance, clear_masks = synthetic
    mosaic = run_composite(observations, month.grid, month.grid.extent, percentile=40).mosaic
    pixels = np.random.default_rng(0).choice(mosaic.shape[1] * mosaic.shape[2], size=3000, replace=False)
    rows, columns = np.unravel_index(pixels, mosaic.shape[1:])
    expected = numpy_composite(reflectance[:, :, rows, columns], clear_masks[:, rows, columns], 40)
    np.testing.assert_array_equal(mosaic[:, rows, columns], expected)


def test_aoi_in_another_crs_clips_the_same_pixels(synthetic):
    month, observations, _, _ = synthetic
    left, bottom, right, top = month.grid.extent.boundingbox
    diamond = polygon(
        [
            ((left + right) / 2, bottom),
            (right, (bottom + top) / 2),
            ((left + right) / 2, top),
            (left, (bottom + top) / 2),
        ],
        month.grid.crs,
    )
    in_wgs84: Geometry = diamond.to_crs("EPSG:4326")
    inside = aoi_pixel_mask(in_wgs84, month.grid)
    result = run_composite(observations, month.grid, in_wgs84, block_size=128)
    assert not result.mosaic[:, ~inside].any() and not result.count[~inside].any()
    assert result.count[inside].mean() > 2


def test_blocks_the_aoi_misses_are_empty_and_the_others_unchanged(synthetic):
    month, observations, _, _ = synthetic
    western_quarter = western_part(month.grid, 0.25)
    inside = aoi_pixel_mask(western_quarter, month.grid)
    full = run_composite(observations, month.grid, month.grid.extent, block_size=64)
    part = run_composite(observations, month.grid, western_quarter, block_size=64)
    np.testing.assert_array_equal(part.mosaic, np.where(inside, full.mosaic, 0))
    np.testing.assert_array_equal(part.count, np.where(inside, full.count, 0))
    assert set(part.contributing_scenes) <= set(full.contributing_scenes)


# --- Tiles: windows reaching beyond a tile, tiles against one block, contributing scenes ----------


def test_a_window_reaching_beyond_the_tile_contributes_only_its_overlap(synthetic):
    month, observations, _, _ = synthetic
    tile_box = month.grid[64:160, 32:128]  # windows of the whole grid reach past it on every side
    cropped = []
    for observation in observations:
        roi = observation.window.grid.overlap_roi(tile_box)
        cut = SceneWindow(observation.window.item_id, observation.window.grid[roi], observation.window.bands[(slice(None), *roi)])
        cropped.append(MaskedWindow(cut, observation.mask[roi]))
    assert all(observation.window.grid.shape.y > tile_box.shape.y for observation in observations)
    reaching = run_composite(observations, tile_box, tile_box.extent)
    inside_only = run_composite(cropped, tile_box, tile_box.extent)
    whole_grid = run_composite(observations, month.grid, month.grid.extent)
    for result in (reaching, inside_only):
        np.testing.assert_array_equal(result.mosaic, whole_grid.mosaic[:, 64:160, 32:128])
        np.testing.assert_array_equal(result.count, whole_grid.count[64:160, 32:128])
    assert reaching.contributing_scenes == inside_only.contributing_scenes
    assert reaching.aoi_pixels == tile_box.shape.y * tile_box.shape.x


def test_tiles_composited_apart_equal_the_composite_in_one_block(synthetic):
    month, observations, _, _ = synthetic
    grid = month.grid
    aoi = western_part(grid, 0.8).to_crs("EPSG:4326")
    inside = aoi_pixel_mask(aoi, grid)
    one_block = composite_tile(observations, grid, inside, CompositeSettings(block_size=1024))
    assert max(grid.shape.yx) <= 1024
    mosaic, count = np.zeros_like(one_block.mosaic), np.zeros_like(one_block.count)
    aoi_pixels = valid_pixels = 0
    contributing: set[str] = set()
    layout = tile_layout(grid, TILE_SIZE_PX)
    assert layout.shape.yx == (2, 2)
    for row, col in np.ndindex(*layout.shape.yx):
        tile_box = tile_grid(grid, TILE_SIZE_PX, OutputTile(row, col))
        roi = grid.overlap_roi(tile_box)
        tile = composite_tile(observations, tile_box, inside[roi], CompositeSettings(block_size=TILE_SIZE_PX // 2))
        mosaic[(slice(None), *roi)], count[roi] = tile.mosaic, tile.count
        aoi_pixels, valid_pixels = aoi_pixels + tile.aoi_pixels, valid_pixels + tile.valid_pixels
        contributing.update(tile.contributing_scenes)
    np.testing.assert_array_equal(mosaic, one_block.mosaic)
    np.testing.assert_array_equal(count, one_block.count)
    assert (aoi_pixels, valid_pixels) == (one_block.aoi_pixels, one_block.valid_pixels)
    assert contributing == set(one_block.contributing_scenes)
    assert not count[~inside].any() and count[inside].any()


def test_contributing_scenes_are_those_with_a_usable_aoi_pixel_in_input_order(synthetic):
    month, observations, _, clear_masks = synthetic
    grid = month.grid
    western_half = western_part(grid, 0.5)
    inside = aoi_pixel_mask(western_half, grid)
    first = observations[0]
    cloudy = replace(first, window=replace(first.window, item_id="S2X_ALL_CLOUD"), mask=np.full_like(first.mask, MaskClass.THICK_CLOUD))
    east_roi = np.s_[:, grid.shape.x * 3 // 4 :]
    eastern = MaskedWindow(SceneWindow("S2X_EAST", grid[east_roi], first.window.bands[(slice(None), *east_roi)]), first.mask[east_roi])
    listed = [cloudy, *observations, eastern]
    expected = tuple(
        observation.window.item_id
        for observation, clear in zip(observations, clear_masks, strict=True)
        if (clear & inside).any()
    )
    assert len(expected) >= 3
    assert run_composite(listed, grid, western_half, block_size=64).contributing_scenes == expected
    assert run_composite(listed[::-1], grid, western_half, block_size=64).contributing_scenes == expected[::-1]
    assert run_composite([eastern], grid, grid.extent).contributing_scenes == ("S2X_EAST",)


# --- block_observations -------------------------------------------------------------------------


def test_block_observations_places_the_overlapping_windows_on_the_block():
    grid = synthetic_grid((60, 60))
    block_rows, block_cols = slice(10, 18), slice(20, 30)
    block_grid = grid[block_rows, block_cols]
    rng = np.random.default_rng(7)
    placements = {  # item id -> (rows, columns) of its window on the grid
        "S2X_WIDER": (slice(6, 14), slice(16, 40)),
        "S2X_WEST": (slice(10, 18), slice(0, 5)),
        "S2X_NARROW": (slice(12, 30), slice(25, 27)),
        "S2X_FAR": (slice(40, 50), slice(0, 60)),
    }
    observations, on_grid, usable_on_grid = [], {}, {}
    for item_id, (rows, cols) in placements.items():
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        bands = rng.integers(1, 9000, size=(5, *shape), dtype=np.uint16)
        bands[2, 0, -1] = 0  # one pixel without blue
        mask = np.where(rng.random(shape) < 0.3, MaskClass.THIN_CLOUD, MaskClass.CLEAR).astype(np.uint8)
        observations.append(MaskedWindow(SceneWindow(item_id, grid[rows, cols], bands), mask))
        placed = np.zeros((len(REFLECTANCE_BANDS), *grid.shape.yx), np.uint16)
        placed[:, rows, cols] = bands[: len(REFLECTANCE_BANDS)]
        usable = np.zeros(grid.shape.yx, bool)
        usable[rows, cols] = (mask == MaskClass.CLEAR) & (bands[: len(REFLECTANCE_BANDS)] > 0).all(axis=0)
        on_grid[item_id], usable_on_grid[item_id] = placed[:, block_rows, block_cols], usable[block_rows, block_cols]

    stack, usable, item_ids = block_observations(observations, block_grid)

    assert item_ids == ["S2X_WIDER", "S2X_NARROW"]
    assert stack.shape == (2, len(REFLECTANCE_BANDS), 8, 10) and stack.dtype == np.uint16 and usable.dtype == bool
    for index, item_id in enumerate(item_ids):
        np.testing.assert_array_equal(stack[index], on_grid[item_id])
        np.testing.assert_array_equal(usable[index], usable_on_grid[item_id])
    assert usable[0, :4].any() and not usable[0, 4:].any()  # S2X_WIDER covers block rows 0..3
    assert not usable[1][:, [0, 1, 2, 3, 4, 7, 8, 9]].any()  # S2X_NARROW covers block columns 5 and 6
    assert not usable[0, 3, 9]  # its pixel without blue (window row 7, column 19)
    empty_stack, empty_usable, no_ids = block_observations([], block_grid)
    assert empty_stack.shape == (0, len(REFLECTANCE_BANDS), 8, 10) and empty_usable.shape == (0, 8, 10) and no_ids == []

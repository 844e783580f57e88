"""The streaming composite on real clouds (Slovenia 2015) and on a synthetic month with known truth."""

import json
import warnings
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, polygon

from tasks.aoi import aoi_pixel_mask, load_aoi
from tasks.composite import composite
from tasks.errors import SceneReadError
from tasks.mask import mask_name_for, write_mask
from tasks.scene import REFLECTANCE_BANDS, REFLECTANCE_SCALE, ClippedScene, MaskClass
from tasks.settings import CompositeSettings
from tasks.workspace import Workspace
from tests.synthetic import DEFAULT_DATES, make_synthetic_month, synthetic_grid

SLOVENIA = "l1c_stack_slovenia_2015"
SLOVENIA_SHAPE = (101, 100)
SLOVENIA_BANDS = (3, 2, 1, 7)
"""Indexes of B04, B03, B02, B08 in REFERENCE_SCENES.npy's 13 bands: red, green, blue, nir."""
SLOVENIA_TIMESTAMP_OF_SCENE = (2, 1, 4, 3, 0)
"""Index into CLM.npy / timestamps.json of each scene of REFERENCE_SCENES.npy (see the data README)."""
SYNTHETIC_SHAPE = (192, 224)
CLEAR_TOLERANCE_SHARE = 0.01
CLEAR_TOLERANCE_DN = 6
"""A clear observation is within 1 % + 5.5 DN of the truth (tests/synthetic.py), so is any percentile of them."""
SCL_VEGETATION = 4


def write_clipped_scene(
    workspace: Workspace, item_id: str, acquired: datetime, sub_grid: GeoBox, reflectance: np.ndarray, mask: np.ndarray
) -> ClippedScene:
    """A clipped scene (red, green, blue, nir, SCL) and its `_mask.tif` on `sub_grid`, as the read and mask stages
    write them."""
    name = f"scenes/{item_id}.tif"
    scl = np.where((reflectance > 0).all(axis=0), SCL_VEGETATION, 0).astype(np.uint16)
    bands = np.concatenate([reflectance, scl[None]]).astype(np.uint16)
    profile = {
        "driver": "GTiff", "count": 5, "dtype": "uint16", "nodata": 0, "height": sub_grid.shape.y,
        "width": sub_grid.shape.x, "crs": sub_grid.crs.to_wkt(), "transform": sub_grid.affine,
        "tiled": True, "blockxsize": 64, "blockysize": 64, "compress": "deflate",
    }  # fmt: skip
    with workspace.staged(name) as staged_path, rasterio.open(staged_path, "w", **profile) as dataset:
        dataset.write(bands)
    write_mask(workspace, mask_name_for(name), mask.astype(np.uint8), sub_grid, "test")
    valid_fraction = float((mask == MaskClass.CLEAR).mean())
    return ClippedScene(item_id, acquired, "05.00", name, sub_grid, valid_fraction)


def run_composite(scenes, grid, aoi, workspace, out_dir: Path, **settings) -> tuple[np.ndarray, np.ndarray, object]:
    result = composite(
        scenes, grid, aoi, workspace, CompositeSettings(**settings), out_dir / "mosaic.tif", out_dir / "count.tif"
    )
    with rasterio.open(result.mosaic_path) as mosaic_file, rasterio.open(result.count_path) as count_file:
        assert mosaic_file.nodata == 0 and mosaic_file.dtypes == ("uint16",) * 4
        assert count_file.dtypes == ("uint8",)
        assert mosaic_file.transform == grid.affine and count_file.shape == grid.shape.yx
        return mosaic_file.read(), count_file.read(1), result


def numpy_composite(stack: np.ndarray, usable: np.ndarray, percentile: float) -> np.ndarray:
    """np.nanpercentile of the usable observations of (obs, band, ...), rounded; 0 where none is usable."""
    with_nan = np.where(usable[:, None], stack.astype(np.float64), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nan_to_num(np.round(np.nanpercentile(with_nan, percentile, axis=0)), nan=0).astype(np.uint16)


# --- Real clouds: five dates over Slovenia, two of them fully cloudy -----------------------------


@pytest.fixture(scope="module")
def slovenia(shared_s2, tmp_path_factory):
    """The 5 real dates as clipped scenes with the shipped s2cloudless mask, and the same 3 clear dates alone."""
    folder = shared_s2 / SLOVENIA
    aoi = load_aoi(str(folder / "bbox.geojson"))
    grid = GeoBox.from_bbox(aoi.boundingbox, aoi.crs, shape=SLOVENIA_SHAPE, tight=True)
    scenes_toa = np.load(folder / "REFERENCE_SCENES.npy")
    cloud_masks = np.load(folder / "CLM.npy")[..., 0]
    timestamps = json.loads((folder / "timestamps.json").read_text())
    workspace = Workspace(str(tmp_path_factory.mktemp("slovenia_ws")))
    scenes, reflectances, cloudy = [], [], []
    for scene_index, timestamp_index in enumerate(SLOVENIA_TIMESTAMP_OF_SCENE):
        acquired = datetime.fromisoformat(timestamps[timestamp_index]).replace(tzinfo=UTC)
        reflectance = np.clip(np.round(scenes_toa[scene_index][..., SLOVENIA_BANDS] * REFLECTANCE_SCALE), 1, None)
        reflectance = reflectance.transpose(2, 0, 1).astype(np.uint16)
        cloud = cloud_masks[timestamp_index].astype(bool)
        mask = np.where(cloud, MaskClass.THICK_CLOUD, MaskClass.CLEAR)
        item_id = f"S2A_33TVM_{acquired:%Y%m%d}_0_L1C"
        scenes.append(write_clipped_scene(workspace, item_id, acquired, grid, reflectance, mask))
        reflectances.append(reflectance)
        cloudy.append(bool(cloud.mean() > 0.5))
    return aoi, grid, workspace, scenes, np.stack(reflectances), np.array(cloudy)


def test_real_cloudy_dates_do_not_enter_the_composite(slovenia, tmp_path):
    aoi, grid, workspace, scenes, reflectance, cloudy = slovenia
    assert cloudy.sum() == 2, "the data README promises 2 fully cloudy dates of 5"
    mosaic, count, result = run_composite(scenes, grid, aoi, workspace, tmp_path / "all")
    clear_scenes = [scene for scene, is_cloudy in zip(scenes, cloudy, strict=True) if not is_cloudy]
    clear_mosaic, clear_count, _ = run_composite(clear_scenes, grid, aoi, workspace, tmp_path / "clear")
    np.testing.assert_array_equal(mosaic, clear_mosaic)
    np.testing.assert_array_equal(count, clear_count)
    assert (count == 3).all()
    assert set(result.contributing_scenes) == {scene.item_id for scene in clear_scenes}
    expected = numpy_composite(reflectance[~cloudy], np.ones((3, *SLOVENIA_SHAPE), bool), 25)
    np.testing.assert_array_equal(mosaic, expected)
    # Without the mask the clouds would show: the cloudy dates are brighter in the blue band.
    unmasked = numpy_composite(reflectance, np.ones((5, *SLOVENIA_SHAPE), bool), 25)
    assert (unmasked[2] > mosaic[2]).mean() > 0.5


def test_result_record_summarises_the_mosaic(slovenia, tmp_path):
    aoi, grid, workspace, scenes, _, _ = slovenia
    mosaic, count, result = run_composite(scenes, grid, aoi, workspace, tmp_path, percentile="median")
    assert result.percentile == 50.0
    assert result.aoi_pixels == result.valid_pixels == mosaic.shape[1] * mosaic.shape[2]
    assert result.valid_share == 1.0 and result.max_count == count.max() == 3


def test_outside_aoi_is_nodata_and_block_size_does_not_matter(slovenia, tmp_path):
    _, grid, workspace, scenes, _, _ = slovenia
    left, bottom, right, top = grid.extent.boundingbox
    triangle = polygon([(left, bottom), (right, bottom), (left + 0.3 * (right - left), top), (left, bottom)], grid.crs)
    inside = aoi_pixel_mask(triangle, grid)
    assert 0.2 < inside.mean() < 0.8
    whole = run_composite(scenes, grid, triangle, workspace, tmp_path / "whole", block_size=1024)
    blocks = run_composite(scenes, grid, triangle, workspace, tmp_path / "blocks", block_size=64)
    for expected, got in zip(whole[:2], blocks[:2], strict=True):
        np.testing.assert_array_equal(got, expected)
    mosaic, count, result = blocks
    assert not mosaic[:, ~inside].any() and not count[~inside].any()
    assert (mosaic[:, inside] > 0).all() and (count[inside] == 3).all()
    assert result.aoi_pixels == inside.sum()


def test_scene_off_the_grid_is_a_one_line_error(slovenia, tmp_path):
    aoi, grid, workspace, scenes, _, _ = slovenia
    shifted = replace(scenes[0], grid=GeoBox(grid.shape, grid.affine @ grid.affine.translation(0.5, 0), grid.crs))
    with pytest.raises(SceneReadError, match="not a pixel-aligned slice"):
        composite([shifted], grid, aoi, workspace, CompositeSettings(), tmp_path / "m.tif", tmp_path / "c.tif")
    assert not (tmp_path / "m.tif").exists()


# --- Synthetic month: known truth, partial scenes, scene sub-grids -------------------------------


def read_band(path: str) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read(1)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A synthetic month as clipped scenes with the generator's own masks; one date is a partial swath
    and is clipped to the eastern part of the grid, as the read stage clips a scene to its data."""
    grid = synthetic_grid(SYNTHETIC_SHAPE)
    cog_dir = tmp_path_factory.mktemp("synthetic_cogs")
    month = make_synthetic_month(cog_dir, grid=grid, partial_dates=(DEFAULT_DATES[1],))
    workspace = Workspace(str(tmp_path_factory.mktemp("synthetic_ws")))
    scenes, reflectances, clear_masks = [], [], []
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
        acquired = datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00"))
        scene_reflectance = reflectance[(slice(None), *roi)]
        scenes.append(write_clipped_scene(workspace, item_id, acquired, grid[roi], scene_reflectance, mask[roi]))
        reflectances.append(reflectance)
        clear_masks.append(clear)
    assert scenes[1].grid.shape.x < grid.shape.x, "the partial date is clipped to a sub-grid"
    return month, workspace, scenes, np.stack(reflectances), np.stack(clear_masks)


def test_synthetic_composite_is_near_the_truth_and_counts_clear_observations(synthetic, tmp_path):
    month, workspace, scenes, _, clear_masks = synthetic
    aoi = month.grid.extent
    mosaic, count, result = run_composite(scenes, month.grid, aoi, workspace, tmp_path, block_size=64)
    np.testing.assert_array_equal(count, clear_masks.sum(axis=0))
    observed = count > 0
    assert observed.mean() > 0.9
    truth = month.truth.astype(np.int64)
    close = np.abs(mosaic.astype(np.int64) - truth) <= CLEAR_TOLERANCE_SHARE * truth + CLEAR_TOLERANCE_DN
    assert close.all(axis=0)[observed].mean() >= 0.99
    assert not mosaic[:, ~observed].any()
    assert result.valid_pixels == observed.sum()


def test_synthetic_composite_equals_numpy_on_the_generator_masks(synthetic, tmp_path):
    month, workspace, scenes, reflectance, clear_masks = synthetic
    mosaic, _, _ = run_composite(scenes, month.grid, month.grid.extent, workspace, tmp_path, percentile=40)
    pixels = np.random.default_rng(0).choice(mosaic.shape[1] * mosaic.shape[2], size=3000, replace=False)
    rows, columns = np.unravel_index(pixels, mosaic.shape[1:])
    expected = numpy_composite(reflectance[:, :, rows, columns], clear_masks[:, rows, columns], 40)
    np.testing.assert_array_equal(mosaic[:, rows, columns], expected)


def test_aoi_in_another_crs_clips_the_same_pixels(synthetic, tmp_path):
    month, workspace, scenes, _, _ = synthetic
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
    mosaic, count, _ = run_composite(scenes, month.grid, in_wgs84, workspace, tmp_path, block_size=128)
    assert not mosaic[:, ~inside].any() and not count[~inside].any()
    assert count[inside].mean() > 2


def test_blocks_the_aoi_misses_are_empty_and_the_others_unchanged(synthetic, tmp_path):
    month, workspace, scenes, _, _ = synthetic
    left, bottom, right, top = month.grid.extent.boundingbox
    western_quarter = polygon([(left, bottom), (left + (right - left) / 4, bottom),
                               (left + (right - left) / 4, top), (left, top), (left, bottom)], month.grid.crs)  # fmt: skip
    inside = aoi_pixel_mask(western_quarter, month.grid)
    full = run_composite(scenes, month.grid, month.grid.extent, workspace, tmp_path / "full", block_size=64)
    part = run_composite(scenes, month.grid, western_quarter, workspace, tmp_path / "part", block_size=64)
    np.testing.assert_array_equal(part[0], np.where(inside, full[0], 0))
    np.testing.assert_array_equal(part[1], np.where(inside, full[1], 0))
    assert set(part[2].contributing_scenes) <= set(full[2].contributing_scenes)

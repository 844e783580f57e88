"""Spectral indices: NDVI per observation composited with the exact percentile kernel, against numpy."""

import warnings
from typing import get_args

import numpy as np
import pytest
import torch

from tasks.composite import composite_tile
from tasks.indices import INDEX_NODATA, INDEX_SCALE, NDVI, SPECTRAL_INDICES, index_composite, index_observations
from tasks.percentile import percentile_value
from tasks.scene import REFLECTANCE_BANDS, MaskClass
from tasks.settings import CompositeSettings, IndexName
from tasks.testing.synthetic import synthetic_grid
from tests.test_composite import masked_window

STACK_SHAPE = (11, len(REFLECTANCE_BANDS), 150, 140)
BLOCK_SIZE = 64
"""Smaller than the stack, so a tile of it is composited in 3 x 3 blocks."""
RED, NIR = REFLECTANCE_BANDS.index("red"), REFLECTANCE_BANDS.index("nir")
PERCENTILES = (0, 10, 25, 33.3, "median", 71.7, 100)


@pytest.fixture(scope="module")
def test_stack() -> tuple[np.ndarray, np.ndarray]:
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


def test_per_observation_ndvi_is_numpys_rounded_ndvi(test_stack):
    stack, usable = test_stack
    values, valid = index_observations(torch.from_numpy(stack), torch.from_numpy(usable), NDVI)
    _, rounded = numpy_ndvi(stack, usable)
    assert values.dtype == torch.int16 and values.shape == (STACK_SHAPE[0], 1, *STACK_SHAPE[2:])
    assert np.array_equal(valid.numpy(), ~np.isnan(rounded))
    assert (usable & ~valid.numpy()).any(), "the stack has usable observations with red + nir == 0"
    assert np.array_equal(values.numpy()[:, 0][valid.numpy()], rounded[~np.isnan(rounded)])


@pytest.mark.parametrize("percentile", PERCENTILES)
def test_ndvi_composite_equals_numpy_nanpercentile(test_stack, percentile):
    """The must-show: the composite equals np.round(np.nanpercentile(NDVI x 10000 rounded)) exactly, and is
    within one stored unit of np.nanpercentile of the unrounded NDVI x 10000; nodata where no value."""
    stack, usable = test_stack
    composite = index_composite(torch.from_numpy(stack), torch.from_numpy(usable), NDVI, percentile).numpy()
    scaled, rounded = numpy_ndvi(stack, usable)
    expected = nanpercentile(rounded, percentile)
    none = np.isnan(expected)
    assert none[5, 5] and composite.dtype == np.int16
    assert np.array_equal(composite[none], np.full(int(none.sum()), INDEX_NODATA))
    assert np.array_equal(composite[~none], np.round(expected[~none]).astype(np.int16))
    assert np.abs(composite[~none] - nanpercentile(scaled, percentile)[~none]).max() <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_ndvi_composite_is_the_same_on_cuda(test_stack):
    stack, usable = test_stack
    on_cpu = index_composite(torch.from_numpy(stack), torch.from_numpy(usable), NDVI, 25)
    on_cuda = index_composite(torch.from_numpy(stack).cuda(), torch.from_numpy(usable).cuda(), NDVI, 25)
    assert torch.equal(on_cpu, on_cuda.cpu())


def test_tile_composite_ndvi_is_blockwise_the_same_as_whole(test_stack):
    """composite_tile's NDVI over small blocks and an AOI equals the index composite of the whole stack in the
    AOI, nodata outside it; without `indices` the tile has none."""
    stack, usable = test_stack
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

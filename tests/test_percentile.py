"""The compositing kernel equals numpy's nanpercentile (linear method, rounded) on random stacks."""

import itertools
import warnings

import numpy as np
import pytest
import torch

from tasks.compositing import percentile as percentile_module
from tasks.compositing.percentile import (
    COUNT_SATURATION,
    percentile_composite,
    percentile_value,
    sort_observations,
    sorting_network,
)
from tasks.core.device import compute_device
from tasks.core.errors import InvalidSettings

PERCENTILES = (0, 10, 25, 50, 90, 100)
OBSERVATION_COUNTS = (1, 2, 3, 4, 7, 12, 23, 40)


def random_stack(rng: np.random.Generator, obs_count: int, shape=(4, 9, 11), invalid_share=0.4):
    """A uint16 stack (obs, band, y, x) over the full value range and a validity (obs, y, x)."""
    stack = rng.integers(1, np.iinfo(np.uint16).max, size=(obs_count, *shape), dtype=np.uint16, endpoint=True)
    valid = rng.random((obs_count, *shape[1:])) >= invalid_share
    return stack, valid


def numpy_reference(stack: np.ndarray, valid: np.ndarray, percentile: float) -> np.ndarray:
    """np.round(np.nanpercentile(..., method='linear')) in float64, 0 where nothing is valid."""
    with_nan = np.where(valid[:, None], stack.astype(np.float64), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        result = np.nanpercentile(with_nan, percentile, axis=0, method="linear")
    return np.nan_to_num(np.round(result), nan=0).astype(np.uint16)


def run_kernel(stack: np.ndarray, valid: np.ndarray, percentile) -> tuple[np.ndarray, np.ndarray]:
    composite, count = percentile_composite(torch.from_numpy(stack), torch.from_numpy(valid), percentile)
    return composite.numpy(), count.numpy()


@pytest.mark.parametrize("obs_count", OBSERVATION_COUNTS)
def test_kernel_equals_numpy_nanpercentile(obs_count):
    rng = np.random.default_rng(obs_count)
    stack, valid = random_stack(rng, obs_count)
    for percentile in PERCENTILES:
        composite, count = run_kernel(stack, valid, percentile)
        assert composite.dtype == np.uint16
        np.testing.assert_array_equal(composite, numpy_reference(stack, valid, percentile), err_msg=f"q={percentile}")
    np.testing.assert_array_equal(count, valid.sum(axis=0))


def test_kernel_matches_numpy_on_ties_and_half_way_ranks():
    """Few distinct values make ties; fractional percentiles make ranks with awkward float fractions."""
    rng = np.random.default_rng(7)
    stack = rng.integers(1, 6, size=(10, 2, 30, 30), dtype=np.uint16)
    stack[:, :, :5] = np.iinfo(np.uint16).max
    valid = rng.random((10, 30, 30)) >= 0.3
    for percentile in (12.5, 33.3, 37.5, 62.5, 87.5, 99.9):
        composite, _ = run_kernel(stack, valid, percentile)
        np.testing.assert_array_equal(composite, numpy_reference(stack, valid, percentile), err_msg=f"q={percentile}")


def test_float_stack_is_interpolated_without_rounding():
    rng = np.random.default_rng(3)
    stack = rng.random((6, 3, 8, 8))
    valid = rng.random((6, 8, 8)) >= 0.3
    composite, _ = run_kernel(stack, valid, 30)
    with_nan = np.where(valid[:, None], stack, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nan_to_num(np.nanpercentile(with_nan, 30, axis=0), nan=0)
    np.testing.assert_allclose(composite, expected, rtol=0, atol=1e-12)


def test_pixels_without_valid_observation_are_zero():
    rng = np.random.default_rng(11)
    stack, valid = random_stack(rng, 5)
    valid[:, 2:4, 3:6] = False
    composite, count = run_kernel(stack, valid, 25)
    assert (composite[:, 2:4, 3:6] == 0).all()
    assert (count[2:4, 3:6] == 0).all()
    assert (composite[:, valid.any(axis=0)] > 0).all()


def test_no_observations_gives_zeros():
    composite, count = run_kernel(np.zeros((0, 4, 3, 5), np.uint16), np.zeros((0, 3, 5), bool), 50)
    assert composite.shape == (4, 3, 5) and count.shape == (3, 5)
    assert not composite.any() and not count.any()


def test_median_is_the_50th_percentile():
    rng = np.random.default_rng(5)
    stack, valid = random_stack(rng, 9)
    np.testing.assert_array_equal(run_kernel(stack, valid, "median")[0], run_kernel(stack, valid, 50)[0])
    assert percentile_value("median") == 50.0


def test_count_saturates_at_255():
    stack = np.ones((COUNT_SATURATION + 10, 1, 2, 2), np.uint16)
    valid = np.ones((COUNT_SATURATION + 10, 2, 2), bool)
    valid[:20, 0, 0] = False
    _, count = run_kernel(stack, valid, 50)
    assert count.dtype == np.uint8
    assert count[0, 0] == COUNT_SATURATION + 10 - 20
    assert (count.ravel()[1:] == COUNT_SATURATION).all()


def test_chunked_result_equals_one_chunk(monkeypatch):
    rng = np.random.default_rng(13)
    stack, valid = random_stack(rng, 6, shape=(4, 40, 50))
    whole = run_kernel(stack, valid, 25)
    monkeypatch.setitem(percentile_module.CHUNK_KEYS, "cpu", 6 * 4 * 7)
    chunked = run_kernel(stack, valid, 25)
    for expected, got in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("size", range(1, 14))
def test_sorting_network_sorts_every_zero_one_input(size):
    """0-1 principle: a comparator network that sorts all 2**size 0/1 inputs sorts every input."""
    inputs = torch.tensor(list(itertools.product((0, 1), repeat=size)), dtype=torch.int16).T.contiguous()
    sorted_inputs = sort_observations(inputs.clone())
    assert torch.equal(sorted_inputs, inputs.sort(dim=0).values)


def test_sorting_network_sorts_larger_random_inputs():
    for size in (17, 31, 40, 64, 100):
        keys = torch.randint(-5, 5, (size, 500), dtype=torch.int16)
        assert torch.equal(sort_observations(keys.clone()), keys.sort(dim=0).values)
        assert all(low < high < size for low, high in sorting_network(size))


def test_bad_percentile_and_device_are_one_line_errors():
    with pytest.raises(InvalidSettings, match="outside 0..100"):
        percentile_value(101)
    if not torch.cuda.is_available():
        with pytest.raises(InvalidSettings, match="no CUDA GPU"):
            compute_device("cuda")
    assert compute_device("cpu") == torch.device("cpu")

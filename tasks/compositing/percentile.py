"""Per-pixel percentile of the valid observations of a stack: the compositing kernel, in torch.

The result equals `np.round(np.nanpercentile(stack_with_nan, q, axis=0, method="linear"))` computed
in float64, pixel for pixel: the valid observations of each pixel and band are sorted, the rank
`(count - 1) * q / 100` falls between two order statistics, and the value is interpolated between
them with numpy's own formula, then rounded half to even (as `np.round`) back to the stack's integer
dtype (uint16, or int16 as for spectral indices, `tasks.compositing.indices`).

Sorting is a Batcher odd-even merge sorting network applied along the observation axis: each
comparator is an elementwise min/max of two observation slices, so the same code runs on CUDA and
CPU, is exact, and touches memory sequentially. Invalid observations become the largest key, so
they sort after every valid one. `torch.quantile` is avoided: it fails above 2**24 elements.

Pure functions on tensors; no I/O, no Prefect.
"""

import functools
from typing import Literal

import torch

from tasks.core.errors import InvalidSettings

__all__ = [
    "CHUNK_KEYS",
    "COUNT_SATURATION",
    "percentile_composite",
    "percentile_value",
    "sort_observations",
    "sorting_network",
]

MEDIAN_PERCENTILE = 50.0
COUNT_SATURATION = 255
"""The largest observation count stored: counts are uint8, so 255 means 255 or more."""
CHUNK_KEYS = {"cpu": 1 << 22, "cuda": 1 << 26}
"""Sort keys (observations x bands x pixels) processed at once per device type: 8 MiB of int16 keys
on CPU (the fastest of 2**16..2**24 measured on 2 cores), 128 MiB on CUDA. Bounds the kernel's
working memory to a few times that."""
UINT16_SIGN_FLIP = -(1 << 15)
"""XOR with this int16 maps uint16 bit patterns to int16 values of the same order."""
INTEGER_KEY_OFFSETS = {torch.uint16: 1 << 15, torch.int16: 0}
"""Integer stacks sorted as int16 keys: key = value - offset (for uint16, XOR with `UINT16_SIGN_FLIP`;
int16 values are their own keys)."""


def percentile_value(percentile: float | Literal["median"]) -> float:
    """The percentile in 0..100 of a `CompositeSettings.percentile` value ('median' is 50)."""
    value = MEDIAN_PERCENTILE if percentile == "median" else float(percentile)
    if not 0.0 <= value <= 100.0:
        raise InvalidSettings(f"percentile {percentile!r} is outside 0..100; give a number in 0..100 or 'median'")
    return value


@functools.cache
def sorting_network(size: int) -> tuple[tuple[int, int], ...]:
    """Comparators (low index, high index) of Batcher's odd-even merge sort for `size` keys.

    Applying them in order, each putting the smaller key at the low index, sorts any `size` keys
    (42 comparators for 12 keys, 191 for 32, about size * log2(size)**2 / 4).
    """
    comparators = []
    block = 1
    while block < size:
        step = block
        while step >= 1:
            for start in range(step % block, size - step, 2 * step):
                for offset in range(min(step, size - start - step)):
                    low = offset + start
                    if low // (2 * block) == (low + step) // (2 * block):
                        comparators.append((low, low + step))
            step //= 2
        block *= 2
    return tuple(comparators)


def sort_observations(keys: torch.Tensor) -> torch.Tensor:
    """Sort `keys` (obs, ...) ascending along the observation axis, in place; returns `keys`."""
    smaller = torch.empty_like(keys[0])
    for low, high in sorting_network(keys.shape[0]):
        torch.minimum(keys[low], keys[high], out=smaller)
        torch.maximum(keys[low], keys[high], out=keys[high])
        keys[low].copy_(smaller)
    return keys


def _sort_keys(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Contiguous keys (obs, band, pixel) in the values' order, invalid ones at the dtype's maximum.

    uint16 values become int16 keys (sign bit flipped: same order, half the bytes of float32), int16
    values are their own keys; float values keep their dtype with +inf for invalid. A valid value
    equal to the maximum ties with the invalid keys, which does not change the first `count` sorted keys.
    """
    if values.dtype in INTEGER_KEY_OFFSETS:
        keys = torch.empty(values.shape, dtype=torch.int16, device=values.device)
        torch.bitwise_xor(values.view(torch.int16), -INTEGER_KEY_OFFSETS[values.dtype], out=keys)
        # Valid: the int16 minimum, invalid: the maximum; one broadcast max (masked_fill_ is ~10x slower).
        key_floor = valid.to(torch.int16).sub_(1).bitwise_xor_(UINT16_SIGN_FLIP)
        return torch.maximum(keys, key_floor[:, None], out=keys)
    if values.is_floating_point():
        keys = torch.empty(values.shape, dtype=values.dtype, device=values.device)
        return keys.copy_(values).masked_fill_(~valid[:, None], float("inf"))
    raise TypeError(f"stack dtype {values.dtype} is not supported; give uint16, int16 or floating point values")


def _key_values(keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The values of sort keys made by `_sort_keys` from a stack of `dtype`: int32 for uint16 and
    int16, else float64."""
    if dtype in INTEGER_KEY_OFFSETS:
        return keys.to(torch.int32).add_(INTEGER_KEY_OFFSETS[dtype])
    return keys.to(torch.float64)


def _percentile_of_chunk(
    values: torch.Tensor, valid: torch.Tensor, quantile: float, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile (band, pixel) and valid count (pixel,) int64 of one chunk (obs, band, pixel).

    Interpolation is numpy's `_lerp` in float64: `lower + (upper - lower) * fraction`, or from the
    upper end, `upper - (upper - lower) * (1 - fraction)`, when fraction >= 0.5. Both are computed
    as `base + difference * weight` with a per-pixel weight (`fraction`, or `-(1 - fraction)`, an
    exact negation), which rounds exactly as numpy does.
    """
    count = valid.sum(dim=0)
    keys = sort_observations(_sort_keys(values, valid))
    last_index = (count - 1).clamp_(min=0)
    rank = (count - 1).to(torch.float64) * quantile
    lower_rank = rank.floor().clamp_(min=0)
    fraction = rank - lower_rank
    lower_index = lower_rank.to(torch.int64)
    upper_index = torch.minimum(lower_index + 1, last_index)
    from_upper = fraction >= 0.5
    weight = torch.where(from_upper, -(1.0 - fraction), fraction)
    band_count = values.shape[1]
    lower = _key_values(keys.gather(0, lower_index.expand(1, band_count, -1))[0], values.dtype)
    upper = _key_values(keys.gather(0, upper_index.expand(1, band_count, -1))[0], values.dtype)
    difference = upper - lower
    base = torch.where(from_upper, upper, lower)
    result = base.to(torch.float64).add_(difference.to(torch.float64).mul_(weight))
    if out_dtype in INTEGER_KEY_OFFSETS:
        result = result.round_().to(torch.int32)
    result = torch.where(count > 0, result, torch.zeros((), dtype=result.dtype, device=result.device))
    return result.to(out_dtype), count


def percentile_composite(
    stack: torch.Tensor, valid: torch.Tensor, percentile: float | Literal["median"]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per band the `percentile` of the valid observations of each pixel, and their count.

    `stack` is (obs, band, y, x), uint16, int16 or floating point; `valid` is (obs, y, x) bool, shared
    by the bands. Returns `(composite, count)` on the stack's device: composite (band, y, x) has the
    stack's dtype (integer results are rounded half to even; floats are not rounded), count (y, x)
    is uint8 and saturates at `COUNT_SATURATION`. Pixels without a valid observation are 0 in
    both. Work is done in chunks of pixels, so extra memory is bounded by `CHUNK_KEYS`.
    """
    obs_count, band_count, height, width = stack.shape
    if valid.shape != (obs_count, height, width):
        raise ValueError(f"valid has shape {tuple(valid.shape)}; expected (obs, y, x) = {(obs_count, height, width)}")
    quantile = percentile_value(percentile) / 100.0
    composite = torch.zeros((band_count, height * width), dtype=stack.dtype, device=stack.device)
    count = torch.zeros(height * width, dtype=torch.uint8, device=stack.device)
    if obs_count == 0 or height * width == 0:
        return composite.view(band_count, height, width), count.view(height, width)
    values = stack.reshape(obs_count, band_count, height * width)
    validity = valid.reshape(obs_count, height * width)
    chunk_keys = CHUNK_KEYS.get(stack.device.type, CHUNK_KEYS["cuda"])
    pixels_per_chunk = max(1, chunk_keys // (obs_count * band_count))
    for start in range(0, height * width, pixels_per_chunk):
        chunk = slice(start, start + pixels_per_chunk)
        chunk_result, chunk_count = _percentile_of_chunk(values[:, :, chunk], validity[:, chunk], quantile, stack.dtype)
        composite[:, chunk] = chunk_result
        count[chunk] = chunk_count.clamp_(max=COUNT_SATURATION).to(torch.uint8)
    return composite.view(band_count, height, width), count.view(height, width)

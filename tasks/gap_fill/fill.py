"""Gap fill from neighbouring months: which month gives each unobserved pixel its value, and the values.

A gap is an AOI pixel with no clear observation in its month (count 0). Each neighbouring month of
the same AOI and grid offers, at every pixel, its observed value (where its own count is > 0: filled
values of a neighbour are never passed on). With `previous`, a gap takes the value of the nearest
earlier month that observed it; with `interpolate`, the nearest earlier and later months that
observed it, linearly in time (months as the unit), or the nearest of the two where only one side
did. Months further than `max_months` away are not used. The distance layer says, per pixel, 0 for
observed, the distance in months to the nearest month used for a filled pixel, and `NO_VALUE` where
nothing is known (outside the AOI, or a gap no month within reach observed).

Pure functions of arrays; the same plan fills every layer of a month (reflectance, indices).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["FILL_METHODS", "NO_SOURCE", "NO_VALUE", "OBSERVED", "FillMethod", "GapFill", "apply_gap_fill", "plan_gap_fill"]

FillMethod = Literal["none", "previous", "interpolate"]
FILL_METHODS: tuple[FillMethod, ...] = ("none", "previous", "interpolate")
OBSERVED = 0
"""Distance layer value of a pixel observed in its own month."""
NO_VALUE = 255
"""Distance layer value (and nodata) of a pixel that has no value: outside the AOI, or a gap left unfilled."""
NO_SOURCE = -1
"""Source index of a pixel that takes nothing from that side."""


@dataclass(frozen=True)
class GapFill:
    """Where each pixel of a month takes its value from, on the month's (y, x) grid.

    `before` and `after` index the neighbour months (`NO_SOURCE` for none); a filled pixel takes
    `(1 - weight_after) * before + weight_after * after` (weight 0 or 1 where one side is used).
    `distance` is the uint8 distance layer.
    """

    before: np.ndarray
    after: np.ndarray
    weight_after: np.ndarray
    distance: np.ndarray

    @property
    def filled(self) -> np.ndarray:
        """(y, x) bool: pixels that take a value from another month."""
        return (self.distance != OBSERVED) & (self.distance != NO_VALUE)


def _nearest_observed(offsets: Sequence[int], observed: Sequence[np.ndarray], gaps: np.ndarray, side: int, max_months: int) -> np.ndarray:
    """Per pixel, the index of the nearest month on `side` (-1 earlier, +1 later) within reach that
    observed it; `NO_SOURCE` where none did. Only gap pixels get a source."""
    source = np.full(gaps.shape, NO_SOURCE, dtype=np.int16)
    on_side = [index for index, offset in enumerate(offsets) if offset * side > 0 and abs(offset) <= max_months]
    for index in sorted(on_side, key=lambda index: abs(offsets[index])):
        source[gaps & (source == NO_SOURCE) & observed[index]] = index
    return source


def plan_gap_fill(
    gaps: np.ndarray,
    inside_aoi: np.ndarray,
    offsets: Sequence[int],
    observed: Sequence[np.ndarray],
    method: FillMethod,
    max_months: int,
) -> GapFill:
    """The fill of a month's `gaps` ((y, x) bool, inside the AOI) from its neighbour months.

    `offsets[i]` is neighbour i's distance in months (negative: earlier), `observed[i]` its (y, x)
    bool observed pixels on the same grid. Pixels outside `inside_aoi` get `NO_VALUE`.
    """
    if any(offset == 0 for offset in offsets):
        raise ValueError("a month is not its own neighbour")
    reach = max_months if method != "none" else 0
    before = _nearest_observed(offsets, observed, gaps, -1, reach)
    after = _nearest_observed(offsets, observed, gaps, +1, reach) if method == "interpolate" else np.full_like(before, NO_SOURCE)
    month_offsets = np.asarray([*offsets, 0], dtype=np.float64)  # index NO_SOURCE (-1) reads the trailing 0
    before_offset, after_offset = month_offsets[before], month_offsets[after]
    both = (before != NO_SOURCE) & (after != NO_SOURCE)
    weight_after = np.where(after != NO_SOURCE, 1.0, 0.0)
    weight_after[both] = -before_offset[both] / (after_offset[both] - before_offset[both])
    distance = np.full(gaps.shape, NO_VALUE, dtype=np.uint8)
    distance[inside_aoi & ~gaps] = OBSERVED
    nearest = np.where(
        both, np.minimum(-before_offset, after_offset), np.where(before != NO_SOURCE, -before_offset, after_offset)
    )
    has_source = (before != NO_SOURCE) | (after != NO_SOURCE)
    distance[has_source] = nearest[has_source].astype(np.uint8)
    return GapFill(before, after, weight_after.astype(np.float32), distance)


def apply_gap_fill(fill: GapFill, values: np.ndarray, neighbour_values: Sequence[np.ndarray]) -> np.ndarray:
    """`values` ((band, y, x) of the month, any integer dtype) with its filled pixels taken from the
    neighbours' values (same shape and dtype, in the plan's neighbour order), rounded half to even.
    Every other pixel is returned unchanged. Works band by band: memory is a few float64 per gap pixel."""
    filled = values.copy()
    pixels = fill.filled
    if not pixels.any():
        return filled
    before, after, weight_after = fill.before[pixels], fill.after[pixels], fill.weight_after[pixels].astype(np.float64)
    weights = [
        np.where(before == index, 1.0 - weight_after, 0.0) + np.where(after == index, weight_after, 0.0)
        for index in range(len(neighbour_values))
    ]
    limits = np.iinfo(values.dtype)
    for band in range(values.shape[0]):
        mixed = np.zeros(before.size, dtype=np.float64)
        for neighbour, weight in zip(neighbour_values, weights, strict=True):
            mixed += weight * neighbour[band][pixels]
        filled[band][pixels] = np.clip(np.rint(mixed), limits.min, limits.max).astype(values.dtype)
    return filled

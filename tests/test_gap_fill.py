"""Gap fill's plan and values on small hand-built months (tasks.gap_fill.fill)."""

import numpy as np
import pytest

from tasks.gap_fill.fill import NO_SOURCE, NO_VALUE, OBSERVED, apply_gap_fill, plan_gap_fill

SHAPE = (4, 5)


def linear_months(offsets: list[int], slope: float, rng: np.random.Generator) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """A (2, y, x) surface changing linearly in time: its value at month offset 0 and at each offset."""
    base = rng.integers(1000, 5000, size=(2, *SHAPE)).astype(np.float64)
    at = {offset: np.rint(base * (1 + slope * offset)).astype(np.uint16) for offset in offsets}
    return np.rint(base).astype(np.uint16), at


def test_interpolation_recovers_a_linear_change_and_previous_copies_the_earlier_month() -> None:
    rng = np.random.default_rng(3)
    truth, months = linear_months([-2, -1, 1, 3], slope=0.05, rng=rng)
    gaps = np.zeros(SHAPE, bool)
    gaps[1:3, 1:4] = True
    observed_here = np.where(gaps, 0, truth).astype(np.uint16)
    offsets = [-2, -1, 1, 3]
    everywhere = [np.ones(SHAPE, bool)] * len(offsets)
    inside = np.ones(SHAPE, bool)

    interpolated = plan_gap_fill(gaps, inside, offsets, everywhere, "interpolate", max_months=3)
    previous = plan_gap_fill(gaps, inside, offsets, everywhere, "previous", max_months=3)
    neighbours = [months[offset] for offset in offsets]

    filled = apply_gap_fill(interpolated, observed_here, neighbours)
    assert np.array_equal(filled[:, ~gaps], truth[:, ~gaps]), "an observed pixel changed"
    assert np.abs(filled[:, gaps].astype(float) - truth[:, gaps]).max() <= 1  # the rounding of the inputs
    assert np.all(interpolated.distance[gaps] == 1) and np.all(interpolated.distance[~gaps] == OBSERVED)
    assert np.array_equal(apply_gap_fill(previous, observed_here, neighbours)[:, gaps], months[-1][:, gaps])


def test_the_nearest_month_that_observed_a_pixel_is_used_within_reach_only() -> None:
    gaps = np.ones(SHAPE, bool)
    offsets = [-3, -1, 2]
    observed = [np.ones(SHAPE, bool), np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)]
    observed[1][0, 0] = True  # month -1 saw one pixel
    observed[2][1, 1] = True  # month +2 saw another
    inside = np.ones(SHAPE, bool)
    inside[3, 4] = False

    within_two = plan_gap_fill(gaps & inside, inside, offsets, observed, "interpolate", max_months=2)
    within_three = plan_gap_fill(gaps & inside, inside, offsets, observed, "interpolate", max_months=3)

    assert within_two.before[0, 0] == 1 and within_two.after[0, 0] == NO_SOURCE and within_two.distance[0, 0] == 1
    assert within_two.before[1, 1] == NO_SOURCE and within_two.after[1, 1] == 2 and within_two.distance[1, 1] == 2
    assert within_two.distance[2, 2] == NO_VALUE, "month -3 is out of reach"
    assert within_three.before[2, 2] == 0 and within_three.distance[2, 2] == 3
    assert within_three.before[1, 1] == 0 and within_three.after[1, 1] == 2
    assert within_three.weight_after[1, 1] == pytest.approx(3 / 5) and within_three.distance[1, 1] == 2
    assert within_three.distance[3, 4] == NO_VALUE, "outside the AOI"


def test_none_fills_nothing_and_unfilled_gaps_keep_their_nodata() -> None:
    gaps = np.zeros(SHAPE, bool)
    gaps[0] = True
    values = np.full((1, *SHAPE), 7, np.uint16)
    values[:, gaps] = 0
    plan = plan_gap_fill(gaps, np.ones(SHAPE, bool), [-1], [np.ones(SHAPE, bool)], "none", max_months=3)

    assert not plan.filled.any() and np.all(plan.distance[gaps] == NO_VALUE)
    assert np.array_equal(apply_gap_fill(plan, values, [np.full_like(values, 9)]), values)


def test_signed_layers_are_interpolated_and_rounded_half_to_even() -> None:
    gaps = np.ones((1, 1), bool)
    plan = plan_gap_fill(gaps, gaps, [-1, 1], [gaps, gaps], "interpolate", max_months=1)
    ndvi = apply_gap_fill(plan, np.zeros((1, 1, 1), np.int16), [np.full((1, 1, 1), -3, np.int16), np.full((1, 1, 1), 2, np.int16)])

    assert ndvi[0, 0, 0] == 0  # (-3 + 2) / 2 = -0.5 rounds to even: -0


def test_a_month_cannot_be_its_own_neighbour() -> None:
    with pytest.raises(ValueError, match="own neighbour"):
        plan_gap_fill(np.ones(SHAPE, bool), np.ones(SHAPE, bool), [0], [np.ones(SHAPE, bool)], "previous", 3)

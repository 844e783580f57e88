"""Month: parsing, bounds, and the month a scheduled run builds."""

from datetime import UTC, datetime, timedelta

import pytest

from tasks.core.errors import InvalidSettings
from tasks.core.month import Month


def test_bounds_cover_the_whole_month_in_utc() -> None:
    february = Month.parse("2024-02")
    assert february.start == datetime(2024, 2, 1, tzinfo=UTC)
    assert february.end + timedelta(microseconds=1) == datetime(2024, 3, 1, tzinfo=UTC)
    assert Month.parse("2024-12").end + timedelta(microseconds=1) == datetime(2025, 1, 1, tzinfo=UTC)
    assert Month.parse("2023-12").following_start == datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2024-13", "2024-00", "2024-6", "24-06", "2024-06-01", "June", ""])
def test_malformed_months_are_one_line_errors(text: str) -> None:
    with pytest.raises(InvalidSettings, match="YYYY-MM") as error:
        Month.parse(text)
    assert repr(text) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("scheduled", "built"),
    [(datetime(2024, 7, 2, 3, tzinfo=UTC), "2024-06"), (datetime(2025, 1, 2, 3, tzinfo=UTC), "2024-12")],
)
def test_a_scheduled_run_without_a_month_builds_the_previous_one(scheduled: datetime, built: str) -> None:
    assert Month.for_run(None, scheduled).label == built
    assert Month.for_run("2023-05", scheduled).label == "2023-05"


def test_a_range_holds_every_month_from_first_to_last_across_a_new_year() -> None:
    months = Month.range("2019-11", "2020-02", max_months=12)

    assert [month.label for month in months] == ["2019-11", "2019-12", "2020-01", "2020-02"]
    assert all(later.months_since(earlier) == 1 for earlier, later in zip(months, months[1:], strict=False))
    assert Month.range("2020-05", "2020-05", max_months=1) == [Month(2020, 5)]


@pytest.mark.parametrize(
    ("first", "last", "problem"),
    [("2020-03", "2020-01", "before start month 2020-03; swap them"), ("2000-01", "2030-12", "372 months, more than 240")],
)
def test_a_reversed_or_too_long_range_is_refused_in_one_line(first: str, last: str, problem: str) -> None:
    with pytest.raises(InvalidSettings, match=problem):
        Month.range(first, last, max_months=240)


def test_shifting_a_month_crosses_years_both_ways() -> None:
    assert Month(2020, 1).shifted(-1) == Month(2019, 12) and Month(2019, 12).shifted(1) == Month(2020, 1)
    assert Month(2020, 5).shifted(-17) == Month(2018, 12) and Month(2020, 5).shifted(0) == Month(2020, 5)

"""Month: parsing, bounds, and the month a scheduled run builds."""

from datetime import UTC, datetime, timedelta

import pytest

from tasks.errors import InvalidSettings
from tasks.month import Month


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

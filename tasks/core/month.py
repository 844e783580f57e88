"""A calendar month in UTC: the period one basemap covers."""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tasks.core.errors import InvalidSettings

__all__ = ["MONTH_PATTERN", "Month"]

MONTH_PATTERN = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class Month:
    """One calendar month in UTC; `start` and `end` are its first and last instants."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12:
            raise InvalidSettings(f"month {self.month} of {self.year} is not 1..12; give a month like '2024-06'")

    @classmethod
    def parse(cls, text: str) -> "Month":
        """'2024-06' -> Month(2024, 6)."""
        if not MONTH_PATTERN.match(text):
            raise InvalidSettings(f"month {text!r} is not YYYY-MM; give e.g. '2024-06'")
        year, month = (int(part) for part in text.split("-"))
        return cls(year, month)

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def following_start(self) -> datetime:
        """The first instant of the next month: the exclusive end of this one."""
        return self.following.start

    @property
    def end(self) -> datetime:
        return self.following_start - timedelta(microseconds=1)

    @classmethod
    def for_run(cls, month: str | None, scheduled_start: datetime) -> "Month":
        """The month a run builds: `month` ('YYYY-MM') when given, else the one before its scheduled start."""
        return cls.parse(month) if month else cls.before(scheduled_start)

    @property
    def following(self) -> "Month":
        """The next calendar month."""
        return self.shifted(1)

    def shifted(self, months: int) -> "Month":
        """The month `months` calendar months later (earlier when negative)."""
        index = 12 * self.year + self.month - 1 + months
        return Month(index // 12, index % 12 + 1)

    def months_since(self, earlier: "Month") -> int:
        """Whole months from `earlier` to this month (negative when `earlier` is later)."""
        return 12 * (self.year - earlier.year) + self.month - earlier.month

    @classmethod
    def range(cls, first: str, last: str, max_months: int) -> list["Month"]:
        """The months from `first` to `last` ('YYYY-MM'), both included, in order.

        Raises a one-line `InvalidSettings` when `last` is before `first` or the range holds more than
        `max_months` months.
        """
        start, end = cls.parse(first), cls.parse(last)
        months = end.months_since(start) + 1
        if months < 1:
            raise InvalidSettings(f"end month {last} is before start month {first}; swap them")
        if months > max_months:
            raise InvalidSettings(f"{first}..{last} holds {months} months, more than {max_months}; split the range")
        result = [start]
        while len(result) < months:
            result.append(result[-1].following)
        return result

    @classmethod
    def before(cls, moment: datetime) -> "Month":
        """The month before the one holding `moment` (e.g. a scheduled run on 2024-07-02 -> 2024-06)."""
        return cls(moment.year, moment.month - 1) if moment.month > 1 else cls(moment.year - 1, 12)

"""A calendar month in UTC: the period one basemap covers."""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tasks.errors import InvalidSettings

__all__ = ["Month"]

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
        return datetime(self.year + self.month // 12, self.month % 12 + 1, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.following_start - timedelta(microseconds=1)

    @classmethod
    def for_run(cls, month: str | None, scheduled_start: datetime) -> "Month":
        """The month a run builds: `month` ('YYYY-MM') when given, else the one before its scheduled start."""
        return cls.parse(month) if month else cls.before(scheduled_start)

    @classmethod
    def before(cls, moment: datetime) -> "Month":
        """The month before the one holding `moment` (e.g. a scheduled run on 2024-07-02 -> 2024-06)."""
        return cls(moment.year, moment.month - 1) if moment.month > 1 else cls(moment.year - 1, 12)

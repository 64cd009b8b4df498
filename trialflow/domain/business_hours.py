"""Business hours: when the clocks of waits on people run (triage, the instance request, the
hand-off). Pure: a timezone, the working hours of a day, the working days of a week and the
holidays; ``services.calendar`` reads them from the settings and the config directory.

A business day is one day's working hours, so "1 business day after Friday 15:00" is Monday
15:00, and a wait that starts at night or on a weekend starts counting at the next opening.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class BusinessCalendar:
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    opens: time = time(9, 0)
    closes: time = time(17, 0)
    workdays: frozenset[int] = frozenset(range(5))  # Monday is 0
    holidays: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        if self.closes <= self.opens:
            raise ValueError(f"business hours must close after they open ({self.opens}-{self.closes})")
        if not self.workdays:
            raise ValueError("at least one working day is needed")

    @property
    def day_length(self) -> timedelta:
        return datetime.combine(date.min, self.closes) - datetime.combine(date.min, self.opens)

    def is_working_day(self, day: date) -> bool:
        return day.weekday() in self.workdays and day not in self.holidays

    def today(self, at: datetime) -> date:
        """The local date at ``at``: absences and "away until" are local dates."""
        return at.astimezone(self.timezone).date()

    def _window(self, day: date) -> tuple[datetime, datetime]:
        return (datetime.combine(day, self.opens, self.timezone), datetime.combine(day, self.closes, self.timezone))

    def add(self, start: datetime, business_time: timedelta) -> datetime:
        """The moment ``business_time`` of working hours after ``start`` (UTC)."""
        local = start.astimezone(self.timezone)
        left = business_time
        day = local.date()
        cursor = local
        # A year of holidays and weekends is the most a sane calendar skips in one go.
        for _ in range(3700):
            if self.is_working_day(day):
                opens, closes = self._window(day)
                cursor = max(cursor, opens)
                if cursor < closes:
                    room = closes - cursor
                    if left <= room:
                        return (cursor + left).astimezone(UTC)
                    left -= room
            day += timedelta(days=1)
            cursor = datetime.combine(day, time.min, self.timezone)
        raise ValueError("no working hours in the next ten years: check the working days and holidays")

    def add_hours(self, start: datetime, hours: float) -> datetime:
        return self.add(start, timedelta(hours=hours))

    def add_days(self, start: datetime, days: float) -> datetime:
        return self.add(start, self.day_length * days)


def parse_workdays(text: str) -> frozenset[int]:
    """``mon-fri``, ``mon,tue,thu`` or ``sun-thu``."""
    days: set[int] = set()
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        first, _, last = part.partition("-")
        if first[:3] not in DAY_NAMES or (last and last[:3] not in DAY_NAMES):
            raise ValueError(f"working days are like mon-fri or mon,tue,wed, not {text!r}")
        a = DAY_NAMES.index(first[:3])
        b = DAY_NAMES.index(last[:3]) if last else a
        i = a
        while True:
            days.add(i)
            if i == b:
                break
            i = (i + 1) % 7
    return frozenset(days)


def parse_hours(text: str) -> tuple[time, time]:
    """``09:00-17:00``."""
    try:
        opens, closes = (time.fromisoformat(t.strip()) for t in text.split("-", 1))
    except ValueError:
        raise ValueError(f"business hours are like 09:00-17:00, not {text!r}") from None
    return opens, closes

"""Business hours: a wait's clock runs only in working hours, on working days that are not holidays,
in the program's timezone (daylight saving included)."""
from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest

from trialflow.domain.business_hours import BusinessCalendar, parse_hours, parse_workdays

PARIS = ZoneInfo("Europe/Paris")
CAL = BusinessCalendar(PARIS, time(9), time(17), parse_workdays("mon-fri"), frozenset({date(2026, 12, 25)}))


def local(y: int, m: int, d: int, h: int, minute: int = 0) -> datetime:
    return datetime(y, m, d, h, minute, tzinfo=PARIS)


@pytest.mark.parametrize(("start", "hours", "due"), [
    (local(2026, 12, 1, 10), 4, local(2026, 12, 1, 14)),          # within one day
    (local(2026, 12, 1, 15), 4, local(2026, 12, 2, 11)),          # over the night
    (local(2026, 12, 4, 15), 4, local(2026, 12, 7, 11)),          # Friday to Monday
    (local(2026, 12, 5, 11), 4, local(2026, 12, 7, 13)),          # from a Saturday: Monday's opening
    (local(2026, 12, 1, 7), 4, local(2026, 12, 1, 13)),           # before opening
    (local(2026, 12, 1, 17), 1, local(2026, 12, 2, 10)),          # at closing
    (local(2026, 12, 24, 16), 4, local(2026, 12, 28, 12)),        # Christmas Day, then the weekend
    (local(2026, 3, 27, 15), 4, local(2026, 3, 30, 11)),          # over the switch to summer time
])
def test_business_hours_skip_nights_weekends_and_holidays(start, hours, due):
    assert CAL.add_hours(start.astimezone(UTC), hours) == due.astimezone(UTC)


def test_a_business_day_is_one_days_working_hours():
    assert CAL.add_days(local(2026, 12, 4, 15).astimezone(UTC), 1) == local(2026, 12, 7, 15).astimezone(UTC)
    assert CAL.add_days(local(2026, 12, 23, 12).astimezone(UTC), 2) == local(2026, 12, 28, 12).astimezone(UTC)


def test_today_is_the_local_date():
    assert CAL.today(datetime(2026, 12, 7, 23, 30, tzinfo=UTC)) == date(2026, 12, 8)


def test_working_days_and_hours_read_as_people_write_them():
    assert parse_workdays("sun-thu") == frozenset({6, 0, 1, 2, 3})
    assert parse_workdays("mon,wed,fri") == frozenset({0, 2, 4})
    assert parse_hours("08:30-16:30") == (time(8, 30), time(16, 30))
    for bad in ("weekdays", "mon-funday"):
        with pytest.raises(ValueError):
            parse_workdays(bad)
    with pytest.raises(ValueError):
        parse_hours("nine to five")
    with pytest.raises(ValueError):
        BusinessCalendar(PARIS, time(17), time(9))


def test_a_bad_business_setting_stops_trialflow_with_a_readable_message():
    from pydantic import ValidationError

    from trialflow.settings import Settings
    for name, value, words in (("business_timezone", "Mars/Olympus", "IANA zone"),
                               ("business_hours", "17:00-09:00", "close after"),
                               ("business_days", "someday", "mon-fri")):
        with pytest.raises(ValidationError, match=words):
            Settings(_env_file=None, **{name: value})

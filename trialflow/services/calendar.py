"""The business calendar of the settings and the config directory's ``holidays.csv``
(``date,name``; ISO dates). Read once per change of the file, so every decision can ask for it."""
from __future__ import annotations

import csv
import threading
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

from trialflow.domain.business_hours import BusinessCalendar, parse_hours, parse_workdays
from trialflow.errors import ConfigError
from trialflow.settings import Settings

HOLIDAYS_FILE = "holidays.csv"
_cache: dict[tuple[object, ...], BusinessCalendar] = {}
_lock = threading.Lock()


def read_holidays(path: Path) -> frozenset[date]:
    if not path.is_file():
        return frozenset()
    days: set[date] = set()
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for line, row in enumerate(csv.reader(fh), start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#") or (line == 1 and cells[0].lower() == "date"):
                continue
            try:
                days.add(date.fromisoformat(cells[0]))
            except ValueError:
                raise ConfigError(f"date must be an ISO date like 2026-12-25, not {cells[0]!r}", str(path), line) from None
    return frozenset(days)


def calendar_for(settings: Settings) -> BusinessCalendar:
    path = Path(settings.config_dir) / HOLIDAYS_FILE
    try:
        stamp: object = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    key = (settings.business_timezone, settings.business_hours, settings.business_days, str(path), stamp)
    with _lock:
        found = _cache.get(key)
    if found is not None:
        return found
    opens, closes = parse_hours(settings.business_hours)
    calendar = BusinessCalendar(ZoneInfo(settings.business_timezone), opens, closes,
                                parse_workdays(settings.business_days), read_holidays(path))
    with _lock:
        if len(_cache) > 32:
            _cache.clear()
        _cache[key] = calendar
    return calendar

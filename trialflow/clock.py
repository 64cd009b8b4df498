"""Injected time. Production reads the system clock; tests and the demo move a ManualClock."""
from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    def __init__(self, start: datetime | None = None):
        self._now = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, **delta: float) -> datetime:
        with self._lock:
            self._now += timedelta(**delta)
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when


def parse_instant(raw: object) -> datetime | None:
    """An ISO-8601 time from a request, in UTC (no offset: taken as UTC); None when it is not one.

    None too for a time that cannot be moved to UTC (``0001-01-01T00:00:00+01:00`` falls before
    year 1), so a caller answers it like any other unreadable time instead of failing later."""
    if not isinstance(raw, str) or not raw.isascii():
        return None
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
        return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        return None

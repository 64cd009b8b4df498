"""The wiring: settings, database, clock and how committed effects get delivered."""
from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine

from trialflow.clock import Clock, SystemClock
from trialflow.datadir import data_dir
from trialflow.db.engine import make_engine, make_session_factory
from trialflow.services.uow import UnitOfWork
from trialflow.settings import Settings, get_settings


class Runtime:
    def __init__(self, settings: Settings | None = None, clock: Clock | None = None, engine: Engine | None = None):
        self.settings = settings or get_settings()
        if self.settings.database_in_data_dir and engine is None:
            data_dir(self.settings)  # created private (0700) before SQLite makes its file there
        self.clock: Clock = clock or SystemClock()
        self.engine = engine or make_engine(self.settings.database_url)
        self.session_factory = make_session_factory(self.engine)
        # Called with the ids of effects just committed: wakes the in-process relay, or sends
        # Celery tasks. The relay also sweeps pending rows, so a lost wake-up only delays.
        self.wake: Callable[[list[int]], None] | None = None

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self.session_factory, after_commit=self._after_commit)

    def _after_commit(self, ids: list[int]) -> None:
        if self.wake is not None:
            self.wake(ids)

    def close(self) -> None:
        self.engine.dispose()

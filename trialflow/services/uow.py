"""Unit of work: one transaction, and what to do once it has committed."""
from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from trialflow.clock import Clock
from trialflow.domain.decisions import Decisions
from trialflow.services import writer
from trialflow.settings import Settings


def wake_safely(wake: Callable[[list[int]], None], ids: list[int]) -> None:
    """Wake delivery for effects just committed. The rows are durable already and the relay
    sweeps pending ones anyway, so this is only an optimisation: a failure must not fail the
    request."""
    try:
        wake(ids)
    except Exception:  # noqa: BLE001
        logging.getLogger("trialflow.outbox").warning("could not wake delivery for %s", ids, exc_info=True)


class UnitOfWork:
    def __init__(self, session_factory: sessionmaker[Session], after_commit: Callable[[list[int]], None] | None = None):
        self._factory = session_factory
        self._after_commit = after_commit
        self.session: Session
        self.new_effect_ids: list[int] = []

    def __enter__(self) -> UnitOfWork:
        self.session = self._factory()
        self.new_effect_ids = []
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.session.rollback()
        finally:
            self.session.close()

    def persist(self, decisions: Decisions) -> list[int]:
        """Write what a step decided in this transaction (``services.writer``); its new effects
        are woken for delivery once the transaction commits."""
        ids = writer.write(self.session, decisions)
        self.new_effect_ids.extend(ids)
        return ids

    def commit(self) -> None:
        self.session.commit()
        ids, self.new_effect_ids = self.new_effect_ids, []
        if ids and self._after_commit is not None:
            wake_safely(self._after_commit, ids)

    def rollback(self) -> None:
        self.session.rollback()
        self.new_effect_ids = []


class App(Protocol):
    """What a service that opens its own transactions takes (as ``rt``): ``trialflow.runtime.Runtime``
    in production, a test's runtime in the tests."""

    @property
    def settings(self) -> Settings: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def session_factory(self) -> sessionmaker[Session]: ...

    def uow(self) -> UnitOfWork: ...

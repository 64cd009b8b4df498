"""Putting effects in the outbox and reading them back, as the transport tests need."""
from __future__ import annotations

from sqlalchemy import select

from trialflow.db import tables
from trialflow.services import outbox


def enqueue_effect(rt, key: str, kind: str, payload: dict, trial_id: str | None = None) -> int:
    """One committed effect, as a state change would leave it."""
    with rt.uow() as uow:
        effect_id = outbox.enqueue(uow, key=key, kind=kind, payload=payload, now=rt.clock.now(), trial_id=trial_id)
        uow.commit()
    return effect_id


def outbox_row(rt, effect_id: int):
    with rt.session_factory() as s:
        return s.execute(select(tables.outbox).where(tables.outbox.c.id == effect_id)).one()


class WorkerKilled(BaseException):
    """The worker process died (SIGKILL, OOM): nothing after the provider call runs, not even the
    Deliverer's ``except Exception``."""


class DiesAfterTheCall:
    """In front of a real transport (our port): the provider gets the call, then the worker dies
    before anything is recorded."""

    def __init__(self, transport):
        self.transport = transport

    def deliver(self, effect):
        self.transport.deliver(effect)
        raise WorkerKilled()

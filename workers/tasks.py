"""Celery tasks: thin as a web view. Each takes ids and calls one service function; the same
functions run in-process on the embedded default."""
from __future__ import annotations

import logging
from functools import lru_cache

from celery import shared_task

log = logging.getLogger("trialflow.worker")


@lru_cache
def _runtime():
    from trialflow.runtime import Runtime
    return Runtime()


@lru_cache
def _deliverer():
    from trialflow.delivery.wiring import build_deliverer
    rt = _runtime()
    rt.wake = dispatch
    return build_deliverer(rt)


@shared_task(name="trialflow.deliver", acks_late=True, reject_on_worker_lost=True)
def deliver(effect_id: int) -> str:
    outcome = _deliverer().deliver(effect_id)
    if outcome == "retry":
        # The row carries its next attempt time; the relay re-dispatches it when due. No Celery
        # countdown: on Redis a long countdown is redelivered past the visibility timeout.
        pass
    return outcome


@shared_task(name="trialflow.relay")
def relay(limit: int = 1000) -> int:
    """Send a task for every effect that is due and has no live task (retrying, or whose
    worker or broker died). Fresh effects were already sent by the process that committed them."""
    ids = _deliverer().claim_for_dispatch(limit, grace_seconds=_runtime().settings.relay_grace_seconds)
    dispatch(ids)
    return len(ids)


@shared_task(name="trialflow.sweep")
def sweep() -> int:
    from trialflow.services.sweep import sweep as run_sweep
    report = run_sweep(_runtime())
    if report.actions:
        log.info("sweep: %s", "; ".join(report.actions))
    return len(report.actions)


def dispatch(ids) -> None:
    from workers.celery_app import get_app
    app = get_app()
    for effect_id in ids:
        app.send_task("trialflow.deliver", (effect_id,), queue="trialflow")

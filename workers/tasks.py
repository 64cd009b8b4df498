"""Celery tasks: thin as a web view. Each takes ids and calls one service function; the same
functions run in-process on the embedded default."""
from __future__ import annotations

import logging
from collections import Counter
from functools import lru_cache

from celery import shared_task
from kombu.exceptions import OperationalError as KombuOperationalError

from trialflow.delivery.core import batches
from trialflow.delivery.wiring import build_deliverer, reconcile_daily, refresh_crm_accounts
from trialflow.runtime import Runtime
from trialflow.services.spooled_signups import replay_if_any
from trialflow.services.sweep import sweep as run_sweep
from workers.celery_app import get_app

log = logging.getLogger("trialflow.worker")


@lru_cache
def _runtime():
    return Runtime()


@lru_cache
def _deliverer():
    rt = _runtime()
    rt.wake = dispatch
    return build_deliverer(rt)


@shared_task(name="trialflow.deliver", acks_late=True, reject_on_worker_lost=True)
def deliver(effect_ids: list[int] | int) -> dict[str, int]:
    """Deliver a batch of effects. (A bare id is what tasks queued before batches carried.)

    An effect to retry is not rescheduled here: its row carries its next attempt time and the
    relay re-dispatches it when due. No Celery countdown: on Redis a long countdown is
    redelivered past the visibility timeout."""
    ids = [effect_ids] if isinstance(effect_ids, int) else list(effect_ids)
    return dict(Counter(_deliverer().deliver_batch(ids).values()))


@shared_task(name="trialflow.relay")
def relay(limit: int = 1000) -> int:
    """Send a task for every effect that is due and has no live task (retrying, or whose
    worker or broker died). Fresh effects were already sent by the process that committed them."""
    ids = _deliverer().claim_for_dispatch(limit, grace_seconds=_runtime().settings.relay_grace_seconds)
    try:
        dispatch(ids)
    except KombuOperationalError as exc:
        # The broker went away mid-relay: what was not sent is sent by a later relay, once overdue.
        log.warning("relay: could not send delivery tasks for %s effect(s) (%s); they are sent again later",
                    len(ids), exc)
    return len(ids)


@shared_task(name="trialflow.sweep")
def sweep() -> int:
    # A worker that shares the API's spool directory also routes the signups kept there.
    replay_if_any(_runtime())
    report = run_sweep(_runtime())
    if report.actions:
        log.info("sweep: %s", "; ".join(report.actions))
    reconcile_daily(_runtime())
    return len(report.actions)


@shared_task(name="trialflow.crm_accounts")
def crm_accounts() -> int:
    """Named and pre-qualified accounts from Salesforce (hourly; nothing when it is not configured)."""
    report = refresh_crm_accounts(_runtime())
    return report.accounts if report else 0


def dispatch(ids, batch_size: int | None = None) -> None:
    """One task per ``batch_size`` effects (default: the setting ``delivery_batch_size``)."""
    app = get_app()
    for batch in batches(ids, batch_size or _runtime().settings.delivery_batch_size):
        app.send_task("trialflow.deliver", (batch,), queue="trialflow")

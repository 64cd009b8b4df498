"""Usage is pulled, not only pushed: every ``TRIALFLOW_USAGE_POLL_HOURS`` each live trial's
instance is asked for its last 7 days (an ``instance.usage`` effect, so the call is retried, rate
limited and parked like any other), and the day-15 review knows whether an instance ever answered.

Polls are spread over sweeps: at most ``POLL_BATCH`` per sweep, the longest-unasked first.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.domain.decisions import Decisions
from trialflow.services.timers import Usage
from trialflow.services.writer import among
from trialflow.settings import Settings

POLL_BATCH = 200
POLLED_STATES = (lc.ACTIVE, lc.EXTENDED)


def usage_known(session: Any, settings: Settings, trials: list[Any]) -> dict[str, Usage]:
    """For the trials a sweep is deciding: may trialflow ask their instance, and did it ever answer
    (a usage poll or a report of its own, both kept in ``instance_activity``)."""
    ids = [t.id for t in trials]
    if not ids:
        return {}
    a = tables.instance_activity.c
    answered = set(session.scalars(select(a.trial_id).where(among(session, a.trial_id, ids)).distinct()))
    return {t.id: Usage(pollable=settings.instance_token_for(t.instance_host) is not None, answered=t.id in answered)
            for t in trials}


def poll_due(session: Any, settings: Settings, now: datetime) -> Decisions:
    """Ask the instances of live trials that were not asked for ``usage_poll_hours``."""
    decisions = Decisions()
    if settings.instance_token is None and not settings.instance_tokens:
        return decisions
    t, i = tables.trials.c, tables.instances.c
    cutoff = now - timedelta(hours=settings.usage_poll_hours)
    rows = session.execute(
        select(t.id, i.host).join(tables.instances, i.host == t.instance_host)
        .where(t.state.in_(POLLED_STATES), i.status == "live", (i.api_asked_at.is_(None)) | (i.api_asked_at <= cutoff))
        .order_by(i.api_asked_at.is_not(None), i.api_asked_at).limit(POLL_BATCH)).all()
    hosts = [row.host for row in rows if settings.instance_token_for(row.host) is not None]
    if not hosts:
        return decisions
    slot = now.strftime("%Y%m%dT%H%M")
    for row in rows:
        if row.host in hosts:
            decisions.effect(f"usage:{row.host}:{slot}", "instance.usage", {"host": row.host}, now, row.id)
    session.execute(update(tables.instances).where(among(session, i.host, hosts)).values(api_asked_at=now))
    return decisions

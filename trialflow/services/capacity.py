"""Capacity and the pool: the instance cap, claiming a pre-provisioned instance for a domain, and
the pool's low-water mark. Signups, people's commands and the sweep all use these rules.

Locks, always in this order: the domain's claim, the round robin, the capacity lock.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from trialflow.db import tables
from trialflow.db.sql import insert_ignore, take_lock
from trialflow.domain import lifecycle as lc
from trialflow.domain.decisions import Decisions
from trialflow.domain.trial import SYSTEM, PlainTrial
from trialflow.services.messages import pool_replenish_issue
from trialflow.services.routing import join_claimed
from trialflow.settings import Settings

CAPACITY_LOCK = "capacity"


def has_capacity(session: Session, settings: Settings) -> bool:
    """Trials holding or awaiting an instance, and terminated instances the cloud team has not yet
    confirmed gone (a termination frees capacity when it is done, not when it is asked for)."""
    holding = session.scalar(
        select(func.count()).select_from(tables.trials).where(tables.trials.c.state.in_(lc.HOLDING_INSTANCE)))
    i = tables.instances.c
    tearing_down = session.scalar(select(func.count()).select_from(tables.instances).where(
        i.status == "terminated", i.teardown_confirmed_at.is_(None), i.trial_id.is_not(None)))
    return (holding or 0) + (tearing_down or 0) < settings.instance_cap


def lock_capacity(session: Session) -> None:
    take_lock(session, CAPACITY_LOCK)


def claim_for_domain(session: Session, settings: Settings, trial: PlainTrial, now: datetime,
                     assign: Callable[[PlainTrial], None] | None = None) -> Decisions:
    """Give ``trial`` its domain's instance: the one already claimed, or a fresh pool instance;
    or queue it. Returns what the claim itself decided (a pool replenish request).

    Inserting the domain's claim row is the per-domain lock: on PostgreSQL a concurrent insert of
    the same domain waits until this transaction ends, then finds the row and joins (case 1).
    ``assign`` runs only once this trial has won the domain, so the signups that lose a race for
    it (and join the winner's instance) never use up a turn of the round robin.
    """
    claims = tables.domain_claims
    if not insert_ignore(session, claims, {"domain": trial.domain, "instance_host": None, "trial_id": trial.id,
                                           "claimed_at": now}):
        claim = session.execute(select(claims).where(claims.c.domain == trial.domain)).first()
        if claim is not None and claim.instance_host:
            join_claimed(session, trial, claim.domain, claim.instance_host, claim.trial_id)
        else:
            wait(trial, now, "another signup of this domain is waiting for capacity")
        return Decisions()
    if assign is not None:
        assign(trial)
    lock_capacity(session)
    host = None
    capacity = has_capacity(session, settings)
    if capacity:
        host = session.scalar(select(tables.instances.c.host).where(tables.instances.c.status == "pool")
                              .order_by(tables.instances.c.host).limit(1).with_for_update(skip_locked=True))
    if host is None:
        session.execute(delete(claims).where(claims.c.domain == trial.domain))
        wait(trial, now, "pool empty" if capacity else "instance cap reached")
        return Decisions()
    session.execute(update(tables.instances).where(tables.instances.c.host == host).values(
        status="live", admin_email=trial.email, trial_id=trial.id, claimed_at=now))
    session.execute(update(claims).where(claims.c.domain == trial.domain).values(instance_host=host))
    trial.instance_host = host
    trial.fire(lc.CLAIM_POOL_INSTANCE, actor=SYSTEM, at=now, instance=host)
    return pool_low_water(session, settings, now)


def wait(trial: PlainTrial, now: datetime, reason: str) -> None:
    if trial.state == lc.WAITING_FOR_CAPACITY:
        return  # already in the queue: stays there, nothing new to record
    trial.fire(lc.WAIT_FOR_CAPACITY, actor=SYSTEM, at=now, reason=reason)


def pool_low_water(session: Session, settings: Settings, now: datetime) -> Decisions:
    """One request to pre-provision more instances per low-water episode, not one per claim: the
    episode's flag is cleared when ``config load`` brings new pool instances."""
    decisions = Decisions()
    free = session.scalar(select(func.count()).select_from(tables.instances).where(tables.instances.c.status == "pool")) or 0
    if free >= settings.pool_low_water:
        return decisions
    if not insert_ignore(session, tables.kv, {"key": "pool_replenish_open", "value": now.isoformat()}):
        return decisions
    episode = now.strftime("%Y%m%dT%H%M%S")
    decisions.effect(f"pool-replenish:{episode}", "github.issue", pool_replenish_issue(free, settings.pool_low_water, episode), now)
    return decisions

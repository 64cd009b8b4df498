"""Usage reported by a trial's instance: what decides "inactive at day 15".

Each report is kept (``instance_activity``); a report that shows any use (an active user, a
search, a code-intelligence action) moves the trial's ``last_activity_at`` forward, and the
sweep's day-15 review reads that (``services.sweep._active``). A report of all zeros is kept but
is not activity. One report per instance per moment: a replayed report is a no-op.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from trialflow.clock import parse_instant
from trialflow.db import tables
from trialflow.db.sql import insert_ignore
from trialflow.domain import lifecycle as lc
from trialflow.domain.normalize import normalize_domain
from trialflow.domain.trial import Trial
from trialflow.errors import InvalidSignup, NotFound
from trialflow.scoring import grade_trials
from trialflow.services import opportunity_policies, prospect_policies
from trialflow.services.timers import used_since_start
from trialflow.services.uow import App, UnitOfWork

COUNTERS = ("active_users", "searches", "code_intel_actions", "repositories")
# Counters that mean someone used the instance; repositories alone (a sync) does not.
USE_COUNTERS = ("active_users", "searches", "code_intel_actions")
MAX_FUTURE = timedelta(minutes=5)


@dataclass(frozen=True)
class ActivityReport:
    at: datetime
    active_users: int
    searches: int
    code_intel_actions: int
    repositories: int

    @property
    def shows_use(self) -> bool:
        return any(getattr(self, name) > 0 for name in USE_COUNTERS)


def parse_report(data: Any, default_at: datetime, now: datetime) -> ActivityReport:
    """Validate a report body; ``default_at`` (the signed timestamp) when it has no ``at``."""
    if not isinstance(data, dict):
        raise InvalidSignup('The body must be a JSON object like {"active_users": 3, "searches": 12, '
                            '"code_intel_actions": 4, "repositories": 20}.', "body")
    unknown = set(data) - {*COUNTERS, "at"}
    if unknown:
        raise InvalidSignup(f"Unknown field(s): {', '.join(sorted(unknown))}.", sorted(unknown)[0])
    counts = {}
    for name in COUNTERS:
        value = data.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 10**9:
            raise InvalidSignup(f"{name} must be a whole number of at least 0.", name)
        counts[name] = value
    at = default_at
    if data.get("at") is not None:
        parsed = parse_instant(data["at"])
        if parsed is None:
            raise InvalidSignup("at must be an ISO-8601 time, like 2026-01-20T09:00:00Z.", "at")
        at = parsed
    if at > now + MAX_FUTURE:
        raise InvalidSignup("at is in the future.", "at")
    return ActivityReport(at=at.astimezone(UTC), **counts)


def trial_for_host(session: Session, host: str) -> tuple[bool, str | None]:
    """(is the instance known, the trial it belongs to). The instance's own trial first; else the
    latest started trial on that host (an instance from instances.csv has no trial)."""
    owner = session.execute(select(tables.instances.c.trial_id).where(tables.instances.c.host == host)).first()
    if owner is not None and owner.trial_id:
        return True, owner.trial_id
    trial_id = session.scalar(
        select(tables.trials.c.id).where(tables.trials.c.instance_host == host,
                                         tables.trials.c.state.in_(lc.STARTED | lc.HOLDING_INSTANCE))
        .order_by(tables.trials.c.started_at.desc()).limit(1))
    return owner is not None or trial_id is not None, trial_id


def _tell_the_opportunity(uow: UnitOfWork, rt: App, trial_id: str, report: ActivityReport) -> None:
    """A new PQL grade, or the first use: the trial's Opportunity (if any) is updated."""
    trial = uow.session.get(Trial, trial_id)
    if trial is not None:
        uow.session.refresh(trial)  # the grade and activity were just written with Core statements
        uow.persist(opportunity_policies.grade_changed(rt.settings, trial, rt.clock.now(), report.at))


def record_activity(rt: App, raw_host: str, report: ActivityReport) -> dict[str, Any]:
    try:
        host = normalize_domain(raw_host)
    except InvalidSignup:
        raise NotFound(f"No instance {raw_host!r}.") from None
    with rt.uow() as uow:
        session = uow.session
        known, trial_id = trial_for_host(session, host)
        if not known:
            raise NotFound(f"No instance {host} is known to trialflow.")
        recorded = insert_ignore(session, tables.instance_activity, {
            "host": host, "trial_id": trial_id, "at": report.at, **{n: getattr(report, n) for n in COUNTERS}})
        activated = False
        if recorded and trial_id and report.shows_use:
            t = tables.trials
            before = session.execute(select(t.c.state, t.c.started_at, t.c.last_activity_at)
                                     .where(t.c.id == trial_id)).first()
            if before is not None and before.state in lc.LIVE_TRIAL \
                    and not used_since_start(before.started_at, before.last_activity_at) \
                    and used_since_start(before.started_at, report.at):
                # The instance's first use since the start: the prospect's check-ins may begin.
                uow.persist(prospect_policies.first_use(trial_id, rt.clock.now()))
            activated = before is not None and before.last_activity_at is None
            # Forward only: a late report for an earlier moment never moves activity back.
            session.execute(update(t).where(t.c.id == trial_id, or_(t.c.last_activity_at.is_(None),
                                                                    t.c.last_activity_at < report.at))
                            .values(last_activity_at=report.at))
        if recorded and trial_id:
            # Grade now, not at the next sweep: the triage queue and the dashboard read it.
            graded = grade_trials(session, rt.clock.now(), config_dir=rt.settings.config_dir, trial_ids=[trial_id])
            if graded.changed or activated:
                _tell_the_opportunity(uow, rt, trial_id, report)
        last = session.scalar(select(tables.trials.c.last_activity_at).where(tables.trials.c.id == trial_id)) \
            if trial_id else None
        uow.commit()
    return {"recorded": recorded, "duplicate": not recorded, "host": host, "trial_id": trial_id,
            "active": report.shows_use, "last_activity_at": last.isoformat() if last else None}

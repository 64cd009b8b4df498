"""The clock's rules: how long each wait lasts, which step a due timer causes now, and the
deadlines a trial has. Timers are rows (``tables.timers``) swept on a schedule; each kind is
declared in the lifecycle table (``lifecycle.TIMERS``) with the steps it may cause."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import PlainTrial

HEADS_UP_DAYS = 12
REVIEW_DAYS = 15
DECISION_DAYS = 30
ESCALATION_GRACE_DAYS = 2
USER_ADDED_REMINDER_DAYS = 2
EXTENSION_DAYS = 15

TIMER_KINDS: tuple[str, ...] = tuple(timer.kind for timer in lc.TIMERS)


def review_at(trial: PlainTrial) -> datetime:
    """Day 15 of a started trial. Every step that asks is one the table allows only after the start."""
    if trial.started_at is None:
        raise ValueError(f"trial {trial.id} has not started, so it has no day-15 review")
    return trial.started_at + timedelta(days=REVIEW_DAYS)


def step_for(trial: PlainTrial, kind: str) -> tuple[str, dict[str, Any]] | None:
    """Which step a due timer causes now, if any (a timer left behind by a later change does nothing)."""
    if kind == lc.USER_ADDED_REMINDER and trial.state == lc.JOINING_EXISTING:
        return lc.REMIND_USER_ADDED, {}
    if kind == lc.TERMINATION_HEADS_UP and trial.state == lc.ACTIVE and not trial.kept and not is_active(trial):
        return lc.WARN_TERMINATION, {}
    if kind == lc.DAY15_REVIEW and trial.state == lc.ACTIVE:
        if is_active(trial):
            return lc.EXTEND, {"days": EXTENSION_DAYS, "reason": "day 15: activity on the instance"}
        if trial.kept:
            return lc.EXTEND, {"days": EXTENSION_DAYS, "reason": "day 15: kept by the CE"}
        return lc.TERMINATE, {"reason": "day 15: no activity on the instance"}
    if kind == lc.DAY30_DECISION and trial.state == lc.EXTENDED:
        return lc.REMIND_DECISION, {}
    if kind == lc.DAY30_ESCALATION and trial.state == lc.EXTENDED:
        return lc.ESCALATE_DECISION, {}
    return None


def is_active(trial: PlainTrial) -> bool:
    """'Inactive at day 15' = no activity reported since the trial started, and PQL grade D or none.

    Activity arrives from the instance (``POST /api/instances/{host}/activity``), which sets
    ``last_activity_at`` when a report shows any use; the PQL grade comes from lead scoring.
    """
    if trial.pql_grade in ("A", "B", "C"):
        return True
    return bool(trial.last_activity_at and trial.started_at
                and trial.last_activity_at >= activity_counts_from(trial.started_at))


def activity_counts_from(started_at: datetime) -> datetime:
    """The first moment whose activity counts for a trial: the start of the second it started in.

    A report is timed to the second (its signed Unix timestamp), the start to the microsecond:
    a report sent in the same second as the hand-off counts (the boundary is inclusive)."""
    return started_at.replace(microsecond=0)


def activity_counts_from_sql(started_at: ColumnElement[datetime], dialect: str) -> ColumnElement[datetime]:
    """``activity_counts_from`` in SQL, for the grading query (SQLite keeps times as ISO text)."""
    if dialect == "postgresql":
        return func.date_trunc("second", started_at)
    return func.substr(started_at, 1, 19)


def deadlines(session: Session, trial_id: str) -> dict[str, str]:
    rows = session.execute(select(tables.timers.c.kind, tables.timers.c.due_at).where(
        tables.timers.c.trial_id == trial_id, tables.timers.c.fired_at.is_(None)).order_by(tables.timers.c.due_at))
    return {kind: due.isoformat() for kind, due in rows}

"""The clock's rules: how long each wait lasts, which step a due timer causes now, and the
deadlines a trial has. Timers are rows (``tables.timers``) swept on a schedule; each kind is
declared in the lifecycle table (``lifecycle.TIMERS``) with the steps it may cause."""
from __future__ import annotations

from dataclasses import dataclass
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
# Day 15 asks the instance first, then waits this long for the answer before it decides.
USAGE_ANSWER_MINUTES = 15
# Day 15 with no usage data: the CE is asked again this often until they decide.
ASK_AGAIN_DAYS = 2

# The prospect is told: tips while the instance is unused, check-ins once it is used, notices before decisions.
ONBOARDING_TIP_DAYS = (1, 3, 7)
DEADLINE_NOTICE_DAYS = 3
FIRST_CHECK_IN_DAYS = 2
CHECK_IN_EVERY_DAYS = 7

TIMER_KINDS: tuple[str, ...] = tuple(timer.kind for timer in lc.TIMERS)


@dataclass(frozen=True)
class Usage:
    """What is known of a trial's instance when its clock decides: whether trialflow may ask its
    API (a token for its host), and whether it ever answered a usage poll or sent a report."""
    pollable: bool = False
    answered: bool = False


def review_at(trial: PlainTrial) -> datetime:
    """Day 15 of a started trial. Every step that asks is one the table allows only after the start."""
    if trial.started_at is None:
        raise ValueError(f"trial {trial.id} has not started, so it has no day-15 review")
    return trial.started_at + timedelta(days=REVIEW_DAYS)


def step_for(trial: PlainTrial, kind: str, usage: Usage | None = None) -> tuple[str, dict[str, Any]] | None:
    """Which step a due timer causes now, if any (a timer left behind by a later change does nothing).

    Day 15 has three outcomes, never two: *used* extends; *answered and unused* terminates (the CE
    had the heads-up at day 12); *no data* (the instance never answered, never reported) asks the
    CE, because silence is not proof that nobody uses it. An instance trialflow can ask is asked
    first (``check_usage``), and the review comes back for the answer."""
    usage = usage or Usage()
    if kind == lc.USER_ADDED_REMINDER and trial.state == lc.JOINING_EXISTING:
        return lc.REMIND_USER_ADDED, {}
    if kind == lc.TERMINATION_HEADS_UP and trial.state == lc.ACTIVE and not trial.kept and not is_active(trial):
        return lc.WARN_TERMINATION, {} if usage.answered else {"usage": "none"}
    if kind == lc.DAY15_REVIEW and trial.state == lc.ACTIVE:
        if is_active(trial):
            return lc.EXTEND, {"days": EXTENSION_DAYS, "reason": "day 15: activity on the instance"}
        if trial.kept:
            return lc.EXTEND, {"days": EXTENSION_DAYS, "reason": "day 15: kept by the CE"}
        if usage.pollable and not _asked_since_last_review(trial):
            return lc.CHECK_USAGE, {}
        if usage.answered:
            return lc.TERMINATE, {"reason": "day 15: the instance shows no use in its usage data"}
        return lc.ASK_DECISION, {"reason": "day 15: no usage data from the instance"}
    if kind == lc.DAY30_DECISION and trial.state == lc.EXTENDED:
        return lc.REMIND_DECISION, {}
    if kind == lc.DAY30_ESCALATION and trial.state == lc.EXTENDED:
        return lc.ESCALATE_DECISION, {}
    waiting = _WAITS.get(kind)
    if waiting is not None and trial.state == waiting[0]:
        return waiting[1], {}
    if trial.state in lc.LIVE_TRIAL:
        return _prospect_step(trial, kind)
    return None


def _prospect_step(trial: PlainTrial, kind: str) -> tuple[str, dict[str, Any]] | None:
    """The prospect's emails: tips only while the instance is unused, check-ins only once it is used."""
    if kind == lc.PROSPECT_DEADLINE_NOTICE:
        return lc.TELL_DEADLINE, {"decision": "day15" if trial.state == lc.ACTIVE else "day30"}
    if kind == lc.ONBOARDING_TIP and not in_use(trial):
        # Which tip is the policy's to say (the one whose day has come); never more tips than days.
        sent = sum(1 for entry in trial.history if entry.trigger == lc.SEND_ONBOARDING_TIP)
        if sent < len(ONBOARDING_TIP_DAYS):
            return lc.SEND_ONBOARDING_TIP, {}
    if kind == lc.PROSPECT_CHECK_IN and in_use(trial):
        return lc.CHECK_IN, {}
    return None


def in_use(trial: PlainTrial) -> bool:
    """The instance reported use since the trial started (its usage polls or its own reports): the
    only sign of use the prospect's emails go by (a lead score is not use of the instance)."""
    return used_since_start(trial.started_at, trial.last_activity_at)


def used_since_start(started_at: datetime | None, last_activity_at: datetime | None) -> bool:
    return bool(started_at and last_activity_at and last_activity_at >= activity_counts_from(started_at))


def extension_end(trial: PlainTrial) -> datetime | None:
    """When the latest extension ends (the day-30 decision, or a later one)."""
    for entry in reversed(trial.history):
        if entry.trigger == lc.EXTEND and entry.detail.get("until"):
            return datetime.fromisoformat(entry.detail["until"])
    return None


# The waits on people: (the state the trial must still be in, the step it causes).
_WAITS = {
    lc.TRIAGE_REMINDER: (lc.TRIAGE, lc.REMIND_TRIAGE),
    lc.TRIAGE_ESCALATION: (lc.TRIAGE, lc.ESCALATE_TRIAGE),
    lc.INSTANCE_REQUEST_SLA: (lc.INSTANCE_REQUESTED, lc.CHASE_INSTANCE_REQUEST),
    lc.HAND_OFF_REMINDER: (lc.INSTANCE_READY, lc.REMIND_HAND_OFF),
    lc.HAND_OFF_ESCALATION: (lc.INSTANCE_READY, lc.ESCALATE_HAND_OFF),
}


def _asked_since_last_review(trial: PlainTrial) -> bool:
    """The instance was asked for this review: its last check comes after its last "ask the CE"."""
    for entry in reversed(trial.history):
        if entry.trigger == lc.CHECK_USAGE:
            return True
        if entry.trigger == lc.ASK_DECISION:
            return False
    return False


def is_active(trial: PlainTrial) -> bool:
    """'Inactive at day 15' = no activity reported since the trial started, and PQL grade D or none.

    Activity arrives from the instance: its usage polls (``instance.usage`` effects) and its own
    reports (``POST /api/instances/{host}/activity``) set ``last_activity_at`` when they show any
    use; the PQL grade comes from lead scoring.
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
        tables.timers.c.trial_id == trial_id, tables.timers.c.fired_at.is_(None),
        tables.timers.c.kind.not_in(sorted(lc.PROSPECT_TIMERS))).order_by(tables.timers.c.due_at))
    return {kind: due.isoformat() for kind, due in rows}

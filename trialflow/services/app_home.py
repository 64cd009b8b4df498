"""People see their own work: a person's open trials, soonest deadline first (``/trial mine`` and
the App Home tab), and for SDRs the triage queue with each lead's score and why it is there.

The Home tab is published through the outbox (``slack.home`` effects, ``delivery.slack``): the
policies add one whenever a step changes a trial (for its SDR, AE and CE, and for every SDR when the
triage queue changes), and the Slack events route adds one when someone opens the tab. The view is
built when the effect is delivered, from the database as it is then, so a burst of changes shows
its end state, and the transport publishes a view only when it differs from the last one it
published for that person (a burst publishes once).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Subquery

from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import Trial
from trialflow.services import outbox
from trialflow.services import slack_blocks as sb
from trialflow.services.directory import Directory, Person
from trialflow.services.fit import Data
from trialflow.services.messages import lead, score, triage_reason
from trialflow.services.uow import App

OPEN_STATES = tuple(s for s in lc.STATES if s not in lc.FINAL_STATES)
SDR_ROLES = frozenset({"inbound_sdr", "named_sdr"})
# A Home tab holds at most 100 blocks: a header, then 3 per trial, and a closing line.
HOME_TRIALS = 30
# The buttons a trial shows in its channels, by state (``services.policies``).
BUTTONS: dict[str, tuple[str, ...]] = {
    lc.JOINING_EXISTING: ("user_added",),
    lc.TRIAGE: (lc.QUALIFY, lc.DISQUALIFY),
    lc.INSTANCE_READY: (lc.HAND_OFF,),
    lc.ACTIVE: (lc.KEEP, lc.EXTEND, lc.CONVERT, lc.TERMINATE),
    lc.EXTENDED: (lc.EXTEND, lc.CONVERT, lc.TERMINATE),
    lc.INSTANCE_REQUESTED: (lc.REASSIGN, lc.TERMINATE),
    lc.WAITING_FOR_CAPACITY: (lc.TERMINATE,),
}


def _next_deadline() -> Subquery:
    t = tables.timers
    return (select(t.c.trial_id, func.min(t.c.due_at).label("due_at"))
            .where(t.c.fired_at.is_(None), t.c.kind.not_in(sorted(lc.PROSPECT_TIMERS)))
            .group_by(t.c.trial_id).subquery())


def open_trials_of(session: Session, email: str, limit: int) -> tuple[list[tuple[Trial, datetime | None]], int]:
    """``email``'s open trials (SDR, AE or CE), soonest deadline first (a trial with none last, newest
    first), and how many there are."""
    t = tables.trials
    mine = or_(t.c.sdr == email, t.c.ae == email, t.c.ce == email)
    due = _next_deadline()
    rows = session.execute(select(Trial, due.c.due_at).outerjoin(due, due.c.trial_id == t.c.id)
                           .where(mine, t.c.state.in_(OPEN_STATES))
                           .order_by(due.c.due_at.is_(None), due.c.due_at, t.c.created_at.desc(), t.c.id)
                           .limit(limit)).all()
    total = session.scalar(select(func.count()).select_from(t).where(mine, t.c.state.in_(OPEN_STATES))) or 0
    return [(row[0], row[1]) for row in rows], total


def triage_queue(session: Session, limit: int = 20) -> list[Trial]:
    """Triage, highest lead score first: MQL points, then PQL grade (A best, ungraded last), then oldest."""
    t = tables.trials
    return list(session.scalars(select(Trial).where(t.c.state == lc.TRIAGE)
                                .order_by(t.c.mql_points.desc(), func.coalesce(t.c.pql_grade, "Z"), t.c.created_at, t.c.id)
                                .limit(limit)))


def _deadline(session: Session, trial_id: str, due: datetime | None) -> str:
    if due is None:
        return "no deadline"
    kind = session.scalar(select(tables.timers.c.kind).where(
        tables.timers.c.trial_id == trial_id, tables.timers.c.fired_at.is_(None), tables.timers.c.due_at == due,
        tables.timers.c.kind.not_in(sorted(lc.PROSPECT_TIMERS))).limit(1))
    return f"next: {(kind or 'deadline').replace('_', ' ')} on {due:%Y-%m-%d %H:%M} UTC"


def _trial_blocks(trial: Trial, facts: str) -> list[dict[str, Any]]:
    text = sb.mrkdwn("{lead} · *{state}* · {account}{url}", lead=lead(trial), state=trial.state.replace("_", " "),
                     account=Data(trial.account_name or trial.domain),
                     url=f" · {trial.instance_url}" if trial.instance_url else "")
    blocks = [sb.section(text), sb.context(facts)]
    actions = BUTTONS.get(trial.state)
    if actions:
        blocks.append(sb.buttons(trial.id, *actions))
    return blocks


def home_view(session: Session, person: Person) -> dict[str, Any]:
    """The person's Home tab: their trials by deadline (CE, AE, admin) or the triage queue (SDRs)."""
    blocks: list[dict[str, Any]] = []
    if person.role in SDR_ROLES:
        trials = triage_queue(session, HOME_TRIALS)
        total = session.scalar(select(func.count()).select_from(tables.trials)
                               .where(tables.trials.c.state == lc.TRIAGE)) or 0
        blocks.append({"type": "header", "text": {"type": "plain_text", "text": f"Triage queue ({total})"}})
        for trial in trials:
            blocks += _trial_blocks(trial, sb.mrkdwn("{score} · why triage: {reason} · since {since}",
                                                     score=score(trial), reason=triage_reason(trial),
                                                     since=f"{trial.created_at:%Y-%m-%d}"))
        if not trials:
            blocks.append(sb.section("The triage queue is empty."))
    else:
        mine, total = open_trials_of(session, person.email, HOME_TRIALS)
        blocks.append({"type": "header", "text": {"type": "plain_text",
                                                  "text": f"Your open trials ({total}), soonest deadline first"}})
        for trial, due in mine:
            blocks += _trial_blocks(trial, _deadline(session, trial.id, due))
        if not mine:
            blocks.append(sb.section(sb.mrkdwn("No open trials where you ({name}) are the SDR, AE or CE.",
                                               name=Data(person.name))))
        total = max(total, len(mine))
    if total > HOME_TRIALS:
        blocks.append(sb.context(f"{HOME_TRIALS} of {total} shown: `/trial mine` and `/trial queue` list them too."))
    return {"type": "home", "blocks": blocks}


class HomeViews:
    """What ``delivery.slack`` publishes for a ``slack.home`` effect: (Slack user id, view) for each
    person it names (by email, by Slack user id, or every active SDR for the triage queue). Those a
    reassignment ``replaced`` get theirs even when no longer active (the reason they were replaced):
    otherwise their tab keeps listing trials that are not theirs."""

    def __init__(self, rt: App):
        self.rt = rt

    def views_for(self, payload: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        s = tables.staff.c
        with self.rt.session_factory() as session:
            people = Directory(session)
            found = [people.by_email(email) for email in payload.get("people") or []]
            found += [people.by_slack_id(user_id) for user_id in payload.get("slack_users") or []]
            if payload.get("triage"):
                found += [Person(**row._mapping) for row in session.execute(
                    select(tables.staff).where(s.role.in_(sorted(SDR_ROLES)), s.active.is_(True)))]
            found = [p for p in found if p is not None and p.active]
            found += [people.by_email(email) for email in payload.get("replaced") or []]
            seen: set[str] = set()
            views = []
            for person in found:
                if person is None or not person.slack_user_id or person.slack_user_id in seen:
                    continue
                seen.add(person.slack_user_id)
                views.append((person.slack_user_id, home_view(session, person)))
            return views


def home_opened(rt: App, slack_user_id: str, event_id: str) -> None:
    """Someone opened trialflow's Home tab: publish theirs (once per Slack event, retries included)."""
    with rt.uow() as uow:
        outbox.enqueue(uow, key=f"home-opened:{event_id}"[:200], kind="slack.home", now=rt.clock.now(),
                       payload={"slack_users": [slack_user_id]})
        uow.commit()

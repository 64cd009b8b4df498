"""The AE and CE rotation, kept in the database: weighted, capped, skipping anyone away or
inactive, and explaining every pick (``domain.rotation``).

Why it is fair across processes and restarts, and safe under concurrent signups: each pick first
bumps the role's ``round_robin`` row (UPDATE), which on PostgreSQL holds that row's lock until the
transaction ends. A second signup picking the same role waits there, then reads the credits and
open-trial counts the first one committed. On SQLite every write transaction already runs alone.
"""
from __future__ import annotations

import csv
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from trialflow.db import tables
from trialflow.db.sql import insert_ignore
from trialflow.domain import lifecycle as lc
from trialflow.domain.rotation import Candidate, Pick, choose
from trialflow.domain.trial import PlainTrial
from trialflow.services.calendar import calendar_for
from trialflow.settings import Settings

ROTATING_ROLES = ("ae", "ce")
OPEN_STATES = tuple(s for s in lc.STATES if s not in lc.FINAL_STATES)
PAIRS_FILE = "pairs.csv"


def open_trials(session: Session, role: str, emails: list[str]) -> dict[str, int]:
    """Open trials per person in ``role`` (the trials column of the same name)."""
    if not emails:
        return {}
    column = tables.trials.c[role]
    rows = session.execute(select(column, func.count()).where(column.in_(emails),
                                                              tables.trials.c.state.in_(OPEN_STATES))
                           .group_by(column))
    return {email: count for email, count in rows}


def candidates(session: Session, role: str) -> list[Candidate]:
    s = tables.staff.c
    people = session.execute(select(s.email, s.name, s.weight, s.max_open_trials, s.away_until)
                             .where(s.role == role, s.active.is_(True)).order_by(s.email)).all()
    counts = open_trials(session, role, [p.email for p in people])
    return [Candidate(p.email, p.name, float(p.weight if p.weight is not None else 1.0), counts.get(p.email, 0),
                      p.max_open_trials, p.away_until) for p in people]


def pick(session: Session, role: str, today: date, prefer: str | None = None, prefer_why: str = "") -> Pick:
    """Take the role's next turn (in the caller's transaction)."""
    rr = tables.round_robin
    insert_ignore(session, rr, {"role": role, "position": 0})
    # The role's lock (see the module's docstring): taken before anything is read.
    session.execute(update(rr).where(rr.c.role == role).values(position=rr.c.position + 1))
    people = candidates(session, role)
    rc = tables.rotation_credits
    credits = {email: credit for email, credit in session.execute(
        select(rc.c.email, rc.c.credit).where(rc.c.role == role))}
    chosen, after = choose(people, credits, today, prefer, prefer_why)
    if after != credits:
        session.execute(delete(rc).where(rc.c.role == role))
        current = {p.email for p in people}
        rows = [{"role": role, "email": e, "credit": c} for e, c in sorted(after.items()) if e in current]
        if rows:
            session.execute(insert(rc), rows)
    return chosen


def read_pairs(config_dir: Path) -> dict[str, str]:
    """``pairs.csv`` (``ae,ce``): the CE each AE works with, when pairing is on."""
    path = Path(config_dir) / PAIRS_FILE
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return {row["ae"].strip().lower(): row["ce"].strip().lower()
                for row in csv.DictReader(fh) if (row.get("ae") or "").strip() and (row.get("ce") or "").strip()}


def assign(session: Session, settings: Settings, trial: PlainTrial, now: datetime,
           roles: tuple[str, ...] = ROTATING_ROLES) -> None:
    """Fill ``roles`` from the rotation; the trial's next step records why (``PlainTrial.note_routing``)."""
    today = calendar_for(settings).today(now)
    pairs = read_pairs(settings.config_dir) if settings.routing_pairs else None
    for role in roles:
        prefer = pairs.get(trial.ae or "") if role == "ce" and pairs else None
        chosen = pick(session, role, today, prefer, f"paired with AE {trial.ae}" if prefer else "")
        setattr(trial, role, chosen.email)
        trial.note_routing(role, chosen.explain())

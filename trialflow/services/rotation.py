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

from sqlalchemy import bindparam, func, insert, select, update
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


_s, _rc, _rr = tables.staff.c, tables.rotation_credits.c, tables.round_robin.c
# Built once: a signup takes a turn per role, and building the statements cost more than running them.
_PEOPLE = (select(_s.email, _s.name, _s.weight, _s.max_open_trials, _s.away_until, _rc.credit)
           .outerjoin(tables.rotation_credits, (_rc.role == bindparam("rotation_role")) & (_rc.email == _s.email))
           .where(_s.role == bindparam("rotation_role"), _s.active.is_(True)).order_by(_s.email))
_BUMP = (update(tables.round_robin).where(_rr.role == bindparam("rotation_role")).values(position=_rr.position + 1)
         .returning(_rr.position))
_SET_CREDIT = (update(tables.rotation_credits).where(_rc.role == bindparam("r"), _rc.email == bindparam("e"))
               .values(credit=bindparam("c")))


def candidates(session: Session, role: str) -> tuple[list[Candidate], dict[str, float]]:
    """The role's active staff, by email, and their running credits (one query; open trials are
    counted only when someone has a cap)."""
    people = session.execute(_PEOPLE, {"rotation_role": role}).all()
    capped = [p.email for p in people if p.max_open_trials is not None]
    counts = open_trials(session, role, capped)
    found = [Candidate(p.email, p.name, float(p.weight if p.weight is not None else 1.0), counts.get(p.email, 0),
                       p.max_open_trials, p.away_until) for p in people]
    return found, {p.email: p.credit for p in people if p.credit is not None}


def pick(session: Session, role: str, today: date, prefer: str | None = None, prefer_why: str = "") -> Pick:
    """Take the role's next turn (in the caller's transaction)."""
    # The role's lock (see the module's docstring): taken before anything is read.
    if session.execute(_BUMP, {"rotation_role": role}).first() is None:
        insert_ignore(session, tables.round_robin, {"role": role, "position": 0})
        session.execute(_BUMP, {"rotation_role": role})
    people, credits = candidates(session, role)
    chosen, after = choose(people, credits, today, prefer, prefer_why)
    changed = [{"r": role, "e": email, "c": credit} for email, credit in sorted(after.items())
               if credits.get(email) != credit]
    known = [row for row in changed if row["e"] in credits]
    if known:
        session.execute(_SET_CREDIT, known)
    new = [{"role": role, "email": row["e"], "credit": row["c"]} for row in changed if row["e"] not in credits]
    if new:
        session.execute(insert(tables.rotation_credits), new)
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

"""Lead scoring (``shared/seeds/plg-and-lead-scoring.txt``): MQL points for intent, PQL grade for use.

MQL, marketing qualified lead: every marketing action adds points (the seed's table, ``MQL_POINTS``);
15 points or more is an MQL. Events are kept per email in ``marketing_events`` and summed into
``trials.mql_points`` of the trial with that email. An event that arrives before its trial does is
kept unattached and counted when the trial appears: at signup (``attach_marketing_events``) and, as
a backstop for an event racing its signup, on every sweep (``grade_trials``).

PQL, product qualified lead: a grade A-D from what the trial's instance reports in
``instance_activity``; A or B is a PQL. The seed lost its per-grade criteria (the cells are empty),
so the minimums are ours, in ``<TRIALFLOW_CONFIG_DIR>/pql.csv`` (``DEFAULT_PQL_CSV`` when the file
is absent). A trial gets the first grade, in file order, whose every minimum its activity meets;
the last row must be all zeros, the catch-all. Activity is counted from the trial start: users and
repositories are the most seen in one report (people and repositories are not additive), searches
and code-intelligence actions add up (each report counts what happened since the previous one).
A trial without an instance has no grade (the seed's "N/A").
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from trialflow.db import tables, touched
from trialflow.domain import lifecycle as lc
from trialflow.errors import ConfigError
from trialflow.services.timers import activity_counts_from_sql

# The seed's "Incremental lead score points", one kind per row.
MQL_POINTS: dict[str, int] = {
    "form_submission": 10,     # any form other than demo request, pricing inquiry or feedback
    "demo_request": 15,
    "pricing_inquiry": 15,     # "contact sales"
    "signup_or_install": 10,   # private install or Sourcegraph.com sign-up
    "pricing_page_view": 5,
    "page_view": 1,            # any page other than pricing, per view
    # The seed excludes feedback forms from "form submission" and gives them no row: kept, worth nothing.
    "feedback_form": 0,
}
MQL_THRESHOLD = 15

PQL_METRICS = ("active_users", "searches", "code_intel_actions", "repositories")
PQL_GRADES = ("A", "B", "C", "D")
PQL_QUALIFIED = frozenset({"A", "B"})
PQL_FILE = "pql.csv"
DEFAULT_PQL_CSV = """grade,active_users,searches,code_intel_actions,repositories,meaning
A,5,100,20,5,very active
B,2,20,1,1,moderately active
C,1,0,0,0,minimally active
D,0,0,0,0,inactive post sign-up
"""
# Trials whose grade can still move: they hold a started instance. Converted and terminated
# trials keep the grade they ended with.
GRADED_STATES = (lc.ACTIVE, lc.EXTENDED)


def mql_points(kind: str) -> int:
    """Points for one marketing action; KeyError for a kind the seed does not score."""
    return MQL_POINTS[kind]


def is_mql(points: int | None) -> bool:
    return (points or 0) >= MQL_THRESHOLD


def is_pql(grade: str | None) -> bool:
    return grade in PQL_QUALIFIED


# --- MQL -----------------------------------------------------------------------------------

def attach_marketing_events(session: Session, trial) -> int:
    """Count the events recorded for ``trial.email`` before the trial existed. Returns the points added.

    Call it in the signup's transaction, before the triage alert is decided, so the alert shows them.
    """
    me = tables.marketing_events
    points = session.execute(
        update(me).where(me.c.email == trial.email, me.c.trial_id.is_(None))
        .values(trial_id=trial.id).returning(me.c.points)).scalars().all()
    added = sum(points)
    if added:
        trial.mql_points = (trial.mql_points or 0) + added
    return added


def _attach_orphans(session: Session) -> int:
    """Events stored unattached while their trial's signup was still in flight. Returns trials updated."""
    me, t = tables.marketing_events, tables.trials
    pairs = session.execute(
        select(t.c.id, t.c.email).join(me, me.c.email == t.c.email).where(me.c.trial_id.is_(None)).distinct()
    ).all()
    for trial_id, email in pairs:
        # Attaching row by row (``trial_id IS NULL`` re-checked under the row lock) counts each
        # event exactly once, even with a concurrent POST /api/events or a second sweeper.
        added = sum(session.execute(
            update(me).where(me.c.email == email, me.c.trial_id.is_(None)).values(trial_id=trial_id)
            .returning(me.c.points)).scalars().all())
        if added:
            session.execute(update(t).where(t.c.id == trial_id).values(mql_points=t.c.mql_points + added))
    return len(pairs)


def record_marketing_event(session: Session, email: str, kind: str, at: datetime) -> MarketingEventResult:
    """Store one scored action and add its points to the email's trial, if there is one yet."""
    points = mql_points(kind)
    t, me = tables.trials, tables.marketing_events
    trial_id = session.scalar(select(t.c.id).where(t.c.email == email))
    session.execute(me.insert().values(email=email, kind=kind, points=points, at=at, trial_id=trial_id))
    if trial_id is not None and points:
        # An increment, not a recomputed sum: it stays right under concurrent events for one trial.
        session.execute(update(t).where(t.c.id == trial_id).values(mql_points=t.c.mql_points + points))
    total = session.scalar(select(func.coalesce(func.sum(me.c.points), 0)).where(me.c.email == email))
    return MarketingEventResult(email=email, kind=kind, points=points, at=at, trial_id=trial_id,
                                mql_points=int(total or 0))


@dataclass(frozen=True)
class MarketingEventResult:
    email: str
    kind: str
    points: int
    at: datetime
    trial_id: str | None
    mql_points: int          # all events for this email so far

    @property
    def mql(self) -> bool:
        return is_mql(self.mql_points)


# --- PQL -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Activity:
    active_users: int = 0
    searches: int = 0
    code_intel_actions: int = 0
    repositories: int = 0


@dataclass(frozen=True)
class GradeRule:
    grade: str
    minimums: Activity
    meaning: str = ""

    def met_by(self, activity: Activity) -> bool:
        return all(getattr(activity, m) >= getattr(self.minimums, m) for m in PQL_METRICS)


@dataclass(frozen=True)
class PqlThresholds:
    rules: tuple[GradeRule, ...]
    source: str = "built-in defaults"

    def grade(self, activity: Activity) -> str:
        for rule in self.rules:
            if rule.met_by(activity):
                return rule.grade
        raise AssertionError("the catch-all rule always matches")  # parse_pql_csv guarantees it


def parse_pql_csv(text: str, source: str = PQL_FILE) -> PqlThresholds:
    """Read grade minimums; a ConfigError names the file and line of the first problem."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in ("grade", *PQL_METRICS) if c not in header]
    if missing:
        raise ConfigError(f"header is missing column(s) {', '.join(missing)}", source, 1)
    reader.fieldnames = header
    rules: list[GradeRule] = []
    for row in reader:
        line = reader.line_num
        grade = (row.get("grade") or "").strip().upper()
        if grade not in PQL_GRADES:
            raise ConfigError(f"grade must be one of {', '.join(PQL_GRADES)}, not {row.get('grade')!r}", source, line)
        if any(r.grade == grade for r in rules):
            raise ConfigError(f"grade {grade} is listed twice", source, line)
        values = {}
        for metric in PQL_METRICS:
            raw = (row.get(metric) or "").strip()
            if not raw.isdigit():
                raise ConfigError(f"{metric} must be a whole number of 0 or more, not {raw!r}", source, line)
            values[metric] = int(raw)
        if rules and PQL_GRADES.index(grade) < PQL_GRADES.index(rules[-1].grade):
            raise ConfigError(f"grades must be listed from A to D; {grade} comes after {rules[-1].grade}", source, line)
        rules.append(GradeRule(grade, Activity(**values), (row.get("meaning") or "").strip()))
    if [r.grade for r in rules] != list(PQL_GRADES):
        raise ConfigError(f"list every grade A, B, C and D once (found {', '.join(r.grade for r in rules) or 'none'})", source)
    if any(getattr(rules[-1].minimums, m) for m in PQL_METRICS):
        raise ConfigError("grade D is the catch-all: its minimums must all be 0", source)
    return PqlThresholds(tuple(rules), source)


DEFAULT_THRESHOLDS = parse_pql_csv(DEFAULT_PQL_CSV, "built-in defaults")


def load_pql_thresholds(config_dir: Path | str | None) -> PqlThresholds:
    """``<config_dir>/pql.csv`` if it is there, else the built-in defaults (the same numbers as config/pql.csv)."""
    if config_dir is None:
        return DEFAULT_THRESHOLDS
    path = Path(config_dir) / PQL_FILE
    if not path.exists():
        return DEFAULT_THRESHOLDS
    return parse_pql_csv(path.read_text(encoding="utf-8-sig"), str(path))


@dataclass
class GradeReport:
    graded: int = 0
    changed: list[tuple[str, str | None, str]] = field(default_factory=list)  # (trial id, before, after)
    mql_attached: int = 0


def activity_since_start(session: Session, now: datetime, trial_ids: Iterable[str] | None = None) -> dict[str, tuple[str | None, Activity]]:
    """{trial id: (current grade, activity since its start)} for the live trials (or the ones given)."""
    t, ia = tables.trials, tables.instance_activity
    # A report belongs to the trial it names, or (unnamed) to the trial holding that host.
    counts_from = activity_counts_from_sql(t.c.started_at, session.get_bind().dialect.name)
    on = and_(or_(ia.c.trial_id == t.c.id, and_(ia.c.trial_id.is_(None), ia.c.host == t.c.instance_host)),
              ia.c.at >= counts_from, ia.c.at <= now)
    stmt = (select(t.c.id, t.c.pql_grade,
                   func.coalesce(func.max(ia.c.active_users), 0), func.coalesce(func.sum(ia.c.searches), 0),
                   func.coalesce(func.sum(ia.c.code_intel_actions), 0), func.coalesce(func.max(ia.c.repositories), 0))
            .select_from(t.outerjoin(ia, on))
            .where(t.c.started_at.is_not(None))
            .group_by(t.c.id, t.c.pql_grade))
    stmt = stmt.where(t.c.id.in_(list(trial_ids))) if trial_ids is not None else stmt.where(t.c.state.in_(GRADED_STATES))
    return {row[0]: (row[1], Activity(*(int(v) for v in row[2:]))) for row in session.execute(stmt)}


def grade_trials(session: Session, now: datetime, *, config_dir: Path | str | None = None,
                 thresholds: PqlThresholds | None = None, trial_ids: Iterable[str] | None = None) -> GradeReport:
    """Grade every live trial (or ``trial_ids``) from its instance activity into ``trials.pql_grade``.

    Also counts marketing events that arrived while their trial's signup was in flight. Runs in the
    caller's transaction; the caller commits.
    """
    rules = thresholds or load_pql_thresholds(config_dir)
    report = GradeReport(mql_attached=_attach_orphans(session))
    t = tables.trials
    for trial_id, (before, activity) in activity_since_start(session, now, trial_ids).items():
        after = rules.grade(activity)
        report.graded += 1
        if after != before:
            session.execute(update(t).where(t.c.id == trial_id).values(pql_grade=after))
            touched.touch(session, [trial_id])
            report.changed.append((trial_id, before, after))
    return report

"""The funnel the growth team watches, by weekly cohort: trial requests, trial starts, activation,
conversion and the median time in each step (``trialflow report``, ``/dashboard``, ``/api/funnel``).

A cohort is the ISO week (UTC) a trial was requested in; everything that later happens to a trial
counts in its request week, so a week's numbers are comparable with any other week's at the same
age (recent weeks are still maturing: their starts and conversions will grow).

- requests: every signup (``POST /api/signups``) except joiners;
- joiners: signups of colleagues who joined their company's existing instance (case 1), counted
  apart because they can never start a trial of their own;
- starts: the user got an instance (``trials.started_at`` is set: hand-off or a claimed pool instance);
- activation: started trials with PQL grade A or B (``trialflow.scoring``), over starts;
- conversion: started trials now converted, over starts;
- time in each step, from ``trial_history``: for case 3, signup → trial start; then
  triage → qualified, instance requested → instance ready, ready → handed off (medians over the
  trials of the cohort that completed the step).

Every figure can be split by source, case, AE, CE or disqualification reason (``SPLITS``).

The figures are read from ``trial_facts`` (``services.aggregates``: one row per trial, kept in
each step's transaction), so a report costs the weeks it shows, not every trial ever stored.
``compute_funnel`` is the same definition worked out from the trials themselves: the recount the
tests compare the aggregates with.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Float, and_, case, func, literal_column, select
from sqlalchemy.exc import DBAPIError

from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import CASE_EXISTING, CASE_MANUAL
from trialflow.scoring import PQL_QUALIFIED

# (key, label): the order in which a case-3 trial meets them.
STEPS: tuple[tuple[str, str], ...] = (
    ("signup_to_start", "signup → start (case 3)"),
    ("triage_to_qualified", "triage → qualified"),
    ("requested_to_ready", "requested → ready"),
    ("ready_to_handed_off", "ready → handed off"),
)
STEP_LABELS = dict(STEPS)
# What a funnel can be split by: the ``trial_facts`` column of each.
SPLITS = ("source", "case", "ae", "ce", "reason")


@dataclass(frozen=True)
class Move:
    from_state: str
    to_state: str
    trigger: str
    at: datetime


@dataclass(frozen=True)
class TrialFacts:
    """What the funnel needs to know about one trial."""
    trial_id: str
    case: str | None
    state: str
    created_at: datetime
    started_at: datetime | None
    pql_grade: str | None
    moves: tuple[Move, ...] = ()    # trial_history, oldest first


def _entered(moves: tuple[Move, ...], state: str, after: int = 0) -> tuple[int, Move] | None:
    for i in range(after, len(moves)):
        if moves[i].to_state == state and moves[i].from_state != state:
            return i, moves[i]
    return None


def _left(moves: tuple[Move, ...], state: str, after: int, to: Iterable[str]) -> Move | None:
    targets = set(to)
    for move in moves[after + 1:]:
        if move.from_state == state and move.to_state in targets:
            return move
    return None


def step_seconds(trial: TrialFacts) -> dict[str, float]:
    """Seconds this trial spent in each step it has completed."""
    out: dict[str, float] = {}
    if trial.case == CASE_MANUAL and trial.started_at is not None:
        out["signup_to_start"] = (trial.started_at - trial.created_at).total_seconds()
    triage = _entered(trial.moves, lc.TRIAGE)
    if triage:
        # Qualified = left triage for an instance; a qualified lead may first wait for capacity.
        qualified = _left(trial.moves, lc.TRIAGE, triage[0], (lc.INSTANCE_REQUESTED, lc.WAITING_FOR_CAPACITY))
        if qualified:
            out["triage_to_qualified"] = (qualified.at - triage[1].at).total_seconds()
    requested = _entered(trial.moves, lc.INSTANCE_REQUESTED)
    ready = _entered(trial.moves, lc.INSTANCE_READY, requested[0] if requested else 0)
    if requested and ready:
        out["requested_to_ready"] = (ready[1].at - requested[1].at).total_seconds()
    if ready:
        handed = _left(trial.moves, lc.INSTANCE_READY, ready[0], (lc.ACTIVE,))
        if handed:
            out["ready_to_handed_off"] = (handed.at - ready[1].at).total_seconds()
    return out


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


@dataclass
class Cohort:
    week: str                 # ISO week, "2026-W02"
    week_start: date          # its Monday
    requests: int = 0
    joiners: int = 0
    starts: int = 0
    activated: int = 0
    converted: int = 0
    seconds: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k, _ in STEPS})
    # Read from the aggregates: the medians and counts of ``seconds``, which is then left empty.
    medians: dict[str, float | None] | None = None
    completed: dict[str, int] | None = None

    def add(self, trial: TrialFacts) -> None:
        if trial.case == CASE_EXISTING:
            self.joiners += 1
            return
        self.requests += 1
        if trial.started_at is not None:
            self.starts += 1
            self.activated += trial.pql_grade in PQL_QUALIFIED
            self.converted += trial.state == lc.CONVERTED
        for key, value in step_seconds(trial).items():
            self.seconds[key].append(value)

    def merge(self, other: Cohort) -> None:
        self.requests += other.requests
        self.joiners += other.joiners
        self.starts += other.starts
        self.activated += other.activated
        self.converted += other.converted
        for key in self.seconds:
            self.seconds[key].extend(other.seconds[key])

    @property
    def start_rate(self) -> float | None:
        return _ratio(self.starts, self.requests)

    @property
    def activation_rate(self) -> float | None:
        return _ratio(self.activated, self.starts)

    @property
    def conversion_rate(self) -> float | None:
        return _ratio(self.converted, self.starts)

    def median_seconds(self, key: str) -> float | None:
        if self.medians is not None:
            return self.medians.get(key)
        return _median(self.seconds[key])

    def completed_in(self, key: str) -> int:
        return self.completed.get(key, 0) if self.completed is not None else len(self.seconds[key])

    def to_dict(self) -> dict:
        return {
            "week": self.week, "week_start": self.week_start.isoformat(),
            "requests": self.requests, "joiners": self.joiners, "starts": self.starts, "start_rate": self.start_rate,
            "activated": self.activated, "activation_rate": self.activation_rate,
            "converted": self.converted, "conversion_rate": self.conversion_rate,
            "median_seconds": {k: self.median_seconds(k) for k, _ in STEPS},
            "completed": {k: self.completed_in(k) for k, _ in STEPS},
        }


@dataclass
class Funnel:
    as_of: datetime
    cohorts: list[Cohort]     # oldest week first
    totals: Cohort | None = None   # read with the cohorts (the aggregates); else merged from them

    @property
    def total(self) -> Cohort:
        if self.totals is not None:
            return self.totals
        total = Cohort(f"{len(self.cohorts)} weeks", self.cohorts[0].week_start if self.cohorts else self.as_of.date())
        for cohort in self.cohorts:
            total.merge(cohort)
        return total

    def to_dict(self) -> dict:
        return {"as_of": self.as_of.isoformat(), "weeks": len(self.cohorts),
                "steps": [{"key": k, "label": label} for k, label in STEPS],
                "cohorts": [c.to_dict() for c in self.cohorts], "total": self.total.to_dict()}


def week_of(moment: datetime) -> tuple[str, date]:
    day = moment.astimezone(UTC).date()
    year, week, weekday = day.isocalendar()
    return f"{year}-W{week:02d}", day - timedelta(days=weekday - 1)


def window_start(now: datetime, weeks: int) -> datetime:
    """Monday 00:00 UTC of the oldest of the ``weeks`` weeks ending with ``now``'s."""
    _, monday = week_of(now)
    first = monday - timedelta(weeks=weeks - 1)
    return datetime(first.year, first.month, first.day, tzinfo=UTC)


def compute_funnel(trials: Iterable[TrialFacts], now: datetime, weeks: int = 12) -> Funnel:
    """Pure: the ``weeks`` weekly cohorts up to ``now``'s week, empty weeks included."""
    if weeks < 1:
        raise ValueError("weeks must be 1 or more")
    start = window_start(now, weeks)
    cohorts: dict[str, Cohort] = {}
    for i in range(weeks):
        week, monday = week_of(start + timedelta(weeks=i))
        cohorts[week] = Cohort(week, monday)
    for trial in trials:
        if start <= trial.created_at <= now:
            cohorts[week_of(trial.created_at)[0]].add(trial)
    return Funnel(now, list(cohorts.values()))


# Only moves that bound a step are loaded; internal steps (reminders, reassignments) are not needed.
_STEP_STATES = (lc.TRIAGE, lc.INSTANCE_REQUESTED, lc.INSTANCE_READY, lc.WAITING_FOR_CAPACITY, lc.ACTIVE)


def bounds_a_step(move: Move) -> bool:
    return move.from_state != move.to_state and (move.from_state in _STEP_STATES or move.to_state in _STEP_STATES)


def load_trials(session, since: datetime, until: datetime) -> list[TrialFacts]:
    t, h = tables.trials, tables.trial_history
    in_window = (t.c.created_at >= since) & (t.c.created_at <= until)
    moves: dict[str, list[Move]] = {}
    rows = session.execute(
        select(h.c.trial_id, h.c.from_state, h.c.to_state, h.c.trigger, h.c.at)
        .join(t, t.c.id == h.c.trial_id)
        .where(in_window, h.c.from_state != h.c.to_state,
               h.c.from_state.in_(_STEP_STATES) | h.c.to_state.in_(_STEP_STATES))
        .order_by(h.c.trial_id, h.c.id))
    for trial_id, from_state, to_state, trigger, at in rows:
        moves.setdefault(trial_id, []).append(Move(from_state, to_state, trigger, at))
    return [
        TrialFacts(r.id, r.case, r.state, r.created_at, r.started_at, r.pql_grade, tuple(moves.get(r.id, ())))
        for r in session.execute(select(t.c.id, t.c["case"], t.c.state, t.c.created_at, t.c.started_at, t.c.pql_grade)
                                 .where(in_window))
    ]


def recount_from_db(rt, weeks: int = 12, now: datetime | None = None) -> Funnel:
    """The funnel worked out from ``trials`` and ``trial_history`` (what the aggregates must equal)."""
    now = now or rt.clock.now()
    with rt.session_factory() as session:
        trials = load_trials(session, window_start(now, weeks), now)
    return compute_funnel(trials, now, weeks)


def _empty_weeks(now: datetime, weeks: int) -> dict[str, Cohort]:
    start = window_start(now, weeks)
    return {week: Cohort(week, monday) for week, monday in (week_of(start + timedelta(weeks=i)) for i in range(weeks))}


def _cohort_sums(f) -> list:
    not_joiner = func.coalesce(f.c["case"], "") != CASE_EXISTING
    started = and_(not_joiner, f.c.started.is_(True))

    def count_if(condition):
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)
    return [count_if(not_joiner), count_if(~not_joiner), count_if(started),
            count_if(and_(started, f.c.pql_grade.in_(sorted(PQL_QUALIFIED)))),
            count_if(and_(started, f.c.state == lc.CONVERTED)),
            *[func.count(f.c[k]) for k, _ in STEPS]]


def _fill(cohort: Cohort, sums, medians: dict[str, float | None]) -> None:
    cohort.requests, cohort.joiners, cohort.starts, cohort.activated, cohort.converted = (int(x) for x in sums[:5])
    cohort.completed = {k: int(n) for (k, _), n in zip(STEPS, sums[5:], strict=True)}
    cohort.medians = medians


def _python_medians(session, f, in_window, group: list) -> dict[tuple, dict[str, float | None]]:
    """Median seconds of each step by ``group``, the values read and the median taken here."""
    lists: dict[tuple, dict[str, list[float]]] = {}
    for row in session.execute(select(*group, *[f.c[k] for k, _ in STEPS]).where(in_window)):
        entry = lists.setdefault(tuple(row[:len(group)]), {k: [] for k, _ in STEPS})
        for (k, _), v in zip(STEPS, row[len(group):], strict=True):
            if v is not None:
                entry[k].append(v)
    return {key: {k: _median(v) for k, v in entry.items()} for key, entry in lists.items()}


def _read_groups(session, f, in_window, by: str | None) -> list[tuple[str | None, str | None, list, dict]]:
    """(value of ``by``, week or None for the total, the sums, the medians) of each group.

    PostgreSQL: one scan of the window's rows (GROUPING SETS: per week and in total, with
    percentile_cont for the medians). Elsewhere (SQLite, a small database): counted in SQL,
    medians taken here."""
    dims = [f.c[by]] if by else []
    if session.get_bind().dialect.name == "postgresql":
        medians = [func.percentile_cont(0.5).within_group(f.c[k].cast(Float)) for k, _ in STEPS]
        dim_names = [f'"{by}"'] if by else []
        sets: Any = literal_column(f"GROUPING SETS (({', '.join([*dim_names, 'week'])}), ({', '.join(dim_names)}))")
        out = []
        for row in session.execute(select(*dims, f.c.week, func.grouping(f.c.week), *_cohort_sums(f), *medians)
                                   .where(in_window).group_by(sets)):
            value = row[0] if dims else None
            week = None if row[len(dims) + 1] else row[len(dims)]
            sums = list(row[len(dims) + 2:len(dims) + 2 + 5 + len(STEPS)])
            values = row[len(dims) + 2 + 5 + len(STEPS):]
            out.append((value, week, sums, {k: None if v is None else round(float(v), 1)
                                             for (k, _), v in zip(STEPS, values, strict=True)}))
        return out
    by_week = session.execute(select(*dims, f.c.week, *_cohort_sums(f)).where(in_window).group_by(*dims, f.c.week)).all()
    totals = session.execute(select(*dims, *_cohort_sums(f)).where(in_window).group_by(*dims)).all() if dims else \
        [session.execute(select(*_cohort_sums(f)).where(in_window)).one()]
    week_medians = _python_medians(session, f, in_window, [*dims, f.c.week])
    total_medians = _python_medians(session, f, in_window, dims)
    out = []
    for row in totals:
        value = row[0] if dims else None
        out.append((value, None, list(row[len(dims):]), total_medians.get((value,) if dims else (), {})))
    for row in by_week:
        value, week = (row[0], row[1]) if dims else (None, row[0])
        out.append((value, week, list(row[len(dims) + 1:]), week_medians.get((value, week) if dims else (week,), {})))
    return out


def split_from_db(rt, by: str | None, weeks: int = 12, now: datetime | None = None) -> dict[str | None, Funnel]:
    """The funnel of each value of ``by`` (one of ``SPLITS``; None: the whole funnel, under None),
    read from the aggregates: the rows of the window's weeks only."""
    if by is not None and by not in SPLITS:
        raise ValueError(f"cannot split by {by!r}; one of {', '.join(SPLITS)}")
    if weeks < 1:
        raise ValueError("weeks must be 1 or more")
    now = now or rt.clock.now()
    f = tables.trial_facts
    in_window = (f.c.created_at >= window_start(now, weeks)) & (f.c.created_at <= now)
    with rt.session_factory() as session:
        groups = _read_groups(session, f, in_window, by)
    nothing: dict[str, float | None] = {k: None for k, _ in STEPS}
    funnels: dict[str | None, Funnel] = {}
    cohorts: dict[str | None, dict[str, Cohort]] = {}
    for value, week, sums, medians in groups:
        if week is None:
            cohorts[value] = _empty_weeks(now, weeks)
            total = Cohort(f"{weeks} weeks", window_start(now, weeks).date())
            _fill(total, sums, {**nothing, **medians})
            funnels[value] = Funnel(now, list(cohorts[value].values()), totals=total)
    if by is None and None not in funnels:   # no trial in the window at all
        cohorts[None] = _empty_weeks(now, weeks)
        total = Cohort(f"{weeks} weeks", window_start(now, weeks).date())
        _fill(total, [0] * (5 + len(STEPS)), nothing)
        funnels[None] = Funnel(now, list(cohorts[None].values()), totals=total)
    for value, week, sums, medians in groups:
        if week is not None:
            _fill(cohorts[value][week], sums, {**nothing, **medians})
    for funnel in funnels.values():
        for cohort in funnel.cohorts:
            if cohort.medians is None:
                _fill(cohort, [0] * (5 + len(STEPS)), nothing)
    return funnels


def funnel_from_db(rt, weeks: int = 12, now: datetime | None = None) -> Funnel:
    return split_from_db(rt, None, weeks, now)[None]


# --- text ----------------------------------------------------------------------------------

def percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def render_text(funnel: Funnel) -> str:
    as_of = funnel.as_of.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = ("week", "from", "requests", "joiners", "starts", "start/req", "activated", "activation", "converted",
            "conversion")
    widths = (10, 10, 8, 7, 6, 9, 9, 10, 9, 10)

    def row(cells) -> str:
        return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    def numbers(c: Cohort, week: str, start: str) -> list:
        return [week, start, c.requests, c.joiners, c.starts, percent(c.start_rate), c.activated, percent(c.activation_rate),
                c.converted, percent(c.conversion_rate)]

    total = funnel.total
    lines = [f"Trial funnel by signup week (UTC), {len(funnel.cohorts)} weeks to {as_of}",
             "requests exclude joiners (colleagues joining an existing instance: they never start a trial)",
             "activation = PQL grade A or B among starts; conversion = converted among starts", "",
             row(head), row("-" * w for w in widths)]
    lines += [row(numbers(c, c.week, c.week_start.isoformat())) for c in funnel.cohorts]
    lines += [row("-" * w for w in widths), row(numbers(total, "all", ""))]

    step_width = 24
    lines += ["", "Median time in each step (n = trials of the cohort that completed it)", "",
              "week".ljust(10) + "  " + "  ".join(label.rjust(step_width) for _, label in STEPS)]
    for c in [*funnel.cohorts, total]:
        cells = [f"{duration(c.median_seconds(k))} (n={c.completed_in(k)})" for k, _ in STEPS]
        name = "all" if c is total else c.week
        lines.append(name.ljust(10) + "  " + "  ".join(cell.rjust(step_width) for cell in cells))
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("week", "week_start", "requests", "joiners", "starts", "start_rate", "activated", "activation_rate",
               "converted", "conversion_rate", *(f"median_seconds_{k}" for k, _ in STEPS),
               *(f"completed_{k}" for k, _ in STEPS))


def render_csv(funnels: dict[str | None, Funnel], by: str | None) -> str:
    """One line per week (and ``all``) of each value of ``by``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(([by] if by else []) + list(CSV_COLUMNS))
    for value, funnel in sorted(funnels.items(), key=lambda item: (item[0] is None, item[0] or "")):
        for cohort in [*funnel.cohorts, funnel.total]:
            d = cohort.to_dict()
            week = "all" if cohort is funnel.total else d["week"]
            cells = [week, d["week_start"], *(d[c] for c in CSV_COLUMNS[2:10]),
                     *(d["median_seconds"][k] for k, _ in STEPS), *(d["completed"][k] for k, _ in STEPS)]
            writer.writerow(([value if value is not None else ""] if by else []) +
                            ["" if c is None else c for c in cells])
    return out.getvalue()


def split_to_dict(funnels: dict[str | None, Funnel], by: str) -> dict:
    return {"by": by, "groups": [{"value": value, **funnel.to_dict()} for value, funnel in
                                 sorted(funnels.items(), key=lambda item: (item[0] is None, item[0] or ""))]}


def cli_report(runtime, args) -> int:
    weeks = getattr(args, "weeks", 12)
    by = getattr(args, "by", None)
    if weeks < 1 or weeks > 520:
        print("error: --weeks must be between 1 and 520", file=sys.stderr)
        return 2
    try:
        funnels = split_from_db(runtime, by, weeks)
    except DBAPIError as exc:
        print(f"error: cannot read the trials ({type(exc.orig).__name__}); is the database migrated? "
              f"Run `trialflow migrate`.", file=sys.stderr)
        return 2
    if getattr(args, "csv", False):
        sys.stdout.write(render_csv(funnels, by))
    elif getattr(args, "json", False):
        print(json.dumps(split_to_dict(funnels, by) if by else funnels[None].to_dict(), indent=2))
    elif by:
        for value, funnel in sorted(funnels.items(), key=lambda item: (item[0] is None, item[0] or "")):
            sys.stdout.write(f"\n== {by}: {value if value is not None else '(none)'} ==\n" + render_text(funnel))
    else:
        sys.stdout.write(render_text(funnels[None]))
    return 0

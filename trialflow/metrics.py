"""Prometheus metrics, computed from the database at scrape time (the truth lives there).

Any process can serve them (API, worker, a second API replica) and they agree, because nothing is
counted in memory: the sweep, which may run in beat or in ``trialflow serve``, leaves its last
numbers in ``kv`` (``record_sweep``) and the scrape reads them back.
"""
from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import case, func, literal, select

from trialflow.db import tables
from trialflow.db.sql import insert_ignore
from trialflow.domain import lifecycle as lc
from trialflow.scoring import GRADED_STATES, PQL_GRADES

# Seconds from an effect's commit to its delivery: in-process it is milliseconds, through Celery
# about a second, and a provider outage with backoff stretches it to minutes or hours.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0)
SWEEP_KEY = "sweep_last"
SWEEP_FIELDS = (
    ("seconds", "trialflow_sweep_last_duration_seconds", "How long the last sweep took."),
    ("trials_touched", "trialflow_sweep_last_trials_touched", "Trials the last sweep moved or reminded about."),
    ("timers_fired", "trialflow_sweep_last_timers_fired", "Due timers the last sweep fired."),
    ("promoted", "trialflow_sweep_last_promoted", "Waiting trials the last sweep moved on as capacity freed."),
)


def record_sweep(rt, report) -> None:
    """Keep the numbers of a finished sweep for /metrics. Call it after every sweep that is not a dry run."""
    if getattr(report, "dry_run", False):
        return
    value = json.dumps({
        "at": report.at.isoformat(), "finished_at": rt.clock.now().isoformat(),
        **{name: getattr(report, name, 0) for name, _, _ in SWEEP_FIELDS},
    })
    kv = tables.kv
    with rt.session_factory() as session, session.begin():
        if not insert_ignore(session, kv, {"key": SWEEP_KEY, "value": value}):
            session.execute(kv.update().where(kv.c.key == SWEEP_KEY).values(value=value))


def _seconds_between(dialect: str, start, end):
    if dialect == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * literal(86400.0)


def _label(value: float) -> str:
    return f"{value:g}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _latency(session) -> list[str]:
    o = tables.outbox
    latency = _seconds_between(session.get_bind().dialect.name, o.c.created_at, o.c.delivered_at)
    columns = [func.sum(case((latency <= b, 1), else_=0)) for b in LATENCY_BUCKETS]
    rows = session.execute(
        select(o.c.kind, func.count(), func.coalesce(func.sum(latency), 0.0), *columns)
        .where(o.c.status == "delivered", o.c.delivered_at.is_not(None)).group_by(o.c.kind).order_by(o.c.kind)).all()
    name = "trialflow_delivery_latency_seconds"
    lines = [f"# HELP {name} Time from an effect being committed to the outbox until it was delivered.",
             f"# TYPE {name} histogram"]
    for kind, count, total, *buckets in rows:
        k = _escape(kind)
        lines += [f'{name}_bucket{{kind="{k}",le="{_label(b)}"}} {int(n or 0)}' for b, n in zip(LATENCY_BUCKETS, buckets, strict=True)]
        lines += [f'{name}_bucket{{kind="{k}",le="+Inf"}} {count}', f'{name}_sum{{kind="{k}"}} {float(total):.6f}',
                  f'{name}_count{{kind="{k}"}} {count}']
    return lines


def _sweep(session) -> list[str]:
    raw = session.scalar(select(tables.kv.c.value).where(tables.kv.c.key == SWEEP_KEY))
    if raw is None:
        return []  # no sweep has run yet: absent, not zero, so "sweep stalled" alerts can tell
    last = json.loads(raw)
    lines = ["# HELP trialflow_sweep_last_run_timestamp_seconds When the last sweep finished (Unix time).",
             "# TYPE trialflow_sweep_last_run_timestamp_seconds gauge",
             f"trialflow_sweep_last_run_timestamp_seconds {datetime.fromisoformat(last['finished_at']).timestamp():.3f}"]
    for field, name, help_text in SWEEP_FIELDS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {last.get(field, 0)}"]
    return lines


def render(rt) -> str:
    lines: list[str] = []
    with rt.session_factory() as session:
        t, o = tables.trials, tables.outbox
        by_state = dict(session.execute(select(t.c.state, func.count()).group_by(t.c.state)).all())
        lines += ["# HELP trialflow_trials Trials by lifecycle state.", "# TYPE trialflow_trials gauge"]
        lines += [f'trialflow_trials{{state="{s}"}} {by_state.get(s, 0)}' for s in lc.STATES]
        by_status = dict(session.execute(select(o.c.status, func.count()).group_by(o.c.status)).all())
        lines += ["# HELP trialflow_effects Outbox effects by status.", "# TYPE trialflow_effects gauge"]
        lines += [f'trialflow_effects{{status="{s}"}} {by_status.get(s, 0)}' for s in ("pending", "delivering", "delivered", "failed")]
        oldest = session.scalar(select(func.min(o.c.created_at)).where(o.c.status.in_(("pending", "delivering"))))
        age = max((rt.clock.now() - oldest).total_seconds(), 0.0) if oldest else 0.0
        lines += ["# HELP trialflow_effects_oldest_pending_age_seconds Age of the oldest effect not delivered yet (0: none).",
                  "# TYPE trialflow_effects_oldest_pending_age_seconds gauge",
                  f"trialflow_effects_oldest_pending_age_seconds {age:.3f}"]
        lines += _latency(session)
        pool = session.scalar(select(func.count()).select_from(tables.instances).where(tables.instances.c.status == "pool"))
        lines += ["# HELP trialflow_pool_instances Free pre-provisioned instances.", "# TYPE trialflow_pool_instances gauge",
                  f"trialflow_pool_instances {pool}"]
        grades = dict(session.execute(select(t.c.pql_grade, func.count()).where(t.c.state.in_(GRADED_STATES))
                                      .group_by(t.c.pql_grade)).all())
        lines += ["# HELP trialflow_live_trials_by_pql_grade Active and extended trials by PQL grade (none: not graded yet).",
                  "# TYPE trialflow_live_trials_by_pql_grade gauge"]
        lines += [f'trialflow_live_trials_by_pql_grade{{grade="{g}"}} {grades.get(g, 0)}' for g in PQL_GRADES]
        lines.append(f'trialflow_live_trials_by_pql_grade{{grade="none"}} {grades.get(None, 0)}')
        lines += _sweep(session)
    return "\n".join(lines) + "\n"

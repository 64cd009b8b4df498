"""Prometheus metrics, computed from the database at scrape time (the truth lives there).

A scrape reads aggregates, not every row ever stored: trials by state and grade from
``trial_counts``, delivered effects and their latency from ``delivery_stats`` (both kept with
the writes, ``services.aggregates``), and the effects not yet delivered from a partial index
that holds only them.

Any process can serve them (API, worker, a second API replica) and they agree, because nothing is
counted in memory: the sweep, which may run in beat or in ``trialflow serve``, leaves its last
numbers in ``kv`` (``record_sweep``) and the scrape reads them back.
"""
from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import func, select

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


def latency_bucket(seconds: float) -> int:
    """The index of the first bucket ``seconds`` falls in (``len(LATENCY_BUCKETS)``: above all)."""
    return next((i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound), len(LATENCY_BUCKETS))


def _label(value: float) -> str:
    return f"{value:g}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _latency(session) -> tuple[list[str], int]:
    """The delivery latency histogram, and how many effects were delivered in all."""
    d = tables.delivery_stats
    per_kind: dict[str, list[int]] = {}
    sums: dict[str, float] = {}
    for kind, bucket, n, seconds in session.execute(
            select(d.c.kind, d.c.bucket, func.sum(d.c.n), func.sum(d.c.seconds)).group_by(d.c.kind, d.c.bucket)):
        per_kind.setdefault(kind, [0] * (len(LATENCY_BUCKETS) + 1))[bucket] += int(n)
        sums[kind] = sums.get(kind, 0.0) + float(seconds)
    name = "trialflow_delivery_latency_seconds"
    lines = [f"# HELP {name} Time from an effect being committed to the outbox until it was delivered.",
             f"# TYPE {name} histogram"]
    delivered = 0
    for kind in sorted(k for k, counts in per_kind.items() if sum(counts)):
        k, counts = _escape(kind), per_kind[kind]
        cumulative = [sum(counts[:i + 1]) for i in range(len(LATENCY_BUCKETS))]
        count = sum(counts)
        delivered += count
        lines += [f'{name}_bucket{{kind="{k}",le="{_label(b)}"}} {n}' for b, n in zip(LATENCY_BUCKETS, cumulative, strict=True)]
        lines += [f'{name}_bucket{{kind="{k}",le="+Inf"}} {count}', f'{name}_sum{{kind="{k}"}} {sums[kind]:.6f}',
                  f'{name}_count{{kind="{k}"}} {count}']
    return lines, delivered


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
        c, o = tables.trial_counts, tables.outbox
        by_state: dict[str, int] = {}
        grades: dict[str | None, int] = {}
        for state, grade, n in session.execute(select(c.c.state, c.c.pql_grade, func.sum(c.c.n))
                                               .group_by(c.c.state, c.c.pql_grade)):
            by_state[state] = by_state.get(state, 0) + int(n)
            if state in GRADED_STATES:
                grades[grade] = grades.get(grade, 0) + int(n)
        lines += ["# HELP trialflow_trials Trials by lifecycle state.", "# TYPE trialflow_trials gauge"]
        lines += [f'trialflow_trials{{state="{s}"}} {by_state.get(s, 0)}' for s in lc.STATES]
        latency, delivered = _latency(session)
        # Not delivered yet: few rows, all in the partial index ix_outbox_open.
        by_status = dict(session.execute(select(o.c.status, func.count()).where(o.c.status != "delivered")
                                         .group_by(o.c.status)).all())
        by_status["delivered"] = delivered
        lines += ["# HELP trialflow_effects Outbox effects by status (delivered: ever, pruned ones included).",
                  "# TYPE trialflow_effects gauge"]
        lines += [f'trialflow_effects{{status="{s}"}} {by_status.get(s, 0)}' for s in ("pending", "delivering", "delivered", "failed")]
        oldest = session.scalar(select(func.min(o.c.created_at)).where(o.c.status != "delivered",
                                                                       o.c.status.in_(("pending", "delivering"))))
        age = max((rt.clock.now() - oldest).total_seconds(), 0.0) if oldest else 0.0
        lines += ["# HELP trialflow_effects_oldest_pending_age_seconds Age of the oldest effect not delivered yet (0: none).",
                  "# TYPE trialflow_effects_oldest_pending_age_seconds gauge",
                  f"trialflow_effects_oldest_pending_age_seconds {age:.3f}"]
        lines += latency
        pool = session.scalar(select(func.count()).select_from(tables.instances).where(tables.instances.c.status == "pool"))
        lines += ["# HELP trialflow_pool_instances Free pre-provisioned instances.", "# TYPE trialflow_pool_instances gauge",
                  f"trialflow_pool_instances {pool}"]
        lines += ["# HELP trialflow_live_trials_by_pql_grade Active and extended trials by PQL grade (none: not graded yet).",
                  "# TYPE trialflow_live_trials_by_pql_grade gauge"]
        lines += [f'trialflow_live_trials_by_pql_grade{{grade="{g}"}} {grades.get(g, 0)}' for g in PQL_GRADES]
        lines.append(f'trialflow_live_trials_by_pql_grade{{grade="none"}} {grades.get(None, 0)}')
        lines += _sweep(session)
    return "\n".join(lines) + "\n"

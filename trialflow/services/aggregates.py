"""Aggregates kept as the data changes, so that the funnel, the dashboard, the report and /metrics
cost what changed, not everything ever stored.

- ``trial_facts``: one row per trial with what the funnel counts (its case, source, AE, CE,
  disqualification reason, whether it started, its grade and state, the seconds it spent in each
  step). Refreshed in the same transaction as every change to the trial: a new trial's row is
  part of the signup's statement (``writer``), and any other change to a trial (an ORM flush
  of a ``Trial``, or a Core update that calls ``touch``) is refreshed just before the commit.
- ``trial_counts``: trials by (state, PQL grade) as appended deltas, written with the facts and
  folded by the sweep (``compact``).
- ``delivery_stats``: delivered effects by kind and latency bucket, appended with the delivery's
  result (``delivery.record``) and folded by the sweep.

``recount`` rebuilds all three from the rows (the migration's backfill, and a repair).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, event, func, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from trialflow import funnel
from trialflow.db import tables, touched
from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import PlainTrial, Trial
from trialflow.metrics import latency_bucket

STEP_KEYS = tuple(key for key, _ in funnel.STEPS)


def _after_flush(session: Session, _context: Any) -> None:
    changed = [obj.id for obj in (*session.new, *session.dirty) if isinstance(obj, Trial)]
    if changed:
        touched.touch(session, changed)


def _before_commit(session: Session) -> None:
    session.flush()
    trial_ids = touched.take(session)
    if trial_ids:
        refresh(session, trial_ids)


def _after_rollback(session: Session, _previous: Any = None) -> None:
    # A savepoint rolled back (the sweep's careful path) leaves the outer transaction's changes,
    # which still need their aggregates: only the end of the whole transaction forgets them.
    if not session.in_transaction():
        touched.take(session)


def install(factory: sessionmaker[Session]) -> None:
    """Keep the facts with every session of ``factory``."""
    event.listen(factory, "after_flush", _after_flush)
    event.listen(factory, "before_commit", _before_commit)
    event.listen(factory, "after_soft_rollback", _after_rollback)


def _reason(moves: Iterable[funnel.Move], details: dict[int, Any]) -> str | None:
    reason = None
    for i, move in enumerate(moves):
        if move.trigger == lc.DISQUALIFY:
            detail = details.get(i) or {}
            reason = str(detail.get("reason") or "") or None
    return reason[:200] if reason else None


def fact_row(facts: funnel.TrialFacts, source: str | None, ae: str | None, ce: str | None,
             reason: str | None) -> dict[str, Any]:
    seconds = funnel.step_seconds(facts)
    return {"trial_id": facts.trial_id, "created_at": facts.created_at, "week": funnel.week_of(facts.created_at)[0], "case": facts.case, "source": source,
            "ae": ae, "ce": ce, "reason": reason, "state": facts.state, "pql_grade": facts.pql_grade,
            "started": facts.started_at is not None, **{k: seconds.get(k) for k in STEP_KEYS}}


def new_trial_facts(trial: PlainTrial) -> dict[str, Any]:
    """The facts row of a trial about to be inserted (its history is all in memory)."""
    moves = [funnel.Move(h.from_state, h.to_state, h.trigger, h.at) for h in trial.history]
    facts = funnel.TrialFacts(trial.id, trial.case, trial.state, trial.created_at, trial.started_at,
                              trial.pql_grade, tuple(m for m in moves if funnel.bounds_a_step(m)))
    details = {i: h.detail for i, h in enumerate(trial.history)}
    return fact_row(facts, trial.source, trial.ae, trial.ce, _reason(moves, details))


def new_trial_count(trial: PlainTrial) -> dict[str, Any]:
    return {"state": trial.state, "pql_grade": trial.pql_grade, "n": 1}


def _facts_of(session: Session, trial_ids: list[str] | None) -> list[dict[str, Any]]:
    """Fact rows computed from ``trials`` and ``trial_history`` (all trials when ``trial_ids`` is None)."""
    t, h = tables.trials, tables.trial_history
    trial_filter = t.c.id.in_(trial_ids) if trial_ids is not None else None
    moves: dict[str, list[funnel.Move]] = {}
    reasons: dict[str, str | None] = {}
    stmt = select(h.c.trial_id, h.c.from_state, h.c.to_state, h.c.trigger, h.c.at, h.c.detail).order_by(h.c.trial_id, h.c.id)
    if trial_ids is not None:
        stmt = stmt.where(h.c.trial_id.in_(trial_ids))
    for trial_id, from_state, to_state, trigger, at, detail in session.execute(stmt):
        move = funnel.Move(from_state, to_state, trigger, at)
        if trigger == lc.DISQUALIFY:
            reasons[trial_id] = _reason([move], {0: detail})
        if funnel.bounds_a_step(move):
            moves.setdefault(trial_id, []).append(move)
    rows = select(t.c.id, t.c["case"], t.c.state, t.c.created_at, t.c.started_at, t.c.pql_grade, t.c.source, t.c.ae, t.c.ce)
    if trial_filter is not None:
        rows = rows.where(trial_filter)
    return [fact_row(funnel.TrialFacts(r.id, r.case, r.state, r.created_at, r.started_at, r.pql_grade,
                                       tuple(moves.get(r.id, ()))), r.source, r.ae, r.ce, reasons.get(r.id))
            for r in session.execute(rows)]


def refresh(session: Session, trial_ids: list[str]) -> None:
    """Recompute these trials' facts and append the change in trials by (state, grade)."""
    f = tables.trial_facts
    for chunk in (trial_ids[i:i + 500] for i in range(0, len(trial_ids), 500)):
        before = {r.trial_id: (r.state, r.pql_grade) for r in session.execute(
            select(f.c.trial_id, f.c.state, f.c.pql_grade).where(f.c.trial_id.in_(chunk)))}
        rows = _facts_of(session, chunk)
        delta: Counter[tuple[str, str | None]] = Counter()
        for key in before.values():
            delta[key] -= 1
        for row in rows:
            delta[(row["state"], row["pql_grade"])] += 1
        if before:
            session.execute(delete(f).where(f.c.trial_id.in_(list(before))))
        if rows:
            session.execute(insert(f), rows)
        changes = [{"state": s, "pql_grade": g, "n": n} for (s, g), n in sorted(delta.items(), key=str) if n]
        if changes:
            session.execute(insert(tables.trial_counts), changes)


def compact(session: Session) -> None:
    """Fold the appended deltas into one row per key (the sweep does this; any time is safe)."""
    for table, keys, sums in ((tables.trial_counts, ("state", "pql_grade"), ("n",)),
                              (tables.delivery_stats, ("kind", "bucket"), ("n", "seconds"))):
        columns = ", ".join((*keys, *sums))
        summed = ", ".join((*keys, *(f"sum({s})" for s in sums)))
        if session.get_bind().dialect.name == "postgresql":
            # One statement: rows appended by transactions committing meanwhile are neither summed nor deleted.
            session.execute(text(
                f"WITH gone AS (DELETE FROM {table.name} RETURNING {columns}) "
                f"INSERT INTO {table.name} ({columns}) SELECT {summed} FROM gone GROUP BY {', '.join(keys)} "
                f"HAVING sum(n) <> 0"))
        else:  # SQLite: the transaction holds the database's one write lock
            last = session.scalar(select(func.max(table.c.id)))
            if last is None:
                continue
            folded = session.execute(text(f"SELECT {summed} FROM {table.name} WHERE id <= :last "
                                          f"GROUP BY {', '.join(keys)} HAVING sum(n) <> 0"), {"last": last}).all()
            session.execute(delete(table).where(table.c.id <= last))
            if folded:
                session.execute(insert(table), [dict(zip((*keys, *sums), row, strict=True)) for row in folded])


def recount(session: Session, deliveries: bool = False) -> dict[str, int]:
    """Rebuild the trials' aggregates from the rows, in the caller's transaction; with
    ``deliveries``, the delivery histogram too (only right while no delivered row was pruned:
    the migration's backfill)."""
    for table in (tables.trial_facts, tables.trial_counts):
        session.execute(delete(table))
    rows = _facts_of(session, None)
    for i in range(0, len(rows), 1000):
        session.execute(insert(tables.trial_facts), rows[i:i + 1000])
    counts = Counter((r["state"], r["pql_grade"]) for r in rows)
    if counts:
        session.execute(insert(tables.trial_counts), [{"state": s, "pql_grade": g, "n": n}
                                                      for (s, g), n in counts.items()])
    if not deliveries:
        return {"trials": len(rows)}
    session.execute(delete(tables.delivery_stats))
    o = tables.outbox
    stats: dict[tuple[str, int], list[float]] = {}
    delivered = session.execute(select(o.c.kind, o.c.created_at, o.c.delivered_at)
                                .where(o.c.status == "delivered", o.c.delivered_at.is_not(None)))
    for kind, created_at, delivered_at in delivered:
        seconds = (delivered_at - created_at).total_seconds()
        entry = stats.setdefault((kind, latency_bucket(seconds)), [0, 0.0])
        entry[0] += 1
        entry[1] += seconds
    if stats:
        session.execute(insert(tables.delivery_stats), [{"kind": k, "bucket": b, "n": int(n), "seconds": s}
                                                        for (k, b), (n, s) in stats.items()])
    return {"trials": len(rows), "delivered": sum(int(n) for n, _ in stats.values())}

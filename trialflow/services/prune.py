"""Bounded storage: delivered effects older than ``TRIALFLOW_OUTBOX_RETENTION_DAYS`` leave the
outbox, in small batches, each its own short transaction (the sweep runs a few batches each time,
wherever it runs: Celery beat or ``trialflow serve``; ``trialflow outbox prune`` runs them all).

What stays:
- effects not delivered (pending, delivering) and parked failures: someone may still act on them;
- the effects that later effects and signals look up: a delivered Slack message or GitHub issue
  of a trial still in progress (its thread, its issue number), or of no trial, and the issue of a
  cloud request still open (``services.cloud_loop`` matches its number when it is closed);
- trials and their history, always.

Idempotency: each pruned effect's key is kept in ``pruned_keys`` (a key and a time, no payload),
and the writer does not insert an effect whose key is there, so an effect decided again after its
row was pruned is not sent twice.
"""
from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from trialflow.db import tables
from trialflow.domain import lifecycle as lc
from trialflow.services.uow import App

# Effects whose delivered result later effects look up by ref (delivery.core._DbResults).
CREATING_KINDS = ("slack.message", "github.issue")


@dataclass
class PruneReport:
    cutoff: datetime
    dry_run: bool
    pruned: int = 0
    batches: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    done: bool = True          # False: stopped at its batch limit with more left


def prunable(cutoff: datetime) -> Any:
    """The condition an outbox row must meet to be pruned."""
    o, t, c = tables.outbox, tables.trials, tables.cloud_requests
    # The trials still in progress, named by state so the state index finds them (few, however
    # many trials ended), not by "not final", which reads every trial.
    in_progress = [state for state in lc.STATES if state not in lc.FINAL_STATES]
    live_trial = o.c.trial_id.in_(select(t.c.id).where(t.c.state.in_(in_progress)))
    looked_up = and_(o.c.kind.in_(CREATING_KINDS), o.c.result.is_not(None), or_(o.c.trial_id.is_(None), live_trial))
    open_request = exists().where(c.c.key == o.c.key, c.c.completed_at.is_(None))
    return and_(o.c.status == "delivered", o.c.delivered_at < cutoff, ~looked_up, ~open_request)


def prune(rt: App, now: datetime | None = None, *, dry_run: bool = False, batch: int | None = None,
          max_batches: int | None = None, progress: Callable[[PruneReport], None] | None = None) -> PruneReport:
    """Prune (or with ``dry_run`` count, changing nothing) what retention lets go."""
    settings = rt.settings
    now = now or rt.clock.now()
    batch = batch or settings.prune_batch_size
    report = PruneReport(cutoff=now - timedelta(days=settings.outbox_retention_days), dry_run=dry_run)
    o = tables.outbox
    last_id = 0
    while max_batches is None or report.batches < max_batches:
        with rt.uow() as uow:
            session = uow.session
            stmt = select(o.c.id, o.c.key, o.c.kind, o.c.delivered_at).where(prunable(report.cutoff))
            if dry_run:  # nothing is deleted, so walk on by id
                stmt = stmt.where(o.c.id > last_id).order_by(o.c.id)
            elif session.get_bind().dialect.name == "postgresql":
                stmt = stmt.with_for_update(of=o, skip_locked=True)
            rows = session.execute(stmt.limit(batch)).all()
            if not rows:
                break
            if not dry_run:
                dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
                session.execute(dialect.insert(tables.pruned_keys).on_conflict_do_nothing(),
                                [{"key": row.key, "delivered_at": row.delivered_at} for row in rows])
                session.execute(delete(o).where(o.c.id.in_([row.id for row in rows])))
                uow.commit()
        last_id = rows[-1].id
        report.batches += 1
        report.pruned += len(rows)
        report.by_kind.update(row.kind for row in rows)
        if progress is not None:
            progress(report)
        if len(rows) < batch:
            break
    else:
        report.done = False
    return report


def cli_prune(rt: App, dry_run: bool, batch: int | None = None) -> int:
    """``trialflow outbox prune [--dry-run]``: progress on stderr as batches go, a summary on stdout."""
    def show(report: PruneReport) -> None:
        if report.batches % 20 == 0:
            print(f"... {report.pruned} effects {'would go' if report.dry_run else 'pruned'} so far",
                  file=sys.stderr, flush=True)

    report = prune(rt, dry_run=dry_run, batch=batch, progress=show)
    verb = "would prune" if dry_run else "pruned"
    print(f"{verb} {report.pruned} delivered effects delivered before {report.cutoff.isoformat()} "
          f"(retention {rt.settings.outbox_retention_days} days), in {report.batches} batches")
    for kind, n in sorted(report.by_kind.items()):
        print(f"  {kind:<16} {n}")
    return 0

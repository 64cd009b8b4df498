"""The clock, as data: due timers and queues, swept on a schedule (beat, or serve's own loop)
and by ``trialflow sweep [--at T] [--dry-run]``.

Why it is safe to run often, twice, and from two places at once:
- Due timers are claimed a batch at a time with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL), so two
  sweepers split the work instead of doing it twice. Each timer is marked fired in the same
  transaction as the step it caused, so a sweep run twice for the same moment does nothing the
  second time, and a sweeper that dies mid-batch leaves its timers due for the next one.
- The batch's trials are then row-locked in id order (one statement), so a person clicking a
  button on the same trial waits for the batch or the batch waits for them, and two sweepers
  that hold different timers of one trial never deadlock. The decision is made *after* the lock,
  on the trial as it is now.
- Each step runs in a savepoint: one trial that cannot take its step is logged and skipped, it
  does not hold up the others.

Why it is fast: the due query walks the partial index ``ix_timers_pending_due`` (unfired timers
by due time), so a sweep with nothing due costs one index probe however many trials are stored;
a batch loads its trials and their histories in two queries and shares one staff directory.

``--dry-run`` runs exactly the same code in one transaction that is rolled back, so what it
prints includes the consequences of earlier steps (a termination that frees capacity lets the
queue move), and nothing is locked or changed.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import selectinload

from trialflow.db import tables
from trialflow.db.sql import insert_ignore
from trialflow.domain import lifecycle as lc
from trialflow.domain.decisions import Decisions
from trialflow.domain.trial import SYSTEM, Trial
from trialflow.errors import TrialflowError
from trialflow.metrics import record_sweep
from trialflow.services import aggregates, capacity, cloud_loop, outbox, policies, prune, usage_polls
from trialflow.services import slack_blocks as sb
from trialflow.services.directory import Directory
from trialflow.services.timers import step_for
from trialflow.services.trials import Command, promote_waiting, step
from trialflow.services.uow import App, UnitOfWork
from trialflow.services.writer import among

log = logging.getLogger("trialflow.sweep")

QUEUE_BATCH = 100
# Timers whose step depends on what the instance answered about its usage.
_USAGE_DECIDES = frozenset({lc.TERMINATION_HEADS_UP, lc.DAY15_REVIEW})


@dataclass
class SweepReport:
    at: datetime
    dry_run: bool
    actions: list[str] = field(default_factory=list)
    timers_fired: int = 0
    trials_touched: int = 0
    promoted: int = 0
    pruned: int = 0
    seconds: float = 0.0

    def add(self, text: str) -> None:
        self.actions.append(text)


def sweep(rt: App, at: datetime | None = None, dry_run: bool = False, batch: int = 500,
          progress: Callable[[str, int, int], None] | None = None) -> SweepReport:
    """Take every step due at ``at`` (default: now). Only the decisions are made as of ``at``:
    what they cause (messages, issues, emails) is due at once, not when ``at`` really comes.
    ``progress`` (the command line's bar) hears of each batch of timers."""
    started = time.perf_counter()
    send_at = rt.clock.now()
    now = at or send_at
    report = SweepReport(at=now, dry_run=dry_run)
    due = _count_due(rt, now) if progress else 0

    def batch_done() -> None:
        if progress and due:
            progress("sweep: timers", min(report.timers_fired, due), due)
    if dry_run:
        with rt.uow() as uow:
            # fired_at is set inside this transaction, so the next batch is the next one.
            while _more(*_sweep_timers(uow, rt, now, send_at, report, batch, lock=False), batch):
                batch_done()
            batch_done()
            _sweep_queue(uow, rt, now, send_at, report, lock=False)
            _sweep_program(uow, rt, now, send_at, report)
            uow.rollback()
    else:
        while True:
            with rt.uow() as uow:
                claimed, settled = _sweep_timers(uow, rt, now, send_at, report, batch, lock=True)
                uow.commit()
            batch_done()
            if not _more(claimed, settled, batch):
                break
        _sweep_queue_durably(rt, now, send_at, report)
        with rt.uow() as uow:
            _sweep_program(uow, rt, now, send_at, report)
            uow.commit()
        _housekeeping(rt, send_at, report)
    report.seconds = time.perf_counter() - started
    record_sweep(rt, report)  # for /metrics; a dry run records nothing
    return report


def _housekeeping(rt: App, now: datetime, report: SweepReport) -> None:
    """Fold the aggregates' appended deltas, and prune a few batches of delivered effects past
    retention (``services.prune``): small transactions, so nothing waits long behind them."""
    with rt.uow() as uow:
        aggregates.compact(uow.session)
        uow.commit()
    pruned = prune.prune(rt, now, max_batches=rt.settings.prune_batches_per_sweep)
    report.pruned = pruned.pruned
    if pruned.pruned:
        report.add(f"pruned {pruned.pruned} delivered effects older than {rt.settings.outbox_retention_days} days")


def _count_due(rt: App, now: datetime) -> int:
    t = tables.timers
    with rt.session_factory() as session:
        return session.scalar(select(func.count()).select_from(t).where(t.c.fired_at.is_(None), t.c.due_at <= now)) or 0


def _more(claimed: int, settled: int, batch: int) -> bool:
    """Another batch may be due: this one was full, and it moved something (a batch made only of
    timers whose step fails would otherwise be claimed again and again)."""
    return claimed == batch and settled > 0


def _sweep_timers(uow: UnitOfWork, rt: App, now: datetime, send_at: datetime, report: SweepReport, batch: int,
                  lock: bool) -> tuple[int, int]:
    """Claim up to ``batch`` due timers and take the step each one causes. Returns (claimed, settled):
    settled leaves out timers left due because their step failed.

    The fast path flushes the batch's trial changes once, at the end (history rows go out as one
    multi-row INSERT). If anything unexpected fails, the batch is rolled back and redone with a
    savepoint per trial, so one bad trial is skipped (its timer left due, and logged) instead of
    stopping every sweep behind it.
    """
    effects_before = len(uow.new_effect_ids)
    try:
        # A savepoint, not the transaction: a dry run holds every batch in one transaction.
        with uow.session.begin_nested():
            return _claim_and_step(uow, rt, now, send_at, report, batch, lock, careful=False)
    except Exception as exc:  # noqa: BLE001 - redo carefully; the careful pass logs the culprit
        log.warning("sweep batch failed (%s: %s); redoing it one trial at a time", type(exc).__name__, exc)
        del uow.new_effect_ids[effects_before:]
    return _claim_and_step(uow, rt, now, send_at, report, batch, lock, careful=True)


def _claim_and_step(uow: UnitOfWork, rt: App, now: datetime, send_at: datetime, report: SweepReport, batch: int,
                    lock: bool, careful: bool) -> tuple[int, int]:
    t = tables.timers
    session = uow.session
    # Ordered by due_at alone: exactly the partial index's order, so a batch reads only its own rows
    # (a tie-breaker on id would make PostgreSQL sort every timer due at the same moment).
    due_stmt = (select(t.c.id, t.c.trial_id, t.c.kind).where(t.c.fired_at.is_(None), t.c.due_at <= now)
                .order_by(t.c.due_at).limit(batch))
    if lock:
        due_stmt = due_stmt.with_for_update(skip_locked=True)
    due = session.execute(due_stmt).all()
    if not due:
        return 0, 0
    session.execute(update(t).where(among(session, t.c.id, [row.id for row in due])).values(fired_at=now))

    trial_ids = sorted({row.trial_id for row in due if row.trial_id is not None})
    trials_stmt = (select(Trial).where(among(session, tables.trials.c.id, trial_ids)).order_by(tables.trials.c.id)
                   # Trial is mapped imperatively (db.mapping): mypy sees the plain list, not the relationship.
                   .options(selectinload(Trial.history)))  # type: ignore[misc, arg-type]
    if lock:
        trials_stmt = trials_stmt.with_for_update(of=tables.trials)
    trials = {trial.id: trial for trial in session.scalars(trials_stmt)} if trial_ids else {}

    ctx = policies.Context(Directory(session), rt.settings)
    usage = usage_polls.usage_known(session, rt.settings, [
        trials[row.trial_id] for row in due if row.kind in _USAGE_DECIDES and row.trial_id in trials])
    decided = Decisions()  # the fast path writes the whole batch's decisions at its end
    done: list[str] = []
    left_due = 0
    for row in due:
        trial = trials.get(row.trial_id)
        if trial is None:
            continue
        decision = step_for(trial, row.kind, usage.get(trial.id))
        if decision is None:
            continue
        trigger, detail = decision
        cmd = Command(trial.id, trigger, SYSTEM, None, detail, internal=True)
        if careful:
            try:
                with session.begin_nested():
                    uow.persist(step(uow, rt.settings, now, cmd, trial, ctx).due(send_at))
            except TrialflowError as exc:
                log.warning("timer %s for %s: %s", row.kind, row.trial_id, exc, extra={"trial_id": row.trial_id})
                continue
            except Exception:  # noqa: BLE001
                log.exception("timer %s for %s failed; left due for the next sweep", row.kind, row.trial_id,
                              extra={"trial_id": row.trial_id})
                session.execute(update(t).where(t.c.id == row.id).values(fired_at=None))
                left_due += 1
                continue
        else:
            # For the clock's own steps step() refuses (TrialflowError) before changing anything,
            # so skipping the trial needs no savepoint.
            try:
                with session.no_autoflush:
                    decided.extend(step(uow, rt.settings, now, cmd, trial, ctx))
            except TrialflowError as exc:
                log.warning("timer %s for %s: %s", row.kind, row.trial_id, exc, extra={"trial_id": row.trial_id})
                continue
        done.append(f"{trial.id} {trial.email}: {row.kind} → {trigger} (now {trial.state})")
    uow.persist(decided.due(send_at))
    session.flush()
    report.timers_fired += len(due) - left_due
    report.trials_touched += len(done)
    report.actions.extend(done)
    return len(due), len(due) - left_due


def _waiting(uow: UnitOfWork, lock: bool, ids: list[str] | None = None) -> list[Trial]:
    stmt = (select(Trial).where(tables.trials.c.state == lc.WAITING_FOR_CAPACITY)
            .order_by(tables.trials.c.created_at, tables.trials.c.id).limit(QUEUE_BATCH))
    if ids is not None:
        stmt = stmt.where(tables.trials.c.id.in_(ids))
    if lock:
        stmt = stmt.with_for_update(skip_locked=True)
    return list(uow.session.scalars(stmt).all())


def _promote(uow: UnitOfWork, rt: App, now: datetime, send_at: datetime, report: SweepReport,
             trial: Trial) -> bool | None:
    """Try to move one waiting trial on. True: moved; False: not now; None: the cap is reached."""
    with uow.session.begin_nested():
        moved, decisions = promote_waiting(uow, rt.settings, now, trial)
        uow.persist(decisions.due(send_at))
    if moved:
        report.promoted += 1
        report.trials_touched += 1
        report.add(f"{trial.id} {trial.email}: capacity freed → {trial.state}")
        return True
    # a pre-qualified trial may wait for the pool while a manual one behind it can still go
    return None if not capacity.has_capacity(uow.session, rt.settings) else False


def _sweep_queue(uow: UnitOfWork, rt: App, now: datetime, send_at: datetime, report: SweepReport,
                 lock: bool) -> None:
    """Waiting trials move on, oldest first, while capacity (and, for pre-qualified ones, the pool) allows."""
    waiting = _waiting(uow, lock)
    # Nobody can move while the cap is reached: one count instead of one attempt per waiting trial.
    if not waiting or not capacity.has_capacity(uow.session, rt.settings):
        return
    for trial in waiting:
        if _promote(uow, rt, now, send_at, report, trial) is None:
            break


def _sweep_queue_durably(rt: App, now: datetime, send_at: datetime, report: SweepReport) -> None:
    """As ``_sweep_queue``, one transaction per trial.

    A promotion takes its domain's claim row and then the capacity lock, as a signup does; holding
    one trial's claim while taking the next one's could deadlock with a signup of that next
    domain waiting for capacity. One trial per transaction holds at most one claim at a time.
    """
    with rt.uow() as uow:
        ids = [t.id for t in _waiting(uow, lock=False)]
        if not ids or not capacity.has_capacity(uow.session, rt.settings):
            return
    for trial_id in ids:
        with rt.uow() as uow:
            trials = _waiting(uow, lock=True, ids=[trial_id])
            if not trials:
                continue  # moved by someone else meanwhile, or locked by another sweeper
            outcome = _promote(uow, rt, now, send_at, report, trials[0])
            uow.commit()
        if outcome is None:
            break


def _sweep_program(uow: UnitOfWork, rt: App, now: datetime, send_at: datetime, report: SweepReport) -> None:
    """Program-wide chores: license rotation reminders, the pool's low-water mark, usage polls and
    chasing the cloud team's overdue requests."""
    last = uow.session.scalar(select(tables.kv.c.value).where(tables.kv.c.key == "license_rotated_at"))
    if last is None:
        insert_ignore(uow.session, tables.kv, {"key": "license_rotated_at", "value": now.isoformat()})
    else:
        rotated = datetime.fromisoformat(last)
        period = timedelta(days=rt.settings.license_rotation_days)
        if now - rotated >= period:
            due = rotated + ((now - rotated) // period) * period
            # One reminder per period until it is rotated. The key itself is never in a message.
            if outbox.enqueue(uow, key=f"license-rotation:{due.date()}", kind="slack.message", now=send_at, payload={
                "channel": rt.settings.alerts_channel,
                **sb.message(f":key: The shared trial license key is due for rotation (every {rt.settings.license_rotation_days} days, "
                             f"last rotated {rotated.date()}). Rotate it, then run `trialflow license rotated`."),
            }):
                report.add("would post a license rotation reminder" if report.dry_run
                           else "license rotation reminder posted")
    if uow.persist(capacity.pool_low_water(uow.session, rt.settings, now).due(send_at)):
        report.add("pool below its low-water mark: " + ("would raise a replenish request" if report.dry_run
                                                        else "replenish request raised"))
    polled = uow.persist(usage_polls.poll_due(uow.session, rt.settings, now).due(send_at))
    if polled:
        report.add(f"usage asked of {len(polled)} instance(s)")
    chased = uow.persist(cloud_loop.chase_overdue(uow.session, rt.settings, now).due(send_at))
    if chased:
        report.add(f"{len(chased)} cloud-team request(s) past their SLA chased")

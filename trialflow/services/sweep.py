"""The clock, as data: due timers and queues, swept on a schedule (beat, or serve's own loop)
and by ``trialflow sweep [--at T] [--dry-run]``.

Each batch claims due timers with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL), so two sweepers at
once split the work instead of doing it twice; each timer is marked fired in the same
transaction as the step it caused, so a sweep run twice for the same moment does nothing the
second time. ``--dry-run`` runs exactly the same code and rolls the transaction back.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update

from trialflow.db import tables
from trialflow.db.sql import insert_ignore
from trialflow.domain import lifecycle as lc
from trialflow.domain.trial import SYSTEM, Trial
from trialflow.errors import TrialflowError
from trialflow.services import outbox, policies
from trialflow.services import slack_blocks as sb
from trialflow.services.trials import Command, handle, promote_waiting
from trialflow.services.signups import _check_pool_low_water

log = logging.getLogger("trialflow.sweep")


@dataclass
class SweepReport:
    at: datetime
    dry_run: bool
    actions: list[str] = field(default_factory=list)
    timers_fired: int = 0
    trials_touched: int = 0
    promoted: int = 0
    seconds: float = 0.0

    def add(self, text: str) -> None:
        self.actions.append(text)


def _decide(trial: Trial, kind: str) -> tuple[str, dict] | None:
    """Which step a due timer causes now, if any (a timer left behind by a later change does nothing)."""
    if kind == "user_added_reminder" and trial.state == lc.JOINING_EXISTING:
        return "remind_user_added", {}
    if kind == "termination_heads_up" and trial.state == lc.ACTIVE and not trial.kept and not _active(trial):
        return "warn_termination", {}
    if kind == "day15_review" and trial.state == lc.ACTIVE:
        if _active(trial) or trial.kept:
            return "extend", {"days": policies.EXTENSION_DAYS, "reason": "day 15: kept by the CE" if trial.kept and not _active(trial) else "day 15: activity on the instance"}
        return "terminate", {"reason": "day 15: no activity on the instance"}
    if kind == "day30_decision" and trial.state == lc.EXTENDED:
        return "remind_decision", {}
    if kind == "day30_escalation" and trial.state == lc.EXTENDED:
        return "escalate_decision", {}
    return None


def _active(trial: Trial) -> bool:
    """'Inactive at day 15' = no recorded activity since the trial started (or PQL grade D)."""
    if trial.pql_grade in ("A", "B", "C"):
        return True
    return bool(trial.last_activity_at and trial.started_at and trial.last_activity_at >= trial.started_at)


def sweep(rt, at: datetime | None = None, dry_run: bool = False, batch: int = 500) -> SweepReport:
    started = time.perf_counter()
    now = at or rt.clock.now()
    report = SweepReport(at=now, dry_run=dry_run)
    while _sweep_timers(rt, now, report, dry_run, batch) == batch and not dry_run:
        pass
    _sweep_queue(rt, now, report, dry_run)
    _sweep_program(rt, now, report, dry_run)
    report.seconds = time.perf_counter() - started
    return report


def _sweep_timers(rt, now, report: SweepReport, dry_run: bool, batch: int) -> int:
    t = tables.timers
    with rt.uow() as uow:
        due = uow.session.execute(
            select(t.c.id, t.c.trial_id, t.c.kind).where(t.c.fired_at.is_(None), t.c.due_at <= now)
            .order_by(t.c.due_at, t.c.id).limit(batch).with_for_update(skip_locked=True)
        ).all()
        for timer_id, trial_id, kind in due:
            uow.session.execute(update(t).where(t.c.id == timer_id).values(fired_at=now))
            report.timers_fired += 1
            if trial_id is None:
                continue
            trial = uow.session.get(Trial, trial_id)
            decision = _decide(trial, kind) if trial is not None else None
            if decision is None:
                continue
            trigger, detail = decision
            try:
                with uow.session.begin_nested():
                    handle(uow, rt.settings, now, Command(trial_id, trigger, SYSTEM, None, detail))
            except TrialflowError as exc:
                log.warning("timer %s for %s: %s", kind, trial_id, exc, extra={"trial_id": trial_id})
                continue
            report.trials_touched += 1
            report.add(f"{trial_id} {trial.email}: {kind} → {trigger} (now {trial.state})")
        if dry_run:
            uow.rollback()
        else:
            uow.commit()
        return len(due)


def _sweep_queue(rt, now, report: SweepReport, dry_run: bool) -> None:
    """Waiting trials move on, oldest first, while capacity (and, for pre-qualified ones, the pool) allows."""
    with rt.uow() as uow:
        waiting = uow.session.scalars(select(Trial).where(tables.trials.c.state == lc.WAITING_FOR_CAPACITY)
                                      .order_by(tables.trials.c.created_at, tables.trials.c.id).limit(100)
                                      .with_for_update(skip_locked=True)).all()
        for trial in waiting:
            with uow.session.begin_nested():
                moved = promote_waiting(uow, rt.settings, now, trial)
            if not moved:
                continue
            report.promoted += 1
            report.trials_touched += 1
            report.add(f"{trial.id} {trial.email}: capacity freed → {trial.state}")
        if dry_run:
            uow.rollback()
        else:
            uow.commit()


def _sweep_program(rt, now, report: SweepReport, dry_run: bool) -> None:
    """Program-wide chores: license rotation reminders and the pool's low-water mark."""
    with rt.uow() as uow:
        last = uow.session.scalar(select(tables.kv.c.value).where(tables.kv.c.key == "license_rotated_at"))
        if last is None:
            insert_ignore(uow.session, tables.kv, {"key": "license_rotated_at", "value": now.isoformat()})
        elif now - datetime.fromisoformat(last) >= timedelta(days=rt.settings.license_rotation_days):
            period = timedelta(days=rt.settings.license_rotation_days)
            overdue_periods = (now - datetime.fromisoformat(last)) // period
            due = datetime.fromisoformat(last) + overdue_periods * period
            # One reminder per period until it is rotated. The key itself is never in a message.
            if outbox.enqueue(uow, key=f"license-rotation:{due.date()}", kind="slack.message", now=now, payload={
                "channel": rt.settings.alerts_channel,
                **sb.message(f":key: The shared trial license key is due for rotation (every {rt.settings.license_rotation_days} days, "
                             f"last rotated {datetime.fromisoformat(last).date()}). Rotate it, then run `trialflow license rotated`."),
            }):
                report.add("license rotation reminder posted")
        before = len(uow.new_effect_ids)
        _check_pool_low_water(uow, rt.settings, now)
        if len(uow.new_effect_ids) > before:
            report.add("pool below its low-water mark: replenish request raised")
        if dry_run:
            uow.rollback()
        else:
            uow.commit()

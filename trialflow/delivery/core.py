"""Delivering outbox effects: exactly once, as far as the provider lets us tell.

Each delivery takes a *lease* on the row in its own short transaction (status ``delivering``,
``next_attempt_at`` = lease end) before calling the provider, and records the result in a
second one. So:
- two workers never deliver the same effect at once (the lease is taken with a conditional
  UPDATE; whoever updates the row owns it);
- a worker killed mid-call leaves the row ``delivering`` with an expired lease; the next attempt
  knows the call *may* have happened (``attempt > 1``) and asks the provider first (Slack:
  message metadata in the channel history; GitHub: the effect's marker in issue bodies), so a
  retry finds the first delivery instead of making a second one;
- transient failures back off exponentially with jitter (Retry-After wins when the provider
  sends one); after ``delivery_max_attempts`` the effect is parked as ``failed`` and
  #cloud-trial-alerts is told.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import func, select, text, update

from trialflow.db import tables
from trialflow.errors import PermanentFailure, RetryLater
from trialflow.logs import bind_trial, scrub
from trialflow.services import outbox
from trialflow.services.slack_blocks import message

log = logging.getLogger("trialflow.delivery")

LEASE_SECONDS = 60.0
BASE_BACKOFF = 2.0
MAX_BACKOFF = 15 * 60.0


@dataclass
class Effect:
    id: int
    key: str
    kind: str
    payload: dict[str, Any]
    trial_id: str | None
    attempt: int                      # 1 on the first try
    results: "ResultLookup"           # results of earlier effects (a message's ts, an issue's number)

    @property
    def maybe_delivered(self) -> bool:
        """An earlier attempt may have reached the provider before its worker died."""
        return self.attempt > 1


class ResultLookup(Protocol):
    def result_for_ref(self, ref: str) -> dict[str, Any] | None: ...


class Transport(Protocol):
    def deliver(self, effect: Effect) -> dict[str, Any]:
        """Deliver, return what to remember (ids). Raise RetryLater or PermanentFailure."""


class _DbResults:
    def __init__(self, session_factory):
        self._factory = session_factory

    def result_for_ref(self, ref: str) -> dict[str, Any] | None:
        """What an earlier effect with this ``ref`` returned (the alert's ts, the issue's number)."""
        trial_id = _trial_of(ref)
        # Only effects that create something (a message, an issue) define a ref; updates and
        # comments carry the ref of their target and must never be mistaken for it.
        stmt = select(tables.outbox.c.payload, tables.outbox.c.result).where(
            tables.outbox.c.status == "delivered", tables.outbox.c.result.is_not(None),
            tables.outbox.c.kind.in_(("slack.message", "github.issue")))
        stmt = stmt.where(tables.outbox.c.trial_id == trial_id) if trial_id else stmt.where(tables.outbox.c.trial_id.is_(None))
        with self._factory() as session:
            # Newest first: a trial that waited and was then claimed has two alerts under one ref,
            # and what happens next belongs on the latest.
            for payload, result in session.execute(stmt.order_by(tables.outbox.c.id.desc())):
                if payload.get("ref") == ref:
                    return result
        return None


def _has_secret(payload: Any) -> bool:
    if isinstance(payload, dict):
        return any(k in outbox.SECRET_KEYS or _has_secret(v) for k, v in payload.items())
    if isinstance(payload, list):
        return any(_has_secret(v) for v in payload)
    return False


def _trial_of(ref: str) -> str | None:
    # refs look like "alert:tr_…" or "instance-request:tr_…"
    parts = ref.split(":")
    return parts[1] if len(parts) >= 2 and parts[1].startswith("tr_") else None


def backoff(attempt: int, retry_after: float | None = None) -> float:
    if retry_after is not None:
        return max(retry_after, 0.0) + random.uniform(0, 0.25)
    ceiling = min(MAX_BACKOFF, BASE_BACKOFF * (2 ** (attempt - 1)))
    return random.uniform(ceiling / 2, ceiling)  # "equal jitter"


class Deliverer:
    def __init__(self, rt, transports: dict[str, Transport], lease_seconds: float = LEASE_SECONDS):
        self.rt = rt
        self.transports = transports
        self.lease = timedelta(seconds=lease_seconds)
        self.results = _DbResults(rt.session_factory)

    def due_ids(self, limit: int = 500) -> list[int]:
        now = self.rt.clock.now()
        with self.rt.session_factory() as session:
            return list(session.scalars(
                select(tables.outbox.c.id)
                .where(tables.outbox.c.status.in_(("pending", "delivering")), tables.outbox.c.next_attempt_at <= now)
                .order_by(tables.outbox.c.next_attempt_at, tables.outbox.c.id).limit(limit)))

    def claim_for_dispatch(self, limit: int = 1000, grace_seconds: float = 5.0) -> list[int]:
        """Due effects whose task was never sent, or was sent ``grace_seconds`` ago and has not
        finished (lost with a dead worker or a restarted broker). Marks them dispatched now."""
        now = self.rt.clock.now()
        cutoff = now - timedelta(seconds=grace_seconds)
        o = tables.outbox
        with self.rt.session_factory() as session, session.begin():
            ids = list(session.scalars(
                select(o.c.id).where(o.c.status.in_(("pending", "delivering")), o.c.next_attempt_at <= now,
                                     func.coalesce(o.c.dispatched_at, o.c.created_at) <= cutoff)
                .order_by(o.c.next_attempt_at, o.c.id).limit(limit).with_for_update(skip_locked=True)))
            if ids:
                session.execute(update(o).where(o.c.id.in_(ids)).values(dispatched_at=now))
        return ids

    def _lease(self, effect_id: int) -> Effect | None:
        now = self.rt.clock.now()
        with self.rt.session_factory() as session, session.begin():
            claimed = session.execute(
                update(tables.outbox)
                .where(tables.outbox.c.id == effect_id,
                       tables.outbox.c.status.in_(("pending", "delivering")),
                       tables.outbox.c.next_attempt_at <= now)
                .values(status="delivering", attempts=tables.outbox.c.attempts + 1, next_attempt_at=now + self.lease)
                .returning(tables.outbox.c.key, tables.outbox.c.kind, tables.outbox.c.payload,
                           tables.outbox.c.trial_id, tables.outbox.c.attempts)
            ).first()
        if claimed is None:
            return None
        return Effect(effect_id, claimed.key, claimed.kind, claimed.payload, claimed.trial_id, claimed.attempts, self.results)

    def deliver(self, effect_id: int) -> str:
        """Deliver one effect if it is due and nobody else holds it. Returns what happened."""
        effect = self._lease(effect_id)
        if effect is None:
            return "skipped"
        with bind_trial(effect.trial_id):
            return self._deliver(effect)

    def _deliver(self, effect: Effect) -> str:
        transport = self.transports.get(effect.kind.split(".", 1)[0])
        try:
            if transport is None:
                raise PermanentFailure(f"no transport for effect kind {effect.kind}")
            result = transport.deliver(effect)
        except RetryLater as exc:
            return self._retry(effect, str(exc), exc.retry_after)
        except PermanentFailure as exc:
            return self._park(effect, str(exc))
        except Exception as exc:  # noqa: BLE001 - an unknown failure is treated as transient
            log.warning("effect %s (%s) attempt %s failed: %s", effect.id, effect.kind, effect.attempt, exc)
            return self._retry(effect, f"{type(exc).__name__}: {exc}", None)
        done: dict[str, Any] = {"status": "delivered", "result": result or {}}
        if _has_secret(effect.payload):
            # A password-reset link is for its recipient only: once sent, it is not kept.
            done["payload"] = outbox.redact(effect.payload)
        self._finish(effect, **done)
        log.info("effect %s delivered", effect.key, extra={"trial_id": effect.trial_id, "effect_kind": effect.kind})
        return "delivered"

    def _finish(self, effect: Effect, **values) -> None:
        now = self.rt.clock.now()
        if values.get("status") == "delivered":
            values.setdefault("delivered_at", now)
        with self.rt.session_factory() as session, session.begin():
            if session.get_bind().dialect.name == "postgresql":
                # Safe to lose in a database crash: the lease (committed durably before the call)
                # then expires and the next attempt asks the provider before sending again.
                session.execute(text("SET LOCAL synchronous_commit TO OFF"))
            session.execute(update(tables.outbox).where(tables.outbox.c.id == effect.id,
                                                        tables.outbox.c.status == "delivering").values(**values))

    def _retry(self, effect: Effect, why: str, retry_after: float | None) -> str:
        why = scrub(why)
        values: dict[str, Any] = {}
        if retry_after is not None:
            # The provider said when to come back (a rate limit): waiting is not failing, so this
            # attempt does not spend the budget. It certainly did not deliver, so undoing its
            # count keeps "maybe delivered" true only for attempts that really may have.
            values["attempts"] = tables.outbox.c.attempts - 1
        elif effect.attempt >= self.rt.settings.delivery_max_attempts:
            return self._park(effect, why)
        delay = backoff(effect.attempt, retry_after)
        self._finish(effect, status="pending", last_error=why[:2000],
                     next_attempt_at=self.rt.clock.now() + timedelta(seconds=delay), **values)
        return "retry"

    def _park(self, effect: Effect, why: str) -> str:
        why = scrub(why)  # a provider's error may quote what it was sent (a reset link, a token)
        self._finish(effect, status="failed", last_error=why[:2000])
        log.error("effect %s parked as failed after %s attempt(s): %s", effect.key, effect.attempt, why,
                  extra={"trial_id": effect.trial_id})
        if effect.kind.startswith("slack.") and effect.payload.get("channel") == self.rt.settings.alerts_channel \
                and effect.key.startswith("delivery-failed:"):
            return "failed"  # the failure notice itself failed: do not loop
        with self.rt.uow() as uow:
            outbox.enqueue(uow, key=f"delivery-failed:{effect.id}", kind="slack.message", now=self.rt.clock.now(),
                           trial_id=effect.trial_id, payload={
                               "channel": self.rt.settings.alerts_channel,
                               **message(f":x: trialflow could not deliver `{effect.kind}` for trial "
                                         f"`{effect.trial_id or '-'}` after {effect.attempt} attempt(s): {why[:300]}. "
                                         f"Retry with `trialflow outbox retry {effect.id}`."),
                           })
            uow.commit()
        return "failed"

    def drain(self, limit: int = 500) -> dict[str, int]:
        """Deliver what is due now, up to ``limit`` effects. Returns counts by outcome."""
        counts: dict[str, int] = {}
        for effect_id in self.due_ids(limit):
            outcome = self.deliver(effect_id)
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def drain_all(self, batch: int = 200) -> dict[str, int]:
        """Deliver until nothing more is due (effects enqueued meanwhile included)."""
        total: dict[str, int] = {}
        while True:
            counts = self.drain(batch)
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
            if sum(counts.values()) < batch:
                return total


def retry(rt, effect_id: int) -> bool:
    """Put a failed (or pending) effect back in the queue now, with a fresh attempt budget."""
    with rt.session_factory() as session, session.begin():
        done = session.execute(update(tables.outbox).where(
            tables.outbox.c.id == effect_id, tables.outbox.c.status.in_(("failed", "pending"))
        ).values(status="pending", attempts=0, next_attempt_at=rt.clock.now(), last_error=None)).rowcount
    if done and rt.wake:
        rt.wake([effect_id])
    return bool(done)
